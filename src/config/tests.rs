//! Parsing, defaults, errors, environment overrides and masking.

use super::*;

const GOOD: &str = r#"
[nodes.a]
dsn = "host=127.0.0.1 port=5501 user=postgres dbname=postgres password=${PW_A}"
[nodes.b]
dsn = "postgres://postgres:hunter2@127.0.0.1:5502/postgres"
password_file = "/run/secrets/pg_b"
[replication]
tables = ["public.*", "sales.orders"]
exclude = ["public.tmp_*"]
full_identity = ["public.log"]
"#;

fn env(pairs: &[(&str, &str)]) -> Env {
    Env::from_pairs(pairs.iter().copied())
}

fn parse(text: &str, e: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::parse(text, "pgmesh.toml", &env(e))
}

#[test]
fn parses_a_full_config_with_defaults() {
    let c = parse(GOOD, &[("PW_A", "s3cret")]).unwrap();
    assert_eq!(c.nodes.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(
        c.node("a").unwrap().dsn.expose(),
        "host=127.0.0.1 port=5501 user=postgres dbname=postgres password=s3cret"
    );
    assert_eq!(
        c.node("b").unwrap().password_file.as_deref(),
        Some(Path::new("/run/secrets/pg_b"))
    );
    assert_eq!(c.apply, ApplyConfig::default());
    assert_eq!(c.apply.batch_max_bytes, ByteSize(16 * 1024 * 1024));
    assert!(c.http.is_none());
    assert!(c.replication.selects("public", "orders"));
    assert!(c.replication.selects("sales", "orders"));
    assert!(!c.replication.selects("sales", "items"));
    assert!(!c.replication.selects("public", "tmp_x"));
    assert!(c.replication.allows_full_identity("public", "log"));
    assert_eq!(
        c.peers("a").map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    assert!(c
        .node("zz")
        .unwrap_err()
        .to_string()
        .contains("known nodes: a, b"));
}

#[test]
fn apply_and_http_sections() {
    let text = format!(
        "{GOOD}\n[apply]\nbatch_max_rows = 10\nbatch_max_bytes = \"1MB\"\nbatch_max_delay_ms = 50\n[http]\nlisten = \"0.0.0.0:9000\"\n"
    );
    let c = parse(&text, &[("PW_A", "x")]).unwrap();
    assert_eq!(c.apply.batch_max_rows, 10);
    assert_eq!(c.apply.batch_max_bytes, ByteSize(1 << 20));
    assert_eq!(c.apply.batch_max_delay, Duration::from_millis(50));
    assert_eq!(c.apply.stream_after, Some(ByteSize(64 << 20)));
    assert_eq!(c.http.unwrap().listen.port(), 9000);
}

#[test]
fn stream_after_is_a_size_of_at_least_64kb() {
    let c = parse(
        &format!(
            "{GOOD}
[apply]
stream_after = \"8MB\"
"
        ),
        &[("PW_A", "x")],
    )
    .unwrap();
    assert_eq!(c.apply.stream_after, Some(ByteSize(8 << 20)));
    let e = parse(
        &format!(
            "{GOOD}
[apply]
stream_after = \"16kB\"
"
        ),
        &[("PW_A", "x")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("apply.stream_after") && e.contains("64kB"),
        "{e}"
    );
}

#[test]
fn cpu_policy_is_auto_unless_asked() {
    let default = parse(GOOD, &[("PW_A", "x")]).unwrap();
    assert_eq!(default.apply.cpu_policy, CpuPolicy::Auto);
    let normal = parse(
        &format!("{GOOD}\n[apply]\ncpu_policy = \"normal\"\n"),
        &[("PW_A", "x")],
    )
    .unwrap();
    assert_eq!(normal.apply.cpu_policy, CpuPolicy::Normal);
    let from_env = parse(GOOD, &[("PW_A", "x"), ("PGMESH_APPLY_CPU_POLICY", "batch")]).unwrap();
    assert_eq!(from_env.apply.cpu_policy, CpuPolicy::Batch);
    let e = parse(
        &format!("{GOOD}\n[apply]\ncpu_policy = \"fifo\"\n"),
        &[("PW_A", "x")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("apply.cpu_policy") && e.contains("\"auto\""),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_errors_naming_key_and_file() {
    let e = parse(
        &format!("{GOOD}\n[apply]\nbatch_rows = 1\n"),
        &[("PW_A", "x")],
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(m.contains("pgmesh.toml") && m.contains("batch_rows"), "{m}");
    let e = parse(
        &GOOD.replace("[nodes.b]", "[nodes.b]\nhost = \"x\""),
        &[("PW_A", "x")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("`host`"), "{e}");
    let e = parse(&format!("{GOOD}\n[extra]\n"), &[("PW_A", "x")]).unwrap_err();
    assert!(e.to_string().contains("extra"), "{e}");
}

#[test]
fn missing_keys_name_the_key_with_an_example() {
    let e = parse("[replication]\ntables=[\"public.*\"]\n", &[]).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("nodes") && m.contains("[nodes.a]") && m.contains("dsn ="),
        "{m}"
    );

    let e = parse(
        "[nodes.a]\n[nodes.b]\ndsn=\"x=1\"\n[replication]\ntables=[\"public.*\"]",
        &[],
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(m.contains("nodes.a.dsn") && m.contains("dsn = \""), "{m}");

    let e = parse("[nodes.a]\ndsn=\"x=1\"\n[nodes.b]\ndsn=\"x=1\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("tables = [\"public.*\"]"), "{e}");
}

#[test]
fn node_names_and_counts_are_validated() {
    let e = parse(&GOOD.replace("nodes.b", "nodes.B-1"), &[("PW_A", "x")]).unwrap_err();
    assert!(e.to_string().contains("\"B-1\""), "{e}");
    let three = format!("{GOOD}\n[nodes.c]\ndsn = \"host=h\"\n");
    let e = parse(&three, &[("PW_A", "x")]).unwrap_err();
    assert!(
        e.to_string().contains("exactly 2 nodes") && e.to_string().contains("a, b, c"),
        "{e}"
    );
    let long = "n".repeat(32);
    assert!(check_node_name(&long).is_err());
    assert!(check_node_name(&"n".repeat(31)).is_ok());
    assert!(check_node_name("1a").is_err());
}

#[test]
fn bad_values_are_errors() {
    for (extra, needle) in [
        ("[apply]\nbatch_max_rows = 0\n", "batch_max_rows"),
        ("[apply]\nbatch_max_bytes = \"12 parsecs\"\n", "parsecs"),
        ("[apply]\nbatch_max_rows = \"many\"\n", "batch_max_rows"),
        ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
    ] {
        let e = parse(&format!("{GOOD}\n{extra}"), &[("PW_A", "x")]).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
    let e = parse(
        &GOOD.replace("\"sales.orders\"", "\"orders\""),
        &[("PW_A", "x")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("schema.table"), "{e}");
    let e = parse(GOOD, &[]).unwrap_err();
    assert!(e.to_string().contains("PW_A"), "{e}");
}

#[test]
fn env_overrides_win_over_the_file() {
    let c = parse(
        GOOD,
        &[
            ("PW_A", "x"),
            ("PGMESH_NODES_A_DSN", "host=override"),
            ("PGMESH_NODES_B_PASSWORD_FILE", "/tmp/pw"),
            ("PGMESH_APPLY_BATCH_MAX_ROWS", "77"),
            ("PGMESH_APPLY_BATCH_MAX_BYTES", "2MB"),
            ("PGMESH_HTTP_LISTEN", "127.0.0.1:1"),
            ("PGMESH_REPLICATION_TABLES", "app.*, app2.t"),
            ("PGMESH_TEST_PG", "15"),
        ],
    )
    .unwrap();
    assert_eq!(c.node("a").unwrap().dsn.expose(), "host=override");
    assert_eq!(
        c.node("b").unwrap().password_file.as_deref(),
        Some(Path::new("/tmp/pw"))
    );
    assert_eq!(c.apply.batch_max_rows, 77);
    assert_eq!(c.apply.batch_max_bytes, ByteSize(2 << 20));
    assert_eq!(c.http.unwrap().listen.port(), 1);
    assert!(c.replication.selects("app", "x"));
    assert!(!c.replication.selects("public", "x"));
}

#[test]
fn env_can_define_nodes_with_underscored_names() {
    let c = parse(
        "[replication]\ntables=[\"public.*\"]\n",
        &[
            ("PGMESH_NODES_EU_WEST_DSN", "host=a"),
            ("PGMESH_NODES_US_DSN", "host=b"),
        ],
    )
    .unwrap();
    assert_eq!(c.nodes.keys().collect::<Vec<_>>(), ["eu_west", "us"]);
}

#[test]
fn bad_env_overrides_are_errors() {
    let e = parse(GOOD, &[("PW_A", "x"), ("PGMESH_APPLY_BATCH_ROWS", "1")]).unwrap_err();
    assert!(e.to_string().contains("PGMESH_APPLY_BATCH_ROWS"), "{e}");
    let e = parse(
        GOOD,
        &[("PW_A", "x"), ("PGMESH_APPLY_BATCH_MAX_ROWS", "lots")],
    )
    .unwrap_err();
    assert!(e.to_string().contains("not an integer"), "{e}");
    let e = parse(GOOD, &[("PW_A", "x"), ("PGMESH_NODES_A_HOST", "h")]).unwrap_err();
    assert!(e.to_string().contains("PGMESH_NODES_<NAME>_DSN"), "{e}");
}

#[test]
fn debug_and_display_hide_passwords() {
    let c = parse(GOOD, &[("PW_A", "s3cret")]).unwrap();
    for shown in [format!("{c:?}"), format!("{c}")] {
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("****"), "{shown}");
    }
}

#[test]
fn dsn_errors_do_not_leak_the_dsn() {
    let c = parse(
        &GOOD.replace("port=5501", "port=notaport"),
        &[("PW_A", "s3cret")],
    )
    .unwrap();
    let e = c.node("a").unwrap().sql_config().unwrap_err().to_string();
    assert!(e.contains("node a") && !e.contains("s3cret"), "{e}");
}

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "file-secret\n").unwrap();
    let node = NodeConfig {
        name: "a".into(),
        dsn: Dsn::new("host=h user=u"),
        password_file: Some(pw),
    };
    let cfg = node.sql_config().unwrap();
    assert_eq!(cfg.pg.get_password(), Some(&b"file-secret"[..]));
    let missing = NodeConfig {
        password_file: Some(dir.path().join("nope")),
        ..node
    };
    assert!(missing
        .sql_config()
        .unwrap_err()
        .to_string()
        .contains("password file"));
}

fn parse_flags(text: &str, e: &[(&str, &str)], flags: &ConfigFlags) -> Result<Config, ConfigError> {
    Config::parse_with(text, "pgmesh.toml", &env(e), flags)
}

#[test]
fn flags_win_over_env_which_wins_over_the_file() {
    let file = format!(
        "{GOOD}\n[apply]\nbatch_max_rows = 10\nbatch_max_bytes = \"1MB\"\nbatch_max_delay_ms = 50\n[http]\nlisten = \"127.0.0.1:1\"\n"
    );
    let all_env = [
        ("PW_A", "x"),
        ("PGMESH_APPLY_BATCH_MAX_ROWS", "20"),
        ("PGMESH_APPLY_BATCH_MAX_BYTES", "2MB"),
        ("PGMESH_APPLY_BATCH_MAX_DELAY_MS", "60"),
        ("PGMESH_HTTP_LISTEN", "127.0.0.1:2"),
    ];
    let all_flags = ConfigFlags {
        batch_max_rows: Some("30".into()),
        batch_max_bytes: Some("3MB".into()),
        batch_max_delay_ms: Some("70".into()),
        stream_after: None,
        http_listen: Some("127.0.0.1:3".into()),
    };
    let seen = |c: Config| {
        (
            c.apply.batch_max_rows,
            c.apply.batch_max_bytes.0 >> 20,
            c.apply.batch_max_delay.as_millis(),
            c.http.map(|h| h.listen.port()),
        )
    };
    let none = ConfigFlags::default();
    // Each layer alone, then each pair: the higher one wins, key by key.
    type Seen = (usize, u64, u128, Option<u16>);
    type Vars<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Vars, &ConfigFlags, Seen)] = &[
        (&all_env[..1], &none, (10, 1, 50, Some(1))),
        (&all_env, &none, (20, 2, 60, Some(2))),
        (&all_env[..1], &all_flags, (30, 3, 70, Some(3))),
        (&all_env, &all_flags, (30, 3, 70, Some(3))),
    ];
    for (e, flags, want) in cases {
        assert_eq!(
            seen(parse_flags(&file, e, flags).unwrap()),
            *want,
            "{e:?} {flags:?}"
        );
    }
    // One flag overrides only its key; the others keep the environment's value.
    let one = ConfigFlags {
        batch_max_delay_ms: Some("5".into()),
        ..ConfigFlags::default()
    };
    assert_eq!(
        seen(parse_flags(&file, &all_env, &one).unwrap()),
        (20, 2, 5, Some(2))
    );
}

#[test]
fn a_flag_can_set_what_the_file_lacks() {
    let flags = ConfigFlags {
        http_listen: Some("0.0.0.0:9187".into()),
        batch_max_rows: Some("7".into()),
        ..ConfigFlags::default()
    };
    let c = parse_flags(GOOD, &[("PW_A", "x")], &flags).unwrap();
    assert_eq!(c.http.unwrap().listen.port(), 9187);
    assert_eq!(c.apply.batch_max_rows, 7);
    assert_eq!(
        c.apply.batch_max_bytes,
        ApplyConfig::default().batch_max_bytes
    );
}

#[test]
fn bad_values_name_their_flag_or_variable() {
    let flag = |f: ConfigFlags| {
        parse_flags(GOOD, &[("PW_A", "x")], &f)
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (
            flag(ConfigFlags {
                batch_max_rows: Some("lots".into()),
                ..ConfigFlags::default()
            }),
            &["--batch-max-rows", "not an integer"][..],
        ),
        (
            flag(ConfigFlags {
                batch_max_rows: Some("-1".into()),
                ..ConfigFlags::default()
            }),
            &["--batch-max-rows", "not an integer"],
        ),
        (
            flag(ConfigFlags {
                batch_max_rows: Some("0".into()),
                ..ConfigFlags::default()
            }),
            &[
                "value from --batch-max-rows",
                "apply.batch_max_rows",
                "at least 1",
            ],
        ),
        (
            flag(ConfigFlags {
                batch_max_bytes: Some("3XB".into()),
                ..ConfigFlags::default()
            }),
            &["--batch-max-bytes", "unknown size unit"],
        ),
        (
            flag(ConfigFlags {
                http_listen: Some("nowhere".into()),
                ..ConfigFlags::default()
            }),
            &["value from --http-listen", "http.listen", "not an address"],
        ),
        (
            parse(
                GOOD,
                &[("PW_A", "x"), ("PGMESH_APPLY_BATCH_MAX_BYTES", "0")],
            )
            .unwrap_err()
            .to_string(),
            &[
                "value from environment variable PGMESH_APPLY_BATCH_MAX_BYTES",
                "more than 0",
            ],
        ),
        (
            parse(
                GOOD,
                &[("PW_A", "x"), ("PGMESH_APPLY_BATCH_MAX_BYTES", "big")],
            )
            .unwrap_err()
            .to_string(),
            &["PGMESH_APPLY_BATCH_MAX_BYTES", "not a size"],
        ),
    ];
    for (e, needles) in cases {
        for n in needles {
            assert!(e.contains(n), "{n:?} not in {e:?}");
        }
    }
    // A value in the file is still blamed on the file.
    let e = parse(
        &format!("{GOOD}\n[apply]\nbatch_max_rows = 0\n"),
        &[("PW_A", "x")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("pgmesh.toml: apply.batch_max_rows"), "{e}");
}

#[test]
fn clock_skew_warn_defaults_parses_and_is_validated() {
    let c = parse(GOOD, &[("PW_A", "x")]).unwrap();
    assert_eq!(c.replication.clock_skew_warn, Duration::from_millis(500));
    let with = |v: &str| {
        GOOD.replace(
            "[replication]\n",
            &format!("[replication]\nclock_skew_warn = {v}\n"),
        )
    };
    let c = parse(&with("\"2s\""), &[("PW_A", "x")]).unwrap();
    assert_eq!(c.replication.clock_skew_warn, Duration::from_secs(2));
    let c = parse(
        &with("\"2s\""),
        &[
            ("PW_A", "x"),
            ("PGMESH_REPLICATION_CLOCK_SKEW_WARN", "250ms"),
        ],
    )
    .unwrap();
    assert_eq!(c.replication.clock_skew_warn, Duration::from_millis(250));
    for (v, needles) in [
        (
            "\"0ms\"",
            &["replication.clock_skew_warn", "more than 0"][..],
        ),
        ("\"500\"", &["replication.clock_skew_warn", "no unit"]),
        (
            "\"soon\"",
            &["replication.clock_skew_warn", "not a duration"],
        ),
        ("500", &["clock_skew_warn", "string"]),
    ] {
        let e = parse(&with(v), &[("PW_A", "x")]).unwrap_err().to_string();
        for n in needles {
            assert!(e.contains(n), "{v}: {n:?} not in {e:?}");
        }
    }
    let e = parse(
        GOOD,
        &[("PW_A", "x"), ("PGMESH_REPLICATION_CLOCK_SKEW_WARN", "0s")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("PGMESH_REPLICATION_CLOCK_SKEW_WARN"), "{e}");
}

#[test]
fn guardrail_defaults_are_safe() {
    let c = parse(GOOD, &[("PW_A", "x")]).unwrap();
    assert_eq!(c.guardrail, GuardrailConfig::default());
    assert_eq!(c.guardrail.policy, GuardrailPolicy::Warn);
    assert_eq!(c.guardrail.warn_retained, ByteSize(1 << 30));
    assert_eq!(c.guardrail.limit_retained, ByteSize(16 << 30));
    assert_eq!(c.guardrail.check_interval, Duration::from_secs(10));
}

#[test]
fn guardrail_section_and_overrides() {
    let text = format!(
        "{GOOD}\n[guardrail]\nwarn_retained = \"1kB\"\nlimit_retained = \"2MB\"\npolicy = \"drop_slot\"\ncheck_interval_s = 2\n"
    );
    let c = parse(&text, &[("PW_A", "x")]).unwrap();
    assert_eq!(
        c.guardrail,
        GuardrailConfig {
            warn_retained: ByteSize(1 << 10),
            limit_retained: ByteSize(2 << 20),
            policy: GuardrailPolicy::DropSlot,
            check_interval: Duration::from_secs(2),
        }
    );
    let c = parse(
        &text,
        &[
            ("PW_A", "x"),
            ("PGMESH_GUARDRAIL_POLICY", "warn"),
            ("PGMESH_GUARDRAIL_LIMIT_RETAINED", "4MB"),
        ],
    )
    .unwrap();
    assert_eq!(c.guardrail.policy, GuardrailPolicy::Warn);
    assert_eq!(c.guardrail.limit_retained, ByteSize(4 << 20));
    let e = parse(GOOD, &[("PW_A", "x"), ("PGMESH_GUARDRAIL_LIMIT", "1")]).unwrap_err();
    assert!(e.to_string().contains("PGMESH_GUARDRAIL_LIMIT"), "{e}");
}

#[test]
fn bad_guardrail_values_are_errors() {
    for (extra, needles) in [
        (
            "policy = \"pause\"",
            &["guardrail.policy", "\"drop_slot\""][..],
        ),
        (
            "warn_retained = \"0\"",
            &["guardrail.warn_retained", "more than 0"],
        ),
        (
            "warn_retained = \"2GB\"\nlimit_retained = \"1GB\"",
            &["guardrail.limit_retained", "at least the warning"],
        ),
        ("check_interval_s = 0", &["guardrail.check_interval_s"]),
        ("limit = \"1GB\"", &["unknown field `limit`"]),
        ("warn_retained = \"lots\"", &["not a size"]),
    ] {
        let e = parse(&format!("{GOOD}\n[guardrail]\n{extra}\n"), &[("PW_A", "x")])
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(e.contains(n), "{n:?} not in {e:?}");
        }
    }
}

const CONTROL: &str = r#"
[control]
etcd = ["http://127.0.0.1:2379", "http://127.0.0.1:2479", "http://127.0.0.1:2579"]
cluster = "prod"
lease_ttl = "3s"
[endpoints.app-eu]
home = "a"
[endpoints.app-us]
home = "b"
"#;

#[test]
fn control_section_with_defaults() {
    let c = parse(&format!("{GOOD}{CONTROL}"), &[("PW_A", "x")]).unwrap();
    let ctl = c.control().unwrap();
    assert_eq!(ctl.etcd.len(), 3);
    assert_eq!(ctl.cluster, "prod");
    assert_eq!(ctl.lease_ttl, Duration::from_secs(3));
    assert_eq!(ctl.safety_margin, Duration::from_secs(1));
    assert_eq!(ctl.probe_interval, Duration::from_millis(500));
    assert_eq!(ctl.failed_after, 3);
    assert_eq!(ctl.fence_roles, None);
    assert_eq!(ctl.failback, Failback::Manual);
    assert_eq!(
        ctl.homed_at("a")
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["app-eu"]
    );
    assert!(parse(GOOD, &[("PW_A", "x")]).unwrap().control.is_none());
}

#[test]
fn control_section_errors_name_the_key_and_the_fix() {
    let bad = |text: &str, key: &str, needle: &str| {
        let e = parse(&format!("{GOOD}{text}"), &[("PW_A", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(needle), "{text}: {e}");
    };
    bad(
        CONTROL.replace("home = \"b\"", "home = \"c\"").as_str(),
        "endpoints.app-us.home",
        "known nodes: a, b",
    );
    bad(
        "[endpoints.x]\nhome = \"a\"\n",
        "control",
        "[control] is missing",
    );
    bad(
        &CONTROL.replace("lease_ttl = \"3s\"", "lease_ttl = \"1500ms\""),
        "control.lease_ttl",
        "whole seconds",
    );
    bad(
        &CONTROL.replace(
            "lease_ttl = \"3s\"",
            "lease_ttl = \"3s\"\nsafety_margin = \"2s\"",
        ),
        "control.safety_margin",
        "more than half",
    );
    bad(
        &CONTROL.replace(
            "lease_ttl = \"3s\"",
            "lease_ttl = \"3s\"\nprobe_interval = \"2s\"",
        ),
        "control.probe_interval",
        "two tries",
    );
    bad(
        &CONTROL.replace("etcd = [", "etcd = [\"127.0.0.1:1\", "),
        "control.etcd",
        "not an etcd client URL",
    );
    bad(
        &CONTROL.replace("cluster = \"prod\"", "cluster = \"a/b\""),
        "control.cluster",
        "letters",
    );
    bad(
        &CONTROL.replace("cluster = \"prod\"", "failback = \"sometimes\""),
        "control.failback",
        "manual",
    );
    bad(
        &format!("{CONTROL}[control.health]\nfailed_below = 0.9\ndegraded_below = 0.5\n"),
        "control.health.failed_below",
        "degraded before",
    );
    bad(&format!("{CONTROL}[[control.health.promql]]\nname = \"p95\"\nurl = \"http://x:9090\"\nquery = \"up\"\n"), "control.health.promql[0]", "neither `max` nor `min`");
    bad(
        &format!("{CONTROL}[control.health]\nweight_etcd = -1.0\n"),
        "control.health.weight_etcd",
        "not a weight",
    );
    let c = parse(
        &format!(
            "{GOOD}{}",
            CONTROL.replace(
                "cluster = \"prod\"",
                "failback = \"auto\"\nfailback_after = \"10s\""
            )
        ),
        &[("PW_A", "x")],
    )
    .unwrap();
    assert_eq!(
        c.control().unwrap().failback,
        Failback::Auto {
            max_lag: ByteSize(1 << 20),
            after: Duration::from_secs(10)
        }
    );
}

#[test]
fn control_keys_take_environment_overrides() {
    let c = parse(
        &format!("{GOOD}{CONTROL}"),
        &[
            ("PW_A", "x"),
            (
                "PGMESH_CONTROL_ETCD",
                "http://10.0.0.1:2379, http://10.0.0.2:2379",
            ),
            ("PGMESH_CONTROL_LEASE_TTL", "5s"),
        ],
    )
    .unwrap();
    let ctl = c.control().unwrap();
    assert_eq!(ctl.etcd, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
    assert_eq!(ctl.lease_ttl, Duration::from_secs(5));
    let e = parse(
        &format!("{GOOD}{CONTROL}"),
        &[("PW_A", "x"), ("PGMESH_CONTROL_LEASE_TTL", "1s")],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("PGMESH_CONTROL_LEASE_TTL"), "{e}");
}

#[test]
fn clock_wait_max_defaults_to_10s_and_zero_turns_waiting_off() {
    let c = parse(GOOD, &[("PW_A", "x")]).unwrap();
    assert_eq!(c.replication.clock_wait_max, Duration::from_secs(10));
    let with = |v: &str| {
        GOOD.replace(
            "[replication]\n",
            &format!("[replication]\nclock_wait_max = {v}\n"),
        )
    };
    let c = parse(&with("\"0s\""), &[("PW_A", "x")]).unwrap();
    assert_eq!(c.replication.clock_wait_max, Duration::ZERO);
    let c = parse(
        GOOD,
        &[("PW_A", "x"), ("PGMESH_REPLICATION_CLOCK_WAIT_MAX", "30s")],
    )
    .unwrap();
    assert_eq!(c.replication.clock_wait_max, Duration::from_secs(30));
    let e = parse(&with("\"later\""), &[("PW_A", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("replication.clock_wait_max"), "{e}");
}
