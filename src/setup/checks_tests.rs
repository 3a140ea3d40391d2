//! Table-driven tests of the pure preflight checks.

use super::*;
use crate::config::{Config, Env};
use crate::setup::catalog::{RoleFacts, SlotFacts};
use crate::setup::finding::Severity;

fn cfg(extra: &str) -> Config {
    let text = format!(
        "[nodes.a]\ndsn=\"host=h\"\n[nodes.b]\ndsn=\"host=h\"\n[replication]\ntables=[\"public.*\"]\n{extra}"
    );
    Config::parse(&text, "t.toml", &Env::default()).unwrap()
}

fn table(name: &str, pk: &[&str], cols: &[(&str, &str)]) -> TableFacts {
    TableFacts {
        oid: 1,
        schema: "public".into(),
        name: name.into(),
        replica_identity: 'd',
        primary_key: pk.iter().map(|s| s.to_string()).collect(),
        columns: cols
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect(),
    }
}

fn good(node: &str) -> NodeFacts {
    NodeFacts {
        node: node.into(),
        server_version_num: 180001,
        database: "postgres".into(),
        wal_level: "logical".into(),
        track_commit_timestamp: true,
        max_replication_slots: 10,
        max_wal_senders: 10,
        max_worker_processes: 8,
        output_plugin_libraries: Some("pgoutput, test_decoding".into()),
        role: RoleFacts {
            name: "postgres".into(),
            superuser: true,
            replication: true,
            create_on_database: true,
        },
        tables: vec![table("t", &["id"], &[("id", "integer"), ("v", "text")])],
        ..NodeFacts::default()
    }
}

fn whats(f: &[Finding]) -> Vec<String> {
    f.iter()
        .map(|f| format!("{} {:?} {} | {}", f.node, f.severity, f.what, f.fix))
        .collect()
}

#[test]
fn a_good_pair_has_no_findings() {
    let f = check_all(&cfg(""), &[good("a"), good("b")], &OutputPlugin::pgoutput());
    assert!(f.is_empty(), "{:#?}", whats(&f));
}

#[test]
fn server_settings_each_give_an_error_with_the_fix() {
    let mut b = good("b");
    b.server_version_num = 140005;
    b.wal_level = "replica".into();
    b.track_commit_timestamp = false;
    b.max_replication_slots = 2;
    b.slots = vec![SlotFacts {
        name: "other".into(),
        plugin: None,
        database: None,
        active_pid: None,
        ..SlotFacts::default()
    }];
    b.max_wal_senders = 1;
    b.role = RoleFacts {
        name: "app".into(),
        ..RoleFacts::default()
    };
    let f = check_all(&cfg(""), &[good("a"), b], &OutputPlugin::pgoutput());
    let w = whats(&f);
    for needle in [
        "PostgreSQL 14 is not supported",
        "ALTER SYSTEM SET wal_level = logical;",
        "ALTER SYSTEM SET track_commit_timestamp = on;",
        "ALTER SYSTEM SET max_replication_slots = 3;",
        "ALTER SYSTEM SET max_wal_senders = 2;",
        "ALTER ROLE app REPLICATION;",
        "GRANT CREATE ON DATABASE postgres TO app;",
    ] {
        assert!(
            w.iter()
                .any(|l| l.starts_with("b Error") && l.contains(needle)),
            "{needle}: {w:#?}"
        );
    }
}

#[test]
fn same_database_twice_and_newer_schema_are_errors() {
    let mut a = good("a");
    let mut b = good("b");
    a.system_identifier = Some(7);
    b.system_identifier = Some(7);
    b.schema_version = Some(999);
    let w = whats(&check_all(
        &cfg(""),
        &[a.clone(), b.clone()],
        &OutputPlugin::pgoutput(),
    ));
    assert!(
        w.iter()
            .any(|l| l.contains("nodes a and b are the same database")),
        "{w:#?}"
    );
    assert!(w.iter().any(|l| l.contains("V999")), "{w:#?}");
    b.database = "other".into();
    b.schema_version = Some(1);
    assert!(check_all(&cfg(""), &[a, b], &OutputPlugin::pgoutput()).is_empty());
}

