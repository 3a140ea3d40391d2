//! Preflight findings and their two renderings: a table for people, JSON for scripts.

use serde::Serialize;

/// How bad a finding is: errors stop setup (exit 1); warnings are reported only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One thing preflight found on one node, with the exact command that fixes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub node: String,
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

impl Finding {
    pub fn error(node: &str, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            node: node.to_string(),
            severity: Severity::Error,
            what: what.into(),
            fix: fix.into(),
        }
    }

    pub fn warning(node: &str, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Warning,
            ..Finding::error(node, what, fix)
        }
    }
}

/// Number of errors (warnings do not count).
#[must_use]
pub fn error_count(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
}

/// `{"ok": bool, "errors": n, "warnings": n, "findings": [...]}`.
#[must_use]
pub fn to_json(findings: &[Finding]) -> serde_json::Value {
    let errors = error_count(findings);
    serde_json::json!({
        "ok": errors == 0,
        "errors": errors,
        "warnings": findings.len() - errors,
        "findings": findings,
    })
}

/// An aligned table: NODE, SEVERITY, WHAT, FIX (multi-line fixes continue in the FIX
/// column), then a summary line.
#[must_use]
pub fn to_table(findings: &[Finding]) -> String {
    let errors = error_count(findings);
    if findings.is_empty() {
        return "preflight: all checks passed\n".to_string();
    }
    let sev = |f: &Finding| match f.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let wn = findings
        .iter()
        .map(|f| f.node.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let ws = 8;
    let ww = findings
        .iter()
        .map(|f| f.what.len())
        .max()
        .unwrap_or(0)
        .clamp(4, 70);
    let mut out = format!("{:wn$}  {:ws$}  {:ww$}  FIX\n", "NODE", "SEVERITY", "WHAT");
    for f in findings {
        let what = wrap(&f.what, ww);
        let fix: Vec<&str> = f.fix.lines().collect();
        for i in 0..what.len().max(fix.len()) {
            let (node, s) = if i == 0 {
                (f.node.as_str(), sev(f))
            } else {
                ("", "")
            };
            let w = what.get(i).map_or("", String::as_str);
            let x = fix.get(i).copied().unwrap_or("");
            out.push_str(format!("{node:wn$}  {s:ws$}  {w:ww$}  {x}").trim_end());
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "preflight: {errors} error(s), {} warning(s)\n",
        findings.len() - errors
    ));
    out
}

/// Greedy word wrap to `width` columns.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in s.split_whitespace() {
        let cur = lines.last_mut().expect("non-empty");
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table_and_json() {
        let f = vec![
            Finding::error(
                "b",
                "wal_level is replica",
                "ALTER SYSTEM SET wal_level = logical;\nthen restart",
            ),
            Finding::warning(
                "a",
                "sequence may collide",
                "ALTER SEQUENCE s INCREMENT BY 2;",
            ),
        ];
        let t = to_table(&f);
        assert!(t.starts_with("NODE"), "{t}");
        assert!(
            t.contains(
                "b     error     wal_level is replica  ALTER SYSTEM SET wal_level = logical;"
            ),
            "{t}"
        );
        assert!(t.contains("then restart"), "{t}");
        assert!(t.ends_with("preflight: 1 error(s), 1 warning(s)\n"), "{t}");
        let j = to_json(&f);
        assert_eq!(j["ok"], false);
        assert_eq!(j["findings"][0]["severity"], "error");
        assert_eq!(j["findings"][1]["node"], "a");
        assert_eq!(to_json(&[])["ok"], true);
        assert_eq!(error_count(&f[1..]), 0);
    }

    #[test]
    fn wraps_long_text() {
        let lines = wrap("aaa bbb ccc ddd", 7);
        assert_eq!(lines, ["aaa bbb", "ccc ddd"]);
    }
}
