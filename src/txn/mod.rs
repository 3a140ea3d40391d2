//! Transaction assembly: turning the decoded message stream into committed transactions.

mod assemble;
mod relations;
pub mod spill;
pub mod spool;
mod step;
#[cfg(test)]
pub(crate) mod testing;

pub use assemble::Assembler;
pub use relations::RelationCache;
pub use spill::SpillBuffer;
pub use spool::{Route, Spools};
pub use step::{Batch, Context, Step};
