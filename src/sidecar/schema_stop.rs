//! A direction stopped by a table that differs between the nodes. Retrying the stream
//! cannot help until someone changes a table, and each attempt would read the peer's WAL
//! again from the kept position; so the direction stays stopped (no connection to the
//! peer's slot, nothing acknowledged) and only compares the tables every few seconds,
//! resuming from the kept position once they match. Restarting the sidecar also resumes.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::link::PeerLink;
use crate::apply::shape::SchemaMismatch;
use crate::apply::shape_io::mismatch_fixed;

/// How often a stopped direction compares the tables again.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often it repeats, in the log, that it is stopped and why.
const REMIND_EVERY: Duration = Duration::from_secs(300);

/// Logs why the direction stopped, then waits until the tables match (`true`: resume)
/// or the sidecar is asked to stop (`false`).
pub(super) async fn wait_for_fix(
    link: &PeerLink,
    m: &SchemaMismatch,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tracing::error!(table = %m.table, differences = ?m.differences,
        "stream from peer stopped: {m}");
    let mut reminded = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => return false,
        }
        if *stop.borrow() {
            return false;
        }
        match mismatch_fixed(m, &link.local, &link.peer_sql).await {
            Ok(true) => {
                tracing::info!(table = %m.table,
                    "the table now matches on both nodes; resuming the stream from the kept position");
                return true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(table = %m.table, error = %e, "could not compare the tables yet")
            }
        }
        if reminded.elapsed() >= REMIND_EVERY {
            reminded = Instant::now();
            tracing::warn!(table = %m.table,
                "stream from peer still stopped: {m}");
        }
    }
}
