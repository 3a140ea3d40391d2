//! How large a downstream transaction may grow, and for how long it waits for more.

use std::time::Duration;

/// Bounds of one downstream transaction (and of memory held for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Changes collected before they are written (also mid-transaction: a large upstream
    /// transaction is written in chunks of this size, never held whole).
    pub max_rows: usize,
    pub max_bytes: usize,
    /// How long a downstream transaction may stay open waiting for more upstream ones.
    pub max_delay: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 5000,
            max_bytes: 16 << 20,
            max_delay: Duration::from_millis(1),
        }
    }
}