#[test]
fn a_lost_own_slot_is_a_warning_that_setup_recreates_it() {
    let mut a = good("a");
    let slot = |name: &str, status: &str, reason: Option<&str>| SlotFacts {
        name: name.into(),
        plugin: Some("pgoutput".into()),
        database: Some("postgres".into()),
        wal_status: Some(status.into()),
        invalidation_reason: reason.map(Into::into),
        ..SlotFacts::default()
    };
    a.slots = vec![slot("pgmesh_b", "lost", Some("wal_removed"))];
    let f = check_all(&cfg(""), &[a.clone(), good("b")], &OutputPlugin::pgoutput());
    assert_eq!(f.len(), 1, "{:#?}", whats(&f));
    // A warning: setup itself is the fix, so it must not refuse to run.
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[0].node, "a");
    for needle in [
        "slot pgmesh_b was invalidated by PostgreSQL",
        "max_slot_wal_keep_size",
        "never reach node b",
    ] {
        assert!(f[0].what.contains(needle), "{:#?}", whats(&f));
    }
    for needle in [
        "pgmesh setup",
        "node b's sidecar",
        "pgmesh verify",
        "pgmesh repair",
    ] {
        assert!(f[0].fix.contains(needle), "{:#?}", whats(&f));
    }
    // PG15/16 have no invalidation_reason; another reason is named as it is.
    a.slots = vec![slot("pgmesh_b", "lost", Some("idle_timeout"))];
    let w = whats(&check_all(
        &cfg(""),
        &[a.clone(), good("b")],
        &OutputPlugin::pgoutput(),
    ));
    assert!(w[0].contains("invalidation_reason idle_timeout"), "{w:#?}");
    // Not lost, or not pgmesh's own slot: nothing to say.
    for s in [
        slot("pgmesh_b", "unreserved", None),
        slot("other", "lost", None),
        SlotFacts {
            database: Some("otherdb".into()),
            ..slot("pgmesh_b", "lost", None)
        },
    ] {
        a.slots = vec![s];
        let w = whats(&check_all(
            &cfg(""),
            &[a.clone(), good("b")],
            &OutputPlugin::pgoutput(),
        ));
        assert!(!w.iter().any(|l| l.contains("invalidated")), "{w:#?}");
    }
}

#[test]
fn existing_own_slots_do_not_count_against_the_limit() {
    let mut a = good("a");
    a.max_replication_slots = 2;
    a.slots = vec![SlotFacts {
        name: "pgmesh_b".into(),
        plugin: Some("pgoutput".into()),
        database: Some("postgres".into()),
        active_pid: None,
        ..SlotFacts::default()
    }];
    assert!(check_all(&cfg(""), &[a.clone(), good("b")], &OutputPlugin::pgoutput()).is_empty());
    a.slots[0].plugin = Some("test_decoding".into());
    let w = whats(&check_all(
        &cfg(""),
        &[a, good("b")],
        &OutputPlugin::pgoutput(),
    ));
    assert!(w.iter().any(|l| l.contains("not pgoutput")), "{w:#?}");
}

#[test]
fn wal2json_needs_the_allow_list_only_where_it_exists() {
    let f = check_all(&cfg(""), &[good("a"), good("b")], &wal2json());
    assert!(whats(&f)[0].contains("output_plugin_libraries = 'pgoutput, test_decoding, wal2json'"));
    let mut a = good("a");
    a.output_plugin_libraries = None;
    let mut b = good("b");
    b.output_plugin_libraries = Some("pgoutput,wal2json".into());
    assert!(check_all(&cfg(""), &[a, b], &wal2json()).is_empty());
}

#[test]
fn tables_without_key_missing_or_different() {
    let mut a = good("a");
    let mut b = good("b");
    a.tables.push(table("nokey", &[], &[("x", "integer")]));
    b.tables.push(table("nokey", &[], &[("x", "integer")]));
    a.tables
        .push(table("only_a", &["id"], &[("id", "integer")]));
    b.tables[0].columns[1].1 = "character varying(10)".into();
    b.tables[0].columns.push(("extra".into(), "integer".into()));
    let w = whats(&check_all(&cfg(""), &[a, b], &OutputPlugin::pgoutput()));
    let has = |n: &str| w.iter().any(|l| l.contains(n));
    assert!(
        has("a Error table public.nokey has no primary key"),
        "{w:#?}"
    );
    assert!(
        has("REPLICA IDENTITY FULL; and list \"public.nokey\" in [replication].full_identity"),
        "{w:#?}"
    );
    assert!(
        has("b Error table public.only_a exists on node a but not on node b"),
        "{w:#?}"
    );
    assert!(
        has("column v is text on node a but character varying(10) on node b"),
        "{w:#?}"
    );
    assert!(
        has("ALTER TABLE public.t ALTER COLUMN v TYPE text;"),
        "{w:#?}"
    );
    assert!(
        has("column extra (integer) exists on node b but not on node a"),
        "{w:#?}"
    );
}

