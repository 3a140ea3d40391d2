//! `[guardrail]`: how much WAL a pgmesh slot on this node may hold back before the
//! sidecar warns, and what it does past the hard limit (see [`crate::guardrail`]).
//!
//! ```toml
//! [guardrail]               # optional, defaults shown
//! warn_retained = "1GB"     # log a warning, set the metric, show it in /readyz
//! limit_retained = "16GB"   # beyond this, act by `policy`
//! policy = "warn"           # "warn" | "drop_slot"
//! check_interval_s = 10
//! ```

use serde::Deserialize;
use std::time::Duration;

use super::ByteSize;

/// What the guardrail does when a slot retains more than `limit_retained`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardrailPolicy {
    /// Log an error and report the slot as over its limit; never touch it.
    Warn,
    /// Drop the slot when no walsender uses it, and record that the direction it fed needs
    /// a re-sync (the peer's sidecar then stops with that message).
    DropSlot,
}

impl GuardrailPolicy {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailPolicy::Warn => "warn",
            GuardrailPolicy::DropSlot => "drop_slot",
        }
    }
}

/// `[guardrail]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardrailConfig {
    pub warn_retained: ByteSize,
    pub limit_retained: ByteSize,
    pub policy: GuardrailPolicy,
    pub check_interval: Duration,
}

impl Default for GuardrailConfig {
    /// Safe: only warnings, the first at 1 GB of retained WAL.
    fn default() -> Self {
        GuardrailConfig {
            warn_retained: ByteSize(1 << 30),
            limit_retained: ByteSize(16 << 30),
            policy: GuardrailPolicy::Warn,
            check_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuardrail {
    warn_retained: Option<ByteSize>,
    limit_retained: Option<ByteSize>,
    policy: Option<String>,
    check_interval_s: Option<u64>,
}

impl RawGuardrail {
    /// Defaults filled in and checked; errors are `(key, message)`.
    pub(super) fn validate(self) -> Result<GuardrailConfig, (&'static str, String)> {
        let d = GuardrailConfig::default();
        let warn_retained = self.warn_retained.unwrap_or(d.warn_retained);
        let limit_retained = self.limit_retained.unwrap_or(d.limit_retained);
        if warn_retained.0 == 0 {
            return Err(("guardrail.warn_retained", "must be more than 0".into()));
        }
        if limit_retained.0 < warn_retained.0 {
            return Err((
                "guardrail.limit_retained",
                format!(
                    "{} bytes is below warn_retained ({} bytes); the limit must be at least the warning threshold",
                    limit_retained.0, warn_retained.0
                ),
            ));
        }
        let policy = match self.policy.as_deref() {
            None | Some("warn") => GuardrailPolicy::Warn,
            Some("drop_slot") => GuardrailPolicy::DropSlot,
            Some(other) => {
                return Err((
                    "guardrail.policy",
                    format!("unknown policy {other:?}; use \"warn\" or \"drop_slot\""),
                ))
            }
        };
        let check_interval = match self.check_interval_s {
            None => d.check_interval,
            Some(0) => {
                return Err((
                    "guardrail.check_interval_s",
                    "must be at least 1 (seconds)".into(),
                ))
            }
            Some(s) => Duration::from_secs(s),
        };
        Ok(GuardrailConfig {
            warn_retained,
            limit_retained,
            policy,
            check_interval,
        })
    }
}
