//! `pgmesh repair`: a fix for every difference verify confirmed.
//!
//! [`plan()`] reads each differing key's versions on both nodes and decides (pure,
//! [`plan::decide_key`] / [`plan::decide_copies`]); [`apply()`] writes each fix on the
//! node that lost ([`fix`] explains how, and why that way), each in its own transaction
//! with its ledger row.

pub mod fix;
pub mod plan;
pub mod versions;

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{Difference, Pair, VerifyError, VerifyReport};
use crate::apply::Origins;
use crate::table::local::LocalTable;
pub use fix::FixOutcome;
use plan::Action;
use versions::KeyVersion;

/// One difference and what repair does about it.
#[derive(Debug, Clone)]
pub struct PlannedFix {
    pub table: String,
    pub action: Action,
    /// Why this node's version wins (or why nothing is done).
    pub why: String,
    pub diff: Difference,
    pub def: Arc<LocalTable>,
    /// Both nodes' versions when planned (tables with a key).
    pub versions: Option<[KeyVersion; 2]>,
}

impl PlannedFix {
    /// `copy a → b`, `delete on a`, `add 2 copies on b`, `skip`.
    #[must_use]
    pub fn action_text(&self, nodes: [&str; 2]) -> String {
        let copies = |n: i64| {
            if n == 1 {
                "1 copy".to_string()
            } else {
                format!("{n} copies")
            }
        };
        match &self.action {
            Action::Copy { from, to } => format!("copy {} → {}", nodes[*from], nodes[*to]),
            Action::Delete { on, .. } => format!("delete on {}", nodes[*on]),
            Action::AddCopies { on, n, .. } => format!("add {} on {}", copies(*n), nodes[*on]),
            Action::DeleteCopies { on, n, .. } => {
                format!("delete {} on {}", copies(*n), nodes[*on])
            }
            Action::Skip { .. } => "skip".to_string(),
        }
    }

    /// The fix as JSON (with its outcome once applied).
    #[must_use]
    pub fn to_json(&self, nodes: [&str; 2], outcome: Option<&FixOutcome>) -> Value {
        let name = |i: Option<usize>| i.map(|i| nodes[i]);
        let mut v = json!({
            "table": self.table,
            "key": self.diff.key,
            "action": match self.action {
                Action::Copy { .. } => "copy",
                Action::Delete { .. } => "delete",
                Action::AddCopies { .. } => "add_copies",
                Action::DeleteCopies { .. } => "delete_copies",
                Action::Skip { .. } => "skip",
            },
            "winner": name(self.action.winner()),
            "on": name(self.action.target()),
            "why": self.why,
        });
        if let Action::AddCopies { n, .. } | Action::DeleteCopies { n, .. } = self.action {
            v["copies"] = json!(n);
        }
        if let Some(o) = outcome {
            v["outcome"] = serde_json::to_value(o).unwrap_or(Value::Null);
        }
        v
    }
}

/// Origins of both nodes (origin id → node name).
pub async fn origins(pair: &Pair) -> Result<[Origins; 2], VerifyError> {
    let (a, b) = futures_util::future::try_join(
        versions::origins(&pair.nodes[0].client, &pair.nodes[0].name),
        versions::origins(&pair.nodes[1].client, &pair.nodes[1].name),
    )
    .await?;
    Ok([a, b])
}

/// A fix for every difference of `report`; `prefer` is the index of the node whose
/// version wins (else last writer wins).
pub async fn plan(
    pair: &Pair,
    report: &VerifyReport,
    prefer: Option<usize>,
) -> Result<Vec<PlannedFix>, VerifyError> {
    let origins = origins(pair).await?;
    let nodes = pair.names();
    let mut out = Vec::new();
    for t in &report.tables {
        let Some(def) = &t.def else { continue };
        for d in &t.differences {
            if def.is_keyless() {
                let (action, why) = plan::decide_copies(nodes, d.counts, prefer);
                out.push(PlannedFix {
                    table: t.table.clone(),
                    action,
                    why,
                    diff: d.clone(),
                    def: def.clone(),
                    versions: None,
                });
                continue;
            }
            let read = |i: usize| {
                versions::read(
                    &pair.nodes[i].client,
                    &pair.nodes[i].name,
                    &origins[i],
                    def,
                    &d.key_values,
                    false,
                )
            };
            let (va, vb) = futures_util::future::try_join(read(0), read(1)).await?;
            if va.cols == vb.cols {
                // Made equal since verify confirmed it (a write on either node).
                continue;
            }
            let (action, why) = plan::decide_key(nodes, [&va.version, &vb.version], prefer);
            out.push(PlannedFix {
                table: t.table.clone(),
                action,
                why,
                diff: d.clone(),
                def: def.clone(),
                versions: Some([va, vb]),
            });
        }
    }
    Ok(out)
}

