//! A userspace "WAN" between two sites: a TCP proxy that adds one-way delay, jitter, the
//! stalls that packet loss causes on TCP, whole stalls, and cuts. The kernel here has no
//! `netem`, so the cross-region lab routes every connection between regions through one
//! of these (one listener per remote service), and drills change its [`WanSettings`] while
//! connections are open.
//!
//! Loss on TCP is not lost bytes but a retransmission: a segment that is lost arrives one
//! retransmission timeout later, and everything behind it waits (head-of-line blocking).
//! So each chunk is, with probability `loss`, held back by `retransmit` (200 ms, Linux's
//! minimum RTO) on top of its delay, and chunks stay in order.
//!
//! [`schedule`] is the pure part: when a chunk read now may be written on the other side.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the link does now; drills change it while connections are open.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WanSettings {
    /// One-way delay (70 ms RTT: 35 ms).
    pub delay: Duration,
    /// Up to this much more delay, uniformly; order is kept.
    pub jitter: Duration,
    /// Probability that a chunk is held back by `retransmit` (0.0 to 1.0).
    pub loss: f64,
    pub retransmit: Duration,
    /// Nothing is forwarded (connections stay open, bytes wait): a stalled link.
    pub stalled: bool,
    /// The link is cut: open connections are closed and new ones refused.
    pub cut: bool,
}

impl Default for WanSettings {
    /// The lab's default WAN: 70 ms round trip, a little jitter, no loss.
    fn default() -> Self {
        WanSettings {
            delay: Duration::from_millis(35),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            retransmit: Duration::from_millis(200),
            stalled: false,
            cut: false,
        }
    }
}

/// When a chunk read at `now` may be written: after its delay, jitter and any
/// retransmission, and never before the chunk ahead of it (`previous`). `r` is a uniform
/// random number in [0, 1) drawn for the jitter, `l` one for the loss.
#[must_use]
pub fn schedule(s: &WanSettings, now: Instant, previous: Instant, r: f64, l: f64) -> Instant {
    let jitter = s.jitter.mul_f64(r.clamp(0.0, 1.0));
    let lost = if l < s.loss {
        s.retransmit
    } else {
        Duration::ZERO
    };
    (now + s.delay + jitter + lost).max(previous)
}

/// A small xorshift generator: the WAN's randomness needs no crate and no security.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        #[allow(clippy::cast_precision_loss)]
        let v = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        v
    }
}

/// One directed path between two sites: the settings every connection on it follows.
/// Clones share the path, so a drill changes it once for all its listeners.
#[derive(Clone, Debug)]
pub struct Link {
    settings: Arc<RwLock<WanSettings>>,
    changed: watch::Sender<()>,
}

impl Link {
    #[must_use]
    pub fn new(settings: WanSettings) -> Link {
        let (changed, _) = watch::channel(());
        Link {
            settings: Arc::new(RwLock::new(settings)),
            changed,
        }
    }

    #[must_use]
    pub fn settings(&self) -> WanSettings {
        read(&self.settings)
    }

    /// Changes the path; open connections follow at once (a cut closes them).
    pub fn set(&self, settings: WanSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
        let _ = self.changed.send(());
    }

    /// Carries an accepted connection to `target` over this path (refused when cut).
    pub fn carry(&self, client: TcpStream, target: SocketAddr, seed: u64) {
        if self.settings().cut {
            drop(client); // refused: the link is cut
            return;
        }
        tokio::spawn(forward(
            client,
            target,
            self.settings.clone(),
            self.changed.subscribe(),
            seed,
        ));
    }
}

/// Next seed of a listener's connections (each connection gets its own randomness).
pub(crate) fn next_seed(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    *seed
}

/// A running link: listens on `listen`, forwards to `target` through the settings.
#[derive(Debug)]
pub struct WanLink {
    addr: SocketAddr,
    link: Link,
    task: tokio::task::JoinHandle<()>,
}

impl WanLink {
    /// Starts the proxy on `listen` (port 0: any free one) towards `target`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        settings: WanSettings,
    ) -> std::io::Result<WanLink> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let link = Link::new(settings);
        let path = link.clone();
        let task = tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(addr.port());
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                path.carry(client, target, next_seed(&mut seed));
            }
        });
        Ok(WanLink { addr, link, task })
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    #[must_use]
    pub fn settings(&self) -> WanSettings {
        self.link.settings()
    }

    /// Changes the link; open connections follow at once (a cut closes them).
    pub fn set(&self, settings: WanSettings) {
        self.link.set(settings);
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end when the link's `changed` sender goes with the last clone.
    }
}

fn read(s: &RwLock<WanSettings>) -> WanSettings {
    *s.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One client connection: two directions, each delayed on its own.
async fn forward(
    client: TcpStream,
    target: SocketAddr,
    settings: Arc<RwLock<WanSettings>>,
    changed: watch::Receiver<()>,
    seed: u64,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, settings.clone(), changed.clone(), seed);
    let down = pump(sr, cw, settings, changed, seed.rotate_left(17));
    // Each direction ends on its own: a client that half-closes after its request (an
    // HTTP/1.0 health check) still gets the answer. A cut ends both.
    tokio::join!(up, down);
}

