//! Which tables verify compares: the tables of publication `pgmesh` on either node
//! (optionally narrowed by `--table`), each with a definition both nodes agree on.
//! Reading is I/O ([`select`]); choosing and comparing are pure ([`choose`],
//! [`compare_defs`]).

use std::collections::BTreeSet;

use super::{query_err, Pair, VerifyError};
use crate::config::names;
use crate::table::local::LocalTable;

/// One table to compare; `def` is the reason it cannot be compared when it is `Err`.
#[derive(Debug)]
pub struct Entry {
    /// `schema.table`, quoted as in the ledger.
    pub name: String,
    pub def: Result<LocalTable, String>,
}

/// A published table, and the node whose publication lacks it (if one does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub schema: String,
    pub table: String,
    pub missing_on: Option<String>,
}

/// Whether `--table` value `filter` names `schema.table`: the quoted form the ledger
/// uses, `schema.table` as written, or the bare table name.
#[must_use]
pub fn matches(filter: &str, schema: &str, table: &str) -> bool {
    filter == names::qualified_table(schema, table)
        || filter == format!("{schema}.{table}")
        || filter == table
}

/// The tables to compare: every table published on either node, in name order, kept
/// by `filters` when there are any. A filter that names no published table is an error
/// (the message lists what is published).
pub fn choose(
    published: [&[(String, String)]; 2],
    nodes: [&str; 2],
    filters: &[String],
) -> Result<Vec<Chosen>, String> {
    let all: BTreeSet<&(String, String)> = published[0].iter().chain(published[1]).collect();
    for f in filters {
        if !all.iter().any(|(s, t)| matches(f, s, t)) {
            let known: Vec<String> = all
                .iter()
                .map(|(s, t)| names::qualified_table(s, t))
                .collect();
            return Err(format!(
                "table {f} is not replicated: it is in publication {} on neither node {} nor {} \
                 (replicated tables: {})",
                names::PUBLICATION,
                nodes[0],
                nodes[1],
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(s, t)| filters.is_empty() || filters.iter().any(|f| matches(f, s, t)))
        .map(|st| {
            let missing_on = (0..2)
                .find(|&i| !published[i].contains(st))
                .map(|i| nodes[i].to_string());
            Chosen {
                schema: st.0.clone(),
                table: st.1.clone(),
                missing_on,
            }
        })
        .collect())
}

/// Whether both nodes define the table alike: the same columns (by name, any order) with
/// the same types, and the same primary key. `Err` says what differs.
pub fn compare_defs(nodes: [&str; 2], defs: [&LocalTable; 2]) -> Result<(), String> {
    let [a, b] = defs;
    for (x, y, on, other) in [(a, b, nodes[0], nodes[1]), (b, a, nodes[1], nodes[0])] {
        for c in &x.columns {
            match y.columns.iter().find(|d| d.name == c.name) {
                None => {
                    return Err(format!(
                        "column {} exists on node {on} but not on node {other}",
                        c.name
                    ))
                }
                Some(d) if d.type_sql != c.type_sql => {
                    return Err(format!(
                        "column {} is {} on node {on} but {} on node {other}",
                        c.name, c.type_sql, d.type_sql
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let key = |t: &LocalTable| -> Vec<String> {
        t.pk.iter().map(|&i| t.columns[i].name.clone()).collect()
    };
    if key(a) != key(b) {
        let show = |k: Vec<String>| {
            if k.is_empty() {
                "no primary key".to_string()
            } else {
                format!("primary key ({})", k.join(", "))
            }
        };
        return Err(format!(
            "{} on node {} but {} on node {}",
            show(key(a)),
            nodes[0],
            show(key(b)),
            nodes[1]
        ));
    }
    Ok(())
}

const PUBLISHED_SQL: &str = "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
    WHERE pubname = $1 ORDER BY 1, 2";

/// The tables of publication `pgmesh` on one node.
async fn published(pair: &Pair, i: usize) -> Result<Vec<(String, String)>, VerifyError> {
    let n = &pair.nodes[i];
    let exists = n
        .client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&names::PUBLICATION],
        )
        .await
        .map_err(query_err(&n.name, "reading the publication"))?;
    if exists.is_none() {
        return Err(VerifyError::Query {
            node: n.name.clone(),
            what: "reading the publication".into(),
            message: format!(
                "publication {} does not exist: run `pgmesh setup` first",
                names::PUBLICATION
            ),
        });
    }
    Ok(n.client
        .query(PUBLISHED_SQL, &[&names::PUBLICATION])
        .await
        .map_err(query_err(&n.name, "listing the publication's tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Lists, chooses and loads the tables to compare.
pub async fn select(pair: &Pair, filters: &[String]) -> Result<Vec<Entry>, VerifyError> {
    let (a, b) = futures_util::future::try_join(published(pair, 0), published(pair, 1)).await?;
    let chosen = choose([&a, &b], pair.names(), filters).map_err(VerifyError::Usage)?;
    let mut out = Vec::with_capacity(chosen.len());
    for c in chosen {
        let name = names::qualified_table(&c.schema, &c.table);
        if let Some(node) = &c.missing_on {
            let def = Err(format!(
                "not in publication {} on node {node}: run `pgmesh setup`",
                names::PUBLICATION
            ));
            out.push(Entry { name, def });
            continue;
        }
        let load = |i: usize| LocalTable::load(&pair.nodes[i].client, &c.schema, &c.table);
        let (da, db) = futures_util::future::join(load(0), load(1)).await;
        let def = match (da, db) {
            (Ok(da), Ok(db)) => compare_defs(pair.names(), [&da, &db]).map(|()| da),
            (Err(e), _) => Err(format!("node {}: {e}", pair.names()[0])),
            (_, Err(e)) => Err(format!("node {}: {e}", pair.names()[1])),
        };
        out.push(Entry { name, def });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::local::LocalColumn;

    fn st(s: &str, t: &str) -> (String, String) {
        (s.to_string(), t.to_string())
    }

    #[test]
    fn filters_pick_tables_and_unknown_ones_are_named() {
        let a = vec![st("public", "t"), st("public", "u"), st("App", "t")];
        let b = vec![st("public", "t"), st("App", "t")];
        let all = choose([&a, &b], ["a", "b"], &[]).unwrap();
        assert_eq!(all.len(), 3);
        let u = all.iter().find(|c| c.table == "u").unwrap();
        assert_eq!(u.missing_on.as_deref(), Some("b"));

        let one = choose([&a, &b], ["a", "b"], &["public.t".into()]).unwrap();
        assert_eq!(one.len(), 1);
        let quoted = choose([&a, &b], ["a", "b"], &["\"App\".t".into()]).unwrap();
        assert_eq!(quoted[0].schema, "App");
        // A bare name matches in every schema.
        assert_eq!(
            choose([&a, &b], ["a", "b"], &["t".into()]).unwrap().len(),
            2
        );

        let err = choose([&a, &b], ["a", "b"], &["public.nope".into()]).unwrap_err();
        assert!(err.contains("table public.nope is not replicated"), "{err}");
        assert!(err.contains("\"App\".t, public.t, public.u"), "{err}");
    }

    fn def(cols: &[(&str, &str)], pk: Vec<usize>) -> LocalTable {
        LocalTable {
            name: "public.t".into(),
            schema: "public".into(),
            relname: "t".into(),
            columns: cols
                .iter()
                .map(|(n, t)| LocalColumn {
                    name: (*n).into(),
                    quoted: (*n).into(),
                    type_sql: (*t).into(),
                })
                .collect(),
            pk,
            uniques: vec![],
        }
    }

    #[test]
    fn definitions_must_agree_in_any_column_order() {
        let a = def(&[("id", "bigint"), ("v", "text")], vec![0]);
        let b = def(&[("v", "text"), ("id", "bigint")], vec![1]);
        assert_eq!(compare_defs(["a", "b"], [&a, &b]), Ok(()));

        let typed = def(&[("id", "bigint"), ("v", "integer")], vec![0]);
        assert_eq!(
            compare_defs(["a", "b"], [&a, &typed]).unwrap_err(),
            "column v is text on node a but integer on node b"
        );
        let extra = def(&[("id", "bigint"), ("v", "text"), ("w", "text")], vec![0]);
        assert_eq!(
            compare_defs(["a", "b"], [&a, &extra]).unwrap_err(),
            "column w exists on node b but not on node a"
        );
        let nokey = def(&[("id", "bigint"), ("v", "text")], vec![]);
        assert_eq!(
            compare_defs(["a", "b"], [&a, &nokey]).unwrap_err(),
            "primary key (id) on node a but no primary key on node b"
        );
    }
}
