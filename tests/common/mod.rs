//! Shared by the pgoutput golden and live tests: the scenarios run against real
//! servers, capture through the SQL interface, and the golden file format.
#![allow(dead_code)]

pub mod encode;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pgmesh::protocol::pgoutput::Decoder;
use pgmesh::testkit::Cluster;

/// One way of decoding the same kind of workload: pgoutput options plus the SQL run.
pub struct Scenario {
    pub name: &'static str,
    /// Oldest server major that supports the options.
    pub min_major: u32,
    pub proto_version: u32,
    /// `streaming 'parallel'` (Stream Abort then carries abort LSN and time).
    pub parallel: bool,
    /// The slot is created with two_phase = true and `two_phase 'on'` is passed.
    pub two_phase: bool,
    /// Extra pgoutput options besides proto_version and publication_names.
    pub options: &'static [(&'static str, &'static str)],
    /// Statements, each run in its own psql session (and so its own transaction
    /// unless the string has BEGIN/COMMIT).
    pub workload: &'static [&'static str],
}

/// Tables, types, publication and origin used by every scenario.
pub const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(10,2),
    tags text[], created timestamptz, m mood, payload bytea);
CREATE TABLE full_ident (id int, v text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE TABLE docs (id int PRIMARY KEY, rev int, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id serial PRIMARY KEY, parent_id int REFERENCES parent(id));
CREATE TABLE big (id int PRIMARY KEY, pad text);
CREATE PUBLICATION pub FOR ALL TABLES;
SELECT pg_replication_origin_create('peer_x');
";

/// Empties the tables between scenarios (before the slot exists, so not captured).
const RESET: &str = "TRUNCATE items, full_ident, docs, parent, child, big CASCADE";

const DML: &[&str] = &[
    "INSERT INTO items VALUES
        (1, 'apple', 3, 1.50, '{red,green}', '2024-01-02 03:04:05+00', 'happy', '\\x0102ff'),
        (2, 'pear', NULL, NULL, NULL, NULL, NULL, NULL)",
    "UPDATE items SET qty = 5 WHERE id = 1",
    "UPDATE items SET id = 20 WHERE id = 2",
    "DELETE FROM items WHERE id = 20",
    "INSERT INTO full_ident VALUES (1, 'x'), (2, 'y')",
    "UPDATE full_ident SET v = 'z' WHERE id = 1",
    "DELETE FROM full_ident WHERE id = 2",
    "INSERT INTO docs SELECT 1, 1, string_agg(md5(i::text || random()::text), '')
        FROM generate_series(1, 320) i",
    "UPDATE docs SET rev = 2 WHERE id = 1",
    "INSERT INTO parent VALUES (1); INSERT INTO child (parent_id) VALUES (1)",
    "TRUNCATE parent, child RESTART IDENTITY CASCADE",
    "TRUNCATE full_ident",
    "BEGIN; SELECT pg_logical_emit_message(true, 'pgmesh', 'txn message');
        INSERT INTO items (id, name) VALUES (5, 'with message'); COMMIT",
    "SELECT pg_logical_emit_message(false, 'pgmesh', 'immediate message')",
    "SELECT pg_replication_origin_session_setup('peer_x');
     BEGIN; SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-05-06 07:08:09+00');
     INSERT INTO items (id, name) VALUES (7, 'from peer'); COMMIT",
    "INSERT INTO parent VALUES (99)",
];

const STREAM: &[&str] = &[
    // Streamed and committed: every change kind inside the stream, with xids, and a
    // streamed subtransaction that rolls back (Stream Abort with subxid != xid).
    "BEGIN;
     SELECT pg_logical_emit_message(true, 'pgmesh', 'streamed message');
     INSERT INTO items VALUES (1, 'streamed', 1, 2.50, '{s}', NULL, 'ok', NULL);
     INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 800) g;
     SAVEPOINT s1;
     INSERT INTO big SELECT g, 'row ' || g FROM generate_series(2001, 2600) g;
     ROLLBACK TO SAVEPOINT s1;
     UPDATE items SET qty = 2 WHERE id = 1;
     DELETE FROM big WHERE id <= 2;
     INSERT INTO parent VALUES (1);
     TRUNCATE parent, child CASCADE;
     COMMIT",
    // A whole streamed transaction rolled back. PG16+ skip streaming transactions
    // already aborted when decoded (always so through the SQL interface), so only
    // PG15 streams this one and sends a top-level Stream Abort for it.
    "BEGIN;
     INSERT INTO big SELECT g, 'row ' || g FROM generate_series(3001, 3800) g;
     ROLLBACK",
    // Abort records are not flushed at once and decoding through the SQL interface
    // stops at the flush position: a committed transaction flushes them.
    "INSERT INTO parent VALUES (99)",
];

