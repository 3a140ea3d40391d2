//! Comparing a table without a primary key (REPLICA IDENTITY FULL): a multiset of rows,
//! where a row is identified only by its content and identical rows are separate copies.
//!
//! Rows are grouped into 256 buckets by the first byte of the md5 of their text; both
//! nodes compute each bucket's count and digest, and only the buckets that differ are
//! read, as distinct rows with their number of copies. A candidate is a row content whose
//! number of copies differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{query_err, sql, Pair, VerifyError};
use crate::table::local::LocalTable;

/// A row content with a different number of copies on the two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowCandidate {
    /// The row's text (`ROW(…)::text`), which identifies it.
    pub text: String,
    /// Every column's text, in table order.
    pub cols: Vec<Option<String>>,
    /// Copies on each node when read.
    pub counts: [i64; 2],
}

/// What comparing one table without a key found.
#[derive(Debug, Default)]
pub struct KeylessResult {
    pub rows: [u64; 2],
    /// Non-empty buckets compared.
    pub buckets: u64,
    pub candidates: Vec<RowCandidate>,
}

/// One bucket's rows on one node: row text → (columns, copies).
type BucketRows = HashMap<String, (Vec<Option<String>>, i64)>;

/// Row contents whose number of copies differs, in row-text order.
#[must_use]
pub fn diff_counts(a: &BucketRows, b: &BucketRows) -> Vec<RowCandidate> {
    let texts: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    texts
        .into_iter()
        .filter_map(|text| {
            let ca = a.get(text).map_or(0, |x| x.1);
            let cb = b.get(text).map_or(0, |x| x.1);
            if ca == cb {
                return None;
            }
            let cols = a.get(text).or_else(|| b.get(text))?.0.clone();
            Some(RowCandidate {
                text: text.clone(),
                cols,
                counts: [ca, cb],
            })
        })
        .collect()
}

async fn buckets(
    pair: &Pair,
    i: usize,
    t: &LocalTable,
) -> Result<BTreeMap<String, (i64, String)>, VerifyError> {
    let node = &pair.nodes[i];
    Ok(node
        .client
        .query(&sql::bucket_digests(t), &[])
        .await
        .map_err(query_err(&node.name, &format!("digests of {}", t.name)))?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

async fn bucket_rows(
    pair: &Pair,
    i: usize,
    t: &LocalTable,
    bucket: &str,
) -> Result<BucketRows, VerifyError> {
    let node = &pair.nodes[i];
    Ok(node
        .client
        .query(&sql::bucket_rows(t), &[&bucket])
        .await
        .map_err(query_err(&node.name, &format!("rows of {}", t.name)))?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Compares table `t` (no primary key) on both nodes.
pub async fn scan(pair: &Pair, t: &LocalTable) -> Result<KeylessResult, VerifyError> {
    let (a, b) = futures_util::future::try_join(buckets(pair, 0, t), buckets(pair, 1, t)).await?;
    let mut result = KeylessResult::default();
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    result.buckets = names.len() as u64;
    for (n, side) in result.rows.iter_mut().zip([&a, &b]) {
        *n = side
            .values()
            .map(|(c, _)| u64::try_from(*c).unwrap_or(0))
            .sum();
    }
    for bucket in names {
        if a.get(bucket) == b.get(bucket) {
            continue;
        }
        let (ra, rb) = futures_util::future::try_join(
            bucket_rows(pair, 0, t, bucket),
            bucket_rows(pair, 1, t, bucket),
        )
        .await?;
        result.candidates.extend(diff_counts(&ra, &rb));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_that_differ_are_candidates() {
        let row = |t: &str, n: i64| (t.to_string(), (vec![Some(t.to_string())], n));
        let a: BucketRows = [row("(1)", 2), row("(2)", 1)].into_iter().collect();
        let b: BucketRows = [row("(1)", 1), row("(2)", 1), row("(3)", 1)]
            .into_iter()
            .collect();
        let d = diff_counts(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].text, "(1)");
        assert_eq!(d[0].counts, [2, 1]);
        assert_eq!(d[1].text, "(3)");
        assert_eq!(d[1].counts, [0, 1]);
        assert_eq!(d[1].cols, vec![Some("(3)".to_string())]);
    }
}
