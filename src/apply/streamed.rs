//! A big upstream transaction applied while it is still open on the peer (pgoutput
//! `streaming`, `[apply] stream_after`; the design is docs/streaming.md).
//!
//! Its changes arrive in blocks, before anyone knows its commit time. The stream session
//! writes at once what needs no decision — the no-conflict path (`super::uncontested`):
//! rows the peer's stream wrote last, keys nobody holds — and that part is the same at
//! any commit time. Everything else (a row another node wrote last, a tombstone, a table
//! with another unique constraint or without a key) is deferred, with every later change
//! to the same key, and decided at Stream Commit with the real commit time, exactly as an
//! unstreamed transaction is. So last-writer-wins does not depend on whether a
//! transaction streamed.
//!
//! The session holds its own origin (`pgmesh__stream_<peer>`): PostgreSQL lets one session
//! hold an origin at a time, and every row it writes must carry one of the peer's origins
//! (loop prevention reads the origin of each change). Until its commit it holds the locks
//! of the rows it wrote, as the open transaction did on the peer.

use super::error::ApplyError;
use super::plan::Sides;
use super::session::ApplySession;
use super::stats::ApplyStats;
use super::uncontested::Keyed;
use crate::batch::Chunk;
use crate::protocol::pgoutput::{PgTimestamp, Xid};
use crate::sqlconn::SqlConfig;
use crate::Lsn;

/// Why a streamed transaction is read again whole: the caller restarts the stream from
/// its applied position with streaming off for a while.
#[derive(Debug, thiserror::Error)]
#[error("a big transaction streamed from the peer is applied unstreamed instead: {0}")]
pub struct Unstreamable(pub String);

/// The stream session and the open streamed transaction's deferred changes.
pub struct StreamSession {
    session: ApplySession,
    /// Changes decided at Stream Commit, collapsed per key.
    deferred: Chunk,
    /// Savepoints made, with the deferred changes counted when each was made.
    savepoints: Vec<(Xid, usize)>,
    /// Deferred changes beyond this many bytes: read the transaction again whole.
    max_deferred: usize,
    /// What the open transaction wrote so far.
    pub stats: ApplyStats,
}

impl StreamSession {
    /// The backend this session's statements run in (for the stall watch).
    #[must_use]
    pub fn backend_pid(&self) -> i32 {
        self.session.backend_pid()
    }

    /// Opens the stream session (no transaction yet).
    pub async fn connect(
        config: &SqlConfig,
        peer_sql: &SqlConfig,
        local_node: &str,
        peer: &str,
        max_deferred: usize,
    ) -> Result<StreamSession, ApplyError> {
        let origin = crate::config::names::stream_origin_name(peer);
        let session = ApplySession::connect_as(config, peer_sql, local_node, peer, origin).await?;
        Ok(StreamSession {
            session,
            deferred: Chunk::default(),
            savepoints: Vec::new(),
            max_deferred,
            stats: ApplyStats::default(),
        })
    }

    /// Writes what needs no decision of one block's `chunk` in the open streamed
    /// transaction (opening it), and defers the rest.
    pub async fn write(&mut self, chunk: &Chunk) -> Result<(), StreamError> {
        self.session.begin().await?;
        for tc in &chunk.tables {
            let map = &tc.map;
            if map.local.is_keyless() || !map.local.uniques.is_empty() {
                // Keyless rows are matched by content and other unique values against
                // other rows' commit times: both need the commit time.
                for (key, p) in &tc.changes {
                    self.deferred.push_pending(map, key.clone(), p.clone());
                }
                for c in &tc.keyless {
                    self.deferred.push_keyless(map, c.clone());
                }
                continue;
            }
            // A key with a deferred change keeps its order: all its later changes wait too.
            let (later, now): (Vec<Keyed<'_>>, Vec<Keyed<'_>>) = tc
                .changes
                .iter()
                .partition(|(key, _)| self.deferred.holds(map, key));
            for (key, p) in later {
                self.deferred.push_pending(map, key.clone(), p.clone());
            }
            if now.is_empty() {
                continue;
            }
            let rest = self
                .session
                .write_without_decision(map, &now, &mut self.stats)
                .await?;
            for i in rest {
                let (key, p) = now[i];
                self.deferred.push_pending(map, key.clone(), p.clone());
            }
        }
        if self.deferred.bytes() > self.max_deferred {
            return Err(StreamError::Unstreamable(Unstreamable(format!(
                "more than {} MB of its changes need a decision at its commit",
                self.max_deferred >> 20
            ))));
        }
        Ok(())
    }

