//! Feedback rules of the stream against a scripted walsender on a local socket: what a
//! real server cannot show exactly (immediate answers to reply-requested keepalives, the
//! flush LSN never running ahead of `set_flushed`, the final acknowledgement before
//! CopyDone).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pgmesh::protocol::replication::StandbyStatusUpdate;
use pgmesh::source::*;
use pgmesh::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn send(s: &mut TcpStream, tag: u8, body: &[u8]) {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_u32(body.len() as u32 + 4);
    b.put_slice(body);
    s.write_all(&b).await.unwrap();
}

async fn recv(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

fn keepalive(wal_end: u64, reply: bool) -> Vec<u8> {
    let mut b = vec![b'k'];
    b.extend(wal_end.to_be_bytes());
    b.extend(0i64.to_be_bytes());
    b.push(u8::from(reply));
    b
}

fn xlogdata(start: u64, data: &[u8]) -> Vec<u8> {
    let mut b = vec![b'w'];
    b.extend(start.to_be_bytes());
    b.extend((start + 100).to_be_bytes());
    b.extend(0i64.to_be_bytes());
    b.extend(data);
    b
}

async fn expect_status(s: &mut TcpStream) -> StandbyStatusUpdate {
    let (tag, body) = tokio::time::timeout(Duration::from_secs(2), recv(s))
        .await
        .expect("a status update within 2 s");
    assert_eq!(tag, b'd');
    StandbyStatusUpdate::decode(&body).unwrap()
}

/// Startup, the publication check, START_REPLICATION; returns the command text.
async fn handshake(s: &mut TcpStream) -> String {
    let len = s.read_u32().await.unwrap() as usize;
    let mut startup = vec![0; len - 4];
    s.read_exact(&mut startup).await.unwrap();
    let text = String::from_utf8_lossy(&startup);
    assert!(text.contains("replication\0database\0"), "{text:?}");
    send(s, b'R', &0i32.to_be_bytes()).await;
    send(s, b'S', b"server_version\x0016.4\0").await;
    send(s, b'Z', b"I").await;

    let (tag, q) = recv(s).await;
    assert_eq!(tag, b'Q');
    assert!(String::from_utf8_lossy(&q).contains("pg_publication"));
    let mut t = BytesMut::new();
    t.put_i16(1);
    t.put_slice(b"pubname\0");
    t.put_slice(&[0; 18]);
    send(s, b'T', &t).await;
    let mut d = BytesMut::new();
    d.put_i16(1);
    d.put_i32(3);
    d.put_slice(b"pub");
    send(s, b'D', &d).await;
    send(s, b'C', b"SELECT 1\0").await;
    send(s, b'Z', b"I").await;

    let (tag, q) = recv(s).await;
    assert_eq!(tag, b'Q');
    send(s, b'W', &[0, 0, 0]).await;
    String::from_utf8_lossy(&q)
        .trim_end_matches('\0')
        .to_string()
}

/// A replication connection to the scripted walsender on `port`.
async fn connect(port: u16) -> ReplicationConnection {
    let cfg = SourceConfig::from_dsn_with_env(
        &format!("host=127.0.0.1 port={port} user=u dbname=d sslmode=disable"),
        |_| None,
    )
    .unwrap();
    ReplicationConnection::connect(&cfg).await.unwrap()
}

/// The stream of slot s1 from 0/100, with no status update on a timer (1 h interval).
async fn start_quiet(conn: ReplicationConnection) -> ReplicationStream {
    let mut sc = StreamConfig::new("s1", &["pub"]);
    sc.status_interval = Duration::from_secs(3600);
    ReplicationStream::start(conn, &sc, Lsn(0x100))
        .await
        .unwrap()
}

#[tokio::test]
async fn feedback_never_runs_ahead_of_set_flushed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let cmd = handshake(&mut s).await;
        assert_eq!(
            cmd,
            "START_REPLICATION SLOT s1 LOGICAL 0/100 (\"proto_version\" '4', \
             \"publication_names\" '\"pub\"')"
        );
        let mut seen = Vec::new();

        // A reply-requested keepalive is answered at once (status interval is 1 h). Nothing
        // is acknowledged yet: the start position is not a durability claim. Write is
        // flush, not what was received: the walsender's "sent all I had" keepalive comes
        // only while our write is behind its send position.
        send(&mut s, b'd', &keepalive(0x500, true)).await;
        let st = expect_status(&mut s).await;
        assert_eq!((st.write, st.flush, st.apply), (Lsn(0), Lsn(0), Lsn(0)));
        seen.push(st);

        // Data, then a keepalive: flush is what the client declared, no more. (A keepalive
        // that asks no reply is answered once no status went out for a while.)
        send(&mut s, b'd', &xlogdata(0x600, b"Bxyz")).await;
        tokio::time::sleep(
            pgmesh::source::stream::KEEPALIVE_REPLY_INTERVAL + Duration::from_millis(50),
        )
        .await;
        send(&mut s, b'd', &keepalive(0x700, false)).await;
        let st = expect_status(&mut s).await;
        assert_eq!((st.write, st.flush), (Lsn(0x300), Lsn(0x300)));
        seen.push(st);

        // Shutdown: final status, CopyDone; answer CopyDone, CommandComplete, ready.
        let st = expect_status(&mut s).await;
        assert_eq!(st.flush, Lsn(0x650));
        seen.push(st);
        let (tag, _) = recv(&mut s).await;
        assert_eq!(tag, b'c');
        send(&mut s, b'd', &xlogdata(0x800, b"Cdiscarded")).await;
        send(&mut s, b'c', &[]).await;
        send(&mut s, b'C', b"START_STREAMING\0").await;
        send(&mut s, b'Z', b"I").await;
        let (tag, _) = recv(&mut s).await;
        assert_eq!(tag, b'X', "Terminate after close()");
        seen
    });

    let conn = connect(port).await;
    assert_eq!(conn.server_major(), 16);
    let mut stream = start_quiet(conn).await;

    let ev = stream.next_event().await.unwrap().unwrap();
    assert!(matches!(
        ev,
        ReplicationEvent::Keepalive {
            wal_end: Lsn(0x500),
            ..
        }
    ));
    let ev = stream.next_event().await.unwrap().unwrap();
    let ReplicationEvent::XLogData(x) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!((x.wal_start, &x.data[..]), (Lsn(0x600), &b"Bxyz"[..]));
    stream.set_flushed(Lsn(0x300));
    stream.set_flushed(Lsn(0x200)); // never backwards
    let ev = stream.next_event().await.unwrap().unwrap();
    assert!(matches!(
        ev,
        ReplicationEvent::Keepalive {
            wal_end: Lsn(0x700),
            ..
        }
    ));
    stream.set_flushed(Lsn(0x650));
    let conn = stream.shutdown().await.unwrap();
    conn.close().await.unwrap();

    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn server_error_in_copyboth_is_classified() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        handshake(&mut s).await;
        send(
            &mut s,
            b'E',
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
        )
        .await;
    });
    let conn = connect(port).await;
    let mut stream = ReplicationStream::start(conn, &StreamConfig::new("s1", &["pub"]), Lsn::ZERO)
        .await
        .unwrap();
    let e = stream.next_event().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert_eq!(e.sqlstate(), Some("57P01"));
    server.await.unwrap();
}

