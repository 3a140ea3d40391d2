//! A throwaway authoritative DNS server (Knot DNS, Debian's `knotd` 3.2), on loopback or
//! inside a network namespace (the cross-region lab's client site, [`KnotDns::builder`]).
//!
//! DNS switching is only proven against a real server: the UPDATE must be accepted as one
//! transaction, TSIG must verify both ways, and a query must then answer the new set. A
//! [`KnotDns`] serves one zone (SOA, NS and the NS's address) from a zone file in its scratch
//! directory, on 127.0.0.1 with UDP and TCP on the same free port (or a given address and
//! directory), with one TSIG key
//! (hmac-sha256) and an ACL that allows UPDATE only when signed with that key. Knot keeps
//! the zone's changes in its journal and writes them back to the zone file, both in the
//! scratch directory, so [`KnotDns::restart`] brings the same data back on the same port.
//!
//! knotd runs as whoever starts it (root in CI is fine: with no `server: user` setting it
//! drops no privileges and needs no `knot` user). Its run directory, control socket and
//! databases are all set to the scratch directory, so parallel servers never share
//! `/run/knot`.

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::daemon::{scratch_dir, tail, Daemon};
use super::loopback::free_ports;
use super::TestkitError;
use crate::traffic::dns::{TsigAlgorithm, TsigKey};

/// The server and its control tool from Debian's `knot` package.
const KNOTD: &str = "/usr/sbin/knotd";
const KNOTC: &str = "/usr/sbin/knotc";
/// Name of the TSIG key [`KnotDns::start`] makes.
pub const KNOT_KEY_NAME: &str = "pgmesh-test.";
/// How long knotd may take to answer the zone's SOA.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before the server is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Start attempts when the free port is taken before knotd binds it.
const START_ATTEMPTS: usize = 5;
const LOG_TAIL: usize = 30;
const SCRIPT: &str = "scripts/install-control.sh";

/// A running knotd serving one zone; killed and its directory deleted on drop.
#[derive(Debug)]
pub struct KnotDns {
    zone: String,
    key_name: String,
    secret: Vec<u8>,
    ip: IpAddr,
    port: u16,
    /// The network namespace knotd runs in (`ip netns exec`), if any.
    netns: Option<String>,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

/// How to start a [`KnotDns`]: by default on a free port of 127.0.0.1, in a fresh scratch
/// directory, with a random key named [`KNOT_KEY_NAME`].
#[derive(Debug)]
#[must_use]
pub struct KnotBuilder {
    zone: String,
    key_name: String,
    /// `None`: a random one.
    secret: Option<Vec<u8>>,
    netns: Option<String>,
    listen: Option<SocketAddr>,
    dir: Option<PathBuf>,
}

impl KnotBuilder {
    /// Signs with the hmac-sha256 key `name` / `secret` (raw bytes) instead of a random one.
    pub fn key(mut self, name: &str, secret: &[u8]) -> Self {
        self.key_name = name.to_string();
        self.secret = Some(secret.to_vec());
        self
    }

    /// Names the key `name` (its secret random unless [`KnotBuilder::key`] gives one).
    pub fn key_name(mut self, name: &str) -> Self {
        self.key_name = name.to_string();
        self
    }