const TWO_PHASE: &[&str] = &[
    "BEGIN; INSERT INTO items (id, name) VALUES (1, 'prepared');
     PREPARE TRANSACTION 'gid_commit'",
    "COMMIT PREPARED 'gid_commit'",
    "BEGIN; INSERT INTO items (id, name) VALUES (2, 'rolled back');
     PREPARE TRANSACTION 'gid_rollback'",
    "ROLLBACK PREPARED 'gid_rollback'",
    "BEGIN; INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 800) g;
     PREPARE TRANSACTION 'gid_stream'",
    "COMMIT PREPARED 'gid_stream'",
    "INSERT INTO parent VALUES (99)",
];

const BINARY: &[&str] = &[
    "INSERT INTO items VALUES
        (1, 'apple', 3, 1.50, '{red,green}', '2024-01-02 03:04:05+00', 'happy', '\\x0102ff')",
    "UPDATE items SET id = 2, qty = NULL WHERE id = 1",
    "DELETE FROM items WHERE id = 2",
    "INSERT INTO parent VALUES (99)",
];

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "dml",
        min_major: 15,
        proto_version: 1,
        parallel: false,
        two_phase: false,
        options: &[("messages", "true")],
        workload: DML,
    },
    Scenario {
        name: "binary",
        min_major: 15,
        proto_version: 2,
        parallel: false,
        two_phase: false,
        options: &[("binary", "true")],
        workload: BINARY,
    },
    Scenario {
        name: "stream",
        min_major: 15,
        proto_version: 2,
        parallel: false,
        two_phase: false,
        options: &[("streaming", "on"), ("messages", "true")],
        workload: STREAM,
    },
    Scenario {
        name: "stream_parallel",
        min_major: 16,
        proto_version: 4,
        parallel: true,
        two_phase: false,
        options: &[("streaming", "parallel"), ("messages", "true")],
        workload: STREAM,
    },
    Scenario {
        name: "two_phase",
        min_major: 15,
        proto_version: 3,
        parallel: false,
        two_phase: true,
        options: &[("two_phase", "on"), ("streaming", "on")],
        workload: TWO_PHASE,
    },
];

/// One captured message: the row of `pg_logical_slot_peek_binary_changes`.
#[derive(Debug, Clone)]
pub struct Captured {
    pub lsn: String,
    pub xid: u32,
    pub data: Bytes,
}

/// A cluster configured so that the scenarios' transactions stream and can prepare.
pub fn start_cluster(major: u32) -> Cluster {
    let c = Cluster::builder(major)
        .setting("logical_decoding_work_mem", "'64kB'")
        .setting("max_prepared_transactions", "10")
        .start()
        .unwrap_or_else(|e| panic!("PG{major}: {e}"));
    c.psql(SCHEMA)
        .unwrap_or_else(|e| panic!("PG{major} schema: {e}"));
    c
}

