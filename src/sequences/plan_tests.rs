use super::*;
use crate::config::{Config, Env};
use crate::sequences::facts::ColumnMax;

fn repl() -> ReplicationConfig {
    let text = "[nodes.a]\ndsn=\"host=h\"\n[nodes.b]\ndsn=\"host=h\"\n[replication]\ntables=[\"public.*\"]\nexclude=[\"public.local_only\"]\n";
    Config::parse(text, "t.toml", &Env::default())
        .unwrap()
        .replication
}

fn col(table: &str, max: Option<(i64, [Option<i64>; 2])>) -> SequenceColumn {
    SequenceColumn {
        schema: "public".into(),
        table: table.into(),
        column: "id".into(),
        identity: false,
        type_name: "integer".into(),
        type_max: Some(i64::from(i32::MAX)),
        max: max.map(|(all, r)| ColumnMax {
            all: Some(all),
            by_residue: r.to_vec(),
        }),
    }
}

fn seq(
    name: &str,
    increment: i64,
    last: i64,
    called: bool,
    cols: Vec<SequenceColumn>,
) -> SequenceFacts {
    SequenceFacts {
        name: format!("public.{name}"),
        data_type: "integer".into(),
        increment,
        min_value: 1,
        max_value: i64::from(i32::MAX),
        cycle: false,
        last_value: last,
        is_called: called,
        columns: cols,
    }
}

fn nodes(a: Vec<SequenceFacts>, b: Vec<SequenceFacts>) -> Vec<(String, Vec<SequenceFacts>)> {
    vec![("a".into(), a), ("b".into(), b)]
}

#[test]
fn defaults_on_both_nodes_are_unsafe_and_restart_above_everything_used() {
    // a handed out 1..41, b 1..40; rows up to 41 exist.
    let p = plan(
        &repl(),
        &nodes(
            vec![seq(
                "t_id_seq",
                1,
                41,
                true,
                vec![col("t", Some((41, [Some(40), Some(41)])))],
            )],
            vec![seq(
                "t_id_seq",
                1,
                40,
                true,
                vec![col("t", Some((41, [Some(40), Some(41)])))],
            )],
        ),
    );
    assert_eq!(p.groups.len(), 1);
    let g = &p.groups[0];
    assert_eq!(g.columns, ["public.t.id"]);
    assert_eq!(g.verdict(), Verdict::Fixable);
    assert!(matches!(&g.entries[0].status, Status::Unsafe(r) if r.contains("multiple of 2")));
    let sql: Vec<&str> = g
        .entries
        .iter()
        .map(|e| e.change.as_ref().unwrap().sql.as_str())
        .collect();
    assert_eq!(
        sql,
        [
            "ALTER SEQUENCE public.t_id_seq INCREMENT BY 2 RESTART WITH 42;",
            "ALTER SEQUENCE public.t_id_seq INCREMENT BY 2 RESTART WITH 43;"
        ]
    );
}

#[test]
fn after_the_change_it_is_safe_and_stays_so() {
    // a ≡ 0, b ≡ 1, each well past the other's values of its own class.
    let p = plan(
        &repl(),
        &nodes(
            vec![seq(
                "t_id_seq",
                2,
                48,
                true,
                vec![col("t", Some((101, [Some(48), Some(101)])))],
            )],
            vec![seq(
                "t_id_seq",
                2,
                101,
                true,
                vec![col("t", Some((101, [Some(48), Some(101)])))],
            )],
        ),
    );
    let g = &p.groups[0];
    assert_eq!(g.verdict(), Verdict::Safe, "{g:#?}");
    assert!(g.entries.iter().all(|e| e.change.is_none()));
    // Not yet called after RESTART: last_value is the next value.
    let p = plan(
        &repl(),
        &nodes(
            vec![seq("t_id_seq", 2, 42, false, vec![])],
            vec![seq("t_id_seq", 4, 43, false, vec![])],
        ),
    );
    assert!(p.groups.is_empty(), "no replicated column: skipped");
    let p = plan(
        &repl(),
        &nodes(
            vec![seq("t_id_seq", 2, 42, false, vec![col("t", None)])],
            vec![seq("t_id_seq", 4, 43, false, vec![col("t", None)])],
        ),
    );
    assert_eq!(
        p.groups[0].verdict(),
        Verdict::Safe,
        "multiples of N are fine"
    );
}

