//! What a drill reads of the lab: each region's PostgreSQL, its agent's answers, the DNS
//! answer clients get, whether a region takes writes and routes them.

use super::*;

impl RegionsLab {
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

    /// What each region's PostgreSQL is doing now, as text: sessions with their waits and
    /// blockers, replication slots and their walsenders, origin progress, the fence. Kept
    /// next to a failed drill's logs: the lab is restarted for the next drill, and a stuck
    /// direction leaves no trace in a log.
    #[must_use]
    pub fn snapshot(&self) -> String {
        const QUERIES: [(&str, &str); 6] = [
            ("WAL position", "SELECT pg_current_wal_lsn(), now()"),
            (
                "sessions (pid|application|backend|state|wait|blocked by|xact start|query)",
                "SELECT pid, application_name, backend_type, state,
                        wait_event_type || '/' || wait_event, pg_blocking_pids(pid), xact_start,
                        left(regexp_replace(query, '\\s+', ' ', 'g'), 160)
                   FROM pg_stat_activity ORDER BY pid",
            ),
            (
                "slots (name|active|pid|restart|confirmed flush|wal status)",
                "SELECT slot_name, active, active_pid, restart_lsn, confirmed_flush_lsn, wal_status
                   FROM pg_replication_slots ORDER BY slot_name",
            ),
            (
                "walsenders (pid|application|state|sent|write|flush|reply time)",
                "SELECT pid, application_name, state, sent_lsn, write_lsn, flush_lsn, reply_time
                   FROM pg_stat_replication ORDER BY pid",
            ),
            (
                "origins (name|remote lsn|local lsn)",
                "SELECT o.roname, s.remote_lsn, s.local_lsn FROM pg_replication_origin_status s
                   JOIN pg_replication_origin o ON o.roident = s.local_id ORDER BY 1",
            ),
            ("fence", "SELECT * FROM pgmesh.fence"),
        ];
        let mut out = String::new();
        for region in Site::REGIONS {
            out.push_str(&format!("## region {}\n", region.name()));
            for (title, sql) in QUERIES {
                let answer = match self.pg[&region].psql(sql) {
                    Ok(text) => text,
                    Err(e) => format!("(no answer: {e})"),
                };
                out.push_str(&format!("### {title}\n{answer}\n"));
            }
            out.push('\n');
        }
        out
    }
}