    /// A subtransaction of the streamed transaction begins.
    pub async fn savepoint(&mut self, subxid: Xid) -> Result<(), StreamError> {
        self.session.savepoint(&format!("s{subxid}")).await?;
        self.savepoints.push((subxid, self.deferred.rows()));
        Ok(())
    }

    /// The streamed transaction aborted: all of it (`None`), or a subtransaction.
    pub async fn rollback(&mut self, to: Option<Xid>) -> Result<(), StreamError> {
        let Some(subxid) = to else {
            self.reset().await?;
            return Ok(());
        };
        let Some(i) = self.savepoints.iter().position(|(x, _)| *x == subxid) else {
            return Ok(());
        };
        if self.savepoints[i].1 != self.deferred.rows() {
            // Deferred changes are collapsed per key: those of the aborted part cannot be
            // taken out again.
            return Err(StreamError::Unstreamable(Unstreamable(
                "a subtransaction with changes deferred to its commit aborted".into(),
            )));
        }
        self.savepoints.truncate(i + 1);
        self.session.rollback_to(&format!("s{subxid}")).await?;
        Ok(())
    }

    /// The streamed transaction committed on the peer at `ts` (ending at `end`): decides
    /// and writes the deferred changes and commits under the stream origin.
    pub async fn commit(&mut self, end: Lsn, ts: PgTimestamp) -> Result<ApplyStats, StreamError> {
        let mut deferred = std::mem::take(&mut self.deferred);
        deferred.stamp(ts, end);
        let mut stats = std::mem::take(&mut self.stats);
        if !deferred.is_empty() {
            let decided = self.session.apply(&deferred).await?;
            stats.add(&decided);
        }
        self.session.commit(end, ts).await?;
        self.savepoints.clear();
        Ok(stats)
    }

    /// The peer re-described a relation: drop cached table definitions.
    pub fn forget_tables(&mut self) {
        self.session.forget_tables();
    }

    /// Conflicts recorded by the commit just made, by kind.
    pub fn take_conflict_counts(&mut self) -> Vec<(crate::conflict::LedgerKind, u64)> {
        self.session.take_conflict_counts()
    }

    /// Drops the open streamed transaction, if any.
    pub async fn reset(&mut self) -> Result<(), ApplyError> {
        self.deferred = Chunk::default();
        self.savepoints.clear();
        self.stats = ApplyStats::default();
        self.session.rollback().await
    }
}

/// How the stream session failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Unstreamable(#[from] Unstreamable),
}

impl ApplySession {
    /// The no-conflict path alone (see `super::uncontested`) for one table's `changes`,
    /// inside the open transaction: writes what needs no decision and hands back the
    /// positions of the rest.
    pub(super) async fn write_without_decision(
        &mut self,
        map: &crate::table::local::TableMap,
        changes: &[Keyed<'_>],
        stats: &mut ApplyStats,
    ) -> Result<Vec<usize>, ApplyError> {
        self.plan_for(changes.len()).await?;
        let (mut db, origins, peer) = self.parts();
        let sides = Sides { origins, peer };
        let done = db
            .write_uncontested(map, changes, sides, stats, None)
            .await?;
        Ok(done.rest)
    }
}