#[test]
fn the_wrong_class_or_a_used_value_is_unsafe() {
    let swapped = plan(
        &repl(),
        &nodes(
            vec![seq("s", 2, 43, false, vec![col("t", None)])],
            vec![seq("s", 2, 42, false, vec![col("t", None)])],
        ),
    );
    let g = &swapped.groups[0];
    assert!(
        matches!(&g.entries[0].status, Status::Unsafe(r) if r.contains("must hand out values ≡ 0")),
        "{g:#?}"
    );
    // Right classes, but b once stepped by 1 and left 50 (even) in the table: a at 44
    // would reach it.
    let used = plan(
        &repl(),
        &nodes(
            vec![seq(
                "s",
                2,
                44,
                false,
                vec![col("t", Some((51, [Some(50), Some(51)])))],
            )],
            vec![seq(
                "s",
                2,
                53,
                false,
                vec![col("t", Some((51, [Some(50), Some(51)])))],
            )],
        ),
    );
    let g = &used.groups[0];
    assert!(
        matches!(&g.entries[0].status, Status::Unsafe(r) if r.contains("50 is already in public.t.id")),
        "{g:#?}"
    );
    assert_eq!(g.entries[1].status, Status::Safe);
    // The whole group moves above 53 (b's last value is the highest use).
    let restarts: Vec<i64> = g
        .entries
        .iter()
        .map(|e| e.change.as_ref().unwrap().restart)
        .collect();
    assert_eq!(restarts, [54, 53]);
}

#[test]
fn descending_sequences_are_refused() {
    let p = plan(
        &repl(),
        &nodes(
            vec![seq("s", -1, 100, true, vec![col("t", None)])],
            vec![seq("s", 1, 1, false, vec![col("t", None)])],
        ),
    );
    let g = &p.groups[0];
    assert_eq!(g.verdict(), Verdict::Refused);
    assert!(matches!(&g.entries[0].status, Status::Refused(r) if r.contains("descending")));
    assert!(g.entries.iter().all(|e| e.change.is_none()));
}

#[test]
fn sequences_of_tables_not_replicated_are_skipped() {
    let p = plan(
        &repl(),
        &nodes(
            vec![seq(
                "local_only_id_seq",
                1,
                5,
                true,
                vec![col("local_only", None)],
            )],
            vec![],
        ),
    );
    assert!(p.groups.is_empty());
    assert_eq!(p.skipped, ["public.local_only_id_seq on a"]);
}

#[test]
fn sequences_of_one_column_with_different_names_are_judged_together() {
    let p = plan(
        &repl(),
        &nodes(
            vec![seq("t_id_seq", 1, 10, true, vec![col("t", None)])],
            vec![seq("t_id_seq1", 1, 20, true, vec![col("t", None)])],
        ),
    );
    assert_eq!(p.groups.len(), 1);
    let restarts: Vec<i64> = p.groups[0]
        .entries
        .iter()
        .map(|e| e.change.as_ref().unwrap().restart)
        .collect();
    assert_eq!(restarts, [22, 21]);
}

#[test]
fn integer_headroom_warns_and_a_full_range_is_refused() {
    let mut a = seq("s", 1, 2_000_000_000, true, vec![col("t", None)]);
    let b = seq("s", 1, 5, true, vec![col("t", None)]);
    let p = plan(&repl(), &nodes(vec![a.clone()], vec![b.clone()]));
    let g = &p.groups[0];
    assert!(
        g.warnings
            .iter()
            .any(|w| w.contains("bigint") && w.contains("public.t.id is integer")),
        "{:#?}",
        g.warnings
    );
    assert_eq!(g.verdict(), Verdict::Fixable);
    a.last_value = i64::from(i32::MAX);
    let p = plan(&repl(), &nodes(vec![a], vec![b]));
    assert_eq!(
        p.groups[0].verdict(),
        Verdict::Refused,
        "{:#?}",
        p.groups[0]
    );
    assert!(p.groups[0].entries.iter().all(|e| e.change.is_none()));
}

#[test]
fn cycle_warns() {
    let mut a = seq("s", 2, 2, true, vec![col("t", None)]);
    a.cycle = true;
    let p = plan(
        &repl(),
        &nodes(vec![a], vec![seq("s", 2, 3, true, vec![col("t", None)])]),
    );
    assert!(p.groups[0].warnings.iter().any(|w| w.contains("NO CYCLE")));
}
