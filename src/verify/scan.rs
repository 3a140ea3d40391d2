//! Comparing a table with a primary key, range by range, and narrowing a range whose
//! digests differ down to the keys that differ.
//!
//! Top-level ranges hold `chunk_rows` keys of the first node (`boundary`: the key that
//! many rows further on, read from the key's index). Both nodes compute the digest of a
//! range at the same time. A differing range with more than [`LEAF_ROWS`] rows on either
//! node is split into [`FANOUT`] parts at every n-th key of the node holding more rows
//! (so a range one node has and the other lacks is split by the node that has it), and
//! each part is compared again; a range of at most [`LEAF_ROWS`] rows is read row by row
//! (key and md5) on both nodes and the differing keys become candidates, which
//! [`super::consistent`] re-checks before anything is reported.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use super::{query_err, sql, Pair, Progress, VerifyError};
use crate::table::local::LocalTable;

/// A range at most this big is read row by row.
pub const LEAF_ROWS: i64 = 1_000;
/// Parts a bigger differing range is split into.
pub const FANOUT: i64 = 16;
/// Splits deeper than this read the range row by row whatever its size (a safety net:
/// each split at least divides one node's rows by [`FANOUT`]).
const MAX_DEPTH: u32 = 32;

/// A key: the key columns' texts in key order.
pub type Key = Vec<String>;

/// `(lo, hi]` in key order; `None` is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub lo: Option<Key>,
    pub hi: Option<Key>,
}

/// What comparing one table found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Rows seen on each node.
    pub rows: [u64; 2],
    /// Top-level ranges compared.
    pub ranges: u64,
    /// Keys whose rows differed when read (not yet confirmed).
    pub candidates: Vec<Key>,
}

/// Count and digest of a range on one node.
type Digest = (i64, String);

/// The parts of `range` split at `points` (keys inside it, in key order): `(lo, p1]`,
/// `(p1, p2]`, …, `(pn, hi]`. A point equal to `hi` (the range's last key) adds no part.
#[must_use]
pub fn split(range: &Range, points: Vec<Key>) -> Vec<Range> {
    let mut parts = Vec::with_capacity(points.len() + 1);
    let mut lo = range.lo.clone();
    for p in points {
        if range.hi.as_ref() == Some(&p) || lo.as_ref() == Some(&p) {
            continue;
        }
        parts.push(Range {
            lo: lo.replace(p.clone()),
            hi: Some(p),
        });
    }
    parts.push(Range {
        lo,
        hi: range.hi.clone(),
    });
    parts
}

/// Keys whose row differs between the two nodes' rows of one range (`(key, md5)` each):
/// a different md5, or a row on one node only. In the first node's order, then the keys
/// only the second node has, in its order.
#[must_use]
pub fn diff_rows(a: &[(Key, String)], b: &[(Key, String)]) -> Vec<Key> {
    let in_b: HashMap<&Key, &String> = b.iter().map(|(k, h)| (k, h)).collect();
    let in_a: HashMap<&Key, &String> = a.iter().map(|(k, h)| (k, h)).collect();
    let mut out: Vec<Key> = a
        .iter()
        .filter(|(k, h)| in_b.get(k) != Some(&h))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(
        b.iter()
            .filter(|(k, _)| !in_a.contains_key(k))
            .map(|(k, _)| k.clone()),
    );
    out
}

/// How many rows per part when a range of `rows` is split into [`FANOUT`] parts.
#[must_use]
pub fn step_for(rows: i64) -> i64 {
    ((rows + FANOUT - 1) / FANOUT).max(1)
}

/// Parameters of a range: `lo`'s key texts, then `hi`'s.
fn range_params(range: &Range) -> Vec<&(dyn ToSql + Sync)> {
    range
        .lo
        .iter()
        .chain(range.hi.iter())
        .flat_map(|k| k.iter().map(|v| v as &(dyn ToSql + Sync)))
        .collect()
}

struct Scanner<'p> {
    pair: &'p Pair,
    t: &'p LocalTable,
}

