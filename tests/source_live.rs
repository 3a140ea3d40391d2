//! The replication source against real PostgreSQL (every version of
//! `PGMESH_TEST_PG`, default 15 and 18): streaming, acknowledgement and resume, SCRAM and
//! md5, TLS per sslmode, error kinds and messages, reconnect after a crash restart.
//!
//! Tests hold a process-wide lock so at most one test (and at most two clusters) runs at a
//! time: the machines are small and shared.

mod support;

use std::time::Duration;

use bytes::Bytes;
use pgmesh::source::*;
use pgmesh::testkit::{versions_under_test, Cluster};
use pgmesh::Lsn;
use support::tls::{enable_tls, Certs};

/// Each test has its own runtime; tokio's mutex works across them and does not poison.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEADLINE: Duration = Duration::from_secs(30);

fn cfg(dsn: &str) -> SourceConfig {
    SourceConfig::from_dsn_with_env(dsn, |_| None).unwrap()
}

async fn connect(dsn: &str) -> Result<ReplicationConnection, SourceError> {
    ReplicationConnection::connect(&cfg(dsn)).await
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// One decoded-enough transaction: Begin's final LSN, Commit's end LSN, raw messages.
#[derive(Debug)]
struct Txn {
    final_lsn: Lsn,
    end_lsn: Lsn,
    messages: Vec<Bytes>,
}

impl Txn {
    fn contains(&self, needle: &str) -> bool {
        self.messages.iter().any(|m| {
            m.first() == Some(&b'I') && m.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
    }
}

/// Feeds XLogData payloads into transactions (just enough pgoutput: B, C; the full
/// decoder lives elsewhere).
#[derive(Default)]
struct Collector {
    current: Option<Txn>,
    done: Vec<Txn>,
}

impl Collector {
    fn feed(&mut self, data: Bytes) {
        let tag = data[0];
        assert!(
            b"BICRYOMTUD".contains(&tag),
            "unexpected pgoutput tag {:?}",
            char::from(tag)
        );
        match tag {
            b'B' => {
                assert!(self.current.is_none(), "Begin inside a transaction");
                self.current = Some(Txn {
                    final_lsn: Lsn(be_u64(&data, 1)),
                    end_lsn: Lsn::ZERO,
                    messages: vec![data],
                });
            }
            b'C' => {
                let mut t = self.current.take().expect("Commit without Begin");
                assert_eq!(
                    Lsn(be_u64(&data, 2)),
                    t.final_lsn,
                    "commit LSN = Begin final LSN"
                );
                t.end_lsn = Lsn(be_u64(&data, 10));
                t.messages.push(data);
                self.done.push(t);
            }
            _ => self
                .current
                .as_mut()
                .expect("change outside a transaction")
                .messages
                .push(data),
        }
    }

    /// Drops a partially received transaction (after a reconnect).
    fn reset_partial(&mut self) {
        self.current = None;
    }
}

async fn collect(stream: &mut ReplicationStream, n: usize) -> Vec<Txn> {
    let mut c = Collector::default();
    tokio::time::timeout(DEADLINE, async {
        while c.done.len() < n {
            match stream.next_event().await.expect("stream error") {
                Some(ReplicationEvent::XLogData(x)) => c.feed(x.data),
                Some(_) => {}
                None => panic!("stream ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {n} transactions within {DEADLINE:?}"));
    c.done
}

fn setup_table(c: &Cluster) {
    c.psql(
        "CREATE TABLE t(id int primary key, v text); \
         CREATE PUBLICATION pub FOR TABLE t",
    )
    .unwrap();
}

fn insert(c: &Cluster, id: u32) {
    c.psql(&format!("INSERT INTO t VALUES ({id}, 'row-{id}')"))
        .unwrap();
}

fn confirmed_flush(c: &Cluster, slot: &str) -> Lsn {
    c.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .unwrap()
    .parse()
    .unwrap()
}

#[tokio::test]
async fn streams_acknowledges_and_resumes_without_resending() {
    let _g = SERIAL.lock().await;
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap();
        setup_table(&c);
        let mut conn = connect(&c.dsn()).await.unwrap();
        assert_eq!(conn.server_major(), major);
        assert!(!conn.is_tls());

        let id = identify_system(&mut conn).await.unwrap();
        assert_eq!(id.dbname.as_deref(), Some("postgres"));
        assert_eq!(id.timeline, 1);
        assert!(!id.xlogpos.is_zero());
        assert!(!id.systemid.is_empty());

        let slot = create_slot(&mut conn, &CreateSlot::new("s1"))
            .await
            .unwrap();
        assert!(slot.consistent_point >= id.xlogpos);
        assert_eq!(slot.snapshot_name, None);
        assert!(slot_exists(&mut conn, "s1").await.unwrap());
        assert!(!slot_exists(&mut conn, "nope").await.unwrap());
        // Plain SQL works on the replication=database connection.
        let rows = conn.simple_query("SHOW wal_level").await.unwrap();
        assert_eq!(rows[0].get_idx(0), Some("logical"));

        for i in 1..=3 {
            insert(&c, i);
        }
        let mut sc = StreamConfig::new("s1", &["pub"]);
        sc.status_interval = Duration::from_millis(500);
        let mut stream = ReplicationStream::start(conn, &sc, Lsn::ZERO)
            .await
            .unwrap();
        let txns = collect(&mut stream, 3).await;
        for (i, t) in txns.iter().enumerate() {
            assert!(
                t.contains(&format!("row-{}", i + 1)),
                "PG{major} txn {i}: {t:?}"
            );
        }
        // Acknowledge the second transaction only.
        let ack = txns[1].end_lsn;
        stream.set_flushed(ack);
        let mut conn = stream.shutdown().await.unwrap();
        let info = slot_info(&mut conn, "s1").await.unwrap().unwrap();
        assert_eq!(info.confirmed_flush_lsn, Some(ack), "PG{major}");
        assert!(!info.active);
        assert_eq!(confirmed_flush(&c, "s1"), ack);
        conn.close().await.unwrap();

        // Resume from the slot (0/0 = confirmed_flush_lsn): only the third comes again.
        insert(&c, 4);
        let conn = connect(&c.dsn()).await.unwrap();
        let mut stream = ReplicationStream::start(conn, &sc, Lsn::ZERO)
            .await
            .unwrap();
        let again = collect(&mut stream, 2).await;
        assert_eq!(
            again[0].final_lsn, txns[2].final_lsn,
            "PG{major}: resent before ack"
        );
        assert!(again[0].contains("row-3") && again[1].contains("row-4"));
        stream.set_flushed(again[1].end_lsn);
        stream.shutdown().await.unwrap().close().await.unwrap();
        assert_eq!(confirmed_flush(&c, "s1"), again[1].end_lsn);

        // Resume from an explicit LSN ahead of nothing new: idle keepalives still flow.
        let conn = connect(&c.dsn()).await.unwrap();
        let mut stream = ReplicationStream::start(conn, &sc, again[1].end_lsn)
            .await
            .unwrap();
        insert(&c, 5);
        let last = collect(&mut stream, 1).await;
        assert!(last[0].contains("row-5"));
        let mut conn = stream.shutdown().await.unwrap();
        drop_slot(&mut conn, "s1", true).await.unwrap();
        assert!(!slot_exists(&mut conn, "s1").await.unwrap());
    }
}

#[tokio::test]
async fn exported_snapshot_and_temporary_slot() {
    let _g = SERIAL.lock().await;
    let major = versions_under_test()[0];
    let c = Cluster::start(major).unwrap();
    let mut conn = connect(&c.dsn()).await.unwrap();
    let mut opts = CreateSlot::new("tmp1");
    opts.temporary = true;
    opts.snapshot = SnapshotAction::Export;
    let s = create_slot(&mut conn, &opts).await.unwrap();
    assert!(s.snapshot_name.is_some());
    assert_eq!(s.output_plugin.as_deref(), Some("pgoutput"));
    let info = slot_info(&mut conn, "tmp1").await.unwrap().unwrap();
    assert!(info.temporary);
    conn.close().await.unwrap();
}

fn auth_cluster(major: u32) -> Cluster {
    Cluster::builder(major)
        .setting("password_encryption", "'scram-sha-256'")
        .hba_line("host all md5user 127.0.0.1/32 md5")
        .hba_line("host all all 127.0.0.1/32 scram-sha-256")
        .start()
        .unwrap()
}

#[tokio::test]
async fn scram_and_md5_authentication() {
    let _g = SERIAL.lock().await;
    for major in versions_under_test() {
        let c = auth_cluster(major);
        c.psql(
            "CREATE ROLE rep LOGIN REPLICATION PASSWORD 'sekret''pw'; \
             CREATE ROLE norep LOGIN PASSWORD 'x'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5pw'",
        )
        .unwrap();
        let base = format!("host=127.0.0.1 port={} dbname=postgres", c.port());

        let mut conn = connect(&format!("{base} user=rep password='sekret\\'pw'"))
            .await
            .unwrap_or_else(|e| panic!("PG{major} SCRAM: {e}"));
        identify_system(&mut conn).await.unwrap();
        conn.close().await.unwrap();

        let conn = connect(&format!("{base} user=md5user password=md5pw"))
            .await
            .unwrap_or_else(|e| panic!("PG{major} md5: {e}"));
        conn.close().await.unwrap();

        let e = connect(&format!("{base} user=rep password=wrong"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NeedsOperator, "{e}");
        assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
        assert!(e.to_string().contains("check the password"), "{e}");

        let e = connect(&format!("{base} user=md5user password=wrong"))
            .await
            .unwrap_err();
        assert_eq!(e.sqlstate(), Some("28P01"), "{e}");

        let e = connect(&format!("{base} user=rep")).await.unwrap_err();
        assert!(matches!(e, SourceError::PasswordMissing { .. }), "{e}");
        assert!(e.to_string().contains("PGPASSWORD"), "{e}");

        // No REPLICATION attribute.
        let e = connect(&format!("{base} user=norep password=x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NeedsOperator, "{e}");
        assert!(
            e.to_string().contains("ALTER ROLE norep WITH REPLICATION"),
            "PG{major}: {e}"
        );
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn tls_per_sslmode() {
    let _g = SERIAL.lock().await;
    let certs = Certs::new("/CN=pgmesh test CA");
    let other = Certs::new("/CN=some other CA");
    let ca = certs.ca();
    let other_ca = other.ca();

    for major in versions_under_test() {
        let c = Cluster::builder(major)
            .hba_line("host all scramtls 127.0.0.1/32 scram-sha-256")
            .start()
            .unwrap();
        c.psql("CREATE ROLE scramtls LOGIN REPLICATION PASSWORD 'pw'")
            .unwrap();
        let base = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            c.port()
        );
        let named = |host: &str| {
            format!(
                "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres",
                c.port()
            )
        };

        // Before TLS is on: require fails clearly, prefer falls back to plain.
        let e = connect(&format!("{base} sslmode=require"))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::TlsNotSupported { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::NeedsOperator);
        assert!(!connect(&base).await.unwrap().is_tls());

        enable_tls(&c, &certs, false, &[]);

        for mode in ["prefer", "require"] {
            let conn = connect(&format!("{base} sslmode={mode}"))
                .await
                .unwrap_or_else(|e| panic!("PG{major} {mode}: {e}"));
            assert!(conn.is_tls(), "{mode}");
            conn.close().await.unwrap();
        }
        assert!(!connect(&format!("{base} sslmode=disable"))
            .await
            .unwrap()
            .is_tls());

        let ok = [
            format!(
                "{} sslmode=verify-full sslrootcert={}",
                named("db.pgmesh.test"),
                ca.display()
            ),
            format!("{base} sslmode=verify-full sslrootcert={}", ca.display()),
            format!(
                "{} sslmode=verify-ca sslrootcert={}",
                named("wrong.pgmesh.test"),
                ca.display()
            ),
        ];
        for dsn in &ok {
            let mut conn = connect(dsn)
                .await
                .unwrap_or_else(|e| panic!("PG{major} {dsn}: {e}"));
            assert!(conn.is_tls());
            identify_system(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }

        // SCRAM over TLS: the server offers SCRAM-SHA-256-PLUS; we answer without
        // channel binding, which it accepts.
        let conn = connect(&format!(
            "host=db.pgmesh.test hostaddr=127.0.0.1 port={} user=scramtls password=pw \
             dbname=postgres sslmode=verify-full sslrootcert={}",
            c.port(),
            ca.display()
        ))
        .await
        .unwrap_or_else(|e| panic!("PG{major} SCRAM over TLS: {e}"));
        assert!(conn.is_tls());
        conn.close().await.unwrap();

        let e = connect(&format!(
            "{} sslmode=verify-full sslrootcert={}",
            named("wrong.pgmesh.test"),
            ca.display()
        ))
        .await
        .unwrap_err();
        assert!(matches!(e, SourceError::Tls { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::NeedsOperator);
        assert!(
            e.to_string().contains("not valid for this host name"),
            "{e}"
        );

        for mode in ["verify-full", "verify-ca", "require"] {
            let e = connect(&format!(
                "{} sslmode={mode} sslrootcert={}",
                named("db.pgmesh.test"),
                other_ca.display()
            ))
            .await
            .unwrap_err();
            assert!(matches!(e, SourceError::Tls { .. }), "{mode}: {e}");
            assert!(
                e.to_string().contains("not signed by a CA in sslrootcert"),
                "{e}"
            );
        }

        // No sslrootcert for verify-full means the public webpki roots: our CA is not one.
        let e = connect(&format!("{} sslmode=verify-full", named("db.pgmesh.test")))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::Tls { .. }), "{e}");
        let e = connect(&format!("{base} sslmode=verify-ca"))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::Config(_)), "{e}");
    }
}

#[tokio::test]
async fn server_errors_have_kinds_and_name_the_fix() {
    let _g = SERIAL.lock().await;
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap();
        setup_table(&c);
        let sc = StreamConfig::new("missing_slot", &["pub"]);
        let conn = connect(&c.dsn()).await.unwrap();
        let e = ReplicationStream::start(conn, &sc, Lsn::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(e, SourceError::SlotMissing { .. }),
            "PG{major}: {e}"
        );
        assert_eq!(e.kind(), ErrorKind::NeedsOperator);
        assert_eq!(e.sqlstate(), Some("42704"));
        let text = e.to_string();
        assert!(text.contains("missing_slot") && text.contains("pgmesh tail --create-slot"));

        let mut conn = connect(&c.dsn()).await.unwrap();
        create_slot(&mut conn, &CreateSlot::new("s1"))
            .await
            .unwrap();
        let e = create_slot(&mut conn, &CreateSlot::new("s1"))
            .await
            .unwrap_err();
        assert_eq!(e.sqlstate(), Some("42710"), "{e}"); // duplicate_object
        conn.close().await.unwrap();

        let conn = connect(&c.dsn()).await.unwrap();
        let e = ReplicationStream::start(conn, &StreamConfig::new("s1", &["nopub"]), Lsn::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::PublicationMissing { .. }), "{e}");
        assert!(e.to_string().contains("\"nopub\""), "{e}");

        // The slot is busy while another stream holds it.
        let conn = connect(&c.dsn()).await.unwrap();
        let sc = StreamConfig::new("s1", &["pub"]);
        let held = ReplicationStream::start(conn, &sc, Lsn::ZERO)
            .await
            .unwrap();
        let conn = connect(&c.dsn()).await.unwrap();
        let e = ReplicationStream::start(conn, &sc, Lsn::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::SlotActive { .. }), "{e}");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.sqlstate(), Some("55006"));
        held.shutdown().await.unwrap().close().await.unwrap();

        // The output-plugin allow-list (newest minors only).
        let has_allow_list = c
            .psql("SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'")
            .unwrap()
            == "1";
        if has_allow_list {
            c.psql("ALTER SYSTEM SET output_plugin_libraries = 'pgoutput'")
                .unwrap();
            c.reload().unwrap();
            wait_for("reload", || {
                c.psql("SHOW output_plugin_libraries").unwrap() == "pgoutput"
            });
            let mut conn = connect(&c.dsn()).await.unwrap();
            let mut o = CreateSlot::new("td");
            o.plugin = "test_decoding".into();
            let e = create_slot(&mut conn, &o).await.unwrap_err();
            assert!(matches!(e, SourceError::PluginNotAllowed { .. }), "{e}");
            assert!(e.to_string().contains("output_plugin_libraries"), "{e}");
            assert!(e.to_string().contains("test_decoding"), "{e}");
        } else {
            eprintln!("PG{major}: no output_plugin_libraries GUC, allow-list case skipped");
        }
        drop(c);

        // wal_level = replica.
        let c = Cluster::builder(major)
            .setting("wal_level", "replica")
            .start()
            .unwrap();
        let mut conn = connect(&c.dsn()).await.unwrap();
        let e = create_slot(&mut conn, &CreateSlot::new("s1"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, SourceError::WalLevelNotLogical { .. }),
            "PG{major}: {e}"
        );
        assert_eq!(e.sqlstate(), Some("55000"));
        assert!(e.to_string().contains("wal_level = logical"));
    }
}

async fn pump(rs: &mut ReconnectingStream, col: &mut Collector, recs: &mut Vec<Lsn>, n: usize) {
    let fut = async {
        while col.done.len() < n {
            match rs.next_event().await.expect("non-transient error") {
                ReplicationEvent::XLogData(x) => col.feed(x.data),
                ReplicationEvent::Reconnected { from } => {
                    col.reset_partial();
                    recs.push(from);
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("no {n} transactions within {DEADLINE:?}"));
}

#[tokio::test]
async fn reconnects_after_crash_restart_without_gap() {
    let _g = SERIAL.lock().await;
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap();
        setup_table(&c);
        let mut conn = connect(&c.dsn()).await.unwrap();
        let created = create_slot(&mut conn, &CreateSlot::new("s1"))
            .await
            .unwrap();
        conn.close().await.unwrap();
        // Make the slot durable before we crash the server.
        c.psql("CHECKPOINT").unwrap();

        let policy = BackoffPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            healthy_after: Duration::from_secs(5),
        };
        let mut sc = StreamConfig::new("s1", &["pub"]);
        sc.status_interval = Duration::from_millis(200);
        let mut rs = ReconnectingStream::new(cfg(&c.dsn()), sc, created.consistent_point, policy);

        let mut col = Collector::default();
        let mut recs = Vec::new();
        insert(&c, 1);
        insert(&c, 2);
        pump(&mut rs, &mut col, &mut recs, 2).await;
        let ack = col.done[0].end_lsn;
        rs.set_flushed(ack);
        // Let a status update carry the ack, then crash.
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.restart_immediate().unwrap();
        insert(&c, 3);
        pump(&mut rs, &mut col, &mut recs, 4).await;
        assert_eq!(recs, vec![ack], "PG{major}: reconnected from the ack");
        // Resumed right after the ack: transaction 2 again (unacknowledged), then 3.
        assert!(
            col.done[2].contains("row-2"),
            "PG{major}: {:?}",
            col.done[2]
        );
        assert_eq!(col.done[2].final_lsn, col.done[1].final_lsn);
        assert!(col.done[3].contains("row-3"));
        rs.set_flushed(col.done[3].end_lsn);
        let end = col.done[3].end_lsn;
        rs.shutdown().await.unwrap();
        assert_eq!(confirmed_flush(&c, "s1"), end);
    }
}

#[tokio::test]
async fn idle_stream_survives_wal_sender_timeout_and_reports_flush() {
    let _g = SERIAL.lock().await;
    for major in versions_under_test() {
        let c = Cluster::builder(major)
            .setting("wal_sender_timeout", "'2s'")
            .start()
            .unwrap();
        setup_table(&c);
        // Unix socket connections work too (the testkit's socket dir is the data dir).
        let sock = format!(
            "host={} port={} user=postgres dbname=postgres",
            c.data_dir().display(),
            c.port()
        );
        let mut conn = connect(&sock).await.unwrap();
        create_slot(&mut conn, &CreateSlot::new("s1"))
            .await
            .unwrap();
        let mut sc = StreamConfig::new("s1", &["pub"]);
        // Longer than wal_sender_timeout: only answered keepalives keep us alive.
        sc.status_interval = Duration::from_secs(10);
        let mut stream = ReplicationStream::start(conn, &sc, Lsn::ZERO)
            .await
            .unwrap();
        let pid: i32 = c
            .psql("SELECT pid FROM pg_stat_replication WHERE application_name = 'pgmesh'")
            .unwrap()
            .parse()
            .unwrap();

        let idle = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut keepalives = 0;
        while tokio::time::Instant::now() < idle {
            match tokio::time::timeout_at(idle, stream.next_event()).await {
                Ok(Ok(Some(ReplicationEvent::Keepalive { .. }))) => keepalives += 1,
                Ok(other) => panic!("PG{major}: unexpected {other:?}"),
                Err(_) => break,
            }
        }
        assert!(keepalives >= 2, "PG{major}: {keepalives} keepalives");
        // Same walsender: we were not disconnected by wal_sender_timeout.
        let pid_after: i32 = c
            .psql("SELECT pid FROM pg_stat_replication WHERE application_name = 'pgmesh'")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pid, pid_after);

        insert(&c, 1);
        let txns = collect(&mut stream, 1).await;
        stream.set_flushed(txns[0].end_lsn);
        stream.send_status(false).await.unwrap();
        let want = txns[0].end_lsn.to_string();
        wait_for("flush_lsn in pg_stat_replication", || {
            c.psql("SELECT flush_lsn FROM pg_stat_replication").unwrap() == want
        });
        stream.shutdown().await.unwrap().close().await.unwrap();
    }
}

#[tokio::test]
async fn streams_from_a_wal2json_slot() {
    let _g = SERIAL.lock().await;
    let c = Cluster::start(15).unwrap();
    let so = c
        .bin_dir()
        .parent()
        .map(|d| d.join("lib").join("wal2json.so"));
    if !so.is_some_and(|p| p.exists()) {
        eprintln!("skipping: no wal2json for PostgreSQL 15 on this machine");
        return;
    }
    setup_table(&c);
    let mut conn = connect(&c.dsn()).await.unwrap();
    let mut o = CreateSlot::new("w1");
    o.plugin = "wal2json".into();
    create_slot(&mut conn, &o).await.unwrap();
    insert(&c, 1);
    let sc = StreamConfig::with_plugin(
        "w1",
        OutputPlugin::Other {
            name: "wal2json".into(),
            options: vec![("format-version".into(), "2".into())],
        },
    );
    let mut stream = ReplicationStream::start(conn, &sc, Lsn::ZERO)
        .await
        .unwrap();
    let mut lines = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !lines
            .iter()
            .any(|l: &String| l.contains("\"action\":\"C\""))
        {
            if let Some(ReplicationEvent::XLogData(x)) = stream.next_event().await.unwrap() {
                lines.push(String::from_utf8(x.data.to_vec()).unwrap());
            }
        }
    })
    .await
    .expect("wal2json commit line");
    assert!(lines.iter().all(|l| l.starts_with('{')), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("row-1")), "{lines:?}");
    stream.shutdown().await.unwrap().close().await.unwrap();
}
