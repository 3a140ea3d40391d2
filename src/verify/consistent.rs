//! Making verify's answer consistent while both nodes keep taking writes.
//!
//! Ranges are read on the two nodes at slightly different moments, so a row written a
//! moment ago on one node and not yet applied on the other makes its range differ. Such
//! keys are only *candidates*. Each is read again on both nodes after a **barrier**:
//! verify marks each node's WAL (a transactional logical message with prefix
//! [`MARK_PREFIX`], which the peer's sidecar applies as an empty transaction; or, where
//! the role may not emit one, the node's current WAL position) and waits until each
//! direction has passed the other node's mark: the target's origin `pgmesh_<source>` has
//! progressed to it, or the source's slot for the target has been confirmed up to it.
//! Then every change either node had committed before its mark has been applied (or
//! decided against) on the other.
//!
//! A candidate is reported as a difference only when two reads of it with a barrier in
//! between show the same versions on each node (same content and same `xmin`: nothing
//! wrote it in between) and different content across the nodes: replication had every
//! chance to make them equal and did not. A key equal on both nodes is dropped; a key
//! that changed between the reads is read again after another barrier, until it settles
//! or the wait runs out (then it is reported as unsettled, not as a difference). If a
//! direction does not pass its mark in time, nothing is reported as different: the
//! outcome says which direction is behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::keyless::RowCandidate;
use super::scan::Key;
use super::{query_err, sql, Pair, Progress, VerifyError};
use crate::config::names;
use crate::table::local::LocalTable;
use crate::Lsn;

/// Prefix of the logical message verify emits as its mark on each node.
pub const MARK_PREFIX: &str = "pgmesh.verify";

/// How often a barrier's progress is polled.
const POLL: Duration = Duration::from_millis(100);

/// Keys read per statement when re-reading candidates.
const READ_BATCH: usize = 500;

/// What one table's comparison left to re-check.
#[derive(Debug, Clone)]
pub enum Candidates {
    Keys(Vec<Key>),
    Rows(Vec<RowCandidate>),
}

impl Candidates {
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Candidates::Keys(k) => k.len(),
            Candidates::Rows(r) => r.len(),
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One candidate: a key, or (no primary key) a row content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Key(Key),
    Row(RowCandidate),
}

/// What one node holds for a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No row with this key.
    Absent,
    /// The row: every column's text, and its version.
    Row {
        cols: Vec<Option<String>>,
        xmin: String,
    },
    /// Copies of a row content (no primary key), with their versions.
    Copies { count: i64, xmins: String },
}