    /// Runs knotd inside network namespace `name` (`ip netns exec`). Give it an address of
    /// that namespace with [`KnotBuilder::listen`] that this process reaches: readiness is
    /// checked with a query from here.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Listens on `addr` (UDP and TCP; a fixed port, not 0) instead of a free port of
    /// 127.0.0.1.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Keeps config, zone file, journal, control socket and log in `dir` (created if
    /// missing, removed on drop) instead of a scratch directory.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Starts knotd and waits until it answers the zone's SOA.
    pub fn start(self) -> Result<KnotDns, TestkitError> {
        for program in [KNOTD, KNOTC] {
            if !Path::new(program).exists() {
                return Err(TestkitError::ProgramMissing {
                    program: PathBuf::from(program),
                    script: SCRIPT,
                });
            }
        }
        if self.listen.is_some_and(|a| a.port() == 0) {
            return Err(TestkitError::Failed {
                what: "starting knotd".to_string(),
                status: "listen port 0".to_string(),
                stderr: "give KnotBuilder::listen a fixed port, or leave it out for a free one"
                    .to_string(),
            });
        }
        let secret = match self.secret {
            Some(secret) => secret,
            None => random_secret()?,
        };
        let dir = match self.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
                dir
            }
            None => scratch_dir("knot")?,
        };
        let mut knot = KnotDns {
            zone: absolute(&self.zone),
            key_name: absolute(&self.key_name),
            secret,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            netns: self.netns,
            dir,
            daemon: None,
        };
        let zone_file = knot.dir.join("zone.db");
        write(&zone_file, &zone_text(&knot.zone))?;
        if let Some(listen) = self.listen {
            knot.ip = listen.ip();
            knot.port = listen.port();
            write(&knot.config_path(), &knot.config_text())?;
            knot.spawn_and_wait()?;
            return Ok(knot);
        }
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            knot.port = free_udp_tcp_port()?;
            write(&knot.config_path(), &knot.config_text())?;
            match knot.spawn_and_wait() {
                Ok(()) => return Ok(knot),
                Err(e) if lost_port_race(&knot.log()) => {
                    last_err = Some(e);
                    if let Some(mut d) = knot.daemon.take() {
                        d.kill()?;
                    }
                    let _ = std::fs::remove_file(knot.log_path());
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| TestkitError::NotReady {
            what: "knotd did not start".to_string(),
            log: String::new(),
        }))
    }
}

impl KnotDns {
    /// Starts knotd serving `zone` (e.g. `db.example.com.`) with a fresh random TSIG key
    /// named [`KNOT_KEY_NAME`], and waits until it answers the zone's SOA.
    pub fn start(zone: &str) -> Result<KnotDns, TestkitError> {
        KnotDns::builder(zone).start()
    }

    /// Like [`KnotDns::start`] with a given hmac-sha256 key, so several servers can share one
    /// (as the authoritative servers of one zone do).
    pub fn start_with_key(
        zone: &str,
        key_name: &str,
        secret: &[u8],
    ) -> Result<KnotDns, TestkitError> {
        KnotDns::builder(zone).key(key_name, secret).start()
    }

    /// A server of `zone` to place ([`KnotBuilder::netns`], [`KnotBuilder::listen`],
    /// [`KnotBuilder::dir`]) before [`KnotBuilder::start`].
    pub fn builder(zone: &str) -> KnotBuilder {
        KnotBuilder {
            zone: zone.to_string(),
            key_name: KNOT_KEY_NAME.to_string(),
            secret: None,
            netns: None,
            listen: None,
            dir: None,
        }
    }

    /// Where the server listens (UDP and TCP).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The zone served, absolute (`db.example.com.`).
    #[must_use]
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The TSIG key's name and secret (raw bytes) that UPDATEs must be signed with.
    #[must_use]
    pub fn tsig(&self) -> (&str, &[u8]) {
        (&self.key_name, &self.secret)
    }