/// Writes every fix; one outcome per fix, in order. Fails only when a node's session
/// cannot be set up for repair.
pub async fn apply(pair: &Pair, fixes: &[PlannedFix]) -> Result<Vec<FixOutcome>, VerifyError> {
    let origins = origins(pair).await?;
    let mut prepared = [false; 2];
    let mut out = Vec::with_capacity(fixes.len());
    for f in fixes {
        if let Some(on) = f.action.target() {
            if !prepared[on] {
                // The winner of a fix on one node of two is always the other node.
                fix::prepare(&pair.nodes[on], &pair.nodes[1 - on].name).await?;
                prepared[on] = true;
            }
        }
        out.push(fix::apply(pair, &origins, f).await);
    }
    Ok(out)
}

/// The plan (and outcomes, once applied) for people: one line per fix.
#[must_use]
pub fn to_table(nodes: [&str; 2], fixes: &[PlannedFix], outcomes: Option<&[FixOutcome]>) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 4]> = fixes
        .iter()
        .map(|f| {
            [
                f.table.clone(),
                f.diff.display.clone(),
                f.action_text(nodes),
                f.why.clone(),
            ]
        })
        .collect();
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let w = [width(0), width(1), width(2)];
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
        if let Some(o) = outcomes.and_then(|o| o.get(i)) {
            let _ = match o {
                FixOutcome::Repaired => write!(out, "  → repaired"),
                FixOutcome::Skipped(why) if matches!(fixes[i].action, Action::Skip { .. }) => {
                    let _ = why;
                    write!(out, "  → skipped")
                }
                FixOutcome::Skipped(why) => write!(out, "  → skipped: {why}"),
                FixOutcome::Failed(why) => write!(out, "  → FAILED: {why}"),
            };
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::local::LocalColumn;
    use crate::verify::report::DiffKind;
    use std::collections::BTreeMap;

    fn fix(action: Action) -> PlannedFix {
        PlannedFix {
            table: "public.t".into(),
            action,
            why: "because".into(),
            diff: Difference {
                key: json!({"id": "5"}),
                kind: DiffKind::OnlyOn,
                only_on: Some("b".into()),
                columns: vec![],
                copies: None,
                rows: BTreeMap::new(),
                key_values: vec!["5".into()],
                values: [None, None],
                counts: [0, 1],
                row_text: None,
                display: "id=5".into(),
            },
            def: Arc::new(LocalTable {
                name: "public.t".into(),
                schema: "public".into(),
                relname: "t".into(),
                columns: vec![LocalColumn {
                    name: "id".into(),
                    quoted: "id".into(),
                    type_sql: "integer".into(),
                }],
                pk: vec![0],
                uniques: vec![],
            }),
            versions: None,
        }
    }

    #[test]
    fn plans_read_as_actions() {
        let fixes = vec![
            fix(Action::Copy { from: 1, to: 0 }),
            fix(Action::Delete { on: 1, winner: 0 }),
            fix(Action::AddCopies {
                on: 0,
                winner: 1,
                n: 2,
            }),
            fix(Action::Skip {
                reason: "no".into(),
            }),
        ];
        let outcomes = vec![
            FixOutcome::Repaired,
            FixOutcome::Skipped("the row changed".into()),
            FixOutcome::Failed("boom".into()),
            FixOutcome::Skipped("no".into()),
        ];
        let text = to_table(["a", "b"], &fixes, Some(&outcomes));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("id=5") && lines[0].contains("copy b → a"),
            "{text}"
        );
        assert!(lines[0].ends_with("because  → repaired"), "{text}");
        assert!(
            lines[1].contains("delete on b") && lines[1].ends_with("→ skipped: the row changed")
        );
        assert!(lines[2].contains("add 2 copies on a") && lines[2].ends_with("→ FAILED: boom"));
        assert!(lines[3].ends_with("→ skipped"), "{text}");
        let j = fixes[0].to_json(["a", "b"], Some(&outcomes[0]));
        assert_eq!(j["action"], "copy");
        assert_eq!(j["winner"], "b");
        assert_eq!(j["on"], "a");
        assert_eq!(j["outcome"]["result"], "repaired");
        let j = fixes[2].to_json(["a", "b"], Some(&outcomes[2]));
        assert_eq!(j["copies"], 2);
        assert_eq!(j["outcome"]["detail"], "boom");
    }
}
