//! `[apply] cpu_policy`: the sidecar's CPU scheduling policy (why: see
//! [`crate::sidecar::scheduling`]).

use std::fmt;

/// `[apply] cpu_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CpuPolicy {
    /// `SCHED_BATCH` while a direction is catching up, the normal policy otherwise (the
    /// default).
    #[default]
    Auto,
    /// `SCHED_BATCH` always.
    Batch,
    /// Whatever policy the process was started with, always.
    Normal,
}

impl CpuPolicy {
    /// Parses a config value: `auto`, `batch` or `normal`.
    pub fn parse(s: &str) -> Result<CpuPolicy, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(CpuPolicy::Auto),
            "batch" => Ok(CpuPolicy::Batch),
            "normal" => Ok(CpuPolicy::Normal),
            other => Err(format!(
                "\"{other}\" is not a policy: use \"auto\", \"batch\" or \"normal\""
            )),
        }
    }
}

impl fmt::Display for CpuPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuPolicy::Auto => "auto",
            CpuPolicy::Batch => "batch",
            CpuPolicy::Normal => "normal",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_print_back() {
        for p in [CpuPolicy::Auto, CpuPolicy::Batch, CpuPolicy::Normal] {
            assert_eq!(CpuPolicy::parse(&p.to_string()), Ok(p));
        }
        assert_eq!(CpuPolicy::parse(" Batch "), Ok(CpuPolicy::Batch));
        let e = CpuPolicy::parse("fifo").unwrap_err();
        assert!(e.contains("auto") && e.contains("normal"), "{e}");
    }
}