impl State {
    /// Same data, whatever the row versions.
    #[must_use]
    pub fn same_content(&self, other: &State) -> bool {
        match (self, other) {
            (State::Absent, State::Absent) => true,
            (State::Row { cols: a, .. }, State::Row { cols: b, .. }) => a == b,
            (State::Copies { count: a, .. }, State::Copies { count: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// The verdict on a candidate after a re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Both nodes hold the same data now: it was in flight.
    Equal,
    /// Different, and neither node changed it across the barrier: a real difference.
    Differs,
    /// Different, but written since the previous read: read again after another barrier.
    Changing,
}

/// Decides a candidate from its states before (`prev`) and after (`cur`) a barrier.
#[must_use]
pub fn settle(prev: &[State; 2], cur: &[State; 2]) -> Settle {
    if cur[0].same_content(&cur[1]) {
        Settle::Equal
    } else if prev == cur {
        Settle::Differs
    } else {
        Settle::Changing
    }
}

/// A candidate whose difference was confirmed, with the states that prove it.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub item: Item,
    pub states: [State; 2],
}

/// What the re-check decided for one table.
#[derive(Debug, Default)]
pub struct TableOutcome {
    pub differences: Vec<Confirmed>,
    /// Still changing when the wait ran out.
    pub unsettled: Vec<Item>,
    /// Not re-checked because a direction never reached the barrier.
    pub unconfirmed: usize,
}

/// What the re-check decided overall.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The marks of the last barrier passed: the point the result is consistent with.
    pub marks: Option<[Lsn; 2]>,
    /// Set when a direction did not reach its mark: "could not reach a consistent
    /// point: direction a → b is behind …".
    pub behind: Option<String>,
    /// By index into the table reports.
    pub tables: HashMap<usize, TableOutcome>,
}

/// Reads the current states of `items` (all of one table) on node `i`.
async fn read_states(
    pair: &Pair,
    i: usize,
    t: &LocalTable,
    items: &[Item],
) -> Result<Vec<State>, VerifyError> {
    let node = &pair.nodes[i];
    let what = format!("re-reading rows of {}", t.name);
    if t.is_keyless() {
        let texts: Vec<&str> = items
            .iter()
            .filter_map(|it| match it {
                Item::Row(r) => Some(r.text.as_str()),
                Item::Key(_) => None,
            })
            .collect();
        let rows = node
            .client
            .query(&sql::row_counts(t, false), &[&texts])
            .await
            .map_err(query_err(&node.name, &what))?;
        let found: HashMap<String, (i64, String)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        return Ok(items
            .iter()
            .map(|it| {
                let text = match it {
                    Item::Row(r) => r.text.as_str(),
                    Item::Key(_) => "",
                };
                match found.get(text) {
                    Some((count, xmins)) => State::Copies {
                        count: *count,
                        xmins: xmins.clone(),
                    },
                    None => State::Copies {
                        count: 0,
                        xmins: String::new(),
                    },
                }
            })
            .collect());
    }
    let q = sql::key_states(t);
    let mut out = vec![State::Absent; items.len()];
    for (b, batch) in items.chunks(READ_BATCH).enumerate() {
        let mut cols: Vec<Vec<&str>> = vec![Vec::with_capacity(batch.len()); t.pk.len()];
        for it in batch {
            if let Item::Key(k) = it {
                for (c, v) in cols.iter_mut().zip(k) {
                    c.push(v);
                }
            }
        }
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = cols
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = node
            .client
            .query(&q, &params)
            .await
            .map_err(query_err(&node.name, &what))?;
        for r in rows {
            let ord: i64 = r.get(0);
            let Some(slot) = usize::try_from(ord - 1)
                .ok()
                .and_then(|o| out.get_mut(b * READ_BATCH + o))
            else {
                continue;
            };
            *slot = State::Row {
                cols: r.get(1),
                xmin: r.get(2),
            };
        }
    }
    Ok(out)
}

async fn read_both(
    pair: &Pair,
    t: &LocalTable,
    items: &[Item],
) -> Result<Vec<[State; 2]>, VerifyError> {
    let (a, b) = futures_util::future::try_join(
        read_states(pair, 0, t, items),
        read_states(pair, 1, t, items),
    )
    .await?;
    Ok(a.into_iter().zip(b).map(|(x, y)| [x, y]).collect())
}

/// Takes the marks of a barrier: on each node, a logical message (falling back to the
/// current WAL position where the role may not emit one; remembered in `emit`).
async fn take_marks(pair: &Pair, emit: &mut [bool; 2]) -> Result<[Lsn; 2], VerifyError> {
    let mut marks = [Lsn::ZERO; 2];
    for (i, node) in pair.nodes.iter().enumerate() {
        let mut text: Option<String> = None;
        if emit[i] {
            match node
                .client
                .query_one(
                    "SELECT pg_logical_emit_message(true, $1, '')::text",
                    &[&MARK_PREFIX],
                )
                .await
            {
                Ok(r) => text = Some(r.get(0)),
                Err(e) if e.code().is_some() => {
                    tracing::debug!(node = %node.name, error = %crate::sqlconn::pg_message(&e),
                        "cannot emit a logical message as the mark; using the current WAL position");
                    emit[i] = false;
                }
                Err(e) => return Err(query_err(&node.name, "marking the WAL")(e)),
            }
        }
        let text = match text {
            Some(t) => t,
            None => node
                .client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .map_err(query_err(&node.name, "reading the WAL position"))?
                .get(0),
        };
        marks[i] = text.parse().map_err(|e| VerifyError::Query {
            node: node.name.clone(),
            what: "marking the WAL".into(),
            message: format!("{e}"),
        })?;
    }
    Ok(marks)
}

/// Where direction `from` → `to` stands: `(reached, description)`.
async fn direction(pair: &Pair, from: usize, to: usize, mark: Lsn) -> (bool, String) {
    let (src, dst) = (&pair.nodes[from], &pair.nodes[to]);
    let origin = names::origin_name(&src.name);
    let applied = crate::apply::session::applied_progress(&dst.client, &src.name, false).await;
    if matches!(applied, Ok(l) if l >= mark) {
        return (true, String::new());
    }
    let slot = names::slot_name(&dst.name);
    let confirmed = src
        .client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
              WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .await;
    let confirmed: Option<Lsn> = match &confirmed {
        Ok(Some(r)) => r.get::<_, Option<String>>(0).and_then(|s| s.parse().ok()),
        _ => None,
    };
    if confirmed.is_some_and(|c| c >= mark) {
        return (true, String::new());
    }
    let applied = match applied {
        Ok(l) => format!("up to {l}"),
        Err(e) => format!("unknown ({e})"),
    };
    let confirmed = match confirmed {
        Some(c) => format!("confirmed up to {c}"),
        None => "missing".to_string(),
    };
    (
        false,
        format!(
            "node {to} has applied {from_name}'s changes {applied} (origin {origin}), needs {mark}; \
             slot {slot} on node {from_name} is {confirmed}. Is `pgmesh run --node {to}` running \
             and keeping up? (`--wait-timeout` waits longer)",
            to = dst.name,
            from_name = src.name,
        ),
    )
}

/// Waits until both directions have passed the other node's mark, or `deadline`:
/// `Err(message)` names the direction that is behind.
async fn barrier(pair: &Pair, marks: [Lsn; 2], deadline: Instant) -> Result<(), String> {
    for (from, to) in [(0, 1), (1, 0)] {
        loop {
            let (done, status) = direction(pair, from, to, marks[from]).await;
            if done {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "could not reach a consistent point: direction {} → {} is behind: {status}",
                    pair.nodes[from].name, pair.nodes[to].name
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

/// Re-checks every candidate of `checks` (`(report index, candidates)`; `defs` holds each
/// report's table) as the module docs describe.
pub async fn confirm(
    pair: &Pair,
    defs: &[Option<&LocalTable>],
    checks: Vec<(usize, Candidates)>,
    wait: Duration,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Outcome, VerifyError> {
    let mut outcome = Outcome::default();
    // (report index, items, their states at the previous read)
    let mut pending: Vec<(usize, Vec<Item>, Vec<[State; 2]>)> = Vec::new();
    for (idx, found) in checks {
        if found.is_empty() {
            continue;
        }
        let Some(def) = defs.get(idx).copied().flatten() else {
            continue;
        };
        let items: Vec<Item> = match found {
            Candidates::Keys(k) => k.into_iter().map(Item::Key).collect(),
            Candidates::Rows(r) => r.into_iter().map(Item::Row).collect(),
        };
        let states = read_both(pair, def, &items).await?;
        pending.push((idx, items, states));
    }
    let deadline = Instant::now() + wait;
    let mut emit = [true; 2];
    let mut round = 0u32;
    // A candidate already equal again on both nodes was in flight: no barrier needed.
    for (_, items, states) in &mut pending {
        let (kept_items, kept_states): (Vec<Item>, Vec<[State; 2]>) = items
            .drain(..)
            .zip(states.drain(..))
            .filter(|(_, st)| !st[0].same_content(&st[1]))
            .unzip();
        *items = kept_items;
        *states = kept_states;
    }
    pending.retain(|(_, items, _)| !items.is_empty());
    while !pending.is_empty() {
        round += 1;
        let marks = take_marks(pair, &mut emit).await?;
        let keys = pending.iter().map(|(_, i, _)| i.len()).sum();
        progress(Progress::Confirming { keys, round, marks });
        if let Err(behind) = barrier(pair, marks, deadline).await {
            outcome.behind = Some(behind);
            for (idx, items, _) in pending {
                outcome.tables.entry(idx).or_default().unconfirmed += items.len();
            }
            return Ok(outcome);
        }
        outcome.marks = Some(marks);
        let mut still = Vec::new();
        for (idx, items, prev) in pending {
            let Some(def) = defs.get(idx).copied().flatten() else {
                continue;
            };
            let cur = read_both(pair, def, &items).await?;
            let entry = outcome.tables.entry(idx).or_default();
            let mut next_items = Vec::new();
            let mut next_states = Vec::new();
            for ((item, p), c) in items.into_iter().zip(prev).zip(cur) {
                match settle(&p, &c) {
                    Settle::Equal => {}
                    Settle::Differs => entry.differences.push(Confirmed { item, states: c }),
                    Settle::Changing => {
                        next_items.push(item);
                        next_states.push(c);
                    }
                }
            }
            if !next_items.is_empty() {
                still.push((idx, next_items, next_states));
            }
        }
        pending = still;
        if !pending.is_empty() && Instant::now() >= deadline {
            for (idx, items, _) in pending {
                outcome
                    .tables
                    .entry(idx)
                    .or_default()
                    .unsettled
                    .extend(items);
            }
            break;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &str, xmin: &str) -> State {
        State::Row {
            cols: vec![Some("1".into()), Some(v.into())],
            xmin: xmin.into(),
        }
    }

    #[test]
    fn a_difference_counts_only_when_nothing_changed_across_the_barrier() {
        // Applied in the meantime: equal now.
        assert_eq!(
            settle(
                &[row("x", "10"), State::Absent],
                &[row("x", "10"), row("x", "20")]
            ),
            Settle::Equal
        );
        // Same versions on both sides before and after: a real difference.
        let diverged = [row("x", "10"), row("y", "20")];
        assert_eq!(settle(&diverged, &diverged), Settle::Differs);
        let missing = [row("x", "10"), State::Absent];
        assert_eq!(settle(&missing, &missing), Settle::Differs);
        // Written again on one side (same content, new version): still moving.
        assert_eq!(
            settle(&diverged, &[row("x", "11"), row("y", "20")]),
            Settle::Changing
        );
        assert_eq!(
            settle(&missing, &[row("z", "30"), State::Absent]),
            Settle::Changing
        );
        // Multisets compare their number of copies.
        let copies = |n, x: &str| State::Copies {
            count: n,
            xmins: x.into(),
        };
        assert_eq!(
            settle(
                &[copies(2, "1,2"), copies(1, "3")],
                &[copies(2, "1,2"), copies(1, "3")]
            ),
            Settle::Differs
        );
        assert_eq!(
            settle(
                &[copies(2, "1,2"), copies(1, "3")],
                &[copies(2, "1,2"), copies(2, "3,4")]
            ),
            Settle::Equal
        );
    }

    #[test]
    fn content_ignores_versions() {
        assert!(row("x", "1").same_content(&row("x", "2")));
        assert!(!row("x", "1").same_content(&row("y", "1")));
        assert!(!row("x", "1").same_content(&State::Absent));
        assert!(State::Absent.same_content(&State::Absent));
    }
}
