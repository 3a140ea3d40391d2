//! The hub's UDP relay, for the one service of the lab that clients query over UDP: DNS.
//! A resolver asks over UDP and falls back to TCP only for a truncated answer, so the
//! client site's DNS server is reached over UDP as well as through the hub's TCP path.
//!
//! The relay binds the hub's address and the service's port. Each client source address
//! gets its own socket towards the target, so the server's answers come back to that
//! socket and go out to the client from the hub's address, like a NAT mapping; a mapping
//! that carried nothing either way for `idle` is closed and the next datagram opens a
//! new one. Datagrams follow the directed path the client's site takes to the service
//! (the same [`Link`] its TCP connections follow, in both directions): one-way delay and
//! jitter, and, since UDP has no retransmission, loss drops a datagram, as do a stall and
//! a cut (the client's own retry is what recovers). Order is not kept: UDP never
//! promised it.
//!
//! [`fate`] is the pure part: whether a datagram sent now arrives, and when.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::wan::{next_seed, schedule, Link, WanSettings};

/// The largest datagram relayed (an IPv4 UDP payload's limit).
const MAX_DATAGRAM: usize = 65_535;

/// When a datagram sent at `now` over a path with settings `s` arrives, or `None` when it
/// is dropped: the path is cut or stalled, or the datagram is lost (`l` < `loss`). `r` is a
/// uniform random number in [0, 1) for the jitter, `l` one for the loss.
#[must_use]
pub fn fate(s: &WanSettings, now: Instant, r: f64, l: f64) -> Option<Instant> {
    if s.cut || s.stalled || l < s.loss {
        return None;
    }
    // Delay and jitter as on TCP; a datagram waits for nothing ahead of it.
    let no_loss = WanSettings { loss: 0.0, ..*s };
    Some(schedule(&no_loss, now, now, r, l))
}

/// A uniform random number in [0, 1) from the lab's seed sequence (its high 53 bits).
fn uniform(seed: &mut u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = (next_seed(seed) >> 11) as f64 / (1u64 << 53) as f64;
    v
}

/// A running relay: datagrams to `addr` go to the target and its answers come back.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl UdpRelay {
    /// Binds `listen` (port 0: any free one) and relays to `target`; `path` gives the link
    /// a client's datagrams (and the answers to them) follow, by the client's address.
    pub async fn start<F>(
        listen: SocketAddr,
        target: SocketAddr,
        idle: Duration,
        path: F,
    ) -> std::io::Result<UdpRelay>
    where
        F: Fn(SocketAddr) -> Link + Send + 'static,
    {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let addr = socket.local_addr()?;
        let task = tokio::spawn(serve(socket, target, idle, path));
        Ok(UdpRelay { addr, task })
    }

    /// Where clients send.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        // The mappings go with the task (each aborts its own answer task).
        self.task.abort();
    }
}

/// One client's socket towards the target and the task that carries the answers back.
struct Mapping {
    upstream: Arc<UdpSocket>,
    link: Link,
    last: Arc<Mutex<Instant>>,
    answers: JoinHandle<()>,
}

impl Mapping {
    async fn open(
        hub: Arc<UdpSocket>,
        client: SocketAddr,
        target: SocketAddr,
        link: Link,
        idle: Duration,
        seed: u64,
    ) -> std::io::Result<Mapping> {
        let local: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let upstream = Arc::new(UdpSocket::bind(local).await?);
        upstream.connect(target).await?;
        let last = Arc::new(Mutex::new(Instant::now()));
        let answers = tokio::spawn(answers(
            hub,
            upstream.clone(),
            client,
            link.clone(),
            last.clone(),
            idle,
            seed,
        ));
        Ok(Mapping {
            upstream,
            link,
            last,
            answers,
        })
    }

    fn expired(&self) -> bool {
        self.answers.is_finished()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.answers.abort();
    }
}

fn touch(last: &Mutex<Instant>) {
    *last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
}

fn last_seen(last: &Mutex<Instant>) -> Instant {
    *last.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Receives the clients' datagrams and sends each over its client's mapping.
async fn serve<F>(hub: Arc<UdpSocket>, target: SocketAddr, idle: Duration, path: F)
where
    F: Fn(SocketAddr) -> Link + Send + 'static,
{
    let mut clients: HashMap<SocketAddr, Mapping> = HashMap::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(target.port());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut swept = Instant::now();
    loop {
        let Ok((n, client)) = hub.recv_from(&mut buf).await else {
            continue;
        };
        if clients.get(&client).is_none_or(Mapping::expired) {
            let link = path(client);
            let opened = Mapping::open(
                hub.clone(),
                client,
                target,
                link,
                idle,
                next_seed(&mut seed),
            )
            .await;
            // The old mapping (if any) goes only now: the new socket never reuses its port.
            match opened {
                Ok(m) => clients.insert(client, m),
                Err(e) => {
                    tracing::debug!(%client, %target, "lab UDP relay: no socket towards the target: {e}");
                    continue;
                }
            };
        }
        let m = &clients[&client];
        touch(&m.last);
        send_later(
            m.upstream.clone(),
            None,
            buf[..n].to_vec(),
            &m.link,
            &mut seed,
        )
        .await;
        if swept.elapsed() >= idle {
            clients.retain(|_, m| !m.expired());
            swept = Instant::now();
        }
    }
}

/// Carries the target's answers to one client until the mapping is idle for `idle`.
async fn answers(
    hub: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    link: Link,
    last: Arc<Mutex<Instant>>,
    idle: Duration,
    mut seed: u64,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let quiet_until = last_seen(&last) + idle;
        match tokio::time::timeout_at(quiet_until, upstream.recv(&mut buf)).await {
            Err(_) => {
                if last_seen(&last).elapsed() >= idle {
                    return; // idle: the mapping expires
                }
            }
            // An ICMP error (the target is down): the client's retry will tell.
            Ok(Err(_)) => {}
            Ok(Ok(n)) => {
                touch(&last);
                send_later(
                    hub.clone(),
                    Some(client),
                    buf[..n].to_vec(),
                    &link,
                    &mut seed,
                )
                .await;
            }
        }
    }
}

