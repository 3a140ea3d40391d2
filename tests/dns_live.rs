//! DNS switching against real Knot DNS servers (Debian's knotd 3.2): one TSIG-signed RFC 2136
//! UPDATE per server replaces the endpoint's answer, every server is confirmed by a query,
//! a server that is down is named and catches up, and a wrong key fails at once.
//!
//! Run with `--nocapture` to see the measured publish → all-confirmed times.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use pgmesh::testkit::KnotDns;
use pgmesh::traffic::dns::{answer, DnsConfig, DnsOutcome, DnsPublisher, RecordSet, TsigKey};

const ZONE: &str = "db.example.com.";
const NAME: &str = "app.db.example.com.";
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ips(list: &[&str]) -> RecordSet {
    RecordSet::Addresses(list.iter().map(|s| s.parse().unwrap()).collect())
}

fn set_a() -> RecordSet {
    ips(&["127.0.0.11", "::11"])
}

fn set_b() -> RecordSet {
    ips(&["127.0.0.12"])
}

fn set_c() -> RecordSet {
    RecordSet::Cname("lb-c.example.net.".to_string())
}

/// Two servers of one zone sharing one TSIG key, as a zone's primaries would.
fn two_servers() -> (KnotDns, KnotDns) {
    let first = KnotDns::start(ZONE).unwrap();
    let (key, secret) = first.tsig();
    let second = KnotDns::start_with_key(ZONE, key, secret).unwrap();
    (first, second)
}

fn config(servers: &[SocketAddr], tsig: Option<TsigKey>, timeout: Duration) -> DnsConfig {
    DnsConfig {
        zone: ZONE.to_string(),
        servers: servers.to_vec(),
        ttl: Duration::from_secs(5),
        tsig,
        timeout,
        records: BTreeMap::from([
            ("a".to_string(), set_a()),
            ("b".to_string(), set_b()),
            ("c".to_string(), set_c()),
        ]),
    }
}

fn report(outcome: &DnsOutcome) {
    let per_server: Vec<String> = outcome
        .servers
        .iter()
        .map(|s| {
            format!(
                "{} {:?} ({} attempts)",
                s.server, s.confirmed_after, s.attempts
            )
        })
        .collect();
    println!(
        "publish {} -> {}: all confirmed after {:?} [{}]",
        outcome.endpoint,
        outcome.owner,
        outcome.elapsed,
        per_server.join(", ")
    );
}

#[test]
fn both_servers_switch_between_address_sets_and_cnames_and_confirm() {
    let (s1, s2) = two_servers();
    let servers = [s1.addr(), s2.addr()];
    let rt = runtime();
    let publisher = DnsPublisher::new(config(
        &servers,
        Some(s1.tsig_key()),
        Duration::from_secs(10),
    ));
    rt.block_on(async {
        assert_eq!(answer(s1.addr(), NAME, QUERY_TIMEOUT).await.unwrap(), None);
        // a: A + AAAA; b: A only, so the AAAA must go; c: a CNAME replacing addresses; and
        // back to addresses replacing the CNAME.
        for (owner, want) in [
            ("a", set_a()),
            ("b", set_b()),
            ("c", set_c()),
            ("a", set_a()),
        ] {
            let outcome = publisher.publish("app", owner).await;
            assert!(outcome.done(), "{}", outcome.summary());
            report(&outcome);
            for s in &outcome.servers {
                assert_eq!(s.attempts, 1, "{}", outcome.summary());
                assert!(s.confirmed_after.unwrap() <= outcome.elapsed);
                assert_eq!(s.error, None);
            }
            for server in servers {
                let got = answer(server, NAME, QUERY_TIMEOUT).await.unwrap();
                assert_eq!(got, Some(want.clone()), "{server} after publishing {owner}");
            }
        }
        // An unknown owner is an error in the outcome, not a panic or a silent no-op.
        let unknown = publisher.publish("app", "zz").await;
        assert!(!unknown.done());
        assert!(
            unknown.summary().contains("traffic.dns.records.zz"),
            "{}",
            unknown.summary()
        );
    });
}