impl Scanner<'_> {
    fn key_of(row: &tokio_postgres::Row, n: usize) -> Key {
        (0..n).map(|i| row.get::<_, String>(i)).collect()
    }

    async fn digest(&self, i: usize, range: &Range) -> Result<Digest, VerifyError> {
        let node = &self.pair.nodes[i];
        let q = sql::range_digest(self.t, range.lo.is_some(), range.hi.is_some());
        let row = node
            .client
            .query_one(&q, &range_params(range))
            .await
            .map_err(query_err(&node.name, &format!("digest of {}", self.t.name)))?;
        Ok((row.get(0), row.get(1)))
    }

    async fn digests(&self, range: &Range) -> Result<[Digest; 2], VerifyError> {
        let (a, b) =
            futures_util::future::try_join(self.digest(0, range), self.digest(1, range)).await?;
        Ok([a, b])
    }

    /// The first node's key `offset` rows past `lo`, or `None` when fewer are left.
    async fn boundary(&self, lo: Option<&Key>, offset: i64) -> Result<Option<Key>, VerifyError> {
        let node = &self.pair.nodes[0];
        let q = sql::boundary(self.t, lo.is_some());
        let mut params: Vec<&(dyn ToSql + Sync)> = lo
            .into_iter()
            .flat_map(|k| k.iter().map(|v| v as &(dyn ToSql + Sync)))
            .collect();
        params.push(&offset);
        let row = node
            .client
            .query_opt(&q, &params)
            .await
            .map_err(query_err(&node.name, &format!("ranges of {}", self.t.name)))?;
        Ok(row.map(|r| Self::key_of(&r, self.t.pk.len())))
    }

    async fn split_points(
        &self,
        i: usize,
        range: &Range,
        step: i64,
    ) -> Result<Vec<Key>, VerifyError> {
        let node = &self.pair.nodes[i];
        let q = sql::split_points(self.t, range.lo.is_some(), range.hi.is_some());
        let mut params = range_params(range);
        params.push(&step);
        let rows = node.client.query(&q, &params).await.map_err(query_err(
            &node.name,
            &format!("splitting a range of {}", self.t.name),
        ))?;
        Ok(rows
            .iter()
            .map(|r| Self::key_of(r, self.t.pk.len()))
            .collect())
    }

    async fn rows(&self, i: usize, range: &Range) -> Result<Vec<(Key, String)>, VerifyError> {
        let node = &self.pair.nodes[i];
        let n = self.t.pk.len();
        let q = sql::range_rows(self.t, range.lo.is_some(), range.hi.is_some());
        let rows = node
            .client
            .query(&q, &range_params(range))
            .await
            .map_err(query_err(&node.name, &format!("rows of {}", self.t.name)))?;
        Ok(rows
            .iter()
            .map(|r| (Self::key_of(r, n), r.get::<_, String>(n)))
            .collect())
    }

    /// Narrows a range whose digests differed (`counts` rows on each node) to keys.
    async fn narrow(
        &self,
        range: Range,
        counts: [i64; 2],
        out: &mut Vec<Key>,
    ) -> Result<(), VerifyError> {
        let mut todo = vec![(range, counts, 0u32)];
        while let Some((range, counts, depth)) = todo.pop() {
            let most = counts[0].max(counts[1]);
            if most <= LEAF_ROWS || depth >= MAX_DEPTH {
                let (a, b) =
                    futures_util::future::try_join(self.rows(0, &range), self.rows(1, &range))
                        .await?;
                out.extend(diff_rows(&a, &b));
                continue;
            }
            let by = usize::from(counts[1] > counts[0]);
            let points = self.split_points(by, &range, step_for(most)).await?;
            let mut parts = Vec::new();
            for part in split(&range, points) {
                let [da, db] = self.digests(&part).await?;
                if da != db {
                    parts.push((part, [da.0, db.0], depth + 1));
                }
            }
            // Depth first, in key order.
            todo.extend(parts.into_iter().rev());
        }
        Ok(())
    }
}

/// Compares table `t` (which has a key) on both nodes.
pub async fn scan(
    pair: &Pair,
    t: &LocalTable,
    chunk_rows: u64,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<ScanResult, VerifyError> {
    let s = Scanner { pair, t };
    let offset = i64::try_from(chunk_rows.max(1) - 1).unwrap_or(i64::MAX);
    let mut result = ScanResult::default();
    let mut lo: Option<Key> = None;
    loop {
        let hi = s.boundary(lo.as_ref(), offset).await?;
        let range = Range {
            lo: lo.clone(),
            hi: hi.clone(),
        };
        let [da, db] = s.digests(&range).await?;
        result.ranges += 1;
        for (n, d) in result.rows.iter_mut().zip([&da, &db]) {
            *n += u64::try_from(d.0).unwrap_or(0);
        }
        if da != db {
            s.narrow(range, [da.0, db.0], &mut result.candidates)
                .await?;
        }
        progress(Progress::Ranges {
            table: &t.name,
            ranges: result.ranges,
            rows: result.rows,
        });
        match hi {
            Some(h) => lo = Some(h),
            None => break,
        }
    }
    // A key can come up twice when rows moved between ranges while they were read.
    let mut seen = std::collections::HashSet::new();
    result.candidates.retain(|k| seen.insert(k.clone()));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &str) -> Key {
        vec![v.to_string()]
    }

    #[test]
    fn split_makes_adjacent_parts_and_skips_empty_ones() {
        let r = Range {
            lo: Some(k("0")),
            hi: Some(k("9")),
        };
        let parts = split(&r, vec![k("3"), k("6"), k("9")]);
        assert_eq!(
            parts,
            vec![
                Range {
                    lo: Some(k("0")),
                    hi: Some(k("3"))
                },
                Range {
                    lo: Some(k("3")),
                    hi: Some(k("6"))
                },
                Range {
                    lo: Some(k("6")),
                    hi: Some(k("9"))
                },
            ]
        );
        let open = Range { lo: None, hi: None };
        let parts = split(&open, vec![k("5")]);
        assert_eq!(
            parts,
            vec![
                Range {
                    lo: None,
                    hi: Some(k("5"))
                },
                Range {
                    lo: Some(k("5")),
                    hi: None
                }
            ]
        );
        assert_eq!(split(&open, vec![]), vec![open.clone()]);
    }

    #[test]
    fn diff_finds_changed_and_one_sided_keys() {
        let row = |key: &str, h: &str| (k(key), h.to_string());
        let a = vec![row("1", "x"), row("2", "y"), row("3", "z")];
        let b = vec![row("1", "x"), row("2", "Y"), row("4", "w")];
        assert_eq!(diff_rows(&a, &b), vec![k("2"), k("3"), k("4")]);
        assert!(diff_rows(&a, &a).is_empty());
        assert_eq!(diff_rows(&[], &b).len(), 3);
    }

    #[test]
    fn steps_divide_into_fanout_parts() {
        assert_eq!(step_for(16_000), 1_000);
        assert_eq!(step_for(16_001), 1_001);
        assert_eq!(step_for(3), 1);
        assert_eq!(step_for(0), 1);
    }
}
