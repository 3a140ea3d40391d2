//! Replication commands on a walsender connection: IDENTIFY_SYSTEM, slot creation and
//! removal, slot lookup. Command texts are built by pure functions (unit-tested); the
//! async wrappers run them on a [`ReplicationConnection`].

use super::connection::{ReplicationConnection, Row};
use super::error::{ErrorContext, SourceError};
use crate::Lsn;

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier (as text: it is a u64).
    pub systemid: String,
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The database of a `replication=database` connection.
    pub dbname: Option<String>,
}

/// What CREATE_REPLICATION_SLOT does with the snapshot at the slot's consistent point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotAction {
    /// Export it (its name is returned) for an initial copy in another session; valid
    /// until the next command on this connection.
    Export,
    /// Use it in the current transaction of this connection (must be inside
    /// `BEGIN ISOLATION LEVEL REPEATABLE READ`).
    Use,
    /// No snapshot: stream only.
    #[default]
    Nothing,
}

/// Options for [`create_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSlot {
    pub name: String,
    /// Output plugin, `pgoutput` by default.
    pub plugin: String,
    /// Dropped when the session ends.
    pub temporary: bool,
    /// Decode prepared transactions at PREPARE time (PG15+ with `two_phase` in the stream).
    pub two_phase: bool,
    pub snapshot: SnapshotAction,
}

impl CreateSlot {
    /// A permanent pgoutput slot without snapshot.
    #[must_use]
    pub fn new(name: &str) -> CreateSlot {
        CreateSlot {
            name: name.to_string(),
            plugin: "pgoutput".to_string(),
            temporary: false,
            two_phase: false,
            snapshot: SnapshotAction::Nothing,
        }
    }
}

/// The answer to CREATE_REPLICATION_SLOT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// Streaming from this slot starts with transactions committing after this LSN.
    pub consistent_point: Lsn,
    /// The exported snapshot (with [`SnapshotAction::Export`]).
    pub snapshot_name: Option<String>,
    pub output_plugin: Option<String>,
}

/// A row of `pg_replication_slots` (the parts pgmesh looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_name: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub temporary: bool,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved`, `lost`.
    pub wal_status: Option<String>,
}

/// Slot names PostgreSQL accepts: 1–63 of `[a-z0-9_]` (ReplicationSlotValidateName).
pub fn validate_slot_name(name: &str) -> Result<(), SourceError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SourceError::Config(format!(
            "replication slot name {name:?} is invalid: use 1-63 lower case letters, digits \
             and underscores"
        )))
    }
}

fn validate_plugin(plugin: &str) -> Result<(), SourceError> {
    let ok = !plugin.is_empty()
        && plugin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SourceError::Config(format!(
            "output plugin name {plugin:?} is invalid"
        )))
    }
}

/// The CREATE_REPLICATION_SLOT command for a server of `major`: the parenthesized options
/// form on 15+, the legacy keywords before.
pub fn create_slot_command(major: u32, opts: &CreateSlot) -> Result<String, SourceError> {
    validate_slot_name(&opts.name)?;
    validate_plugin(&opts.plugin)?;
    let temp = if opts.temporary { " TEMPORARY" } else { "" };
    let head = format!(
        "CREATE_REPLICATION_SLOT {}{temp} LOGICAL {}",
        opts.name, opts.plugin
    );
    if major >= 15 {
        let snapshot = match opts.snapshot {
            SnapshotAction::Export => "export",
            SnapshotAction::Use => "use",
            SnapshotAction::Nothing => "nothing",
        };
        let mut options = vec![format!("SNAPSHOT '{snapshot}'")];
        if opts.two_phase {
            options.push("TWO_PHASE true".to_string());
        }
        Ok(format!("{head} ({})", options.join(", ")))
    } else {
        let snapshot = match opts.snapshot {
            SnapshotAction::Export => "EXPORT_SNAPSHOT",
            SnapshotAction::Use => "USE_SNAPSHOT",
            SnapshotAction::Nothing => "NOEXPORT_SNAPSHOT",
        };
        let two_phase = if opts.two_phase && major >= 14 {
            " TWO_PHASE"
        } else {
            ""
        };
        Ok(format!("{head}{two_phase} {snapshot}"))
    }
}

/// The DROP_REPLICATION_SLOT command; `wait` waits for an active walsender to let go.
pub fn drop_slot_command(name: &str, wait: bool) -> Result<String, SourceError> {
    validate_slot_name(name)?;
    Ok(format!(
        "DROP_REPLICATION_SLOT {name}{}",
        if wait { " WAIT" } else { "" }
    ))
}

fn parse_lsn(
    conn: &ReplicationConnection,
    what: &str,
    v: Option<&str>,
) -> Result<Lsn, SourceError> {
    let v = v.ok_or_else(|| SourceError::protocol(conn.target(), format!("{what} is missing")))?;
    v.parse()
        .map_err(|e| SourceError::protocol(conn.target(), format!("{what}: {e}")))
}

fn one_row(conn: &ReplicationConnection, cmd: &str, rows: Vec<Row>) -> Result<Row, SourceError> {
    let n = rows.len();
    rows.into_iter().next().filter(|_| n == 1).ok_or_else(|| {
        SourceError::protocol(
            conn.target(),
            format!("{cmd} returned {n} rows, expected 1"),
        )
    })
}

