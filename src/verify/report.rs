//! Verify's result and its two renderings: a table for people, JSON for scripts.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::consistent::{Confirmed, Item, Outcome, State};
use crate::table::local::LocalTable;

/// How a difference shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// The key has a row on one node only.
    OnlyOn,
    /// Both nodes have the key with different values.
    ValuesDiffer,
    /// (No primary key.) The row content has a different number of copies.
    CopiesDiffer,
}

/// One confirmed difference.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// `{"column": "text value", …}`: the key (the whole row for a table without one).
    pub key: Value,
    pub kind: DiffKind,
    /// The node that has the row ([`DiffKind::OnlyOn`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_on: Option<String>,
    /// Columns whose values differ ([`DiffKind::ValuesDiffer`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Copies per node ([`DiffKind::CopiesDiffer`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<BTreeMap<String, i64>>,
    /// Each node's row, `null` where it has none.
    pub rows: BTreeMap<String, Option<Value>>,
    /// The key's values (text, key order); empty for a table without a key.
    #[serde(skip)]
    pub key_values: Vec<String>,
    /// Each node's column texts (table order), `None` where it has no row; for a
    /// table without a key, the row on both sides.
    #[serde(skip)]
    pub values: [Option<Vec<Option<String>>>; 2],
    /// Copies per node (a table without a key), else 0/1.
    #[serde(skip)]
    pub counts: [i64; 2],
    /// The row's text (a table without a key).
    #[serde(skip)]
    pub row_text: Option<String>,
    /// How the key reads in human output (key columns in key order).
    #[serde(skip)]
    pub display: String,
}

/// How a table came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    Identical,
    Differs,
    /// Some keys kept changing until the wait ran out.
    Unsettled,
    /// A direction never reached the barrier: candidates could not be checked.
    Unconfirmed,
    /// Not compared (`reason` says why).
    Skipped,
}

/// One table's result.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    /// Primary-key columns; empty for a table without one (compared as a multiset).
    pub primary_key: Vec<String>,
    pub status: TableStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rows read on each node.
    pub rows: BTreeMap<String, u64>,
    /// Top-level key ranges compared (hash buckets for a table without a key).
    pub ranges: u64,
    pub differences: Vec<Difference>,
    /// Keys (rows) that kept changing until the wait ran out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsettled: Vec<Value>,
    /// The same, as human output shows them.
    #[serde(skip)]
    pub unsettled_display: Vec<String>,
    /// Candidates not re-checked because a direction was behind.
    #[serde(skip_serializing_if = "is_zero")]
    pub unconfirmed: usize,
    /// The definition compared (for repair).
    #[serde(skip)]
    pub def: Option<Arc<LocalTable>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TableReport {
    #[must_use]
    pub fn skipped(table: &str, nodes: [&str; 2], reason: String) -> TableReport {
        TableReport {
            table: table.to_string(),
            primary_key: Vec::new(),
            status: TableStatus::Skipped,
            reason: Some(reason),
            rows: nodes.iter().map(|n| (n.to_string(), 0)).collect(),
            ranges: 0,
            differences: Vec::new(),
            unsettled: Vec::new(),
            unsettled_display: Vec::new(),
            unconfirmed: 0,
            def: None,
        }
    }

    #[must_use]
    pub fn compared(
        table: &str,
        nodes: [&str; 2],
        def: &LocalTable,
        rows: [u64; 2],
        ranges: u64,
    ) -> TableReport {
        TableReport {
            table: table.to_string(),
            primary_key: def
                .pk
                .iter()
                .map(|&i| def.columns[i].name.clone())
                .collect(),
            status: TableStatus::Identical,
            reason: None,
            rows: nodes.iter().map(|n| n.to_string()).zip(rows).collect(),
            ranges,
            differences: Vec::new(),
            unsettled: Vec::new(),
            unsettled_display: Vec::new(),
            unconfirmed: 0,
            def: None,
        }
    }

    fn settle_status(&mut self) {
        if self.status == TableStatus::Skipped {
            return;
        }
        self.status = if !self.differences.is_empty() {
            TableStatus::Differs
        } else if self.unconfirmed > 0 {
            TableStatus::Unconfirmed
        } else if !self.unsettled.is_empty() {
            TableStatus::Unsettled
        } else {
            TableStatus::Identical
        };
    }
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Every table compared and identical, nothing skipped, a consistent point reached.
    pub ok: bool,
    pub nodes: [String; 2],
    /// The marks of the barrier the reported differences are consistent with (absent
    /// when no key needed re-checking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_at: Option<BTreeMap<String, String>>,
    /// Why no consistent point was reached (a direction is behind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub tables: Vec<TableReport>,
    pub differences: usize,
}

/// `{"col": "value", …}` of the given columns of a row.
fn object(def: &LocalTable, cols: &[usize], values: &[Option<String>]) -> Value {
    let mut m = serde_json::Map::new();
    for &c in cols {
        let v = values
            .get(c)
            .cloned()
            .flatten()
            .map_or(Value::Null, Value::String);
        m.insert(def.columns[c].name.clone(), v);
    }
    Value::Object(m)
}

