//! The `pgmesh` schema, from the versioned SQL files in `migrations/` (embedded at build
//! time with refinery, applied in order, recorded in `pgmesh.refinery_schema_history`).

use super::error::{query_err, SetupError};
use crate::config::names;
use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Applies every migration the node lacks; returns the names of those applied (empty when
/// the schema was current). The history table lives inside schema pgmesh, so the schema is
/// created first (V1 also says `IF NOT EXISTS`, for the fresh-database case).
pub async fn migrate(client: &mut Client, node: &str) -> Result<Vec<String>, SetupError> {
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", names::SCHEMA))
        .await
        .map_err(query_err(node, "creating schema pgmesh"))?;
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(names::MIGRATION_TABLE);
    let report = runner
        .run_async(client)
        .await
        .map_err(|e| SetupError::Migrate {
            node: node.to_string(),
            message: e.to_string(),
        })?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}

/// The newest migration version this build knows.
#[must_use]
pub fn latest_version() -> u32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}
