//! The lab's WAN in one place: a listener per service on the hub's address, carrying each
//! connection over the directed path from the site that opened it (known by its source
//! address) to the service's site, plus loopback listeners that play the client site's
//! connections to each region's HAProxy. A service clients also query over UDP (the
//! client site's DNS server) gets a UDP relay on the same port ([`super::udp`]) whose
//! datagrams follow the same paths. Drills change paths with [`Hub::set`]; open
//! connections follow at once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::topology::{Layout, Service, Site};
use super::udp::UdpRelay;
use super::wan::{next_seed, Link, WanSettings};

/// A UDP client (a resolver's source port) that sent nothing for this long loses its
/// mapping (and its socket). DNS clients use a new port per query and give up on an
/// answer within seconds, so mappings need not outlive that: a publish that polls for
/// its confirmation every few ms must not pile up sockets.
const UDP_IDLE: Duration = Duration::from_secs(5);

/// A directed path: connections opened in `from` to a service in `to`.
pub type Path = (Site, Site);

/// The running WAN.
#[derive(Debug)]
pub struct Hub {
    links: BTreeMap<Path, Link>,
    /// Within a site, and for the lab's own connections: never delayed or cut.
    lan: Link,
    tasks: Vec<JoinHandle<()>>,
    udp: Vec<UdpRelay>,
}

/// The paths into one site, chosen by where a connection or datagram comes from.
#[derive(Clone)]
struct Routes {
    layout: Layout,
    from: BTreeMap<Site, Link>,
    /// From no site (the lab's own checks) or from within the site itself.
    lan: Link,
}

impl Routes {
    fn link(&self, peer: IpAddr) -> &Link {
        let from = match peer {
            IpAddr::V4(v4) => self.layout.site_of(v4),
            IpAddr::V6(_) => None,
        };
        from.and_then(|f| self.from.get(&f)).unwrap_or(&self.lan)
    }
}

/// Settings of a path that is not a WAN (within a site, the lab's own checks).
fn lan() -> WanSettings {
    WanSettings {
        delay: std::time::Duration::ZERO,
        jitter: std::time::Duration::ZERO,
        ..WanSettings::default()
    }
}

impl Hub {
    /// Listens for every service of `layout` (the hub address must be up) with every
    /// WAN path set to `wan`.
    pub async fn start(layout: &Layout, wan: WanSettings) -> std::io::Result<Hub> {
        let mut links = BTreeMap::new();
        for from in Site::ALL {
            for to in Site::ALL {
                if from != to {
                    links.insert((from, to), Link::new(wan));
                }
            }
        }
        let mut hub = Hub {
            links,
            lan: Link::new(lan()),
            tasks: Vec::new(),
            udp: Vec::new(),
        };
        for service in Service::all() {
            let listener = TcpListener::bind(layout.via_hub(service)).await?;
            let target = layout.inside(service);
            let routes = Routes {
                layout: layout.clone(),
                from: hub.routes_to(service.site()),
                lan: hub.lan.clone(),
            };
            if service.udp() {
                let routes = routes.clone();
                let relay =
                    UdpRelay::start(layout.via_hub(service), target, UDP_IDLE, move |peer| {
                        routes.link(peer.ip()).clone()
                    })
                    .await?;
                hub.udp.push(relay);
            }
            hub.tasks.push(tokio::spawn(async move {
                let mut seed = u64::from(target.port());
                loop {
                    let Ok((conn, peer)) = listener.accept().await else {
                        continue;
                    };
                    routes
                        .link(peer.ip())
                        .carry(conn, target, next_seed(&mut seed));
                }
            }));
        }
        for region in Site::REGIONS {
            let listen = SocketAddr::from(([127, 0, 0, 1], layout.client_port(region)));
            let listener = TcpListener::bind(listen).await?;
            let target = layout.inside(Service::Haproxy(region));
            let link = hub.links[&(Site::Clients, region)].clone();
            hub.tasks.push(tokio::spawn(async move {
                let mut seed = u64::from(listen.port());
                loop {
                    if let Ok((conn, _)) = listener.accept().await {
                        link.carry(conn, target, next_seed(&mut seed));
                    }
                }
            }));
        }
        Ok(hub)
    }

    /// The paths into site `to`, by the site they start from.
    fn routes_to(&self, to: Site) -> BTreeMap<Site, Link> {
        self.links
            .iter()
            .filter(|((_, t), _)| *t == to)
            .map(|((f, _), l)| (*f, l.clone()))
            .collect()
    }

    /// Changes the path `from` → `to` (not within a site).
    pub fn set(&self, from: Site, to: Site, settings: WanSettings) {
        if let Some(l) = self.links.get(&(from, to)) {
            l.set(settings);
        }
    }

    #[must_use]
    pub fn settings(&self, from: Site, to: Site) -> Option<WanSettings> {
        self.links.get(&(from, to)).map(Link::settings)
    }

    /// Changes both directions between `x` and `y`.
    pub fn set_both(&self, x: Site, y: Site, settings: WanSettings) {
        self.set(x, y, settings);
        self.set(y, x, settings);
    }

    /// Every WAN path back to `wan` (a drill's heal).
    pub fn heal(&self, wan: WanSettings) {
        for l in self.links.values() {
            l.set(wan);
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
