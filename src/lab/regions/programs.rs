//! Starting and stopping the lab's programs in their sites: etcd, PostgreSQL, the
//! sidecars and agents (under each region's shiftable clock), HAProxy, and the setup
//! that joins them.

use super::*;

impl RegionsLab {
    pub(super) fn start_etcd(&mut self, site: Site, state: &str) -> Result<(), LabError> {
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
            // Raft over a 70 ms round trip: heartbeat ~1.5 RTT, election 5 heartbeats
            // (see ETCD_ELECTION_TIMEOUT_MS; the degraded WAN, 300 ms with 5 % loss,
            // still hears a heartbeat well within it).
            .args(["--heartbeat-interval", &ETCD_HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ETCD_ELECTION_TIMEOUT_MS.to_string()])
            // A member cut from the leader (a WAN cut, the witness still seeing both)
            // must not win votes from members that still hear the leader: without
            // pre-vote its elections left the cluster leaderless for seconds.
            .arg("--pre-vote")
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let d = Daemon::spawn(&format!("etcd {site}"), cmd, &self.log_path("etcd", site))?;
        self.etcd.insert(site, d);
        Ok(())
    }

    pub(super) fn wait_etcd(&self) -> Result<(), LabError> {
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

    pub(super) fn start_postgres(&mut self, region: Site) -> Result<(), LabError> {
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

    pub(super) fn setup(&self) -> Result<(), LabError> {
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

    pub(super) fn pgmesh(&self, site: Site, args: &[&str]) -> Command {
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

    pub(super) fn start_haproxy(&mut self, region: Site) -> Result<(), LabError> {
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
}
