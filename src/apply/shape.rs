//! Does the peer's table (as its Relation message describes it) fit the table on this
//! node? Pure: the catalog reads are in [`super::shape_io`].
//!
//! The rules, per column:
//! - a column the peer sends that this node lacks **stops** the direction: writing the row
//!   without it would lose the value;
//! - a column whose type differs (built-in types by OID, which is the same on every node
//!   and major; every other type by schema and name, since their OIDs differ between
//!   nodes; type modifiers must match too) **stops** it;
//! - a column only this node has is fine when it is nullable or has a default: rows from
//!   the peer leave it at its default (inserts) or as it is (updates). NOT NULL without a
//!   default stops, as inserts would fail;
//! - every primary-key column of this node must be part of the peer's replica identity
//!   (else its deletes could not be matched here).
//!
//! **History is not a difference.** The stream describes the peer's table as it was when
//! the changes were made, which can be older than the peer's table now. When the peer's
//! *current* table agrees with this node on a column (both dropped it, both retyped it,
//! both changed the key), the difference is only the age of the changes in flight: a
//! value of a column dropped on both nodes is discarded, a value of a retyped column is
//! cast (it travels as text). This is what lets `pgmesh ddl` change both nodes while
//! changes are in flight. The one exception: columns gone on both nodes together with
//! columns new on both look like a rename, whose old values must not be discarded, so
//! that stops, unless `pgmesh ddl` recorded the gone columns as dropped on this node
//! (`pgmesh.schema_changes`).

use std::fmt;

use crate::protocol::pgoutput::{Oid, Relation, Type};
use crate::sqlquote;

/// OIDs below this belong to types created at bootstrap (`FirstGenbkiObjectId`): the same
/// on every node and major. pgoutput sends a Type message (with the name) for the others.
pub const FIRST_NON_BUILTIN_OID: Oid = 10_000;

/// How a column's type is recognised on another node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum TypeId {
    Builtin(Oid),
    Named {
        schema: String,
        name: String,
    },
    /// A non-built-in OID the stream did not name: never equal to anything.
    Unknown(Oid),
}

/// A column type: identity, modifier (`atttypmod`, e.g. varchar length) and how to print it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ColumnType {
    pub id: TypeId,
    pub typmod: i32,
    /// `format_type()` as a node prints it (filled in for the stream's built-in types
    /// only when a message needs it).
    pub display: String,
}

impl ColumnType {
    /// The type of `oid` as seen on a node whose catalog names it `schema.name`.
    #[must_use]
    pub fn from_catalog(oid: Oid, schema: &str, name: &str, typmod: i32, display: &str) -> Self {
        let id = if oid < FIRST_NON_BUILTIN_OID {
            TypeId::Builtin(oid)
        } else {
            TypeId::Named {
                schema: schema.to_string(),
                name: name.to_string(),
            }
        };
        ColumnType {
            id,
            typmod,
            display: display.to_string(),
        }
    }

    #[must_use]
    pub fn same_as(&self, other: &ColumnType) -> bool {
        !matches!(self.id, TypeId::Unknown(_)) && self.id == other.id && self.typmod == other.typmod
    }
}

/// One column of a table on a node (this one, or the peer now).
#[derive(Debug, Clone)]
pub struct ShapeColumn {
    pub name: String,
    pub ty: ColumnType,
    pub not_null: bool,
    /// A default or an identity: inserts that leave it out still get a value.
    pub has_default: bool,
}

/// A table on a node: its live, non-generated columns and primary key.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub columns: Vec<ShapeColumn>,
    pub primary_key: Vec<String>,
}

impl Shape {
    fn column(&self, name: &str) -> Option<&ShapeColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One column as the stream describes it.
#[derive(Debug, Clone)]
pub struct RemoteColumn {
    pub name: String,
    pub ty: ColumnType,
    /// Part of the replica identity.
    pub key: bool,
}

/// The peer's table as its Relation message (and Type messages) describe it.
#[derive(Debug, Clone)]
pub struct RemoteShape {
    pub columns: Vec<RemoteColumn>,
}

impl RemoteShape {
    /// From a Relation message and the Type messages seen on the stream so far. Built-in
    /// types are printed as `type <oid>` until [`RemoteShape::builtin_types`] are named.
    #[must_use]
    pub fn from_relation(rel: &Relation, types: &std::collections::HashMap<Oid, Type>) -> Self {
        let columns = rel
            .columns
            .iter()
            .map(|c| {
                let oid = c.type_oid;
                let ty = if oid < FIRST_NON_BUILTIN_OID {
                    ColumnType {
                        id: TypeId::Builtin(oid),
                        typmod: c.type_modifier,
                        display: format!("type {oid}"),
                    }
                } else if let Some(t) = types.get(&oid) {
                    let schema = if t.namespace.is_empty() {
                        "pg_catalog"
                    } else {
                        &t.namespace
                    };
                    ColumnType {
                        id: TypeId::Named {
                            schema: schema.to_string(),
                            name: t.name.clone(),
                        },
                        typmod: c.type_modifier,
                        display: format!(
                            "{}.{}",
                            sqlquote::ident(schema),
                            sqlquote::ident(&t.name)
                        ),
                    }
                } else {
                    ColumnType {
                        id: TypeId::Unknown(oid),
                        typmod: c.type_modifier,
                        display: format!("type {oid} of the peer"),
                    }
                };
                RemoteColumn {
                    name: c.name.clone(),
                    ty,
                    key: c.is_key(),
                }
            })
            .collect();
        RemoteShape { columns }
    }

