//! `START_REPLICATION … LOGICAL` and the CopyBoth loop: yields XLogData, answers
//! keepalives, and reports the caller's flush position back to the server.
//!
//! Feedback rules (the slot's `confirmed_flush_lsn` follows the flush LSN we send, and the
//! server may drop WAL before it, so it must never run ahead of durable state):
//! - flush = the caller's [`ReplicationStream::set_flushed`] (never further), initially
//!   the start position;
//! - write = apply = flush. Not the last position received: the walsender sends a
//!   keepalive when it has sent all it had only while our write is behind its send
//!   position, and a batch waiting for more is hurried by that keepalive
//!   (`Assembler::sender_idle`). A status that reported the receipt of a commit
//!   before the walsender came to wait suppressed it, and the batch waited out its
//!   whole delay (a CI run, seventeenth session);
//! - sent every `status_interval` (10 s), on a keepalive when none was sent for
//!   [`KEEPALIVE_REPLY_INTERVAL`], immediately when the server asks, and once more on
//!   [`ReplicationStream::shutdown`] before CopyDone so the final position is acknowledged.
//!
//! Liveness: when nothing arrived for a status interval, the periodic status asks the
//! server to reply; nothing at all for `idle_timeout` is a transient timeout error.
//!
//! Clocks: every frame's send time and arrival are kept for the caller
//! ([`ReplicationStream::take_clock_sample`]), and a status update asks for a reply at
//! least every [`ROUND_TRIP_INTERVAL`] so the caller learns the round trip too (see
//! [`super::clock`]; one extra keepalive from the server per interval).

use std::time::{Duration, SystemTime};

use postgres_protocol::message::frontend;
use tokio::time::Instant;

use super::clock::{ClockSample, RoundTrips};
use super::commands::validate_slot_name;
use super::connection::ReplicationConnection;
use super::error::{ErrorContext, SourceError};
use crate::protocol::replication::{
    parse_copy_data, PgTimestamp, ReplicationMessage, StandbyStatusUpdate, XLogData,
};
use crate::sqlquote;
use crate::Lsn;

/// A keepalive the server did not ask a reply to is answered only when no status went out
/// for this long.
pub const KEEPALIVE_REPLY_INTERVAL: Duration = Duration::from_millis(100);

/// A status update asks the server for a reply at least this often (when one goes out
/// anyway), to measure the round trip for the clock skew estimate.
pub const ROUND_TRIP_INTERVAL: Duration = Duration::from_secs(10);

/// pgoutput's `streaming` option: large in-progress transactions sent before commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Streaming {
    /// Whole transactions at commit (memory on the server, spill to its disk).
    #[default]
    Off,
    /// Stream in-progress transactions (proto 2+).
    On,
    /// Like `On`, marked for parallel apply (proto 4, PG16+); `On` on older servers.
    Parallel,
}

/// What to ask pgoutput for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgoutputOptions {
    /// Publications to stream (at least one).
    pub publications: Vec<String>,
    /// Cap on `proto_version` (e.g. what the decoder supports); `None` = newest the
    /// server speaks.
    pub max_proto_version: Option<u32>,
    /// Logical decoding messages (`pg_logical_emit_message`).
    pub messages: bool,
    /// Binary column values (same major version on both ends is the safe case).
    pub binary: bool,
    /// With `origin_none` on a server older than 16, not requested: the origin of a
    /// transaction streamed while it is open is not known to pgoutput's Origin message
    /// there, so only the server-side filter (`origin 'none'`, per change) keeps loops out.
    pub streaming: Streaming,
    /// Drop changes that carry a replication origin on the server (PG16+). On PG15 the
    /// option does not exist; the client filters on pgoutput's Origin message instead.
    pub origin_none: bool,
    /// Decode prepared transactions at PREPARE (proto 3+, slot created with two_phase).
    pub two_phase: bool,
}

/// The newest pgoutput protocol a server of `major` speaks.
#[must_use]
pub fn max_proto_version(major: u32) -> u32 {
    match major {
        0..=13 => 1,
        14 => 2,
        15 => 3,
        _ => 4,
    }
}

