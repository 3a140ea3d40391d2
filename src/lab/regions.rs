//! `pgmesh lab --regions`: two regions, a witness and a client site on one machine, each
//! site a network namespace, every path between them through the lab's WAN ([`Hub`]).
//! Region a and b each run PostgreSQL, the sidecar, the agent (with its watchdog), an
//! etcd member and HAProxy; the witness runs the third etcd member. Clients (the drills'
//! load) reach the regions' HAProxies over the client site's WAN paths; the client site
//! also runs a DNS server (Knot) that both agents update over their WAN paths.
//!
//! Everything of one lab lives under one directory and in namespaces named by one prefix,
//! so a second start removes what a crashed first one left (its processes included).
//! The API is blocking: the WAN runs on the lab's own runtime threads, so a drill that
//! waits in a loop never delays a byte.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::hub::Hub;
use super::netns::{remove_leftovers, Netns, NetnsError};
use super::topology::{Layout, Service, Site, DNS_KEY, DNS_ZONE};
use super::wan::WanSettings;
use crate::testkit::faketime::FakeClock;
use crate::testkit::{http_get_at, Cluster, Daemon, KnotDns, TestkitError};
use crate::traffic::dns::RecordSet;

mod observe;
mod programs;

/// The application's table and role (the agents fence `app`; superusers bypass fences).
pub const APP_SCHEMA: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, payload text);
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO app;";

/// The pgmesh commands each region runs (with `-c CONFIG --node NAME`); the agent's
/// flag is followed by its listen address. `docker-compose.yml` runs the same.
pub const REGION_COMMANDS: [&[&str]; 2] = [&["run"], &["agent", "--http-listen"]];

/// The etcd members' raft timing (ms). When the leader dies, the two members left may
/// split their votes and need a second election timeout: at etcd's default 1000 ms that
/// took 3 s in `witness-lost`, past the fence deadline (3.2 s then, 3 s with the lab's
/// 5 s / 2 s lease now), and fenced a region that kept its quorum; at 500 ms (etcd's least for a 100 ms heartbeat) it is
/// about 2 s at most. `docker-compose.yml` sets the same.
pub const ETCD_HEARTBEAT_MS: u64 = 100;
pub const ETCD_ELECTION_TIMEOUT_MS: u64 = 500;

/// The sidecars' HTTP port inside each region (`/metrics`, `/healthz`).
const SIDECAR_HTTP_PORT: u16 = 7760;
/// How long the whole lab may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(90);

/// Why the lab could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    #[error("the cross-region lab needs root (network namespaces): run it as root, e.g. `sudo make lab-regions`")]
    NotRoot,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Testkit(#[from] TestkitError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}\n--- log ---\n{log}")]
    NotReady { what: String, log: String },
    #[error("another lab is running (pgmesh pid {0}): stop it (Ctrl-C) first")]
    Running(u32),
    #[error("pgmesh setup of the lab failed: {0}")]
    Setup(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub layout: Layout,
    /// PostgreSQL major version of both regions.
    pub pg: u32,
    /// The pgmesh binary the sites run (the running one for the CLI).
    pub pgmesh: PathBuf,
    /// Where the lab keeps everything (removed at start and at the end).
    pub dir: PathBuf,
    /// The WAN's settings between every two sites.
    pub wan: WanSettings,
}

impl LabOptions {
    #[must_use]
    pub fn new(pg: u32, pgmesh: PathBuf) -> LabOptions {
        let layout = Layout::default();
        let dir = std::env::temp_dir().join(format!("pgmesh-lab-{}", layout.prefix));
        LabOptions {
            layout,
            pg,
            pgmesh,
            dir,
            wan: WanSettings::default(),
        }
    }
}

/// The hub's address on the host's loopback, removed on drop.
#[derive(Debug)]
struct HubAddress(String);

impl HubAddress {
    fn add(layout: &Layout) -> Result<HubAddress, LabError> {
        let cidr = format!("{}/32", layout.hub());
        let _ = run_ip(&["addr", "del", &cidr, "dev", "lo"]);
        run_ip(&["addr", "add", &cidr, "dev", "lo"])?;
        Ok(HubAddress(cidr))
    }
}

impl Drop for HubAddress {
    fn drop(&mut self) {
        let _ = run_ip(&["addr", "del", &self.0, "dev", "lo"]);
    }
}

fn run_ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(io("running ip(8)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Io {
            what: format!("ip {}", args.join(" ")),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        })
    }
}