    /// (index, oid, typmod) of built-in columns, to print with this node's `format_type`
    /// (a built-in OID means the same type everywhere).
    #[must_use]
    pub fn builtin_types(&self) -> Vec<(usize, Oid, i32)> {
        self.columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.ty.id {
                TypeId::Builtin(oid) => Some((i, oid, c.ty.typmod)),
                _ => None,
            })
            .collect()
    }
}

/// A difference that stops the direction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Difference {
    /// The peer sends a column this node does not have.
    MissingHere { column: String, peer_type: String },
    TypeDiffers {
        column: String,
        peer_type: String,
        local_type: String,
    },
    /// This node's column is NOT NULL without a default and the peer does not send it.
    NotNullHere { column: String, local_type: String },
    /// A primary-key column here is not part of the peer's replica identity.
    KeyNotSent { column: String },
    /// Columns the peer sent are gone on both nodes and others are new on both.
    PossibleRename { gone: Vec<String>, new: Vec<String> },
}

/// What [`compare`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    /// Differences that stop the direction; empty when the stream fits.
    pub differences: Vec<Difference>,
    /// Columns the peer sends that both nodes have dropped since: their values are
    /// discarded.
    pub discard: Vec<String>,
    /// Differences accepted as history (for the log).
    pub history: Vec<String>,
}