    /// The same key as pgmesh's config takes it.
    #[must_use]
    pub fn tsig_key(&self) -> TsigKey {
        TsigKey {
            name: self.key_name.clone(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: self.secret.clone(),
        }
    }

    /// The scratch directory (config, zone file, journal, log); gone after drop.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything knotd logged so far, over all its lives.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether knotd is running (not stopped, killed or exited).
    pub fn is_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|d| d.exit_status().is_none())
    }

    /// SIGKILL: the server is gone at once (connections refused), its data stays.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        match self.daemon.take() {
            Some(mut d) => d.kill(),
            None => Ok(()),
        }
    }

    /// A graceful stop (`knotc stop`), waiting until knotd exited; killed if it takes longer
    /// than 5 s.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        if !self.is_running() {
            return self.kill();
        }
        let out = Command::new(KNOTC)
            .arg("-s")
            .arg(self.socket_path())
            .arg("stop")
            .output()
            .map_err(|source| TestkitError::Spawn {
                program: KNOTC.to_string(),
                source,
            })?;
        let deadline = Instant::now() + STOP_DEADLINE;
        while out.status.success() && Instant::now() < deadline && self.is_running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// Starts knotd again (stopping it first if it runs) on the same port with the same
    /// zone data, and waits until it answers the SOA.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.spawn_and_wait()
    }

    fn spawn_and_wait(&mut self) -> Result<(), TestkitError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), KNOTD]);
                c
            }
            None => Command::new(KNOTD),
        };
        cmd.arg("-c").arg(self.config_path());
        self.daemon = Some(Daemon::spawn("knotd", cmd, &self.log_path())?);
        self.wait_ready()
    }

    /// Polls with a real SOA query until the zone is loaded and served.
    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.daemon.as_mut().and_then(Daemon::exit_status) {
                return Err(TestkitError::NotReady {
                    what: format!("knotd exited ({status}) before it served {}", self.zone),
                    log: tail(&self.log(), LOG_TAIL),
                });
            }
            let last = match soa_query(self.addr(), &self.zone, Duration::from_millis(200)) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what: format!(
                        "knotd at {} did not answer the SOA of {} within {READY_DEADLINE:?}; \
                         last: {last}",
                        self.addr(),
                        self.zone
                    ),
                    log: tail(&self.log(), LOG_TAIL),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("knot.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("knot.log")
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("knot.sock")
    }

    /// knot.conf: everything in the scratch dir, one worker of each kind (a 2-core machine
    /// runs several servers), small databases, UPDATE allowed only with the key.
    fn config_text(&self) -> String {
        let dir = self.dir.display();
        let secret = base64::engine::general_purpose::STANDARD.encode(&self.secret);
        let mut c = String::new();
        let _ = write!(
            c,
            "# written by pgmesh testkit\n\
             server:\n    rundir: \"{dir}\"\n    listen: {ip}@{port}\n    \
             udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
             control:\n    listen: \"{socket}\"\n\
             database:\n    storage: \"{dir}\"\n    journal-db-max-size: 64M\n    \
             kasp-db-max-size: 16M\n    timer-db-max-size: 16M\n    catalog-db-max-size: 16M\n\
             log:\n  - target: stderr\n    any: info\n\
             key:\n  - id: {key}\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: pgmesh-update\n    key: {key}\n    action: update\n\
             zone:\n  - domain: {zone}\n    storage: \"{dir}\"\n    file: zone.db\n    \
             acl: pgmesh-update\n",
            ip = self.ip,
            port = self.port,
            socket = self.socket_path().display(),
            key = self.key_name,
            zone = self.zone,
        );
        c
    }
}

