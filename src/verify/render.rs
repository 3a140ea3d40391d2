//! Verify's result for people: one line per table, the differences, a summary.

use std::fmt::Write as _;

use super::report::{DiffKind, TableReport, TableStatus, VerifyReport};

/// Human output lists at most this many differences per table (JSON lists all).
const SHOWN_PER_TABLE: usize = 100;

impl VerifyReport {
    /// The human rendering: one line per table, then the differences, then a summary.
    #[must_use]
    pub fn to_table(&self) -> String {
        let [a, b] = &self.nodes;
        let mut out = String::new();
        let heads = [
            "TABLE".to_string(),
            "KEY".to_string(),
            format!("ROWS {a}"),
            format!("ROWS {b}"),
            "RANGES".to_string(),
            "RESULT".to_string(),
        ];
        let mut lines: Vec<[String; 6]> = vec![heads];
        for t in &self.tables {
            let key = if t.status == TableStatus::Skipped {
                "-".to_string()
            } else if t.primary_key.is_empty() {
                "(none)".to_string()
            } else {
                t.primary_key.join(",")
            };
            let (ra, rb, ranges) = if t.status == TableStatus::Skipped {
                ("-".into(), "-".into(), "-".into())
            } else {
                (
                    t.rows.get(a).copied().unwrap_or(0).to_string(),
                    t.rows.get(b).copied().unwrap_or(0).to_string(),
                    t.ranges.to_string(),
                )
            };
            lines.push([t.table.clone(), key, ra, rb, ranges, table_result(t)]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for l in &lines {
            for (c, w) in widths.iter().enumerate() {
                let _ = write!(out, "{:<w$}  ", l[c], w = *w);
            }
            let _ = writeln!(out, "{}", l[5]);
        }
        for t in &self.tables {
            if t.differences.is_empty() && t.unsettled.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{}:", t.table);
            let shown = t.differences.iter().take(SHOWN_PER_TABLE);
            let kw = shown
                .clone()
                .map(|d| d.display.chars().count())
                .max()
                .unwrap_or(0);
            for d in shown {
                let what = match d.kind {
                    DiffKind::OnlyOn => {
                        format!("only on {}", d.only_on.as_deref().unwrap_or("?"))
                    }
                    DiffKind::ValuesDiffer => format!("values differ: {}", d.columns.join(", ")),
                    DiffKind::CopiesDiffer => {
                        format!("{} copies on {a}, {} on {b}", d.counts[0], d.counts[1])
                    }
                };
                let _ = writeln!(out, "  {:<kw$}  {what}", d.display);
            }
            if t.differences.len() > SHOWN_PER_TABLE {
                let _ = writeln!(
                    out,
                    "  … and {} more (--json lists every one)",
                    t.differences.len() - SHOWN_PER_TABLE
                );
            }
            for k in t.unsettled_display.iter().take(SHOWN_PER_TABLE) {
                let _ = writeln!(out, "  {k}  still changing: not compared (re-run verify)");
            }
        }
        out.push('\n');
        if let Some(m) = &self.consistent_at {
            let marks: Vec<String> = m.iter().map(|(n, l)| format!("{n} {l}")).collect();
            let _ = writeln!(
                out,
                "consistent at: {} (each node had applied the other's changes up to its mark)",
                marks.join(", ")
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "error: {e}");
        }
        let differing = self
            .tables
            .iter()
            .filter(|t| !t.differences.is_empty())
            .count();
        let skipped = self
            .tables
            .iter()
            .filter(|t| t.status == TableStatus::Skipped)
            .count();
        let _ = write!(
            out,
            "verify: {} in {} of {} tables",
            plural(self.differences, "difference"),
            differing,
            self.tables.len()
        );
        if skipped > 0 {
            let _ = write!(out, " ({skipped} skipped)");
        }
        out.push('\n');
        out
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn table_result(t: &TableReport) -> String {
    match t.status {
        TableStatus::Identical => "identical".into(),
        TableStatus::Skipped => format!("skipped: {}", t.reason.as_deref().unwrap_or("")),
        TableStatus::Differs => {
            let what = if t.primary_key.is_empty() {
                "differing row"
            } else {
                "differing key"
            };
            let mut s = plural(t.differences.len(), what);
            if !t.unsettled.is_empty() {
                s.push_str(&format!(", {} still changing", t.unsettled.len()));
            }
            s
        }
        TableStatus::Unsettled => format!("{} still changing", t.unsettled.len()),
        TableStatus::Unconfirmed => format!("{} not re-checked", t.unconfirmed),
    }
}
