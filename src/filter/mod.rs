//! Filters between decoding and assembly.

pub mod origin;

pub use origin::{OriginFilter, Verdict};