impl Drop for KnotDns {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The zone file: SOA, NS `ns1`, and `ns1`'s address. Short TTLs and a 1 s negative TTL so
/// nothing in tests waits on caching.
fn zone_text(zone: &str) -> String {
    format!(
        "$ORIGIN {zone}\n$TTL 60\n\
         @ SOA ns1 hostmaster 1 3600 600 86400 1\n\
         @ NS ns1\n\
         ns1 A 127.0.0.1\n"
    )
}

/// 32 random bytes: a fresh hmac-sha256 secret.
fn random_secret() -> Result<Vec<u8>, TestkitError> {
    let mut secret = vec![0; 32];
    let mut urandom =
        std::fs::File::open("/dev/urandom").map_err(|source| io("/dev/urandom", source))?;
    urandom
        .read_exact(&mut secret)
        .map_err(|source| io("/dev/urandom", source))?;
    Ok(secret)
}

fn absolute(name: &str) -> String {
    let name = name.trim();
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 (knotd binds both).
fn free_udp_tcp_port() -> Result<u16, TestkitError> {
    for _ in 0..20 {
        let port = free_ports(1)?[0];
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        if tcp.is_ok() && udp.is_ok() {
            return Ok(port);
        }
    }
    Err(TestkitError::Failed {
        what: "finding a free UDP+TCP port on 127.0.0.1".to_string(),
        status: "20 tries".to_string(),
        stderr: "every free TCP port was taken for UDP".to_string(),
    })
}

/// knotd logs bind failures as "cannot bind address ... (Address already in use)".
fn lost_port_race(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

/// One UDP SOA query; Ok when the server answers NOERROR with the zone's SOA.
fn soa_query(server: SocketAddr, zone: &str, timeout: Duration) -> Result<(), String> {
    let name = Name::from_ascii(zone).map_err(|e| format!("zone {zone:?}: {e}"))?;
    let mut query = Message::query();
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(name.clone(), RecordType::SOA));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    // Any local address: a server in a namespace (10.77.4.2) is not reached from loopback.
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket.connect(server).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    socket.send(&bytes).map_err(|e| e.to_string())?;
    let mut buf = vec![0; 4096];
    let n = socket.recv(&mut buf).map_err(|e| e.to_string())?;
    let answer = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    let has_soa = answer
        .answers
        .iter()
        .any(|r| r.record_type() == RecordType::SOA && r.name == name);
    if answer.id == query.id && answer.response_code == ResponseCode::NoError && has_soa {
        Ok(())
    } else {
        Err(format!("answer {} without the SOA", answer.response_code))
    }
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(|source| io(path, source))
}

fn io(path: impl AsRef<Path>, source: std::io::Error) -> TestkitError {
    TestkitError::Io {
        path: path.as_ref().to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstarted(ip: &str, port: u16) -> KnotDns {
        KnotDns {
            zone: "db.example.com.".into(),
            key_name: "k.".into(),
            secret: vec![0; 4],
            ip: ip.parse().unwrap(),
            port,
            netns: None,
            dir: PathBuf::from("/x"),
            daemon: None,
        }
    }

    #[test]
    fn listens_where_it_is_placed() {
        let knot = unstarted("10.77.4.2", 7754);
        let c = knot.config_text();
        assert!(c.contains("listen: 10.77.4.2@7754\n"), "{c}");
        assert_eq!(knot.addr().to_string(), "10.77.4.2:7754");
        std::mem::forget(knot); // its Drop would remove /x
    }

    #[test]
    fn config_allows_update_only_with_the_key() {
        let knot = unstarted("127.0.0.1", 5353);
        let c = knot.config_text();
        assert!(c.contains("listen: 127.0.0.1@5353\n"), "{c}");
        assert!(
            c.contains("key:\n  - id: k.\n    algorithm: hmac-sha256\n    secret: AAAAAA==\n"),
            "{c}"
        );
        assert!(
            c.contains("acl:\n  - id: pgmesh-update\n    key: k.\n    action: update\n"),
            "{c}"
        );
        assert!(c.contains("domain: db.example.com.\n"), "{c}");
        assert!(
            c.contains("rundir: \"/x\"") && c.contains("listen: \"/x/knot.sock\""),
            "{c}"
        );
    }

    /// knotd in a network namespace, reached from here at the namespace's address: the
    /// readiness query (UDP) and a signed UPDATE (TCP) both cross the veth pair.
    #[test]
    fn serves_from_inside_a_network_namespace() {
        use crate::lab::netns::Netns;
        use crate::traffic::dns::{answer, DnsConfig, DnsPublisher, RecordSet};
        if !super::super::running_as_root() || !Path::new(KNOTD).exists() {
            eprintln!("skipped: needs root (network namespaces) and {KNOTD}");
            return;
        }
        let n = std::process::id() % 100_000;
        let ns = Netns::create(&format!("pmk{n}")).unwrap();
        ns.connect_host("10.202.7.2/30", &format!("pmk{n}h"), "10.202.7.1/30")
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pgmesh-knot-netns-{n}"));
        let knot = KnotDns::builder("ns.example.")
            .key_name("k-ns.")
            .netns(ns.name())
            .listen("10.202.7.2:5399".parse().unwrap())
            .dir(&dir)
            .start()
            .unwrap();
        assert_eq!(knot.addr().to_string(), "10.202.7.2:5399");
        assert_eq!(knot.tsig().0, "k-ns.");
        let set = RecordSet::Addresses(vec!["10.77.1.2".parse().unwrap()]);
        let publisher = DnsPublisher::new(DnsConfig {
            zone: knot.zone().to_string(),
            servers: vec![knot.addr()],
            ttl: Duration::from_secs(1),
            tsig: Some(knot.tsig_key()),
            timeout: Duration::from_secs(10),
            records: [("a".to_string(), set.clone())].into(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(publisher.publish("app", "a"));
        assert!(outcome.done(), "{}\n{}", outcome.summary(), knot.log());
        let now = rt
            .block_on(answer(
                knot.addr(),
                "app.ns.example.",
                Duration::from_secs(2),
            ))
            .unwrap();
        assert_eq!(now, Some(set));
        drop(knot);
        assert!(!dir.exists(), "the server's directory goes with it");
    }
}
