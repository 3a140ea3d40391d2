//! The tail loop: connect, stream, render, acknowledge; reconnect on transient errors.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use super::args::{OriginFilter as OriginArg, Output, TailArgs};
use super::render::Renderer;
use crate::filter::{OriginFilter, Verdict};
use crate::protocol::pgoutput::Decoder;
use crate::source::{
    Backoff, ReplicationConnection, SourceConfig, SourceError, StartOptions, StreamEvent,
};
use crate::Lsn;

/// How a stream ended without error: Ctrl-C / SIGTERM, or `--endpos` reached (exit 0).
enum Stop {
    Done,
}

/// Runs `pgmesh tail` until interrupted (or `--endpos`); errors that need an operator end it.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let mut cfg = SourceConfig::from_dsn(&args.dsn).context("--dsn")?;
    if let Some(path) = &args.password_file {
        cfg.set_password_from_file(path)
            .with_context(|| format!("--password-file {}", path.display()))?;
    }
    let mut state = TailState {
        acked: args.from.unwrap_or(Lsn::ZERO),
        printed_txns: 0,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut backoff = Backoff::default();
    loop {
        match stream_once(&args, &cfg, &mut state, &mut backoff, &mut stop_rx).await {
            Ok(Stop::Done) => {
                tracing::info!(acked = %state.acked, printed = state.printed_txns, "stopped");
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, acked = %state.acked,
                    "replication stream lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop_rx.changed() => return Ok(()),
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context("pgmesh tail stopped")),
        }
    }
}

struct TailState {
    /// Everything up to here was written to stdout and acknowledged to the server.
    acked: Lsn,
    printed_txns: u64,
}

async fn stream_once(
    args: &TailArgs,
    cfg: &SourceConfig,
    state: &mut TailState,
    backoff: &mut Backoff,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Stop, SourceError> {
    let mut conn = ReplicationConnection::connect(cfg).await?;
    let major = conn.server_major();
    if args.create_slot && !conn.slot_exists(&args.slot).await? {
        let created = conn.create_slot(&args.slot, false).await?;
        tracing::info!(slot = %args.slot, consistent_point = %created.consistent_point, "created slot");
    }
    let server_side_origin_filter = args.origin == OriginArg::None && major >= 16;
    let opts = StartOptions::for_server(major)
        .max_proto_version(args.proto_version.unwrap_or(4).min(2))
        .publications(args.publication.clone())
        .messages(true)
        .binary(args.binary)
        .origin_none(server_side_origin_filter);
    let proto = opts.proto_version();
    let mut stream = conn.start_replication(&args.slot, state.acked, &opts).await?;
    tracing::info!(slot = %args.slot, from = %state.acked, proto, "streaming");

    let mut decoder = Decoder::new(proto);
    let mut filter = OriginFilter::new(args.origin == OriginArg::None && !server_side_origin_filter);
    let mut renderer = Renderer::new(args.max_txn_memory, std::env::temp_dir());
    let stdout = std::io::stdout();
    let mut healthy_since = std::time::Instant::now();
    loop {
        let event = tokio::select! {
            ev = stream.next_event() => match ev? {
                Some(ev) => ev,
                None => return Err(SourceError::closed(cfg.target())),
            },
            _ = stop.changed() => {
                // Send the final acknowledgement and end the stream cleanly (CopyDone).
                stream.finish().await?;
                return Ok(Stop::Done);
            }
        };
        if healthy_since.elapsed() > Duration::from_secs(30) {
            backoff.reset();
            healthy_since = std::time::Instant::now();
        }
        match event {
            StreamEvent::XLogData(x) => {
                let msg = decoder.decode(&x.data).map_err(|e| SourceError::protocol(e.to_string()))?;
                if filter.observe(&msg) == Verdict::Drop {
                    continue;
                }
                let finished = renderer
                    .feed(&msg)
                    .map_err(|e| SourceError::protocol(e.to_string()))?;
                let Some(done) = finished else { continue };
                if filter.txn_dropped() || args.output == Output::None {
                    // Nothing to print; the position still moves on.
                } else {
                    let mut out = stdout.lock();
                    renderer
                        .write_finished(&mut out)
                        .and_then(|()| out.flush())
                        .map_err(|e| SourceError::output(e))?;
                    state.printed_txns += 1;
                }
                state.acked = state.acked.max(done.end_lsn);
                stream.set_flushed(state.acked);
                if args.endpos.is_some_and(|end| done.end_lsn >= end) {
                    stream.finish().await?;
                    return Ok(Stop::Done);
                }
            }
            StreamEvent::Keepalive { wal_end, .. } => {
                // Between transactions everything the server sent is written out, so its
                // send position can be acknowledged: an idle slot must not retain WAL.
                if !renderer.in_transaction() {
                    state.acked = state.acked.max(wal_end);
                    stream.set_flushed(state.acked);
                    if args.endpos.is_some_and(|end| wal_end >= end) {
                        stream.finish().await?;
                        return Ok(Stop::Done);
                    }
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
