//! Table-driven tests of the copy plan.

use super::*;
use crate::config::{Config, Env};
use crate::setup::catalog::TableFacts;
use crate::setup::finding::Severity;

fn cfg() -> Config {
    let text = "[nodes.a]\ndsn=\"host=h\"\n[nodes.b]\ndsn=\"host=h\"\n[replication]\ntables=[\"public.*\"]\n";
    Config::parse(text, "t.toml", &Env::default()).unwrap()
}

fn node(name: &str, rows: Option<i64>, published: bool) -> NodeFacts {
    let mut f = NodeFacts {
        node: name.into(),
        tables: vec![TableFacts {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: 'd',
            primary_key: vec!["id".into()],
            columns: vec![("id".into(), "integer".into())],
        }],
        ..NodeFacts::default()
    };
    if let Some(n) = rows {
        f.row_counts.insert("public.t".into(), n);
    }
    if published {
        f.published.insert("public.t".into());
    }
    f
}

fn pairs(jobs: &[CopyJob]) -> Vec<String> {
    jobs.iter()
        .map(|j| {
            format!(
                "{}->{} {}{}",
                j.source,
                j.target,
                j.mode.as_str(),
                if j.resume { " resume" } else { "" }
            )
        })
        .collect()
}

#[test]
fn a_new_table_with_rows_on_one_node_is_copied_into_the_other() {
    let (jobs, f) = plan(
        &cfg(),
        &[node("a", None, false), node("b", Some(5), false)],
        &ExistingData::Refuse,
    );
    assert!(f.is_empty());
    assert_eq!(pairs(&jobs), ["b->a copy"]);
}

#[test]
fn a_replicated_table_is_never_copied_again() {
    let (jobs, f) = plan(
        &cfg(),
        &[node("a", Some(3), true), node("b", Some(5), true)],
        &ExistingData::Refuse,
    );
    assert!(jobs.is_empty() && f.is_empty());
}

#[test]
fn a_table_published_on_one_node_only_is_still_new() {
    let (jobs, _) = plan(
        &cfg(),
        &[node("a", Some(3), true), node("b", None, false)],
        &ExistingData::Refuse,
    );
    assert_eq!(pairs(&jobs), ["a->b copy"]);
}

#[test]
fn empty_everywhere_needs_no_copy() {
    let (jobs, f) = plan(
        &cfg(),
        &[node("a", None, false), node("b", None, false)],
        &ExistingData::Refuse,
    );
    assert!(jobs.is_empty() && f.is_empty());
}

#[test]
fn rows_on_both_nodes_are_refused_with_the_ways_out() {
    let (jobs, f) = plan(
        &cfg(),
        &[node("a", Some(2), false), node("b", Some(1_000_000), false)],
        &ExistingData::Refuse,
    );
    assert!(jobs.is_empty());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Error);
    assert!(
        f[0].what.contains("2 rows on a, 1000000+ rows on b"),
        "{}",
        f[0].what
    );
    assert!(f[0].fix.contains("--merge-existing") && f[0].fix.contains("--replace-existing-from"));
}

#[test]
fn merge_copies_both_ways_and_replace_from_one_node() {
    let facts = [node("a", Some(2), false), node("b", Some(1), false)];
    let (jobs, _) = plan(&cfg(), &facts, &ExistingData::Merge);
    assert_eq!(pairs(&jobs), ["a->b merge", "b->a merge"]);
    let (jobs, _) = plan(&cfg(), &facts, &ExistingData::ReplaceFrom("b".into()));
    assert_eq!(pairs(&jobs), ["b->a replace"]);
    let (jobs, f) = plan(&cfg(), &facts, &ExistingData::ReplaceFrom("zz".into()));
    assert!(jobs.is_empty());
    assert!(f[0].what.contains("'zz'"), "{}", f[0].what);
}

#[test]
fn an_unfinished_copy_resumes_even_when_the_table_is_published() {
    let mut b = node("b", Some(7), true);
    b.unfinished_syncs
        .insert("public.t".into(), ("a".into(), "copy".into()));
    let (jobs, f) = plan(
        &cfg(),
        &[node("a", Some(9), true), b],
        &ExistingData::Refuse,
    );
    assert!(f.is_empty());
    assert_eq!(pairs(&jobs), ["a->b copy resume"]);
}
