//! The tail loop: connect, stream, render, acknowledge; reconnect on transient errors.

use std::io::Write;

use anyhow::{anyhow, Context};
use tokio::sync::watch;
use tokio::time::Instant;

use super::args::{OriginFilter as OriginArg, Output, Plugin, TailArgs};
use super::render::{Finished, Renderer};
use super::wal2json::Wal2jsonRenderer;
use crate::filter::{OriginFilter, Verdict};
use crate::protocol::pgoutput::Decoder;
use crate::protocol::wal2json::{decode_line, wal2json_options, Wal2JsonOptions};
use crate::source::stream::max_proto_version;
use crate::source::{
    create_slot, slot_exists, Backoff, BackoffPolicy, CreateSlot, OutputPlugin, Password,
    PgoutputOptions, ReplicationConnection, ReplicationEvent, ReplicationStream, SourceConfig,
    SourceError, StreamConfig,
};
use crate::Lsn;

/// A stream ended without error: Ctrl-C / SIGTERM, or `--endpos` reached (exit 0).
struct Done;

/// Why one streaming attempt ended.
enum Failure {
    /// The connection or the server: retried with backoff when transient.
    Source(SourceError),
    /// Anything else (undecodable data, stdout closed): tail stops.
    Fatal(anyhow::Error),
}

impl From<SourceError> for Failure {
    fn from(e: SourceError) -> Self {
        Failure::Source(e)
    }
}

