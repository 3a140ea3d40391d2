//! Reading current column values from the peer, for the one case pgoutput does not carry
//! enough: an update whose unchanged-TOAST columns were not sent, applied where this node's
//! copy of those columns may differ from the peer's (the row was last written here or by
//! another node, or is missing here). Last-writer-wins needs the whole winning row.
//!
//! The value read is the peer's current one, possibly newer than the change being applied;
//! any newer change to those columns is on its way in the same stream, so both nodes still
//! end with the peer's value.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::error::ApplyError;
use super::plan::Planned;
use crate::sqlconn::{connect_sql, SqlConfig};
use crate::table::local::LocalTable;
use crate::table::row::{Key, Row, Val};

/// A lazily opened SQL connection to the peer.
pub struct PeerReader {
    config: SqlConfig,
    client: Option<(Client, tokio::task::JoinHandle<()>)>,
}

impl Drop for PeerReader {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.client {
            task.abort();
        }
    }
}

impl PeerReader {
    #[must_use]
    pub fn new(config: SqlConfig) -> PeerReader {
        PeerReader {
            config,
            client: None,
        }
    }

    async fn client(&mut self) -> Result<&Client, ApplyError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, task) = connect_sql(&self.config).await?;
            client
                .batch_execute(
                    "SET application_name = 'pgmesh peer read'; SET bytea_output = 'hex'",
                )
                .await?;
            self.client = Some((client, task));
        }
        match &self.client {
            Some((c, _)) => Ok(c),
            None => Err(ApplyError::Protocol("peer connection vanished".into())),
        }
    }

    /// Current text values of `cols` for each key (by position in `keys`); keys whose row
    /// the peer no longer has are absent from the result.
    pub async fn fetch(
        &mut self,
        t: &LocalTable,
        cols: &[usize],
        keys: &[&Key],
    ) -> Result<HashMap<usize, Vec<Val>>, ApplyError> {
        let sql = super::sql::select_columns(t, cols);
        let key_cols = super::params::key_params(keys, t.pk.len())?;
        let params = super::params::as_params(&key_cols);
        let client = self.client().await?;
        let rows = client.query(&sql, &params).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let ord: i64 = r.get(0);
            let vals = (0..cols.len())
                .map(|i| match r.get::<_, Option<String>>(i + 1) {
                    Some(s) => Val::Text(bytes::Bytes::from(s)),
                    None => Val::Null,
                })
                .collect();
            if let Ok(i) = usize::try_from(ord - 1) {
                out.insert(i, vals);
            }
        }
        Ok(out)
    }

    /// Completes partial images (unchanged TOAST) from the peer where this node's values
    /// may differ from the peer's. Keyed by (is insert, position in its plan); `None` when
    /// the peer no longer has the row.
    pub(super) async fn fill_unchanged(
        &mut self,
        t: &LocalTable,
        inserts: &[Planned<'_>],
        updates: &[Planned<'_>],
    ) -> Result<HashMap<(bool, usize), Option<Row>>, ApplyError> {
        let mut wanted: Vec<((bool, usize), &Key, &Row)> = Vec::new();
        for (is_insert, plan) in [(true, inserts), (false, updates)] {
            for (n, planned) in plan.iter().enumerate() {
                if let (true, Some(r)) = (planned.ask_peer, &planned.change.row) {
                    wanted.push(((is_insert, n), planned.key, r));
                }
            }
        }
        let mut out = HashMap::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        let mut cols: Vec<usize> = Vec::new();
        for (_, _, r) in &wanted {
            for (c, v) in r.0.iter().enumerate() {
                if matches!(v, Val::Unchanged) && !cols.contains(&c) {
                    cols.push(c);
                }
            }
        }
        let keys: Vec<&Key> = wanted.iter().map(|(_, k, _)| *k).collect();
        let fetched = self.fetch(t, &cols, &keys).await?;
        for (i, (slot, _, r)) in wanted.into_iter().enumerate() {
            let filled = fetched.get(&i).map(|vals| {
                let mut row = r.clone();
                for (&c, v) in cols.iter().zip(vals) {
                    if matches!(row.0[c], Val::Unchanged) {
                        row.0[c] = v.clone();
                    }
                }
                row
            });
            out.insert(slot, filled);
        }
        Ok(out)
    }
}