/// Sends `bytes` on `socket` (to `to`, or its connected peer) when the path delivers it:
/// at once on a path without delay, else from a task of its own; dropped when [`fate`]
/// says so, or when the path is cut or stalled by the time it would arrive.
async fn send_later(
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    bytes: Vec<u8>,
    link: &Link,
    seed: &mut u64,
) {
    let now = Instant::now();
    let Some(at) = fate(&link.settings(), now, uniform(seed), uniform(seed)) else {
        return;
    };
    let send = async move {
        let _ = match to {
            Some(addr) => socket.send_to(&bytes, addr).await,
            None => socket.send(&bytes).await,
        };
    };
    if at <= now {
        send.await;
        return;
    }
    let link = link.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        let s = link.settings();
        if !s.cut && !s.stalled {
            send.await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_datagram_waits_its_delay_and_jitter_or_is_dropped() {
        let s = WanSettings {
            delay: ms(35),
            jitter: ms(10),
            loss: 0.05,
            ..WanSettings::default()
        };
        let now = Instant::now();
        assert_eq!(fate(&s, now, 0.0, 0.5), Some(now + ms(35)));
        assert_eq!(fate(&s, now, 0.5, 0.5), Some(now + ms(40)));
        // Lost: no retransmission on UDP, the datagram is gone.
        assert_eq!(fate(&s, now, 0.0, 0.01), None);
        for dead in [
            WanSettings { cut: true, ..s },
            WanSettings { stalled: true, ..s },
        ] {
            assert_eq!(fate(&dead, now, 0.0, 0.99), None, "{dead:?}");
        }
    }

    #[test]
    fn the_random_numbers_stay_in_the_unit_interval() {
        let mut seed = 42;
        let mut below = 0;
        for _ in 0..10_000 {
            let v = uniform(&mut seed);
            assert!((0.0..1.0).contains(&v));
            if v < 0.05 {
                below += 1;
            }
        }
        assert!((300..700).contains(&below), "{below} of 10000 below 0.05");
    }

    /// A UDP server on loopback that answers each datagram with its sender's address.
    async fn who_asks() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok((_, peer)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(peer.to_string().as_bytes(), peer).await;
            }
        });
        addr
    }

    /// One datagram through the relay: the answer (the relay's upstream address as the
    /// server saw it) and the round trip; `None` when nothing came back within 400 ms.
    async fn ask(client: &UdpSocket) -> Option<(String, Duration)> {
        let t = Instant::now();
        client.send(b"who").await.unwrap();
        let mut buf = [0u8; 128];
        let n = tokio::time::timeout(ms(400), client.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), t.elapsed()))
    }

    #[tokio::test]
    async fn the_relay_delays_cuts_and_expires_idle_clients() {
        let target = who_asks().await;
        let link = Link::new(WanSettings::default());
        let path = link.clone();
        let relay = UdpRelay::start("127.0.0.1:0".parse().unwrap(), target, ms(300), move |_| {
            path.clone()
        })
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(relay.addr()).await.unwrap();

        let (mapped, rtt) = ask(&client).await.expect("an answer");
        assert!(rtt >= ms(70), "70 ms round trip, got {rtt:?}");
        assert_ne!(mapped, client.local_addr().unwrap().to_string());
        // The same client keeps its mapping while it talks.
        assert_eq!(ask(&client).await.expect("an answer").0, mapped);

        // Cut, then lossy: nothing crosses.
        link.set(WanSettings {
            cut: true,
            ..WanSettings::default()
        });
        assert_eq!(ask(&client).await, None, "nothing crosses a cut path");
        link.set(WanSettings {
            loss: 1.0,
            ..WanSettings::default()
        });
        assert_eq!(ask(&client).await, None, "every datagram lost");

        // Healed, after the mapping sat idle: a new mapping (a new upstream socket).
        link.set(WanSettings::default());
        tokio::time::sleep(ms(700)).await;
        let (again, _) = ask(&client).await.expect("an answer after healing");
        assert_ne!(again, mapped, "an idle mapping expires");
    }
}