impl Check {
    #[must_use]
    pub fn fits(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares the stream's description of a table with this node's table; `peer_now` is
/// the peer's table as it is now (read only when the first comparison found differences),
/// which turns differences the peer has since made on its side too into history.
/// `dropped_here` names columns `pgmesh ddl` dropped from this table on this node (so
/// they were not renamed).
#[must_use]
pub fn compare(
    remote: &RemoteShape,
    local: &Shape,
    peer_now: Option<&Shape>,
    dropped_here: &[String],
) -> Check {
    let mut check = Check::default();
    let mut gone = Vec::new();
    for rc in &remote.columns {
        let peer_col = peer_now.and_then(|p| p.column(&rc.name));
        match local.column(&rc.name) {
            Some(lc) if rc.ty.same_as(&lc.ty) => {}
            Some(lc) => {
                if peer_col.is_some_and(|pc| pc.ty.same_as(&lc.ty)) {
                    check.history.push(format!(
                        "column {} was {} on the peer when these changes were made; both nodes now have {}",
                        rc.name, rc.ty.display, lc.ty.display
                    ));
                } else {
                    check.differences.push(Difference::TypeDiffers {
                        column: rc.name.clone(),
                        peer_type: rc.ty.display.clone(),
                        local_type: lc.ty.display.clone(),
                    });
                }
            }
            None if peer_now.is_some() && peer_col.is_none() => gone.push(rc.name.clone()),
            None => check.differences.push(Difference::MissingHere {
                column: rc.name.clone(),
                peer_type: rc.ty.display.clone(),
            }),
        }
    }
    let sent = |name: &str| remote.columns.iter().find(|c| c.name == name);
    let mut new = Vec::new();
    for lc in local.columns.iter().filter(|c| sent(&c.name).is_none()) {
        if peer_now.is_some_and(|p| p.column(&lc.name).is_some()) {
            new.push(lc.name.clone());
        }
        if lc.not_null && !lc.has_default && !local.primary_key.contains(&lc.name) {
            check.differences.push(Difference::NotNullHere {
                column: lc.name.clone(),
                local_type: lc.ty.display.clone(),
            });
        }
    }
    let unexplained = gone.iter().any(|g| !dropped_here.contains(g));
    if unexplained && !new.is_empty() {
        check
            .differences
            .push(Difference::PossibleRename { gone, new });
    } else {
        for g in &gone {
            check.history.push(format!(
                "column {g} was dropped on both nodes after these changes were made; its values are discarded"
            ));
        }
        check.discard = gone;
    }
    let key_history = peer_now.is_some_and(|p| p.primary_key == local.primary_key);
    for k in &local.primary_key {
        if sent(k).is_some_and(|c| c.key) {
            continue;
        }
        if key_history {
            check.history.push(format!(
                "primary key column {k} was not part of the peer's key when these changes were made; both nodes now have the same key"
            ));
        } else {
            check
                .differences
                .push(Difference::KeyNotSent { column: k.clone() });
        }
    }
    check
}

/// A direction stopped because a table differs between the nodes.
#[derive(Debug, Clone)]
pub struct SchemaMismatch {
    /// `schema.table`, quoted as in SQL.
    pub table: String,
    pub schema: String,
    pub relname: String,
    /// This node, and the peer whose stream stopped.
    pub node: String,
    pub peer: String,
    pub differences: Vec<Difference>,
    /// The stream's description, compared again while the direction waits for a fix.
    pub remote: RemoteShape,
}

impl SchemaMismatch {
    /// What differs, one phrase per difference.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        let (node, peer) = (&self.node, &self.peer);
        self.differences
            .iter()
            .map(|d| match d {
                Difference::MissingHere { column, peer_type } => format!(
                    "column {} ({peer_type}) exists on {peer} but not on {node}",
                    sqlquote::ident(column)
                ),
                Difference::TypeDiffers {
                    column,
                    peer_type,
                    local_type,
                } => format!(
                    "column {} is {peer_type} on {peer} but {local_type} on {node}",
                    sqlquote::ident(column)
                ),
                Difference::NotNullHere { column, local_type } => format!(
                    "column {} ({local_type} NOT NULL, no default) exists only on {node}, so rows from {peer} cannot be inserted",
                    sqlquote::ident(column)
                ),
                Difference::KeyNotSent { column } => format!(
                    "primary key column {} on {node} is not part of the replica identity (primary key) on {peer}",
                    sqlquote::ident(column)
                ),
                Difference::PossibleRename { gone, new } => format!(
                    "{peer} sent column(s) {} that neither node has now, and column(s) {} are new on both: a rename? pgmesh cannot tell a rename from a drop and an add, and would lose the values sent before it",
                    gone.join(", "),
                    new.join(", ")
                ),
            })
            .collect()
    }

    /// SQL (or a comment saying what to do) that makes this node's table match the peer's.
    #[must_use]
    pub fn fixes(&self) -> Vec<String> {
        let t = &self.table;
        self.differences
            .iter()
            .map(|d| match d {
                Difference::MissingHere { column, peer_type } => format!(
                    "ALTER TABLE {t} ADD COLUMN {} {peer_type};",
                    sqlquote::ident(column)
                ),
                Difference::TypeDiffers {
                    column, peer_type, ..
                } => format!(
                    "ALTER TABLE {t} ALTER COLUMN {} TYPE {peer_type};",
                    sqlquote::ident(column)
                ),
                Difference::NotNullHere { column, .. } => format!(
                    "ALTER TABLE {t} ALTER COLUMN {} DROP NOT NULL;  -- or SET DEFAULT …, or add the column on {}",
                    sqlquote::ident(column),
                    self.peer
                ),
                Difference::KeyNotSent { .. } => format!(
                    "-- give {t} the same PRIMARY KEY on {} and {}",
                    self.node, self.peer
                ),
                Difference::PossibleRename { gone, new } => format!(
                    "-- if {} was renamed to {}: rename it back on {} (ALTER TABLE {t} RENAME COLUMN …) until this stream has passed the rename, then rename it again",
                    gone.join(", "),
                    new.join(", "),
                    self.node
                ),
            })
            .collect()
    }
}

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fixes = self.fixes();
        let sql: Vec<&str> = fixes
            .iter()
            .filter(|x| !x.starts_with("--"))
            .map(|x| x.split(";  --").next().unwrap_or(x).trim_end_matches(';'))
            .collect();
        write!(
            f,
            "table {} differs between {} and {}: {}. The stream from {} is stopped with its position kept \
             (nothing after the last applied commit is acknowledged, so no change is lost). \
             To continue, make the table on {} match",
            self.table,
            self.peer,
            self.node,
            self.describe().join("; "),
            self.peer,
            self.node,
        )?;
        if !sql.is_empty() {
            // pgmesh ddl rather than psql: a statement that rewrites the table would make
            // its rows look newer than the peer's changes waiting in the stream.
            write!(
                f,
                ": pgmesh ddl -c <config> --node {} \"{}\" (by hand: {})",
                self.node,
                sql.join("; "),
                fixes.join(" ")
            )?;
        } else {
            write!(f, ": {}", fixes.join(" "))?;
        }
        write!(
            f,
            ", or undo the change on {} (to change every node at once: pgmesh ddl -c <config> \"ALTER TABLE …\"). \
             The stream resumes by itself once the tables match, or when the sidecar restarts",
            self.peer
        )
    }
}

#[cfg(test)]
#[path = "shape_tests.rs"]
mod tests;
