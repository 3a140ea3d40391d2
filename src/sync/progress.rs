//! Progress of a copy on stderr: rows, bytes, rate and ETA, at most once a second (one
//! line redrawn on a terminal, one line per update otherwise, e.g. in CI logs).

use crate::config::human_bytes;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    label: String,
    /// Planner estimates (`pg_class.reltuples`), 0 when unknown.
    expected_rows: u64,
    rows: u64,
    bytes: u64,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
    quiet: bool,
}

impl Progress {
    #[must_use]
    pub fn new(label: String, expected_rows: u64, quiet: bool) -> Progress {
        Progress {
            label,
            expected_rows,
            rows: 0,
            bytes: 0,
            started: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    pub fn advance(&mut self, rows: u64, bytes: u64) {
        self.rows += rows;
        self.bytes += bytes;
        if self.last.is_none_or(|t| t.elapsed() >= EVERY) {
            self.last = Some(Instant::now());
            self.print(false);
        }
    }

    /// The last line, with the totals.
    pub fn finish(&mut self) {
        self.print(true);
    }

    fn print(&self, last: bool) {
        if self.quiet {
            return;
        }
        let line = render(
            &self.label,
            self.rows,
            self.bytes,
            self.expected_rows,
            self.started.elapsed(),
            last,
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

/// One progress line (pure, for tests).
#[must_use]
pub fn render(
    label: &str,
    rows: u64,
    bytes: u64,
    expected: u64,
    elapsed: Duration,
    done: bool,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = rows as f64 / secs;
    let mut s = format!(
        "{label}: {rows} rows, {}, {:.0} rows/s",
        human_bytes(bytes),
        rate
    );
    if done {
        s.push_str(&format!(", done in {:.1}s", elapsed.as_secs_f64()));
    } else if expected > rows && rate > 0.0 {
        let pct = rows as f64 * 100.0 / expected as f64;
        let eta = (expected - rows) as f64 / rate;
        s.push_str(&format!(" ({pct:.0}% of ~{expected}, ETA {eta:.0}s)"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_rate_share_and_eta_until_done() {
        let l = render(
            "public.t a→b",
            50_000,
            5 << 20,
            100_000,
            Duration::from_secs(5),
            false,
        );
        assert_eq!(
            l,
            "public.t a→b: 50000 rows, 5.0 MB, 10000 rows/s (50% of ~100000, ETA 5s)"
        );
        let l = render("t", 10, 100, 0, Duration::from_secs(2), true);
        assert_eq!(l, "t: 10 rows, 100 B, 5 rows/s, done in 2.0s");
    }
}
