//! Reading `pgmesh.conflicts`: rows with every column, counts, and a summary by table and
//! kind, each under a [`ConflictFilter`].

use serde::Serialize;
use tokio_postgres::{Client, Row};

use super::filter::{param_refs, ConflictFilter};
use super::{ensure_ledger, query_err, LedgerError};

/// RFC 3339 in UTC with microseconds, whatever the session's TimeZone.
fn utc(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// One ledger record, every column, labelled with the node whose ledger holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConflictRow {
    pub node: String,
    pub id: i64,
    pub detected_at: String,
    pub kind: String,
    pub table_name: String,
    pub key: serde_json::Value,
    pub local_row: Option<serde_json::Value>,
    pub remote_row: Option<serde_json::Value>,
    pub local_commit_ts: Option<String>,
    pub remote_commit_ts: Option<String>,
    /// NULL: the local row was written on this node (no replication origin).
    pub local_origin: Option<String>,
    pub remote_origin: Option<String>,
    pub winner: String,
    pub resolution: String,
    pub remote_lsn: Option<String>,
}

/// Conflicts of one kind on one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    pub node: String,
    pub table_name: String,
    pub kind: String,
    pub count: i64,
    pub first: String,
    pub last: String,
}

fn json(node: &str, text: Option<String>) -> Result<Option<serde_json::Value>, LedgerError> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| LedgerError::Query {
            node: node.to_string(),
            what: "reading a jsonb column".into(),
            message: e.to_string(),
        })
    })
    .transpose()
}

fn to_row(node: &str, r: &Row) -> Result<ConflictRow, LedgerError> {
    Ok(ConflictRow {
        node: node.to_string(),
        id: r.get(0),
        detected_at: r.get(1),
        kind: r.get(2),
        table_name: r.get(3),
        key: json(node, r.get(4))?.unwrap_or(serde_json::Value::Null),
        local_row: json(node, r.get(5))?,
        remote_row: json(node, r.get(6))?,
        local_commit_ts: r.get(7),
        remote_commit_ts: r.get(8),
        local_origin: r.get(9),
        remote_origin: r.get(10),
        winner: r.get(11),
        resolution: r.get(12),
        remote_lsn: r.get(13),
    })
}

fn bad_filter(node: &str) -> impl FnOnce(String) -> LedgerError + '_ {
    move |message| LedgerError::Query {
        node: node.to_string(),
        what: "building the filter".into(),
        message,
    }
}

/// The newest `limit` records (all of them with `None`) matching `filter`, oldest first.
pub async fn list(
    client: &Client,
    node: &str,
    filter: &ConflictFilter,
    limit: Option<i64>,
) -> Result<Vec<ConflictRow>, LedgerError> {
    ensure_ledger(client, node).await?;
    let (clause, mut params) = filter.where_sql().map_err(bad_filter(node))?;
    let limit_sql = match limit {
        Some(n) => {
            params.push(Box::new(n));
            format!(" LIMIT ${}::int8", params.len())
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT id, {}, kind, table_name, key::text, local_row::text, remote_row::text, \
                {}, {}, local_origin, remote_origin, winner, resolution, remote_lsn::text \
           FROM pgmesh.conflicts{clause} ORDER BY id DESC{limit_sql}",
        utc("detected_at"),
        utc("local_commit_ts"),
        utc("remote_commit_ts"),
    );
    let rows = client
        .query(&sql, &param_refs(&params))
        .await
        .map_err(query_err(node, "reading pgmesh.conflicts"))?;
    let mut out = rows
        .iter()
        .map(|r| to_row(node, r))
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

/// How many records match `filter`.
pub async fn count(
    client: &Client,
    node: &str,
    filter: &ConflictFilter,
) -> Result<i64, LedgerError> {
    ensure_ledger(client, node).await?;
    let (clause, params) = filter.where_sql().map_err(bad_filter(node))?;
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM pgmesh.conflicts{clause}"),
            &param_refs(&params),
        )
        .await
        .map_err(query_err(node, "counting pgmesh.conflicts"))?;
    Ok(row.get(0))
}

/// Counts by table and kind (with the first and last detection time) under `filter`.
pub async fn summary(
    client: &Client,
    node: &str,
    filter: &ConflictFilter,
) -> Result<Vec<SummaryRow>, LedgerError> {
    ensure_ledger(client, node).await?;
    let (clause, params) = filter.where_sql().map_err(bad_filter(node))?;
    let sql = format!(
        "SELECT table_name, kind, count(*), {}, {} FROM pgmesh.conflicts{clause} \
          GROUP BY table_name, kind ORDER BY table_name, kind",
        utc("min(detected_at)"),
        utc("max(detected_at)"),
    );
    let rows = client
        .query(&sql, &param_refs(&params))
        .await
        .map_err(query_err(node, "summarizing pgmesh.conflicts"))?;
    Ok(rows
        .iter()
        .map(|r| SummaryRow {
            node: node.to_string(),
            table_name: r.get(0),
            kind: r.get(1),
            count: r.get(2),
            first: r.get(3),
            last: r.get(4),
        })
        .collect())
}

/// Records detected in the last `seconds`, by `remote_origin` (the peer whose change
/// met the conflict); `None` when the node has no ledger.
pub async fn recent_by_origin(
    client: &Client,
    node: &str,
    seconds: i64,
) -> Result<Option<Vec<(Option<String>, i64)>>, LedgerError> {
    match ensure_ledger(client, node).await {
        Ok(()) => {}
        Err(LedgerError::NotSetUp { .. }) => return Ok(None),
        Err(e) => return Err(e),
    }
    let rows = client
        .query(
            "SELECT remote_origin, count(*) FROM pgmesh.conflicts
              WHERE detected_at >= now() - $1::int8 * interval '1 second'
              GROUP BY remote_origin",
            &[&seconds],
        )
        .await
        .map_err(query_err(node, "counting recent conflicts"))?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}
