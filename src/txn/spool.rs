//! Streamed transactions kept whole until their commit (issue 15).
//!
//! The peer streams every transaction whose decoding outgrows `stream_after`, so two big
//! transactions open at once are both streamed, their blocks interleaved. The stream
//! session applies one of them while it is open (`apply::streamed`); each other one is
//! kept here — its messages as they came, in memory up to a budget and then in an
//! unnamed temp file — and replayed as a whole transaction at its Stream Commit, in its
//! place in the upstream commit order. That is what PostgreSQL's own apply worker does
//! with every streamed transaction (`streaming = on`).
//!
//! A rolled-back subtransaction cuts what was kept from its first change on: whatever
//! came after that change belongs to it or to subtransactions opened inside it, because
//! one backend runs them one after another (PostgreSQL's apply worker cuts its spool
//! file the same way).
//!
//! Nothing kept here is acknowledged: a transaction's position is confirmed only once it
//! is applied, and a restart (or a full disk here, which reads the stream again with
//! streaming off) makes the peer send it again from its start.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use bytes::Bytes;

use super::spill::SpillBuffer;
use crate::protocol::pgoutput::{
    decode_message, Begin, Commit, DecodeContext, DecodeError, Message, StreamCommit, Xid,
};

/// Memory a kept transaction may hold before it goes to a temp file.
pub const SPOOL_MEMORY: usize = 4 << 20;

/// Kept transactions that get [`SPOOL_MEMORY`]; more at once go to their temp file from
/// the start (64 kB of write buffer each), so memory stays bounded however many big
/// transactions are open on the peer.
const KEPT_IN_MEMORY: usize = 2;

/// What the direction does with a message.
#[derive(Debug)]
pub enum Route {
    /// Not a kept transaction's: it goes to the assembler.
    Assembler,
    /// Kept here, or a block boundary of a kept transaction: nothing more to do.
    Kept,
    /// The first block of a transaction that is kept from now on (counted, else as
    /// [`Route::Kept`]).
    Began,
    /// A kept transaction committed upstream: replay it whole now.
    Commit(Box<Committed>),
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot keep a streamed transaction until its commit in {dir}: {source}")]
    Io { dir: String, source: io::Error },
    #[error("a kept streamed transaction reads back damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// One kept transaction.
#[derive(Debug)]
struct Spool {
    xid: Xid,
    buf: SpillBuffer,
    /// Each subtransaction met, with where its first change begins, in order.
    subxacts: Vec<(Xid, u64)>,
}

/// The transactions kept while another one streams.
#[derive(Debug)]
pub struct Spools {
    budget: usize,
    dir: PathBuf,
    open: Vec<Spool>,
    /// Inside a Stream Start … Stream Stop of this kept transaction.
    block: Option<Xid>,
}

impl Spools {
    #[must_use]
    pub fn new(budget: usize, dir: PathBuf) -> Spools {
        Spools {
            budget,
            dir,
            open: Vec::new(),
            block: None,
        }
    }

    /// No transaction is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Routes one decoded message (`raw`: its bytes as received). `applying_open`: the
    /// transaction the stream session applies while open, if any.
    pub fn route(
        &mut self,
        msg: &Message,
        raw: &Bytes,
        applying_open: Option<Xid>,
    ) -> Result<Route, SpoolError> {
        if let Some(xid) = self.block {
            if matches!(msg, Message::StreamStop) {
                self.block = None;
            } else {
                self.keep(xid, msg, raw)?;
            }
            return Ok(Route::Kept);
        }
        match msg {
            Message::StreamStart(s) => {
                if self.find(s.xid).is_some() {
                    self.block = Some(s.xid);
                    return Ok(Route::Kept);
                }
                if s.first_segment && applying_open.is_some_and(|x| x != s.xid) {
                    tracing::info!(xid = s.xid, applying = applying_open, "a second big transaction streams while one is applied open: it is kept until its commit and then applied whole");
                    let budget = if self.open.len() < KEPT_IN_MEMORY {
                        self.budget
                    } else {
                        0
                    };
                    self.open.push(Spool {
                        xid: s.xid,
                        buf: SpillBuffer::new(budget, self.dir.clone()),
                        subxacts: Vec::new(),
                    });
                    self.block = Some(s.xid);
                    return Ok(Route::Began);
                }
                Ok(Route::Assembler)
            }
            Message::StreamAbort(a) => {
                let Some(i) = self.find(a.xid) else {
                    return Ok(Route::Assembler);
                };
                if a.is_toplevel() {
                    self.open.remove(i);
                    return Ok(Route::Kept);
                }
                let spool = &mut self.open[i];
                if let Some(at) = spool.subxacts.iter().position(|(x, _)| *x == a.subxid) {
                    let cut = spool.subxacts[at].1;
                    spool.subxacts.truncate(at);
                    spool.buf.truncate(cut).map_err(|e| self.io(e))?;
                }
                Ok(Route::Kept)
            }
            Message::StreamCommit(c) => {
                let Some(i) = self.find(c.xid) else {
                    return Ok(Route::Assembler);
                };
                let spool = self.open.remove(i);
                Ok(Route::Commit(Box::new(Committed {
                    spool,
                    commit: c.clone(),
                })))
            }
            _ => Ok(Route::Assembler),
        }
    }