#[test]
fn a_down_server_is_named_then_catches_up_within_the_retry_window_or_after_restart() {
    let (s1, mut s2) = two_servers();
    let servers = [s1.addr(), s2.addr()];
    let rt = runtime();
    s2.kill().unwrap();

    // Down for the whole publish: the other server confirms, the down one is named.
    let short = DnsPublisher::new(config(
        &servers,
        Some(s1.tsig_key()),
        Duration::from_secs(2),
    ));
    let outcome = rt.block_on(short.publish("app", "a"));
    assert!(!outcome.done(), "{}", outcome.summary());
    let (up, down) = (&outcome.servers[0], &outcome.servers[1]);
    assert!(up.confirmed && up.error.is_none(), "{}", outcome.summary());
    assert!(!down.confirmed && down.confirmed_after.is_none());
    assert!(down.attempts >= 3, "backoff retried: {}", outcome.summary());
    let why = down.error.as_deref().unwrap();
    assert!(why.contains("refused"), "{why}");
    let summary = outcome.summary();
    assert!(
        summary.contains(&format!("not confirmed: {}", s2.addr())),
        "{summary}"
    );
    assert!(summary.contains("refused"), "{summary}");
    println!("{summary}");

    // Back up: the next publish confirms both.
    s2.restart().unwrap();
    let outcome = rt.block_on(short.publish("app", "a"));
    assert!(outcome.done(), "{}", outcome.summary());
    assert_eq!(
        rt.block_on(answer(s2.addr(), NAME, QUERY_TIMEOUT)).unwrap(),
        Some(set_a())
    );
    // A crash keeps what was published: knotd reloads its zone file and journal.
    s2.kill().unwrap();
    s2.restart().unwrap();
    assert_eq!(
        rt.block_on(answer(s2.addr(), NAME, QUERY_TIMEOUT)).unwrap(),
        Some(set_a())
    );

    // Down when the publish starts, back while it retries. The test takes the dead server's
    // port itself and accepts the publisher's first connection (the fact that it tried),
    // closes it unanswered, then brings knotd back on that port.
    s2.kill().unwrap();
    let patient = DnsPublisher::new(config(
        &servers,
        Some(s1.tsig_key()),
        Duration::from_secs(10),
    ));
    let impostor = TcpListener::bind(s2.addr()).unwrap();
    let publishing = rt.spawn(async move { patient.publish("app", "b").await });
    let (first_try, _) = impostor.accept().unwrap();
    drop(first_try);
    drop(impostor);
    s2.restart().unwrap();
    let outcome = rt.block_on(publishing).unwrap();
    assert!(outcome.done(), "{}", outcome.summary());
    report(&outcome);
    assert_eq!(outcome.servers[0].attempts, 1);
    assert!(outcome.servers[1].attempts >= 2, "{}", outcome.summary());
    for server in servers {
        assert_eq!(
            rt.block_on(answer(server, NAME, QUERY_TIMEOUT)).unwrap(),
            Some(set_b())
        );
    }
}

#[test]
fn a_wrong_key_fails_at_once_with_a_message_about_tsig() {
    let knot = KnotDns::start(ZONE).unwrap();
    let rt = runtime();
    let good = knot.tsig_key();
    let cases = [
        (
            "wrong secret",
            Some(TsigKey {
                secret: vec![0x5a; 32],
                ..good.clone()
            }),
            &["TSIG", "BADSIG", "tsig_secret"][..],
        ),
        (
            "unknown key name",
            Some(TsigKey {
                name: "not-the-key.".to_string(),
                ..good.clone()
            }),
            &["TSIG", "BADKEY", "not-the-key."][..],
        ),
        ("no key", None, &["NOTAUTH", "allow UPDATE"][..]),
    ];
    for (case, tsig, words) in cases {
        let publisher = DnsPublisher::new(config(&[knot.addr()], tsig, Duration::from_secs(10)));
        let outcome = rt.block_on(publisher.publish("app", "a"));
        assert!(!outcome.done(), "{case}: {}", outcome.summary());
        let s = &outcome.servers[0];
        assert_eq!(
            s.attempts,
            1,
            "{case}: not transient: {}",
            outcome.summary()
        );
        assert!(
            outcome.elapsed < Duration::from_secs(2),
            "{case}: took {:?}",
            outcome.elapsed
        );
        let why = s.error.as_deref().unwrap();
        for w in words {
            assert!(why.contains(w), "{case}: {why:?} lacks {w:?}");
        }
        println!("{case}: {}", outcome.summary());
    }
    // Nothing was published by the rejected updates.
    assert_eq!(
        rt.block_on(answer(knot.addr(), NAME, QUERY_TIMEOUT))
            .unwrap(),
        None
    );
}