/// Runs `pgmesh tail` until interrupted (or `--endpos`); errors that need an operator end it.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    if args.plugin == Plugin::Pgoutput && args.publication.is_empty() {
        anyhow::bail!("--publication is required with pgoutput (the default --plugin)");
    }
    let mut cfg = SourceConfig::from_dsn(&args.dsn).context("--dsn")?;
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--password-file {}", path.display()))?;
        let first = text.lines().next().unwrap_or_default().to_string();
        cfg.password = Some(Password::new(first));
    }
    let mut acked = args.from.unwrap_or(Lsn::ZERO);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        super::super::run::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut backoff = Backoff::new(BackoffPolicy::default());
    loop {
        backoff.connected(Instant::now());
        match stream_once(&args, &cfg, &mut acked, &mut stop_rx).await {
            Ok(Done) => {
                tracing::info!(%acked, "stopped");
                return Ok(());
            }
            Err(Failure::Source(e)) if e.is_transient() => {
                let wait = backoff.next_delay(Instant::now());
                tracing::warn!(error = %e, retry_in = ?wait, %acked,
                    "replication stream lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop_rx.changed() => return Ok(()),
                }
            }
            Err(Failure::Source(e)) => return Err(anyhow::Error::new(e)),
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
}

async fn stream_once(
    args: &TailArgs,
    cfg: &SourceConfig,
    acked: &mut Lsn,
    stop: &mut watch::Receiver<bool>,
) -> Result<Done, Failure> {
    let mut conn = ReplicationConnection::connect(cfg).await?;
    let major = conn.server_major();
    if args.create_slot && !slot_exists(&mut conn, &args.slot).await? {
        let plugin = match args.plugin {
            Plugin::Pgoutput => "pgoutput",
            Plugin::Wal2json => "wal2json",
        };
        let slot = CreateSlot {
            plugin: plugin.to_string(),
            ..CreateSlot::new(&args.slot)
        };
        let created = create_slot(&mut conn, &slot).await?;
        tracing::info!(slot = %args.slot, consistent_point = %created.consistent_point, "created slot");
    }
    let server_side_filter =
        args.plugin == Plugin::Pgoutput && args.origin == OriginArg::None && major >= 16;
    let proto = args
        .proto_version
        .unwrap_or(u32::MAX)
        .min(max_proto_version(major));
    let plugin = match args.plugin {
        Plugin::Pgoutput => OutputPlugin::Pgoutput(PgoutputOptions {
            publications: args.publication.clone(),
            max_proto_version: Some(proto),
            messages: true,
            binary: args.binary,
            origin_none: server_side_filter,
            ..PgoutputOptions::default()
        }),
        Plugin::Wal2json => OutputPlugin::Other {
            name: "wal2json".into(),
            options: wal2json_options(&Wal2JsonOptions::default())
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        },
    };
    let scfg = StreamConfig::with_plugin(&args.slot, plugin);
    let mut stream = ReplicationStream::start(conn, &scfg, *acked).await?;
    // Everything before the start position was written out by this process (or is the
    // slot's own confirmed position): acknowledge it.
    stream.set_flushed(*acked);
    tracing::info!(slot = %args.slot, from = %acked, plugin = ?args.plugin, proto, "streaming");

    let drop_origins = args.origin == OriginArg::None && !server_side_filter;
    let mut lines = Lines::new(args, proto, drop_origins);
    let stdout = std::io::stdout();
    loop {
        let event = tokio::select! {
            ev = stream.next_event() => match ev? {
                Some(ev) => ev,
                None => return Err(Failure::Source(SourceError::Closed { target: stream.target().to_string() })),
            },
            _ = stop.changed() => {
                // Send the final acknowledgement and end the stream cleanly (CopyDone).
                stream.shutdown().await?;
                return Ok(Done);
            }
        };
        match event {
            ReplicationEvent::XLogData(x) => {
                let Some((done, write)) = lines.feed(x.data).map_err(Failure::Fatal)? else {
                    continue;
                };
                if write && args.output == Output::Json {
                    let mut out = stdout.lock();
                    lines
                        .write_finished(&mut out)
                        .and_then(|()| out.flush())
                        .map_err(|e| Failure::Fatal(anyhow!(e).context("writing to stdout")))?;
                }
                // Written out (or deliberately dropped): the server may forget it.
                *acked = (*acked).max(done.end_lsn);
                stream.set_flushed(*acked);
                if args.endpos.is_some_and(|end| done.end_lsn >= end) {
                    stream.shutdown().await?;
                    return Ok(Done);
                }
            }
            // Between transactions everything the server sent is written out, so its send
            // position can be acknowledged: an idle slot must not retain WAL.
            ReplicationEvent::Keepalive { wal_end, .. } if !lines.in_transaction() => {
                *acked = (*acked).max(wal_end);
                stream.set_flushed(*acked);
                if args.endpos.is_some_and(|end| wal_end >= end) {
                    stream.shutdown().await?;
                    return Ok(Done);
                }
            }
            _ => {}
        }
    }
}

/// The decoding half of tail for the slot's plugin: bytes in, finished transactions out.
enum Lines {
    Pgoutput {
        decoder: Decoder,
        filter: OriginFilter,
        renderer: Renderer,
    },
    Wal2json(Wal2jsonRenderer),
}

impl Lines {
    fn new(args: &TailArgs, proto: u32, drop_origins: bool) -> Lines {
        let spill = std::env::temp_dir();
        match args.plugin {
            Plugin::Pgoutput => Lines::Pgoutput {
                decoder: Decoder::new(proto),
                filter: OriginFilter::new(drop_origins),
                renderer: Renderer::new(args.max_txn_memory, spill),
            },
            Plugin::Wal2json => Lines::Wal2json(Wal2jsonRenderer::new(
                args.max_txn_memory,
                spill,
                drop_origins,
            )),
        }
    }

    /// Takes one XLogData payload; at the end of a transaction returns it and whether it
    /// is to be written (false: dropped by the origin filter).
    fn feed(&mut self, data: bytes::Bytes) -> anyhow::Result<Option<(Finished, bool)>> {
        match self {
            Lines::Pgoutput {
                decoder,
                filter,
                renderer,
            } => {
                let msg = decoder
                    .decode(data)
                    .map_err(|e| anyhow!(e).context("decoding pgoutput"))?;
                if filter.observe(&msg) == Verdict::Drop {
                    return Ok(None);
                }
                let done = renderer.feed(&msg)?;
                Ok(done.map(|d| (d, !filter.txn_dropped())))
            }
            Lines::Wal2json(r) => {
                let msg =
                    decode_line(&data).map_err(|e| anyhow!(e).context("decoding wal2json"))?;
                let done = r.feed(&msg)?;
                Ok(done.map(|d| {
                    let write = !r.dropped();
                    (d, write)
                }))
            }
        }
    }

    fn in_transaction(&self) -> bool {
        match self {
            Lines::Pgoutput { renderer, .. } => renderer.in_transaction(),
            Lines::Wal2json(r) => r.in_transaction(),
        }
    }

    fn write_finished(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Lines::Pgoutput { renderer, .. } => renderer.write_finished(out),
            Lines::Wal2json(r) => r.write_finished(out),
        }
    }
}