#[test]
fn full_identity_tables_must_say_full() {
    let c = cfg("full_identity=[\"public.log\"]\n");
    let mut a = good("a");
    let mut b = good("b");
    a.tables.push(table("log", &[], &[("x", "integer")]));
    let mut full = table("log", &[], &[("x", "integer")]);
    full.replica_identity = 'f';
    b.tables.push(full);
    let f = check_all(&c, &[a, b], &OutputPlugin::pgoutput());
    assert_eq!(f.len(), 1, "{:#?}", whats(&f));
    assert_eq!(f[0].node, "a");
    assert_eq!(f[0].fix, "ALTER TABLE public.log REPLICA IDENTITY FULL;");
}

#[test]
fn exact_patterns_must_exist_and_something_must_be_selected() {
    let c = Config::parse(
        "[nodes.a]\ndsn=\"x=1\"\n[nodes.b]\ndsn=\"x=1\"\n[replication]\ntables=[\"app.orders\"]\n",
        "t.toml",
        &Env::default(),
    )
    .unwrap();
    let w = whats(&check_all(
        &c,
        &[good("a"), good("b")],
        &OutputPlugin::pgoutput(),
    ));
    assert!(w.iter().any(|l| l.contains("selects no table")), "{w:#?}");
    assert!(
        w.iter()
            .any(|l| l.starts_with("b Error table app.orders is listed")),
        "{w:#?}"
    );
}

#[test]
fn colliding_sequences_warn_with_per_node_offsets() {
    let seq = |increment: i64, last: i64, called: bool| SequenceFacts {
        name: "public.t_id_seq".into(),
        data_type: "integer".into(),
        increment,
        min_value: 1,
        max_value: i64::from(i32::MAX),
        cycle: false,
        last_value: last,
        is_called: called,
        columns: vec![crate::sequences::facts::SequenceColumn {
            schema: "public".into(),
            table: "t".into(),
            column: "id".into(),
            identity: false,
            type_name: "integer".into(),
            type_max: Some(i64::from(i32::MAX)),
            max: None,
        }],
    };
    let mut a = good("a");
    let mut b = good("b");
    a.sequences.push(seq(1, 41, true));
    b.sequences.push(seq(1, 1, false));
    let f = check_all(&cfg(""), &[a.clone(), b.clone()], &OutputPlugin::pgoutput());
    assert_eq!(f.len(), 2, "{:#?}", whats(&f));
    assert!(f.iter().all(|f| f.severity == Severity::Warning));
    assert!(f[0].what.contains("steps by 1"), "{}", f[0].what);
    assert_eq!(
        f[0].fix,
        "pgmesh sequences -c t.toml --apply\n(on a: ALTER SEQUENCE public.t_id_seq INCREMENT BY 2 RESTART WITH 42;)"
    );
    assert!(f[1]
        .fix
        .ends_with("(on b: ALTER SEQUENCE public.t_id_seq INCREMENT BY 2 RESTART WITH 43;)"));
    // After the fix: a hands out even values, b odd ones → nothing to report.
    a.sequences[0] = seq(2, 42, false);
    b.sequences[0] = seq(2, 43, false);
    let f = check_all(&cfg(""), &[a.clone(), b.clone()], &OutputPlugin::pgoutput());
    assert!(f.is_empty(), "{:#?}", whats(&f));
    // b on the wrong class.
    b.sequences[0].last_value = 44;
    let f = check_all(&cfg(""), &[a, b], &OutputPlugin::pgoutput());
    assert!(
        f.iter()
            .any(|f| f.node == "b" && f.what.contains("must hand out values ≡ 1")),
        "{:#?}",
        whats(&f)
    );
}

fn wal2json() -> OutputPlugin {
    OutputPlugin::Other {
        name: "wal2json".into(),
        options: Vec::new(),
    }
}