/// Runs a scenario on a fresh slot and returns every message pgoutput produced.
pub fn capture(c: &Cluster, s: &Scenario) -> Vec<Captured> {
    let slot = format!("golden_{}", s.name);
    c.psql(RESET).expect("reset tables");
    c.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput', false, {})",
        s.two_phase
    ))
    .expect("create slot");
    for sql in s.workload {
        c.psql(sql)
            .unwrap_or_else(|e| panic!("{} workload {sql}: {e}", s.name));
    }
    let mut opts = format!(
        "'proto_version', '{}', 'publication_names', 'pub'",
        s.proto_version
    );
    for (k, v) in s.options {
        let _ = write!(opts, ", '{k}', '{v}'");
    }
    let out = c
        .psql(&format!(
            "SELECT lsn, xid, encode(data, 'hex') FROM \
             pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, {opts})"
        ))
        .unwrap_or_else(|e| panic!("{} peek: {e}", s.name));
    c.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .expect("drop slot");
    out.lines()
        .map(|line| parse_line(line, '|').unwrap_or_else(|| panic!("bad row {line}")))
        .collect()
}

fn parse_line(line: &str, sep: char) -> Option<Captured> {
    let mut parts = line.splitn(3, sep);
    let lsn = parts.next()?.to_string();
    let xid = parts.next()?.parse().ok()?;
    let data = Bytes::from(hex_decode(parts.next()?)?);
    Some(Captured { lsn, xid, data })
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn hex_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pgoutput")
}

/// A golden file: its scenario header and messages.
#[derive(Debug)]
pub struct Golden {
    pub path: PathBuf,
    pub major: u32,
    pub scenario: String,
    pub proto_version: u32,
    pub parallel: bool,
    pub messages: Vec<Captured>,
}

impl Golden {
    pub fn decoder(&self) -> Decoder {
        Decoder::new(self.proto_version).with_parallel_streaming(self.parallel)
    }
}

/// Format: `#` comment lines; a `# decoder: proto_version=N parallel=B` line; then one
/// message per line as `LSN XID HEX`.
pub fn write_golden(major: u32, server_version: &str, s: &Scenario, msgs: &[Captured]) {
    let dir = golden_dir().join(format!("pg{major}"));
    std::fs::create_dir_all(&dir).expect("create golden dir");
    let mut text = format!(
        "# pgoutput messages captured from PostgreSQL {server_version} by\n\
         # `cargo test --test pgoutput_live -- --ignored regenerate_golden_files`.\n\
         # scenario: {}\n# options: proto_version={} {}\n\
         # decoder: proto_version={} parallel={}\n# LSN XID HEX\n",
        s.name,
        s.proto_version,
        s.options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        s.proto_version,
        s.parallel
    );
    for m in msgs {
        let _ = writeln!(text, "{} {} {}", m.lsn, m.xid, hex_encode(&m.data));
    }
    std::fs::write(dir.join(format!("{}.txt", s.name)), text).expect("write golden file");
}

pub fn read_golden_files() -> Vec<Golden> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let major: u32 = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("pg"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("golden dir {dir:?} is not pgNN"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("golden major dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        for path in files {
            out.push(read_golden(&path, major));
        }
    }
    out
}

fn read_golden(path: &Path, major: u32) -> Golden {
    let text = std::fs::read_to_string(path).expect("read golden file");
    let mut g = Golden {
        path: path.to_path_buf(),
        major,
        scenario: String::new(),
        proto_version: 0,
        parallel: false,
        messages: Vec::new(),
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# scenario: ") {
            g.scenario = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("# decoder: ") {
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("proto_version", v)) => g.proto_version = v.parse().expect("version"),
                    Some(("parallel", v)) => g.parallel = v == "true",
                    _ => panic!("{path:?}: unknown decoder setting {kv}"),
                }
            }
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            g.messages
                .push(parse_line(line, ' ').unwrap_or_else(|| panic!("{path:?}: bad line {line}")));
        }
    }
    assert!(g.proto_version > 0, "{path:?}: no '# decoder:' line");
    g
}