/// pgoutput options for a server of `major`, as (name, value) in command order.
pub fn pgoutput_options(
    major: u32,
    opts: &PgoutputOptions,
) -> Result<Vec<(&'static str, String)>, SourceError> {
    if opts.publications.is_empty() {
        return Err(SourceError::Config(
            "pgoutput needs at least one publication name".into(),
        ));
    }
    let proto = match opts.max_proto_version {
        Some(0) => return Err(SourceError::Config("proto_version cap 0 is invalid".into())),
        Some(cap) => cap.min(max_proto_version(major)),
        None => max_proto_version(major),
    };
    // SplitIdentifierString on the server: each name double-quoted, comma-separated.
    let names: Vec<String> = opts
        .publications
        .iter()
        .map(|p| sqlquote::quoted_ident(p))
        .collect();
    let mut out = vec![
        ("proto_version", proto.to_string()),
        ("publication_names", names.join(",")),
    ];
    if opts.messages {
        out.push(("messages", "true".into()));
    }
    if opts.binary {
        out.push(("binary", "true".into()));
    }
    match opts.streaming {
        Streaming::Off => {}
        // Loop prevention of streamed changes needs the server-side origin filter.
        Streaming::On | Streaming::Parallel if opts.origin_none && major < 16 => {}
        Streaming::On | Streaming::Parallel if proto < 2 => {
            return Err(SourceError::Config(format!(
                "streaming needs pgoutput proto_version 2+, but only {proto} is available"
            )))
        }
        Streaming::Parallel if proto >= 4 => out.push(("streaming", "parallel".into())),
        Streaming::On | Streaming::Parallel => out.push(("streaming", "on".into())),
    }
    if opts.two_phase {
        if proto < 3 {
            return Err(SourceError::Config(format!(
                "two_phase needs pgoutput proto_version 3+, but only {proto} is available"
            )));
        }
        out.push(("two_phase", "true".into()));
    }
    if opts.origin_none && major >= 16 {
        out.push(("origin", "none".into()));
    }
    Ok(out)
}

/// `START_REPLICATION SLOT s LOGICAL X/Y ("k" 'v', …)`.
pub fn start_replication_command(
    slot: &str,
    start: Lsn,
    options: &[(&str, String)],
) -> Result<String, SourceError> {
    validate_slot_name(slot)?;
    let mut cmd = format!("START_REPLICATION SLOT {slot} LOGICAL {start}");
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| {
                format!(
                    "{} {}",
                    sqlquote::quoted_ident(k),
                    sqlquote::repl_literal(v)
                )
            })
            .collect();
        cmd.push_str(&format!(" ({})", opts.join(", ")));
    }
    Ok(cmd)
}

/// Which output plugin the slot uses and what to ask it for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputPlugin {
    /// pgoutput; options are chosen per server version by [`pgoutput_options`], and the
    /// publications are checked to exist before streaming.
    Pgoutput(PgoutputOptions),
    /// Any other plugin (e.g. wal2json with `protocol::wal2json::wal2json_options`):
    /// options are passed as given.
    Other {
        name: String,
        options: Vec<(String, String)>,
    },
}

impl OutputPlugin {
    /// pgoutput with default options (the sidecar's and setup's plugin).
    #[must_use]
    pub fn pgoutput() -> OutputPlugin {
        OutputPlugin::Pgoutput(PgoutputOptions::default())
    }

    /// The plugin's name, for messages.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            OutputPlugin::Pgoutput(_) => "pgoutput",
            OutputPlugin::Other { name, .. } => name,
        }
    }
}

/// Everything a stream needs besides the connection and the start LSN.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub slot: String,
    pub plugin: OutputPlugin,
    /// How often to send a standby status update when nothing else triggers one.
    pub status_interval: Duration,
    /// Nothing received for this long (despite asking for a reply) is a timeout.
    /// `None` disables the check.
    pub idle_timeout: Option<Duration>,
}

impl StreamConfig {
    /// A pgoutput stream of `publications` with default options.
    #[must_use]
    pub fn new(slot: &str, publications: &[&str]) -> StreamConfig {
        Self::with_plugin(
            slot,
            OutputPlugin::Pgoutput(PgoutputOptions {
                publications: publications.iter().map(|p| p.to_string()).collect(),
                ..PgoutputOptions::default()
            }),
        )
    }

