//! Transaction assembly: turning the decoded message stream into committed transactions.

pub mod spill;

pub use spill::SpillBuffer;