/// `more_arrived` says whether anything came behind the last frame (the sidecar ends a
/// batch at a keepalive only when nothing did), and what it reads on the way is not
/// lost: the next event is the data that arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_arrived_sees_data_behind_a_keepalive_and_keeps_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        handshake(&mut s).await;
        send(&mut s, b'd', &keepalive(0x500, false)).await;
        go_rx.await.unwrap();
        send(&mut s, b'd', &xlogdata(0x600, b"Bxyz")).await;
        // Keep the connection until the client is done (status updates go unread).
        done_rx.await.unwrap();
    });
    let mut stream = start_quiet(connect(port).await).await;
    let ev = stream.next_event().await.unwrap().unwrap();
    assert!(matches!(ev, ReplicationEvent::Keepalive { .. }), "{ev:?}");
    assert!(
        !stream.more_arrived().unwrap(),
        "nothing was sent behind the keepalive"
    );
    go_tx.send(()).unwrap();
    // The data is on its way: wait until the socket shows it (the sleep only paces the
    // polling; the loop waits for the fact).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !stream.more_arrived().unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the data sent behind the keepalive never showed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next_event())
        .await
        .expect("the data read by more_arrived is the next event")
        .unwrap()
        .unwrap();
    let ReplicationEvent::XLogData(x) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!((x.wal_start, &x.data[..]), (Lsn(0x600), &b"Bxyz"[..]));
    done_tx.send(()).unwrap();
    server.await.unwrap();
}
