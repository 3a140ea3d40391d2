//! `pgmesh conflicts` for people: one line per record (the full rows are in `--json`),
//! or counts by table and kind.

use super::read::{ConflictRow, SummaryRow};
use crate::text_table::{render, shorten};

/// `2026-11-25T20:01:02.123456Z` → `2026-11-25 20:01:02.123`.
fn short_ts(ts: &str) -> String {
    let t = ts.replace('T', " ");
    let t = t.trim_end_matches('Z');
    match t.find('.') {
        Some(dot) => t.chars().take(dot + 4).collect(),
        None => t.to_string(),
    }
}

fn side(ts: &Option<String>, origin: &Option<String>) -> String {
    let ts = ts.as_deref().map_or_else(|| "-".to_string(), short_ts);
    match origin.as_deref() {
        Some(o) if !o.is_empty() => format!("{ts} {o}"),
        _ => ts,
    }
}

/// One line per record, oldest first; `with_node` adds the NODE column.
#[must_use]
pub fn rows_table(rows: &[ConflictRow], with_node: bool) -> String {
    let mut headers = vec!["TIME"];
    if with_node {
        headers.push("NODE");
    }
    headers.extend([
        "KIND",
        "TABLE",
        "KEY",
        "WINNER",
        "RESOLUTION",
        "LOCAL (commit, origin)",
        "REMOTE (commit, origin)",
    ]);
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut l = vec![short_ts(&r.detected_at)];
            if with_node {
                l.push(r.node.clone());
            }
            l.extend([
                r.kind.clone(),
                r.table_name.clone(),
                shorten(&r.key.to_string(), 40),
                r.winner.clone(),
                r.resolution.clone(),
                side(&r.local_commit_ts, &r.local_origin),
                side(&r.remote_commit_ts, &r.remote_origin),
            ]);
            l
        })
        .collect();
    render(&headers, &lines)
}

/// Counts by node, table and kind, with a total line.
#[must_use]
pub fn summary_table(rows: &[SummaryRow]) -> String {
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                r.table_name.clone(),
                r.kind.clone(),
                r.count.to_string(),
                short_ts(&r.first),
                short_ts(&r.last),
            ]
        })
        .collect();
    let mut out = render(&["NODE", "TABLE", "KIND", "COUNT", "FIRST", "LAST"], &lines);
    let total: i64 = rows.iter().map(|r| r.count).sum();
    out.push_str(&format!("total: {total} conflict(s)\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows() {
        let r = ConflictRow {
            node: "a".into(),
            id: 1,
            detected_at: "2026-11-25T20:01:02.123456Z".into(),
            kind: "insert_exists".into(),
            table_name: "public.items".into(),
            key: serde_json::json!({"id": "100"}),
            local_row: None,
            remote_row: None,
            local_commit_ts: Some("2026-11-25T20:01:01.000001Z".into()),
            remote_commit_ts: Some("2026-11-25T20:01:01.500000Z".into()),
            local_origin: None,
            remote_origin: Some("b".into()),
            winner: "remote".into(),
            resolution: "applied_as_update".into(),
            remote_lsn: None,
        };
        let t = rows_table(std::slice::from_ref(&r), true);
        assert!(t.starts_with("TIME                     NODE  KIND"), "{t}");
        assert!(
            t.contains("2026-11-25 20:01:02.123  a     insert_exists  public.items  {\"id\":\"100\"}  remote  applied_as_update  2026-11-25 20:01:01.000  2026-11-25 20:01:01.500 b"),
            "{t}"
        );
        assert!(!rows_table(&[r], false).contains("NODE"));
        let s = summary_table(&[SummaryRow {
            node: "a".into(),
            table_name: "public.items".into(),
            kind: "insert_exists".into(),
            count: 2,
            first: "2026-11-25T20:01:02.123456Z".into(),
            last: "2026-11-25T20:01:03Z".into(),
        }]);
        assert!(s.contains("a     public.items  insert_exists  2      2026-11-25 20:01:02.123  2026-11-25 20:01:03"), "{s}");
        assert!(s.ends_with("total: 2 conflict(s)\n"));
    }
}
