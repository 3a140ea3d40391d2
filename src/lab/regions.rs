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

/// The application's table and role (the agents fence `app`; superusers bypass fences).
pub const APP_SCHEMA: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, payload text);
CREATE ROLE app LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO app;";

/// The pgmesh commands each region runs (with `-c CONFIG --node NAME`); the agent's
/// flag is followed by its listen address. `docker-compose.yml` runs the same.
pub const REGION_COMMANDS: [&[&str]; 2] = [&["run"], &["agent", "--http-listen"]];

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

    fn start_etcd(&mut self, site: Site, state: &str) -> Result<(), LabError> {
        let l = &self.opts.layout;
        let initial = [Site::A, Site::B, Site::Witness]
            .iter()
            .map(|&s| format!("{s}=http://{}", l.via_hub(Service::EtcdPeer(s))))
            .collect::<Vec<_>>()
            .join(",");
        let client = Service::EtcdClient(site).port(l);
        let peer = Service::EtcdPeer(site).port(l);
        let mut cmd = self.ns(site).command("etcd");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["--name", site.name()])
            .arg("--data-dir")
            .arg(self.opts.dir.join(format!("etcd-{site}")))
            .args(["--listen-client-urls", &format!("http://0.0.0.0:{client}")])
            .args([
                "--advertise-client-urls",
                &format!("http://{}", l.via_hub(Service::EtcdClient(site))),
            ])
            .args(["--listen-peer-urls", &format!("http://0.0.0.0:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", l.via_hub(Service::EtcdPeer(site))),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &format!("lab-{}", l.prefix)])
            .args(["--initial-cluster-state", state])
            // Raft over a 70 ms round trip: heartbeat ~1.5 RTT, election 10 heartbeats.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // A member cut from the leader (a WAN cut, the witness still seeing both)
            // must not win votes from members that still hear the leader: without
            // pre-vote its elections left the cluster leaderless for seconds.
            .arg("--pre-vote")
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let d = Daemon::spawn(&format!("etcd {site}"), cmd, &self.log_path("etcd", site))?;
        self.etcd.insert(site, d);
        Ok(())
    }

    fn wait_etcd(&self) -> Result<(), LabError> {
        for site in [Site::A, Site::B, Site::Witness] {
            let addr = self.opts.layout.inside(Service::EtcdClient(site));
            self.wait_for(
                &format!("etcd member {site} to be healthy"),
                START_DEADLINE,
                |_| {
                    http_get_at(addr, "/health", Duration::from_secs(1))
                        .is_ok_and(|r| r.status == 200 && r.body.contains("true"))
                },
            )
            .map_err(|e| self.with_log(e, "etcd", site))?;
        }
        Ok(())
    }

    fn start_postgres(&mut self, region: Site) -> Result<(), LabError> {
        let l = &self.opts.layout;
        // initdb runs as postgres, which cannot create directories in the lab's own.
        let data = self.opts.dir.join(format!("pg-{region}"));
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&data)
            .status()
            .map_err(io("chown"))?;
        if !chown.success() {
            return Err(LabError::Setup(format!(
                "chown postgres {} failed",
                data.display()
            )));
        }
        let mut builder = Cluster::builder(self.opts.pg);
        for (k, v) in self
            .clocks
            .get(&region)
            .map(|c| c.env(false))
            .unwrap_or_default()
        {
            builder = builder.env(&k, &v);
        }
        let cluster = builder
            .netns(&l.namespace(region), &l.site_addr(region).to_string())
            .port(Service::Postgres(region).port(l))
            .data_dir(&data)
            .hba_line("host all all 10.0.0.0/8 trust")
            .hba_line("host replication all 10.0.0.0/8 trust")
            .start()?;
        cluster.psql(APP_SCHEMA)?;
        self.pg.insert(region, cluster);
        Ok(())
    }

    fn setup(&self) -> Result<(), LabError> {
        let text = std::fs::read_to_string(&self.config).map_err(io("reading pgmesh.toml"))?;
        let cfg = crate::config::Config::parse(
            &text,
            &self.config.display().to_string(),
            &crate::config::Env::from_pairs(Vec::<(String, String)>::new()),
        )
        .map_err(|e| LabError::Setup(e.to_string()))?;
        let report = self
            .rt
            .block_on(crate::setup::setup(
                &cfg,
                &crate::setup::SetupOptions::default(),
            ))
            .map_err(|e| LabError::Setup(e.to_string()))?;
        if crate::setup::error_count(&report.findings) > 0 {
            return Err(LabError::Setup(crate::setup::finding::to_table(
                &report.findings,
            )));
        }
        Ok(())
    }

    fn pgmesh(&self, site: Site, args: &[&str]) -> Command {
        let mut cmd = self
            .ns(site)
            .command(&self.opts.pgmesh.display().to_string());
        cmd.args(["--log-format", "text"])
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .args(["--node", site.name()])
            .env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "pgmesh=info");
        }
        if let Some(clock) = self.clocks.get(&site) {
            cmd.envs(clock.env(true));
        }
        cmd
    }

    /// Shifts region `site`'s host clock (its PostgreSQL, sidecar and agent) `ms` from
    /// real time, while they run; 0 puts it back. Needs libfaketime (Debian `faketime`).
    pub fn set_clock_offset(&self, site: Site, ms: i64) -> Result<(), LabError> {
        let clock = self.clocks.get(&site).ok_or_else(|| {
            LabError::Setup(format!(
                "region {site} has no shiftable clock: install libfaketime (Debian package faketime, scripts/install-control.sh) and start the lab again"
            ))
        })?;
        Ok(clock.set_offset_ms(ms)?)
    }

    /// Starts (or restarts) region `site`'s sidecar.
    pub fn start_sidecar(&mut self, site: Site) -> Result<(), LabError> {
        let cmd = self.pgmesh(site, REGION_COMMANDS[0]);
        let d = Daemon::spawn(
            &format!("sidecar {site}"),
            cmd,
            &self.log_path("sidecar", site),
        )?;
        self.sidecars.insert(site, d);
        Ok(())
    }

    /// SIGKILLs region `site`'s sidecar.
    pub fn kill_sidecar(&mut self, site: Site) -> Result<(), LabError> {
        if let Some(mut d) = self.sidecars.remove(&site) {
            d.kill()?;
        }
        Ok(())
    }

    /// Whether region `site`'s sidecar process is running.
    pub fn sidecar_running(&mut self, site: Site) -> bool {
        self.sidecars
            .get_mut(&site)
            .is_some_and(|d| d.exit_status().is_none())
    }

    /// Starts (or restarts) region `site`'s agent.
    pub fn start_agent(&mut self, site: Site) -> Result<(), LabError> {
        let listen = format!("0.0.0.0:{}", Service::Agent(site).port(&self.opts.layout));
        let mut args = REGION_COMMANDS[1].to_vec();
        args.push(&listen);
        let cmd = self.pgmesh(site, &args);
        let d = Daemon::spawn(&format!("agent {site}"), cmd, &self.log_path("agent", site))?;
        self.agents.insert(site, d);
        Ok(())
    }

    /// SIGSTOPs region `site`'s agent (a frozen VM: its watchdog must fence).
    pub fn freeze_agent(&self, site: Site) -> Result<(), LabError> {
        if let Some(d) = self.agents.get(&site) {
            d.pause()?;
        }
        Ok(())
    }

    pub fn thaw_agent(&self, site: Site) -> Result<(), LabError> {
        if let Some(d) = self.agents.get(&site) {
            d.resume()?;
        }
        Ok(())
    }

    fn start_haproxy(&mut self, region: Site) -> Result<(), LabError> {
        let cfg = self.opts.dir.join(format!("haproxy-{region}.cfg"));
        std::fs::write(&cfg, self.opts.layout.haproxy_config(region))
            .map_err(io("writing haproxy.cfg"))?;
        let mut cmd = self.ns(region).command("haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg);
        let d = Daemon::spawn(
            &format!("haproxy {region}"),
            cmd,
            &self.log_path("haproxy", region),
        )?;
        self.haproxy.insert(region, d);
        let addr = self.opts.layout.inside(Service::Haproxy(region));
        self.wait_for(
            &format!("haproxy {region} to listen"),
            START_DEADLINE,
            |_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        )
        .map_err(|e| self.with_log(e, "haproxy", region))?;
        Ok(())
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

    /// The region's PostgreSQL.
    #[must_use]
    pub fn postgres(&self, region: Site) -> &Cluster {
        &self.pg[&region]
    }

    /// GET `path` of the agent in `region`, straight (not over the WAN); `None` when it
    /// does not answer within 300 ms.
    #[must_use]
    pub fn agent_http(&self, region: Site, path: &str) -> Option<(u16, String)> {
        let addr: SocketAddr = self.opts.layout.inside(Service::Agent(region));
        http_get_at(addr, path, Duration::from_millis(300))
            .ok()
            .map(|r| (r.status, r.body))
    }

    /// Whether `region`'s agent says it serves `endpoint` (what HAProxy asks).
    #[must_use]
    pub fn serves(&self, region: Site, endpoint: &str) -> bool {
        self.agent_http(region, &format!("/owner/{endpoint}"))
            .is_some_and(|(code, _)| code == 200)
    }

    /// What the client site's DNS server answers for `<endpoint>.lab.pgmesh.` now, asked
    /// from the lab process straight at the site's address (not over the WAN): the
    /// addresses, comma-separated (`10.77.1.2`), or a CNAME's target; `None` when the name
    /// has no answer or the server none within 500 ms.
    #[must_use]
    pub fn dns_answer(&self, endpoint: &str) -> Option<String> {
        let server = self.opts.layout.inside(Service::Dns(Site::Clients));
        let name = format!("{endpoint}.{DNS_ZONE}");
        let answer = self.rt.block_on(crate::traffic::dns::answer(
            server,
            &name,
            Duration::from_millis(500),
        ));
        match answer.ok()?? {
            RecordSet::Addresses(list) => {
                let mut list: Vec<String> = list.iter().map(ToString::to_string).collect();
                list.sort();
                Some(list.join(","))
            }
            RecordSet::Cname(target) => Some(target),
        }
    }

    /// Whether `region`'s database takes a write from the application role now (rolled
    /// back): false while fenced or down.
    #[must_use]
    pub fn writable(&self, region: Site) -> bool {
        let pg = &self.pg[&region];
        Command::new(pg.bin_dir().join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "host={} port={} user=app dbname=postgres connect_timeout=2",
                self.opts.layout.site_addr(region),
                pg.port()
            ))
            .args([
                "-c",
                "BEGIN; INSERT INTO orders VALUES (-1, 'probe'); ROLLBACK;",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Whether a client reaches the owner of app-eu through `region`'s HAProxy now.
    #[must_use]
    pub fn routes(&self, region: Site) -> bool {
        let pg = &self.pg[&Site::A];
        Command::new(pg.bin_dir().join("psql"))
            .args(["-X", "-q", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={} user=app dbname=postgres connect_timeout=2",
                self.opts.layout.client_port(region)
            ))
            .args(["-c", "SELECT 1"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The application's DSN from the client site (through the regions' HAProxies).
    #[must_use]
    pub fn client_dsn(&self) -> String {
        self.opts.layout.client_dsn("app")
    }

    /// Polls `done` every 50 ms until it holds or `timeout` passes.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&RegionsLab) -> bool,
    ) -> Result<Duration, LabError> {
        let began = Instant::now();
        loop {
            if done(self) {
                return Ok(began.elapsed());
            }
            if began.elapsed() > timeout {
                return Err(LabError::NotReady {
                    what: format!("waited {timeout:?} for {what}"),
                    log: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