/// Removes what an earlier lab with this layout left: processes, namespaces, the hub
/// address, its directory. Returns the namespaces it found.
pub fn clean_leftovers(layout: &Layout, dir: &Path) -> Result<Vec<String>, LabError> {
    let removed = remove_leftovers(&format!("{}-", layout.prefix))?;
    let _ = run_ip(&["addr", "del", &format!("{}/32", layout.hub()), "dev", "lo"]);
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    Ok(removed)
}

/// The pid of a lab process that still runs with this directory (its pid file names a
/// live pgmesh): its sites are not leftovers.
fn running_lab(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("lab.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if pid == std::process::id() {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("pgmesh")
        .then_some(pid)
}

/// A running lab. Dropping it stops every program and removes every trace.
pub struct RegionsLab {
    // Fields drop in this order: programs first, then the WAN, then the namespaces.
    haproxy: BTreeMap<Site, Daemon>,
    agents: BTreeMap<Site, Daemon>,
    sidecars: BTreeMap<Site, Daemon>,
    pg: BTreeMap<Site, Cluster>,
    etcd: BTreeMap<Site, Daemon>,
    /// The client site's DNS server (`[traffic.dns]` of the lab's config).
    dns: KnotDns,
    hub: Hub,
    rt: tokio::runtime::Runtime,
    namespaces: BTreeMap<Site, Netns>,
    _hub_address: HubAddress,
    opts: LabOptions,
    config: PathBuf,
    /// Each region's host clock (PostgreSQL, sidecar, agent), when libfaketime is
    /// installed: at real time unless a drill shifts it.
    clocks: BTreeMap<Site, FakeClock>,
    /// What the last start found of an earlier lab.
    pub leftovers: Vec<String>,
    pub started_in: Duration,
}

impl RegionsLab {
    /// Builds the sites, starts every program and returns once each region's agent
    /// serves its home endpoint and each HAProxy listens.
    pub fn start(opts: LabOptions) -> Result<RegionsLab, LabError> {
        let began = Instant::now();
        if !crate::testkit::running_as_root() {
            return Err(LabError::NotRoot);
        }
        let layout = opts.layout.clone();
        if let Some(pid) = running_lab(&opts.dir) {
            return Err(LabError::Running(pid));
        }
        let leftovers = clean_leftovers(&layout, &opts.dir)?;
        std::fs::create_dir_all(&opts.dir)
            .map_err(io(format!("creating {}", opts.dir.display())))?;
        std::fs::write(opts.dir.join("lab.pid"), std::process::id().to_string())
            .map_err(io("writing lab.pid"))?;
        let hub_address = HubAddress::add(&layout)?;
        let mut namespaces = BTreeMap::new();
        for site in Site::ALL {
            let ns = Netns::create(&layout.namespace(site))?;
            ns.connect_host(
                &format!("{}/30", layout.site_addr(site)),
                &layout.host_interface(site),
                &format!("{}/30", layout.hub_side(site)),
            )?;
            ns.route(
                &format!("{}/32", layout.hub()),
                &layout.hub_side(site).to_string(),
            )?;
            namespaces.insert(site, ns);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lab-wan")
            .enable_all()
            .build()
            .map_err(io("starting the WAN's runtime"))?;
        let hub = rt
            .block_on(Hub::start(&layout, opts.wan))
            .map_err(io(format!("listening on the hub {}", layout.hub())))?;
        // The DNS server before the config that names its key (parsing reads the secret).
        let dns = KnotDns::builder(DNS_ZONE)
            .key_name(DNS_KEY)
            .netns(&layout.namespace(Site::Clients))
            .listen(layout.inside(Service::Dns(Site::Clients)))
            .dir(&opts.dir.join("knot"))
            .start()?;
        let secret_file = opts.dir.join("tsig.secret");
        let secret = base64::engine::general_purpose::STANDARD.encode(dns.tsig().1);
        std::fs::write(&secret_file, format!("{secret}\n")).map_err(io("writing tsig.secret"))?;
        let config = opts.dir.join("pgmesh.toml");
        let cluster_name = format!("lab-{}", layout.prefix);
        let text =
            layout.config(&cluster_name, SIDECAR_HTTP_PORT) + &layout.dns_config(&secret_file);
        std::fs::write(&config, text).map_err(io("writing pgmesh.toml"))?;
        let mut clocks = BTreeMap::new();
        if FakeClock::available() {
            for region in Site::REGIONS {
                let file = opts.dir.join(format!("clock-{region}"));
                clocks.insert(region, FakeClock::new(&file)?);
            }
        }
        let mut lab = RegionsLab {
            haproxy: BTreeMap::new(),
            agents: BTreeMap::new(),
            sidecars: BTreeMap::new(),
            pg: BTreeMap::new(),
            etcd: BTreeMap::new(),
            dns,
            hub,
            rt,
            namespaces,
            _hub_address: hub_address,
            opts,
            config,
            clocks,
            leftovers,
            started_in: Duration::ZERO,
        };
        for site in [Site::A, Site::B, Site::Witness] {
            lab.start_etcd(site, "new")?;
        }
        for region in Site::REGIONS {
            lab.start_postgres(region)?;
        }
        lab.wait_etcd()?;
        lab.setup()?;
        for region in Site::REGIONS {
            lab.start_sidecar(region)?;
            lab.start_agent(region)?;
            lab.start_haproxy(region)?;
        }
        lab.wait_for("region a's agent to serve app-eu", START_DEADLINE, |l| {
            l.serves(Site::A, "app-eu")
        })?;
        lab.wait_for("region b's agent to serve app-us", START_DEADLINE, |l| {
            l.serves(Site::B, "app-us")
        })?;
        for region in Site::REGIONS {
            // HAProxy marks a server up one check after its agent serves.
            lab.wait_for(
                &format!("HAProxy {region} to route app-eu to its owner"),
                START_DEADLINE,
                |l| l.routes(region),
            )
            .map_err(|e| lab.with_log(e, "haproxy", region))?;
        }
        // The owners published their endpoints when they took them (`[traffic.dns]`).
        for (region, endpoint) in [(Site::A, "app-eu"), (Site::B, "app-us")] {
            let want = layout.site_addr(region).to_string();
            lab.wait_for(
                &format!(
                    "the client site's DNS to answer {endpoint} with region {region}'s {want}"
                ),
                START_DEADLINE,
                |l| l.dns_answer(endpoint).as_deref() == Some(want.as_str()),
            )
            .map_err(|e| lab.with_log(e, "agent", region))?;
        }
        lab.started_in = began.elapsed();
        Ok(lab)
    }

    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.opts.layout
    }

    #[must_use]
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    #[must_use]
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The lab's WAN settings (what [`Hub::heal`] returns every path to).
    #[must_use]
    pub fn wan(&self) -> WanSettings {
        self.opts.wan
    }

    fn ns(&self, site: Site) -> &Netns {
        &self.namespaces[&site]
    }

    fn log_path(&self, what: &str, site: Site) -> PathBuf {
        self.opts.dir.join(format!("{what}-{site}.log"))
    }

    /// The log of `what` (`agent`, `sidecar`, `etcd`, `haproxy`) in `site`.
    #[must_use]
    pub fn log(&self, what: &str, site: Site) -> String {
        std::fs::read_to_string(self.log_path(what, site)).unwrap_or_default()
    }

    /// Kills everything in region `site` at once (a region lost: power, network, all),
    /// and cuts its WAN paths so nothing half-alive answers.
    pub fn kill_region(&mut self, site: Site) -> Result<(), LabError> {
        for other in Site::ALL {
            if other != site {
                let cut = WanSettings {
                    cut: true,
                    ..self.opts.wan
                };
                self.hub.set_both(site, other, cut);
            }
        }
        let ns = self.layout().namespace(site);
        let out = Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .map_err(io("ip netns pids"))?;
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
        // Reap our children (their Daemons would otherwise kill them again later).
        for map in [
            &mut self.haproxy,
            &mut self.agents,
            &mut self.sidecars,
            &mut self.etcd,
        ] {
            if let Some(mut d) = map.remove(&site) {
                let _ = d.kill();
            }
        }
        Ok(())
    }

    /// Brings region `site` back after [`RegionsLab::kill_region`] (WAN healed first):
    /// etcd member, PostgreSQL (crash recovery), sidecar, agent, HAProxy.
    pub fn restore_region(&mut self, site: Site) -> Result<(), LabError> {
        for other in Site::ALL {
            if other != site {
                self.hub.set_both(site, other, self.opts.wan);
            }
        }
        if site != Site::Clients {
            self.start_etcd(site, "existing")?;
        } else {
            self.dns.restart()?;
        }
        if let Some(pg) = self.pg.get(&site) {
            pg.start_again()?;
        }
        if Site::REGIONS.contains(&site) {
            self.start_sidecar(site)?;
            self.start_agent(site)?;
            self.start_haproxy(site)?;
        }
        Ok(())
    }

    /// Makes `site`'s etcd member the leader (`etcdctl move-leader`), so a drill meets
    /// its worst case on purpose rather than by chance.
    pub fn move_etcd_leader(&self, site: Site) -> Result<(), LabError> {
        let l = &self.opts.layout;
        let members = [Site::A, Site::B, Site::Witness];
        let endpoints = members
            .iter()
            .map(|&s| l.inside(Service::EtcdClient(s)).to_string())
            .collect::<Vec<_>>();
        let etcdctl = |args: &[&str]| -> Result<std::process::Output, LabError> {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(args)
                .output()
                .map_err(io("running etcdctl"))
        };
        let out = etcdctl(&[
            "--endpoints",
            &endpoints.join(","),
            "endpoint",
            "status",
            "-w",
            "json",
        ])?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            LabError::Setup(format!(
                "etcdctl endpoint status: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        let rows = status.as_array().cloned().unwrap_or_default();
        let id_of = |ep: &str| {
            rows.iter()
                .find(|r| r["Endpoint"] == ep)
                .and_then(|r| r["Status"]["header"]["member_id"].as_u64())
        };
        let target_ep = l.inside(Service::EtcdClient(site)).to_string();
        let target = id_of(&target_ep)
            .ok_or_else(|| LabError::Setup(format!("etcd member {site} did not answer")))?;
        let leader = rows
            .iter()
            .find_map(|r| r["Status"]["leader"].as_u64())
            .ok_or_else(|| LabError::Setup("etcd has no leader".into()))?;
        if leader == target {
            return Ok(());
        }
        let leader_ep = endpoints
            .iter()
            .find(|ep| id_of(ep) == Some(leader))
            .ok_or_else(|| LabError::Setup("the etcd leader did not answer".into()))?;
        let out = etcdctl(&[
            "--endpoints",
            leader_ep,
            "move-leader",
            &format!("{target:x}"),
        ])?;
        if !out.status.success() {
            return Err(LabError::Setup(format!(
                "etcdctl move-leader: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    fn with_log(&self, e: LabError, what: &str, site: Site) -> LabError {
        match e {
            LabError::NotReady { what: w, .. } => LabError::NotReady {
                what: w,
                log: tail(&self.log(what, site), 25),
            },
            other => other,
        }
    }

    /// Runs pgmesh `args` against the lab's config from the host (status, verify, ...).
    pub fn pgmesh_here(&self, args: &[&str]) -> Result<std::process::Output, LabError> {
        Command::new(&self.opts.pgmesh)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .output()
            .map_err(io("running pgmesh"))
    }
}

impl Drop for RegionsLab {
    fn drop(&mut self) {
        // Programs stop with their fields; the directory goes last (PostgreSQL's data
        // directories inside it are removed by their clusters).
        self.haproxy.clear();
        self.agents.clear();
        self.sidecars.clear();
        self.pg.clear();
        self.etcd.clear();
        let _ = self.dns.kill();
        let _ = std::fs::remove_dir_all(&self.opts.dir);
    }
}

/// The last `n` lines of `s`.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