    /// A stream with explicit plugin options.
    #[must_use]
    pub fn with_plugin(slot: &str, plugin: OutputPlugin) -> StreamConfig {
        StreamConfig {
            slot: slot.to_string(),
            plugin,
            status_interval: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// What the stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationEvent {
    /// Output-plugin data (one pgoutput message).
    XLogData(XLogData),
    /// The server's position while idle; already answered. A caller with no transaction
    /// in flight may `set_flushed(wal_end)` so the slot does not retain idle WAL.
    Keepalive {
        wal_end: Lsn,
        send_time: PgTimestamp,
    },
    /// Emitted by [`super::ReconnectingStream`] after it reconnected: the stream resumes
    /// at `from` (the flushed LSN); drop any partially received transaction.
    Reconnected { from: Lsn },
}

/// A logical replication stream in CopyBoth mode.
#[derive(Debug)]
pub struct ReplicationStream {
    conn: ReplicationConnection,
    slot: String,
    plugin: String,
    start: Lsn,
    flushed: Lsn,
    status_interval: Duration,
    idle_timeout: Option<Duration>,
    last_status: Instant,
    last_recv: Instant,
    /// The last call returned a frame that arrived at `last_recv`.
    just_received: bool,
    ended: bool,
    round_trips: RoundTrips,
    clock: Option<ClockSample>,
    /// When the last clock sample was taken.
    clock_sampled: Option<Instant>,
}

/// Clock samples (for the skew estimate) are taken at most this often from data frames;
/// every keepalive and every measured round trip is sampled.
const CLOCK_SAMPLE_EVERY: Duration = Duration::from_millis(10);

impl ReplicationStream {
    /// Checks the publications exist, then sends START_REPLICATION and enters CopyBoth.
    ///
    /// `start` is where to resume (the caller's durable position); `Lsn::ZERO` means the
    /// slot's `confirmed_flush_lsn`. Transactions that committed before `start` are not sent.
    pub async fn start(
        mut conn: ReplicationConnection,
        cfg: &StreamConfig,
        start: Lsn,
    ) -> Result<ReplicationStream, SourceError> {
        let cmd = match &cfg.plugin {
            OutputPlugin::Pgoutput(p) => {
                let options = pgoutput_options(conn.server_major(), p)?;
                let cmd = start_replication_command(&cfg.slot, start, &options)?;
                check_publications(&mut conn, &p.publications).await?;
                cmd
            }
            OutputPlugin::Other { options, .. } => {
                let options: Vec<(&str, String)> = options
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                start_replication_command(&cfg.slot, start, &options)?
            }
        };
        tracing::info!(target = %conn.target(), slot = %cfg.slot, %start, command = %cmd,
            "starting replication");
        frontend::query(&cmd, conn.write_buf())
            .map_err(|e| SourceError::Config(format!("START_REPLICATION: {e}")))?;
        conn.flush().await?;
        let f = conn.recv().await?;
        match f.tag {
            b'W' => {}
            b'E' => {
                let ctx = ErrorContext {
                    slot: Some(&cfg.slot),
                    plugin: Some(cfg.plugin.name()),
                    ..ErrorContext::default()
                };
                let err = conn.server_error(&f.body, &ctx);
                // Drain to ReadyForQuery so nothing is left half-read; best effort.
                while let Ok(f) = conn.recv().await {
                    if f.tag == b'Z' {
                        break;
                    }
                }
                return Err(err);
            }
            other => {
                return Err(SourceError::protocol(
                    conn.target(),
                    format!(
                        "unexpected message {:?} in answer to START_REPLICATION",
                        char::from(other)
                    ),
                ))
            }
        }
        let now = Instant::now();
        Ok(ReplicationStream {
            conn,
            slot: cfg.slot.clone(),
            plugin: cfg.plugin.name().to_string(),
            start,
            // Nothing is acknowledged until the caller says what is durable: the start
            // position is where to read from, which may be ahead of what is durable.
            flushed: Lsn::ZERO,
            status_interval: cfg.status_interval,
            idle_timeout: cfg.idle_timeout,
            last_status: now,
            last_recv: now,
            just_received: false,
            ended: false,
            round_trips: RoundTrips::default(),
            clock: None,
            clock_sampled: None,
        })
    }

    /// Records that everything up to `lsn` is durable downstream. Reported to the server
    /// with the next status update; never moves backwards.
    pub fn set_flushed(&mut self, lsn: Lsn) {
        if lsn > self.flushed {
            self.flushed = lsn;
        }
    }

    /// The flush position we report.
    #[must_use]
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Where this stream started.
    #[must_use]
    pub fn start_lsn(&self) -> Lsn {
        self.start
    }

    /// The walsender's host:port.
    #[must_use]
    pub fn target(&self) -> &str {
        self.conn.target()
    }

    /// The server's major version.
    #[must_use]
    pub fn server_major(&self) -> u32 {
        self.conn.server_major()
    }

    /// Whether the next event is already read from the socket (`next_event` returns it
    /// without waiting).
    #[must_use]
    pub fn frame_buffered(&self) -> bool {
        !self.ended && self.conn.frame_buffered()
    }

    /// Whether anything more of the stream is here already: a frame read and waiting,
    /// or bytes the socket holds (read now, without waiting).
    pub fn more_arrived(&mut self) -> Result<bool, SourceError> {
        Ok(!self.ended && (self.conn.frame_buffered() || self.conn.read_now()?))
    }

    /// When the last frame arrived (read once per frame; callers use it as "now" for
    /// what they do with the frame).
    #[must_use]
    pub fn last_arrival(&self) -> Instant {
        self.last_recv
    }

    /// The send time and arrival of the last XLogData or keepalive returned, with the
    /// round trip when it answered our request for a reply; taken once.
    pub fn take_clock_sample(&mut self) -> Option<ClockSample> {
        self.clock.take()
    }

    /// Whether a status update sent now should ask for a reply to measure the round trip.
    fn round_trip_due(&self, now: Instant) -> bool {
        self.round_trips
            .since_request(now)
            .is_none_or(|d| d >= ROUND_TRIP_INTERVAL)
    }

    /// Sends a standby status update now.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), SourceError> {
        if reply_requested {
            self.round_trips.requested(Instant::now());
        }
        let update = StandbyStatusUpdate {
            write: self.flushed,
            flush: self.flushed,
            apply: self.flushed,
            client_time: PgTimestamp::from_system_time(SystemTime::now()).unwrap_or_default(),
            reply_requested,
        };
        tracing::trace!(slot = %self.slot, write = %update.write, flush = %update.flush,
            reply_requested, "standby status update");
        self.conn.send_copy_data(update.to_bytes()).await?;
        self.last_status = Instant::now();
        Ok(())
    }

    /// The next event; `Ok(None)` once the server ended the stream (CopyDone or
    /// CommandComplete from its side, e.g. on a clean shutdown).
    pub async fn next_event(&mut self) -> Result<Option<ReplicationEvent>, SourceError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            // Right after a frame, its arrival stands for now: the clock is read once
            // per frame, not twice (status and timeouts may fire one frame late).
            let now = if std::mem::take(&mut self.just_received) {
                self.last_recv
            } else {
                Instant::now()
            };
            let status_due = self.last_status + self.status_interval;
            if now >= status_due {
                let idle = now.duration_since(self.last_recv) >= self.status_interval;
                self.send_status(idle || self.round_trip_due(now)).await?;
                continue;
            }
            let mut wake = status_due;
            if let Some(t) = self.idle_timeout {
                let dead = self.last_recv + t;
                // Frames already read are no silence, however long ago they arrived.
                if now >= dead && !self.conn.frame_buffered() {
                    return Err(SourceError::Timeout {
                        target: self.conn.target().to_string(),
                        what: "waiting for the walsender (no data or keepalive)",
                        after: t,
                    });
                }
                wake = wake.min(dead);
            }
            // A frame already read needs no timer: registering one with the runtime and
            // clearing it again for every frame was 2 % of the sidecar's CPU in catch-up.
            // Waiting, the socket is polled first, so a timer is registered only when
            // nothing has arrived.
            let frame = if self.conn.frame_buffered() {
                self.conn.recv().await?
            } else {
                tokio::select! {
                    biased;
                    f = self.conn.recv() => f?,
                    () = tokio::time::sleep_until(wake) => continue,
                }
            };
            let arrived = self.conn.last_read();
            self.last_recv = arrived;
            match frame.tag {
                b'd' => {
                    let msg = parse_copy_data(frame.body)
                        .map_err(|e| SourceError::protocol(self.conn.target(), e.to_string()))?;
                    let (send_time, keepalive) = match &msg {
                        ReplicationMessage::XLogData(x) => (x.send_time, false),
                        ReplicationMessage::PrimaryKeepalive(k) => (k.send_time, true),
                    };
                    let round_trip = self.round_trips.arrived(arrived, send_time.0, keepalive);
                    // The skew estimate needs a sample now and then, not one per change.
                    let sample_due = keepalive
                        || round_trip.is_some()
                        || self
                            .clock_sampled
                            .is_none_or(|t| arrived.duration_since(t) >= CLOCK_SAMPLE_EVERY);
                    if sample_due {
                        self.clock_sampled = Some(arrived);
                        self.clock =
                            PgTimestamp::from_system_time(SystemTime::now()).map(|local| {
                                ClockSample {
                                    at: arrived,
                                    local_us: local.0,
                                    peer_us: send_time.0,
                                    round_trip,
                                }
                            });
                    }
                    self.just_received = true;
                    match msg {
                        ReplicationMessage::XLogData(x) => {
                            return Ok(Some(ReplicationEvent::XLogData(x)));
                        }
                        ReplicationMessage::PrimaryKeepalive(k) => {
                            // A busy walsender sends a keepalive after nearly every
                            // transaction: answering each one was a fifth of the sidecar's
                            // CPU at 5,000 txn/s (a send, and a wakeup of the walsender).
                            if k.reply_requested
                                || self.last_status.elapsed() >= KEEPALIVE_REPLY_INTERVAL
                            {
                                let ask = self.round_trip_due(arrived);
                                self.send_status(ask).await?;
                            }
                            return Ok(Some(ReplicationEvent::Keepalive {
                                wal_end: k.wal_end,
                                send_time: k.send_time,
                            }));
                        }
                    }
                }
                b'c' => {
                    tracing::info!(slot = %self.slot, "server ended the replication stream");
                    frontend::copy_done(self.conn.write_buf());
                    self.conn.flush().await?;
                    self.drain_to_ready().await?;
                    self.ended = true;
                }
                b'C' => {
                    self.drain_to_ready().await?;
                    self.ended = true;
                }
                b'E' => {
                    self.ended = true;
                    let ctx = ErrorContext {
                        slot: Some(&self.slot),
                        plugin: Some(&self.plugin),
                        ..ErrorContext::default()
                    };
                    return Err(self.conn.server_error(&frame.body, &ctx));
                }
                other => {
                    return Err(SourceError::protocol(
                        self.conn.target(),
                        format!("unexpected message {:?} in CopyBoth", char::from(other)),
                    ))
                }
            }
        }
    }

    /// Reads until ReadyForQuery, discarding data; EOF counts as done.
    async fn drain_to_ready(&mut self) -> Result<(), SourceError> {
        loop {
            match self.conn.recv().await {
                Ok(f) if f.tag == b'Z' => return Ok(()),
                Ok(f) if f.tag == b'E' => {
                    return Err(self.conn.server_error(&f.body, &ErrorContext::default()))
                }
                Ok(_) => {}
                Err(SourceError::Closed { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Acknowledges the flushed position, ends CopyBoth (CopyDone), drains the server's
    /// remaining data up to ReadyForQuery, and hands the connection back for commands.
    pub async fn shutdown(mut self) -> Result<ReplicationConnection, SourceError> {
        if !self.ended {
            self.send_status(false).await?;
            frontend::copy_done(self.conn.write_buf());
            self.conn.flush().await?;
            self.drain_to_ready().await?;
            self.ended = true;
        }
        tracing::info!(slot = %self.slot, flushed = %self.flushed, "replication stream stopped");
        Ok(self.conn)
    }
}

/// Fails with [`SourceError::PublicationMissing`] if a publication does not exist (PG18
/// only warns and streams nothing for it, so we check up front on every version).
async fn check_publications(
    conn: &mut ReplicationConnection,
    publications: &[String],
) -> Result<(), SourceError> {
    let list: Vec<String> = publications.iter().map(|p| sqlquote::literal(p)).collect();
    let sql = format!(
        "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname IN ({})",
        list.join(", ")
    );
    let rows = conn.simple_query(&sql).await?;
    for p in publications {
        if !rows.iter().any(|r| r.get_idx(0) == Some(p.as_str())) {
            return Err(SourceError::PublicationMissing {
                target: conn.target().to_string(),
                publication: p.clone(),
                db: Box::new(super::error::DbError {
                    severity: "ERROR".into(),
                    code: "42704".into(),
                    message: format!("publication \"{p}\" does not exist"),
                    ..Default::default()
                }),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pubs: &[&str]) -> PgoutputOptions {
        PgoutputOptions {
            publications: pubs.iter().map(|p| p.to_string()).collect(),
            ..PgoutputOptions::default()
        }
    }

    #[test]
    fn proto_version_follows_server_and_cap() {
        let o = opts(&["p"]);
        assert_eq!(
            pgoutput_options(15, &o).unwrap()[0],
            ("proto_version", "3".into())
        );
        assert_eq!(
            pgoutput_options(16, &o).unwrap()[0],
            ("proto_version", "4".into())
        );
        assert_eq!(
            pgoutput_options(18, &o).unwrap()[0],
            ("proto_version", "4".into())
        );
        let capped = PgoutputOptions {
            max_proto_version: Some(2),
            ..o.clone()
        };
        assert_eq!(
            pgoutput_options(18, &capped).unwrap()[0],
            ("proto_version", "2".into())
        );
    }

    #[test]
    fn options_per_version() {
        let o = PgoutputOptions {
            messages: true,
            binary: true,
            streaming: Streaming::Parallel,
            origin_none: true,
            two_phase: true,
            ..opts(&["pub", "Odd\"Name"])
        };
        let v15 = pgoutput_options(15, &o).unwrap();
        assert_eq!(
            v15,
            vec![
                ("proto_version", "3".to_string()),
                ("publication_names", "\"pub\",\"Odd\"\"Name\"".to_string()),
                ("messages", "true".to_string()),
                ("binary", "true".to_string()),
                ("two_phase", "true".to_string()),
            ]
        );
        // Streamed changes stay out of loops only by the server's filter (16+).
        let unfiltered = PgoutputOptions {
            origin_none: false,
            ..o.clone()
        };
        assert!(pgoutput_options(15, &unfiltered)
            .unwrap()
            .contains(&("streaming", "on".to_string())));
        let v16 = pgoutput_options(16, &o).unwrap();
        assert!(v16.contains(&("streaming", "parallel".to_string())));
        assert!(v16.contains(&("origin", "none".to_string())));
        let plain = pgoutput_options(18, &opts(&["p"])).unwrap();
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn invalid_combinations_are_config_errors() {
        assert!(pgoutput_options(16, &opts(&[])).is_err());
        let o = PgoutputOptions {
            max_proto_version: Some(1),
            streaming: Streaming::On,
            ..opts(&["p"])
        };
        assert!(pgoutput_options(16, &o).is_err());
        let o = PgoutputOptions {
            max_proto_version: Some(2),
            two_phase: true,
            ..opts(&["p"])
        };
        assert!(pgoutput_options(16, &o).is_err());
    }

    #[test]
    fn start_command_text() {
        let o = pgoutput_options(16, &opts(&["it's"])).unwrap();
        assert_eq!(
            start_replication_command("s1", Lsn(0x1_0000_00FF), &o).unwrap(),
            "START_REPLICATION SLOT s1 LOGICAL 1/FF (\"proto_version\" '4', \
             \"publication_names\" '\"it''s\"')"
        );
        assert!(start_replication_command("bad slot", Lsn::ZERO, &o).is_err());
    }
}
