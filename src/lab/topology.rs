//! The cross-region lab's map: which sites exist, their addresses, which service listens
//! where, and the config every program reads. Pure, so the layout is tested without
//! root and so `tests/compose_config.rs` can compare it with `docker-compose.yml`.
//!
//! Each site is a network namespace joined to the lab process's namespace (the "hub") by
//! one veth pair, with a route to the hub's address and nothing else: a site cannot reach
//! another site's address at all. Every service is named by the hub's address and its own
//! port; the hub accepts the connection, sees from the source address which site opened
//! it, and carries it over that directed WAN path ([`super::hub`]). Traffic within a
//! site goes through the hub too, on a path that is never delayed or cut (a region's LAN).
//! So one config file serves every site, as one DNS name would.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

/// The zone the lab's DNS server (in the client site) serves; the agents publish
/// `<endpoint>.<zone>` there.
pub const DNS_ZONE: &str = "lab.pgmesh.";
/// The TSIG key's name the agents sign their UPDATEs with.
pub const DNS_KEY: &str = "pgmesh-lab.";

/// A site of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    A,
    B,
    Witness,
    Clients,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::A, Site::B, Site::Witness, Site::Clients];
    pub const REGIONS: [Site; 2] = [Site::A, Site::B];

    /// The node name in pgmesh's config (`a`, `b`) or the site's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Site::A => "a",
            Site::B => "b",
            Site::Witness => "witness",
            Site::Clients => "clients",
        }
    }

    fn index(self) -> u8 {
        match self {
            Site::A => 1,
            Site::B => 2,
            Site::Witness => 3,
            Site::Clients => 4,
        }
    }

    /// The other region (the witness and the clients have none).
    #[must_use]
    pub fn peer(self) -> Option<Site> {
        match self {
            Site::A => Some(Site::B),
            Site::B => Some(Site::A),
            Site::Witness | Site::Clients => None,
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Site> {
        Site::ALL
            .into_iter()
            .find(|site| site.name() == s || (s.len() == 1 && site.name().starts_with(s)))
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a lab instance is called and where it lives: one per machine by default, another
/// `net`/`port_base` for a second one (tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Namespace and interface prefix (`pgmL` gives `pgmL-a`, ...); at most 8 characters.
    pub prefix: String,
    /// The second octet of the lab's 10.x.0.0/16.
    pub net: u8,
    /// Ports are `port_base + n` (see [`Service`]).
    pub port_base: u16,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            prefix: "pgmL".to_string(),
            net: 77,
            port_base: 7700,
        }
    }
}

/// The programs of the lab that others connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Postgres(Site),
    EtcdClient(Site),
    EtcdPeer(Site),
    /// The agent's HTTP endpoint (`/owner/ENDPOINT`, `/health`).
    Agent(Site),
    /// The region's HAProxy, in front of whichever region owns `app-eu`.
    Haproxy(Site),
    /// An authoritative DNS server (Knot) for [`DNS_ZONE`]: the lab runs one, in the
    /// client site. TCP and UDP on the same port.
    Dns(Site),
}

impl Service {
    /// Every service of the lab.
    #[must_use]
    pub fn all() -> Vec<Service> {
        let mut v = Vec::new();
        for r in Site::REGIONS {
            v.extend([Service::Postgres(r), Service::Agent(r), Service::Haproxy(r)]);
        }
        for s in [Site::A, Site::B, Site::Witness] {
            v.extend([Service::EtcdClient(s), Service::EtcdPeer(s)]);
        }
        v.push(Service::Dns(Site::Clients));
        v
    }

    /// Whether clients also reach the service over UDP (DNS queries), so the hub relays
    /// datagrams on its port too ([`super::udp`]).
    #[must_use]
    pub fn udp(self) -> bool {
        matches!(self, Service::Dns(_))
    }

    #[must_use]
    pub fn site(self) -> Site {
        match self {
            Service::Postgres(s)
            | Service::EtcdClient(s)
            | Service::EtcdPeer(s)
            | Service::Agent(s)
            | Service::Haproxy(s)
            | Service::Dns(s) => s,
        }
    }

    /// `port_base` + 10 × kind + site index: 7701 is region a's PostgreSQL, 7754 the
    /// client site's DNS server.
    #[must_use]
    pub fn port(self, layout: &Layout) -> u16 {
        let kind = match self {
            Service::Postgres(_) => 0,
            Service::EtcdClient(_) => 1,
            Service::EtcdPeer(_) => 2,
            Service::Agent(_) => 3,
            Service::Haproxy(_) => 4,
            Service::Dns(_) => 5,
        };
        layout.port_base + kind * 10 + u16::from(self.site().index())
    }
}

