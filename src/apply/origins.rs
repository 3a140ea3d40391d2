//! Which node wrote a local row: PostgreSQL keeps the replication origin of the
//! transaction that last wrote it (`pg_xact_commit_timestamp_origin`), by `roident`.

use std::collections::HashMap;

/// Maps a row's `roident` (from its xmin) to the node that wrote it.
#[derive(Debug, Clone)]
pub struct Origins {
    pub local_node: String,
    /// roident → node name (`pgmesh_a` → `a`; other origins keep their own name).
    pub by_roident: HashMap<u32, String>,
}

impl Origins {
    /// Reads this node's replication origins (`pgmesh_<n>`, `pgmesh__copy_<n>`,
    /// `pgmesh__repair_<n>` → `n`; see [`crate::config::names::node_of_origin`]).
    pub async fn load(
        client: &tokio_postgres::Client,
        local_node: &str,
    ) -> Result<Origins, tokio_postgres::Error> {
        let rows = client
            .query("SELECT roident, roname FROM pg_replication_origin", &[])
            .await?;
        Ok(Origins {
            local_node: local_node.to_string(),
            by_roident: rows
                .iter()
                .map(|r| {
                    let name: String = r.get(1);
                    (
                        r.get(0),
                        crate::config::names::node_of_origin(&name).to_string(),
                    )
                })
                .collect(),
        })
    }

    #[must_use]
    pub fn node_of(&self, roident: Option<u32>) -> &str {
        match roident {
            None | Some(0) => &self.local_node,
            Some(id) => self
                .by_roident
                .get(&id)
                .map(String::as_str)
                .unwrap_or("unknown-origin"),
        }
    }
}