/// Reads chunks from `from` and writes each to `to` at its scheduled time; at the end of
/// `from`, passes the end on (after the bytes still under way); returns then, on an error,
/// or when the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    settings: Arc<RwLock<WanSettings>>,
    mut changed: watch::Receiver<()>,
    seed: u64,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let for_reader = settings.clone();
    let reader = async move {
        let mut rng = Rng::new(seed);
        let mut previous = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let at = schedule(
                &read(&for_reader),
                Instant::now(),
                previous,
                rng.next(),
                rng.next(),
            );
            previous = at;
            if tx.send((at, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                r = changed.changed() => {
                    if r.is_err() || read(&settings).cut {
                        return;
                    }
                    continue;
                }
            };
            let Some((at, bytes)) = next else {
                // `from` ended and everything read was written: end `to` likewise.
                let _ = to.shutdown().await;
                return;
            };
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => break,
                    r = changed.changed() => if r.is_err() || read(&settings).cut {
                        return;
                    },
                }
            }
            // A stalled link holds the bytes until it flows again (or is cut).
            loop {
                let s = read(&settings);
                if s.cut {
                    return;
                }
                if !s.stalled {
                    break;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The writer decides when the direction is over: on a cut or an error at once, at
    // the end of `from` once the bytes under way are written.
    tokio::pin!(writer);
    tokio::select! {
        () = &mut writer => return,
        () = reader => {}
    }
    writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_chunk_waits_its_delay_and_jitter_and_never_overtakes() {
        let s = WanSettings {
            delay: ms(35),
            jitter: ms(10),
            ..WanSettings::default()
        };
        let now = Instant::now();
        assert_eq!(schedule(&s, now, now, 0.0, 0.99), now + ms(35));
        assert_eq!(schedule(&s, now, now, 0.5, 0.99), now + ms(40));
        // The chunk ahead is due later: this one waits behind it (TCP keeps order).
        let ahead = now + ms(100);
        assert_eq!(schedule(&s, now, ahead, 0.0, 0.99), ahead);
    }

    #[test]
    fn a_lost_chunk_arrives_one_retransmission_later() {
        let s = WanSettings {
            delay: ms(150),
            jitter: Duration::ZERO,
            loss: 0.05,
            ..WanSettings::default()
        };
        let now = Instant::now();
        assert_eq!(schedule(&s, now, now, 0.0, 0.01), now + ms(350));
        assert_eq!(schedule(&s, now, now, 0.0, 0.05), now + ms(150));
    }

    #[test]
    fn the_generator_stays_in_the_unit_interval() {
        let mut r = Rng::new(42);
        let mut below = 0;
        for _ in 0..10_000 {
            let v = r.next();
            assert!((0.0..1.0).contains(&v));
            if v < 0.05 {
                below += 1;
            }
        }
        assert!((300..700).contains(&below), "{below} of 10000 below 0.05");
    }

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(c: &mut TcpStream) -> std::io::Result<Duration> {
        let t = Instant::now();
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await?;
        Ok(t.elapsed())
    }

    #[tokio::test]
    async fn the_link_delays_stalls_and_cuts_a_real_connection() {
        let target = echo().await;
        let link = WanLink::start(
            "127.0.0.1:0".parse().unwrap(),
            target,
            WanSettings::default(),
        )
        .await
        .unwrap();
        let mut c = TcpStream::connect(link.addr()).await.unwrap();
        let rtt = round_trip(&mut c).await.unwrap();
        assert!(rtt >= ms(70), "70 ms round trip, got {rtt:?}");

        // Stalled: the echo comes only after the link flows again.
        link.set(WanSettings {
            stalled: true,
            ..WanSettings::default()
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn(async move {
            let r = round_trip(&mut c).await;
            let _ = done_tx.send(Instant::now());
            (r, c)
        });
        tokio::time::sleep(ms(300)).await;
        let released = Instant::now();
        link.set(WanSettings::default());
        let answered = done_rx.await.unwrap();
        assert!(answered >= released, "no answer while stalled");
        let (r, mut c) = waiter.await.unwrap();
        r.unwrap();

        // Cut: the open connection is closed, a new one gets nothing through.
        link.set(WanSettings {
            cut: true,
            ..WanSettings::default()
        });
        let mut buf = [0u8; 4];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = c.write_all(b"ping").await;
            c.read(&mut buf).await
        })
        .await
        .expect("the cut closes the connection");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut fresh = TcpStream::connect(link.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), round_trip(&mut fresh))
            .await
            .expect("a refused connection ends at once");
        assert!(r.is_err(), "nothing crosses a cut link: {r:?}");

        // Healed: new connections work again.
        link.set(WanSettings::default());
        let mut again = TcpStream::connect(link.addr()).await.unwrap();
        round_trip(&mut again).await.unwrap();
    }
}
