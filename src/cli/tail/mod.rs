//! `pgmesh tail`: a decoded `pg_recvlogical`. Streams a logical replication slot and prints
//! each committed transaction as one JSON line; reconnects after failures and resumes
//! with no gap and no repeat; acknowledges only what it has written out.

mod args;
mod render;
mod run;
mod value;
mod wal2json;

pub use args::{OriginFilter, Output, TailArgs};
pub use render::{Finished, RenderError, Renderer};
pub use run::run;