fn all_columns(def: &LocalTable) -> Vec<usize> {
    (0..def.columns.len()).collect()
}

/// The key of a candidate as JSON.
fn item_key(def: &LocalTable, item: &Item) -> Value {
    match item {
        Item::Key(k) => {
            let mut m = serde_json::Map::new();
            for (&c, v) in def.pk.iter().zip(k) {
                m.insert(def.columns[c].name.clone(), Value::String(v.clone()));
            }
            Value::Object(m)
        }
        Item::Row(r) => object(def, &all_columns(def), &r.cols),
    }
}

/// `id=5` / `a=1, b=x` in key order; a row without a key as its values in parentheses,
/// in column order.
fn item_display(def: &LocalTable, item: &Item) -> String {
    let text = |v: Option<&String>| v.map_or_else(|| "NULL".to_string(), Clone::clone);
    match item {
        Item::Key(k) => def
            .pk
            .iter()
            .zip(k)
            .map(|(&c, v)| format!("{}={v}", def.columns[c].name))
            .collect::<Vec<_>>()
            .join(", "),
        Item::Row(r) => format!(
            "({})",
            r.cols
                .iter()
                .map(|v| text(v.as_ref()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl Difference {
    /// The difference a confirmed candidate shows.
    #[must_use]
    pub fn from_confirmed(def: &LocalTable, nodes: [&str; 2], c: &Confirmed) -> Difference {
        let key = item_key(def, &c.item);
        let all = all_columns(def);
        let values: [Option<Vec<Option<String>>>; 2] = [0, 1].map(|i| match &c.states[i] {
            State::Row { cols, .. } => Some(cols.clone()),
            _ => None,
        });
        let mut d = Difference {
            key,
            kind: DiffKind::ValuesDiffer,
            only_on: None,
            columns: Vec::new(),
            copies: None,
            rows: BTreeMap::new(),
            key_values: Vec::new(),
            values: [None, None],
            counts: [0, 0],
            row_text: None,
            display: item_display(def, &c.item),
        };
        match &c.item {
            Item::Key(k) => {
                d.key_values = k.clone();
                for (i, n) in nodes.iter().enumerate() {
                    d.rows.insert(
                        n.to_string(),
                        values[i].as_ref().map(|v| object(def, &all, v)),
                    );
                }
                d.counts = [0, 1].map(|i| i64::from(values[i].is_some()));
                match (&values[0], &values[1]) {
                    (Some(a), Some(b)) => {
                        d.columns = (0..def.columns.len())
                            .filter(|&i| a.get(i) != b.get(i))
                            .map(|i| def.columns[i].name.clone())
                            .collect();
                    }
                    (Some(_), None) => {
                        d.kind = DiffKind::OnlyOn;
                        d.only_on = Some(nodes[0].to_string());
                    }
                    _ => {
                        d.kind = DiffKind::OnlyOn;
                        d.only_on = Some(nodes[1].to_string());
                    }
                }
                d.values = values;
            }
            Item::Row(r) => {
                d.kind = DiffKind::CopiesDiffer;
                let counts = [0, 1].map(|i| match &c.states[i] {
                    State::Copies { count, .. } => *count,
                    _ => 0,
                });
                d.counts = counts;
                d.copies = Some(nodes.iter().map(|n| n.to_string()).zip(counts).collect());
                for (i, n) in nodes.iter().enumerate() {
                    d.rows.insert(
                        n.to_string(),
                        (counts[i] > 0).then(|| object(def, &all, &r.cols)),
                    );
                }
                d.values = [Some(r.cols.clone()), Some(r.cols.clone())];
                d.row_text = Some(r.text.clone());
            }
        }
        d
    }
}

impl VerifyReport {
    /// Puts the re-check's outcome into the table reports.
    #[must_use]
    pub fn new(nodes: [&str; 2], mut tables: Vec<TableReport>, outcome: Outcome) -> VerifyReport {
        for (idx, t) in outcome.tables {
            let Some(report) = tables.get_mut(idx) else {
                continue;
            };
            let Some(def) = report.def.clone() else {
                continue;
            };
            report.differences = t
                .differences
                .iter()
                .map(|c| Difference::from_confirmed(&def, nodes, c))
                .collect();
            report.unsettled = t.unsettled.iter().map(|i| item_key(&def, i)).collect();
            report.unsettled_display = t.unsettled.iter().map(|i| item_display(&def, i)).collect();
            report.unconfirmed = t.unconfirmed;
        }
        for t in &mut tables {
            t.settle_status();
        }
        let differences = tables.iter().map(|t| t.differences.len()).sum();
        let ok =
            outcome.behind.is_none() && tables.iter().all(|t| t.status == TableStatus::Identical);
        VerifyReport {
            ok,
            nodes: nodes.map(str::to_string),
            consistent_at: outcome.marks.map(|m| {
                nodes
                    .iter()
                    .map(|n| n.to_string())
                    .zip(m.iter().map(ToString::to_string))
                    .collect()
            }),
            error: outcome.behind,
            tables,
            differences,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::local::LocalColumn;
    use crate::verify::consistent::TableOutcome;
    use crate::verify::keyless::RowCandidate;

    fn def(pk: Vec<usize>) -> LocalTable {
        let col = |n: &str| LocalColumn {
            name: n.into(),
            quoted: n.into(),
            type_sql: "text".into(),
        };
        LocalTable {
            name: "public.t".into(),
            schema: "public".into(),
            relname: "t".into(),
            columns: vec![col("id"), col("v"), col("w")],
            pk,
            uniques: vec![],
        }
    }

    fn row(vals: &[&str]) -> State {
        State::Row {
            cols: vals.iter().map(|v| Some(v.to_string())).collect(),
            xmin: "1".into(),
        }
    }

    fn report(outcome: Outcome, pk: Vec<usize>) -> VerifyReport {
        let d = def(pk);
        let mut t = TableReport::compared("public.t", ["a", "b"], &d, [3, 3], 1);
        t.def = Some(Arc::new(d));
        VerifyReport::new(["a", "b"], vec![t], outcome)
    }

    #[test]
    fn differences_name_the_node_or_the_columns() {
        let mut o = Outcome {
            marks: Some([crate::Lsn(0x100), crate::Lsn(0x200)]),
            ..Outcome::default()
        };
        let key = |v: &str| Item::Key(vec![v.to_string()]);
        o.tables.insert(
            0,
            TableOutcome {
                differences: vec![
                    Confirmed {
                        item: key("1"),
                        states: [row(&["1", "x", "y"]), State::Absent],
                    },
                    Confirmed {
                        item: key("2"),
                        states: [row(&["2", "x", "y"]), row(&["2", "x", "z"])],
                    },
                ],
                ..TableOutcome::default()
            },
        );
        let r = report(o, vec![0]);
        assert!(!r.ok);
        assert_eq!(r.differences, 2);
        let t = &r.tables[0];
        assert_eq!(t.status, TableStatus::Differs);
        assert_eq!(t.differences[0].kind, DiffKind::OnlyOn);
        assert_eq!(t.differences[0].only_on.as_deref(), Some("a"));
        assert_eq!(t.differences[1].columns, vec!["w".to_string()]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["tables"][0]["differences"][0]["key"]["id"], "1");
        assert_eq!(
            json["tables"][0]["differences"][0]["rows"]["b"],
            Value::Null
        );
        assert_eq!(json["tables"][0]["differences"][1]["rows"]["b"]["w"], "z");
        assert_eq!(json["consistent_at"]["b"], "0/200");
        let text = r.to_table();
        assert!(text.contains("  id=1  only on a\n"), "{text}");
        assert!(text.contains("public.t:\n  id=1  only"), "{text}");
        assert!(text.contains("  id=2  values differ: w\n"), "{text}");
        assert!(text.contains("consistent at: a 0/100, b 0/200"), "{text}");
        assert!(
            text.contains("verify: 2 differences in 1 of 1 tables"),
            "{text}"
        );
    }

    #[test]
    fn rows_without_a_key_report_their_copies() {
        let mut o = Outcome::default();
        let cand = RowCandidate {
            text: "(1,x,y)".into(),
            cols: vec![Some("1".into()), Some("x".into()), None],
            counts: [2, 1],
        };
        o.tables.insert(
            0,
            TableOutcome {
                differences: vec![Confirmed {
                    item: Item::Row(cand),
                    states: [
                        State::Copies {
                            count: 2,
                            xmins: "1,2".into(),
                        },
                        State::Copies {
                            count: 1,
                            xmins: "3".into(),
                        },
                    ],
                }],
                ..TableOutcome::default()
            },
        );
        let r = report(o, vec![]);
        let d = &r.tables[0].differences[0];
        assert_eq!(d.kind, DiffKind::CopiesDiffer);
        assert_eq!(d.counts, [2, 1]);
        assert!(
            r.to_table()
                .contains("  (1, x, NULL)  2 copies on a, 1 on b"),
            "{}",
            r.to_table()
        );
    }

    #[test]
    fn identical_and_behind() {
        let r = report(Outcome::default(), vec![0]);
        assert!(r.ok);
        assert!(r.to_table().contains("identical"));
        let mut o = Outcome {
            behind: Some("could not reach a consistent point: direction a → b is behind".into()),
            ..Outcome::default()
        };
        o.tables.insert(
            0,
            TableOutcome {
                unconfirmed: 3,
                ..TableOutcome::default()
            },
        );
        let r = report(o, vec![0]);
        assert!(!r.ok);
        assert_eq!(r.tables[0].status, TableStatus::Unconfirmed);
        assert!(r
            .to_table()
            .contains("error: could not reach a consistent point"));
    }
}