/// Runs IDENTIFY_SYSTEM.
pub async fn identify_system(
    conn: &mut ReplicationConnection,
) -> Result<SystemIdentity, SourceError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = one_row(conn, "IDENTIFY_SYSTEM", rows)?;
    let systemid = row
        .get("systemid")
        .ok_or_else(|| SourceError::protocol(conn.target(), "IDENTIFY_SYSTEM: no systemid"))?
        .to_string();
    let timeline = row
        .get("timeline")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| SourceError::protocol(conn.target(), "IDENTIFY_SYSTEM: bad timeline"))?;
    Ok(SystemIdentity {
        systemid,
        timeline,
        xlogpos: parse_lsn(conn, "IDENTIFY_SYSTEM xlogpos", row.get("xlogpos"))?,
        dbname: row.get("dbname").map(str::to_string),
    })
}

/// Creates a logical slot; returns its consistent point and (with `Export`) the snapshot.
pub async fn create_slot(
    conn: &mut ReplicationConnection,
    opts: &CreateSlot,
) -> Result<CreatedSlot, SourceError> {
    let cmd = create_slot_command(conn.server_major(), opts)?;
    let ctx = ErrorContext {
        slot: Some(&opts.name),
        plugin: Some(&opts.plugin),
        ..ErrorContext::default()
    };
    let rows = conn.query_ctx(&cmd, &ctx).await?;
    let row = one_row(conn, "CREATE_REPLICATION_SLOT", rows)?;
    let created = CreatedSlot {
        slot_name: row.get("slot_name").unwrap_or(&opts.name).to_string(),
        consistent_point: parse_lsn(conn, "consistent_point", row.get("consistent_point"))?,
        snapshot_name: row.get("snapshot_name").map(str::to_string),
        output_plugin: row.get("output_plugin").map(str::to_string),
    };
    tracing::info!(
        target = %conn.target(),
        slot = %created.slot_name,
        consistent_point = %created.consistent_point,
        snapshot = ?created.snapshot_name,
        "created replication slot"
    );
    Ok(created)
}

/// Drops a slot; with `wait`, waits until no walsender holds it.
pub async fn drop_slot(
    conn: &mut ReplicationConnection,
    name: &str,
    wait: bool,
) -> Result<(), SourceError> {
    let cmd = drop_slot_command(name, wait)?;
    let ctx = ErrorContext {
        slot: Some(name),
        ..ErrorContext::default()
    };
    conn.query_ctx(&cmd, &ctx).await?;
    tracing::info!(target = %conn.target(), slot = name, "dropped replication slot");
    Ok(())
}

/// Looks a slot up in `pg_replication_slots` (plain SQL on the walsender connection).
pub async fn slot_info(
    conn: &mut ReplicationConnection,
    name: &str,
) -> Result<Option<SlotInfo>, SourceError> {
    let sql = format!(
        "SELECT slot_name, plugin, database, temporary::text, active::text, active_pid, \
         restart_lsn::text, confirmed_flush_lsn::text, wal_status \
         FROM pg_replication_slots WHERE slot_name = {}",
        crate::sqlquote::literal(name)
    );
    let rows = conn.simple_query(&sql).await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let lsn = |v: Option<&str>| v.and_then(|s| s.parse::<Lsn>().ok());
    Ok(Some(SlotInfo {
        slot_name: row.get("slot_name").unwrap_or(name).to_string(),
        plugin: row.get("plugin").map(str::to_string),
        database: row.get("database").map(str::to_string),
        temporary: row.get("temporary") == Some("true"),
        active: row.get("active") == Some("true"),
        active_pid: row.get("active_pid").and_then(|p| p.parse().ok()),
        restart_lsn: lsn(row.get("restart_lsn")),
        confirmed_flush_lsn: lsn(row.get("confirmed_flush_lsn")),
        wal_status: row.get("wal_status").map(str::to_string),
    }))
}

/// Whether a slot of that name exists.
pub async fn slot_exists(
    conn: &mut ReplicationConnection,
    name: &str,
) -> Result<bool, SourceError> {
    Ok(slot_info(conn, name).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_slot_syntax_per_version() {
        let mut o = CreateSlot::new("pgmesh_b");
        assert_eq!(
            create_slot_command(15, &o).unwrap(),
            "CREATE_REPLICATION_SLOT pgmesh_b LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        o.temporary = true;
        o.two_phase = true;
        o.snapshot = SnapshotAction::Export;
        assert_eq!(
            create_slot_command(18, &o).unwrap(),
            "CREATE_REPLICATION_SLOT pgmesh_b TEMPORARY LOGICAL pgoutput \
             (SNAPSHOT 'export', TWO_PHASE true)"
        );
        assert_eq!(
            create_slot_command(14, &o).unwrap(),
            "CREATE_REPLICATION_SLOT pgmesh_b TEMPORARY LOGICAL pgoutput TWO_PHASE EXPORT_SNAPSHOT"
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "Upper", "a-b", "a b", "x;DROP", &"a".repeat(64)] {
            assert!(
                create_slot_command(15, &CreateSlot::new(bad)).is_err(),
                "{bad}"
            );
            assert!(drop_slot_command(bad, false).is_err(), "{bad}");
        }
        let mut o = CreateSlot::new("ok");
        o.plugin = "wal2json; x".into();
        assert!(create_slot_command(15, &o).is_err());
        assert_eq!(
            drop_slot_command("s", true).unwrap(),
            "DROP_REPLICATION_SLOT s WAIT"
        );
    }

    #[test]
    fn quotes_literals() {}
}