impl Layout {
    /// The hub's address, which every site routes to.
    #[must_use]
    pub fn hub(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 1)
    }

    /// A site's own address (its end of the veth pair).
    #[must_use]
    pub fn site_addr(&self, site: Site) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, site.index(), 2)
    }

    /// The hub's end of a site's veth pair.
    #[must_use]
    pub fn hub_side(&self, site: Site) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, site.index(), 1)
    }

    /// Which site an address belongs to (a connection's source), if any.
    #[must_use]
    pub fn site_of(&self, addr: Ipv4Addr) -> Option<Site> {
        Site::ALL.into_iter().find(|&s| self.site_addr(s) == addr)
    }

    #[must_use]
    pub fn namespace(&self, site: Site) -> String {
        format!(
            "{}-{}",
            self.prefix,
            site.name().chars().next().unwrap_or('x')
        )
    }

    /// The host-side interface of a site's veth pair.
    #[must_use]
    pub fn host_interface(&self, site: Site) -> String {
        format!(
            "{}{}",
            self.prefix,
            site.name().chars().next().unwrap_or('x')
        )
    }

    /// Where programs in any site reach `service`: the hub.
    #[must_use]
    pub fn via_hub(&self, service: Service) -> SocketAddr {
        SocketAddr::from((self.hub(), service.port(self)))
    }

    /// Where the service itself listens (inside its site).
    #[must_use]
    pub fn inside(&self, service: Service) -> SocketAddr {
        SocketAddr::from((self.site_addr(service.site()), service.port(self)))
    }

    /// Where the lab's clients reach a region's HAProxy: a loopback port of the hub that
    /// carries connections over the clients' WAN path to that region.
    #[must_use]
    pub fn client_port(&self, region: Site) -> u16 {
        Service::Haproxy(region).port(self) + 100
    }

    /// The application's DSN as a client site sees it: region a's HAProxy, then b's
    /// (libpq-style host list: the next is tried when one refuses).
    #[must_use]
    pub fn client_dsn(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user={user} dbname=postgres connect_timeout=2",
            self.client_port(Site::A),
            self.client_port(Site::B)
        )
    }

    /// `pgmesh.toml` for every program of the lab.
    #[must_use]
    pub fn config(&self, cluster: &str, sidecar_http_port: u16) -> String {
        let hub = self.hub();
        let etcd = [Site::A, Site::B, Site::Witness]
            .iter()
            .map(|&s| format!("\"http://{}\"", self.via_hub(Service::EtcdClient(s))))
            .collect::<Vec<_>>()
            .join(", ");
        let mut c = String::from(
            "# pgmesh config of the cross-region lab (written by `pgmesh lab --regions`).\n",
        );
        for r in Site::REGIONS {
            c.push_str(&format!(
                "[nodes.{r}]\ndsn = \"host={hub} port={} user=postgres dbname=postgres connect_timeout=3\"\n",
                Service::Postgres(r).port(self)
            ));
        }
        c.push_str(&format!(
            "\n[replication]\ntables = [\"public.orders\"]\n\n[http]\nlisten = \"127.0.0.1:{sidecar_http_port}\"\n\n\
             [control]\netcd = [{etcd}]\ncluster = \"{cluster}\"\nlease_ttl = \"5s\"\nsafety_margin = \"2s\"\nprobe_interval = \"500ms\"\n\
             failback = \"auto\"\nfailback_after = \"5s\"\netcd_leader = \"witness\"\n\
             [control.health]\nsidecar_url = \"http://127.0.0.1:{sidecar_http_port}\"\n\n\
             [endpoints.app-eu]\nhome = \"a\"\n[endpoints.app-us]\nhome = \"b\"\n"
        ));
        c
    }

    /// `[traffic.dns]` of the lab, appended to [`Layout::config`]: the agents publish
    /// `<endpoint>.lab.pgmesh.` on the client site's DNS server through the hub, so every
    /// UPDATE (TCP) and confirming query (UDP) crosses the WAN path from the owner's
    /// region to the client site. Each region's answer is its HAProxy's site address.
    /// The secret is read from `tsig_secret_file` when the config is parsed. Kept apart
    /// from [`Layout::config`] because that is the deployment `docker-compose.yml` runs
    /// too (`tests/compose_config.rs` compares their keys), and compose has no DNS server.
    #[must_use]
    pub fn dns_config(&self, tsig_secret_file: &Path) -> String {
        let mut c = format!(
            "\n[traffic.dns]\nzone = \"{DNS_ZONE}\"\nservers = [\"{}\"]\nttl = \"1s\"\n\
             tsig_key = \"{DNS_KEY}\"\ntsig_algorithm = \"hmac-sha256\"\ntsig_secret_file = \"{}\"\n",
            self.via_hub(Service::Dns(Site::Clients)),
            tsig_secret_file.display()
        );
        for r in Site::REGIONS {
            c.push_str(&format!("records.{r} = [\"{}\"]\n", self.site_addr(r)));
        }
        c
    }

    /// The HAProxy config of `region`: `app-eu` on the region's port, sent to whichever
    /// region's agent answers 200 on `/owner/app-eu`.
    #[must_use]
    pub fn haproxy_config(&self, region: Site) -> String {
        let mut servers = String::new();
        for r in Site::REGIONS {
            let pg = self.via_hub(Service::Postgres(r));
            servers.push_str(&format!(
                "    server {r} {pg} check port {} inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
                Service::Agent(r).port(self)
            ));
        }
        format!(
            "global\n    maxconn 500\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n    timeout check 1s\n\n\
             listen app-eu\n    bind 0.0.0.0:{}\n    option httpchk GET /owner/app-eu\n    http-check expect status 200\n{servers}",
            Service::Haproxy(region).port(self)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_its_own_port() {
        let l = Layout::default();
        let mut ports: Vec<u16> = Service::all().iter().map(|s| s.port(&l)).collect();
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n);
        assert_eq!(Service::Postgres(Site::A).port(&l), 7701);
        assert_eq!(Service::EtcdPeer(Site::Witness).port(&l), 7723);
        assert_eq!(Service::Dns(Site::Clients).port(&l), 7754);
        // The sidecars' HTTP port (inside each region) is none of them.
        assert!(!ports.contains(&7760));
        // Client ports do not collide with services either.
        assert!(Site::REGIONS
            .iter()
            .all(|&r| !ports.contains(&l.client_port(r))));
    }

    #[test]
    fn sources_map_back_to_their_sites() {
        let l = Layout::default();
        for s in Site::ALL {
            assert_eq!(l.site_of(l.site_addr(s)), Some(s));
            assert_eq!(Site::parse(s.name()), Some(s));
        }
        assert_eq!(l.site_of(l.hub()), None);
        assert_eq!(l.site_of(l.hub_side(Site::A)), None);
        assert_eq!(Site::parse("w"), Some(Site::Witness));
        assert_eq!(Site::parse("x"), None);
    }

    #[test]
    fn names_fit_interface_limits() {
        let l = Layout::default();
        for s in Site::ALL {
            assert!(l.namespace(s).len() <= 15);
            assert!(l.host_interface(s).len() <= 15);
        }
        assert_eq!(l.namespace(Site::Witness), "pgmL-w");
    }

    #[test]
    fn the_config_is_valid_pgmesh_config() {
        let l = Layout::default();
        let text = l.config("lab", 7760);
        let cfg = crate::config::Config::parse(
            &text,
            "lab",
            &crate::config::Env::from_pairs(Vec::<(String, String)>::new()),
        )
        .unwrap();
        assert_eq!(cfg.nodes.len(), 2);
        assert!(text.contains("host=10.77.0.1 port=7701"));
        assert!(text.contains("\"http://10.77.0.1:7713\""));
    }

    #[test]
    fn the_dns_section_points_the_agents_at_the_client_site_over_the_hub() {
        let l = Layout::default();
        let dir = std::env::temp_dir().join(format!("pgmesh-topology-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("tsig.secret");
        std::fs::write(&secret, "c2VjcmV0LW9mLTMyLWJ5dGVzLWZvci10aGUtbGFiLi4=\n").unwrap();
        let text = l.config("lab", 7760) + &l.dns_config(&secret);
        let cfg = crate::config::Config::parse(
            &text,
            "lab",
            &crate::config::Env::from_pairs(Vec::<(String, String)>::new()),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let dns = cfg.unwrap().traffic.dns.expect("[traffic.dns]");
        assert_eq!(dns.zone, DNS_ZONE);
        assert_eq!(dns.servers, vec![l.via_hub(Service::Dns(Site::Clients))]);
        assert_eq!(dns.servers[0].to_string(), "10.77.0.1:7754");
        assert_eq!(dns.ttl, std::time::Duration::from_secs(1));
        let key = dns.tsig.expect("a TSIG key");
        assert_eq!(key.name, DNS_KEY);
        assert_eq!(key.secret, b"secret-of-32-bytes-for-the-lab..");
        for (node, addr) in [("a", "10.77.1.2"), ("b", "10.77.2.2")] {
            assert_eq!(
                dns.records[node],
                crate::traffic::dns::RecordSet::Addresses(vec![addr.parse().unwrap()])
            );
        }
        assert!(Service::Dns(Site::Clients).udp());
        assert!(!Service::Postgres(Site::A).udp());
    }
}