    fn find(&self, xid: Xid) -> Option<usize> {
        self.open.iter().position(|s| s.xid == xid)
    }

    fn keep(&mut self, xid: Xid, msg: &Message, raw: &Bytes) -> Result<(), SpoolError> {
        let Some(i) = self.find(xid) else {
            return Ok(());
        };
        let spool = &mut self.open[i];
        if let Some(sub) = msg.stream_xid().filter(|x| *x != xid) {
            if !spool.subxacts.iter().any(|(x, _)| *x == sub) {
                spool.subxacts.push((sub, spool.buf.len()));
            }
        }
        let len = u32::try_from(raw.len())
            .map_err(|_| SpoolError::Damaged(format!("a message of {} bytes", raw.len())))?;
        let written = spool
            .buf
            .write_all(&len.to_le_bytes())
            .and_then(|()| spool.buf.write_all(raw));
        written.map_err(|e| self.io(e))
    }

    fn io(&self, source: io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.display().to_string(),
            source,
        }
    }
}

/// A kept transaction that committed upstream, ready to replay.
#[derive(Debug)]
pub struct Committed {
    spool: Spool,
    commit: StreamCommit,
}

impl Committed {
    /// The Begin a whole transaction would have had.
    #[must_use]
    pub fn begin(&self) -> Message {
        Message::Begin(Begin {
            final_lsn: self.commit.commit_lsn,
            commit_time: self.commit.commit_time,
            xid: self.commit.xid,
        })
    }

    /// Its Commit.
    #[must_use]
    pub fn commit(&self) -> Message {
        Message::Commit(Commit {
            flags: self.commit.flags,
            commit_lsn: self.commit.commit_lsn,
            end_lsn: self.commit.end_lsn,
            commit_time: self.commit.commit_time,
        })
    }

    #[must_use]
    pub fn xid(&self) -> Xid {
        self.commit.xid
    }

    /// Bytes kept (its messages, each with a 4-byte length).
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.spool.buf.len()
    }

    /// Reads the kept messages back in order.
    pub fn messages(&mut self) -> Result<Replay<'_>, SpoolError> {
        let dir = self.spool.buf.spill_dir().display().to_string();
        let reader = self
            .spool
            .buf
            .reader()
            .map_err(|source| SpoolError::Io { dir, source })?;
        Ok(Replay { reader })
    }
}

/// The kept messages of one transaction, decoded one at a time.
pub struct Replay<'s> {
    reader: Box<dyn Read + Send + 's>,
}

impl Replay<'_> {
    /// The next message, `None` at the end.
    pub fn next_message(&mut self) -> Result<Option<Message>, SpoolError> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(SpoolError::Damaged(e.to_string())),
        }
        let mut raw = vec![0u8; u32::from_le_bytes(len) as usize];
        self.reader
            .read_exact(&mut raw)
            .map_err(|e| SpoolError::Damaged(format!("a message cut short: {e}")))?;
        // Kept from inside streamed blocks: the changes carry their xid.
        let ctx = DecodeContext {
            in_stream: true,
            abort_info: false,
        };
        Ok(Some(decode_message(&Bytes::from(raw), ctx)?))
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
