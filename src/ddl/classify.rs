//! What a statement changes (pure): pgmesh ddl runs only statements whose effect on
//! replication it knows, and refuses the others with what to do instead.

use super::split::{tokens, Token};
use crate::sqlquote;

/// A table as a statement names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// The name as SQL (for `to_regclass`, which applies the search path).
    #[must_use]
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", sqlquote::ident(s), sqlquote::ident(&self.name)),
            None => sqlquote::ident(&self.name),
        }
    }
}

/// One action of an ALTER TABLE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddColumn(String),
    DropColumn(String),
    /// `ALTER COLUMN c TYPE …`.
    AlterType(String),
    /// Defaults, NOT NULL, statistics, storage of a column.
    ColumnSetting(String),
    /// ADD / DROP / ALTER / VALIDATE CONSTRAINT (primary keys included).
    Constraint,
    /// Owner, storage parameters, clustering: nothing replication sees.
    Other,
}

/// A statement pgmesh ddl runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    AlterTable {
        table: TableName,
        actions: Vec<Action>,
    },
    CreateTable {
        table: TableName,
    },
    CreateIndex {
        table: TableName,
    },
    DropIndex,
    /// Types, domains, schemas, extensions, functions, sequences, views, comments,
    /// grants: objects a later statement may need on every node; no table data changes.
    Plain,
}

/// Why a statement is refused: the message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse(s: impl Into<String>) -> Result<Statement, Refusal> {
    Err(Refusal(s.into()))
}

/// Classifies one statement.
pub fn classify(stmt: &str) -> Result<Statement, Refusal> {
    let t = tokens(stmt).map_err(|e| Refusal(format!("cannot read the statement: {e}")))?;
    let word = |i: usize| match t.get(i) {
        Some(Token::Word(w)) => w.as_str(),
        _ => "",
    };
    match (word(0), word(1)) {
        ("alter", "table") => alter_table(&t),
        ("create", _) => create(&t),
        ("drop", "index") => {
            if word(2) == "concurrently" {
                refuse(concurrently("DROP INDEX"))
            } else {
                Ok(Statement::DropIndex)
            }
        }
        ("drop", "table") => refuse(
            "DROP TABLE of a replicated table: take it out of [replication].tables and run `pgmesh setup` (it leaves the publication), wait until `pgmesh status` shows both directions caught up, then drop it on every node",
        ),
        ("comment", _) | ("grant", _) | ("revoke", _) => Ok(Statement::Plain),
        _ => refuse(format!(
            "pgmesh ddl runs ALTER TABLE, CREATE TABLE, CREATE [UNIQUE] INDEX, DROP INDEX and CREATE TYPE/DOMAIN/SCHEMA/EXTENSION/FUNCTION/SEQUENCE/VIEW, COMMENT, GRANT, REVOKE; \"{}\" is none of them: run it on each node yourself if it does not change a replicated table",
            super::split::short(stmt)
        )),
    }
}

fn concurrently(what: &str) -> String {
    format!(
        "{what} CONCURRENTLY cannot run inside a transaction: run it on each node yourself (an index does not change what is replicated), or leave out CONCURRENTLY"
    )
}

/// `name` or `schema.name` at `t[*i]`; advances `i`.
fn table_name(t: &[Token], i: &mut usize) -> Option<TableName> {
    let first = t.get(*i)?.ident()?.to_string();
    *i += 1;
    if t.get(*i) == Some(&Token::Dot) {
        let second = t.get(*i + 1)?.ident()?.to_string();
        *i += 2;
        return Some(TableName {
            schema: Some(first),
            name: second,
        });
    }
    Some(TableName {
        schema: None,
        name: first,
    })
}

fn skip(t: &[Token], i: &mut usize, words: &[&str]) -> bool {
    let all = words
        .iter()
        .enumerate()
        .all(|(k, w)| t.get(*i + k).is_some_and(|x| x.is(w)));
    if all {
        *i += words.len();
    }
    all
}

fn alter_table(t: &[Token]) -> Result<Statement, Refusal> {
    let mut i = 2;
    skip(t, &mut i, &["if", "exists"]);
    skip(t, &mut i, &["only"]);
    let Some(table) = table_name(t, &mut i) else {
        return refuse("ALTER TABLE without a table name");
    };
    if t.get(i) == Some(&Token::Other("*".into())) {
        i += 1;
    }
    // Actions, split at commas outside parentheses.
    let mut actions = Vec::new();
    let mut depth = 0usize;
    let mut current: Vec<&Token> = Vec::new();
    for tok in &t[i..] {
        match tok {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                actions.push(action(&current, &table)?);
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(tok);
    }
    if current.is_empty() {
        return refuse(format!("ALTER TABLE {} without an action", table.sql()));
    }
    actions.push(action(&current, &table)?);
    Ok(Statement::AlterTable { table, actions })
}

fn action(a: &[&Token], table: &TableName) -> Result<Action, Refusal> {
    let w = |k: usize| match a.get(k) {
        Some(Token::Word(w)) => w.as_str(),
        _ => "",
    };
    let t = table.sql();
    // The column name after optional COLUMN and IF [NOT] EXISTS.
    let column = |from: usize| -> Option<String> {
        let mut k = from;
        if w(k) == "column" {
            k += 1;
        }
        if w(k) == "if" {
            k += if w(k + 1) == "not" { 3 } else { 2 };
        }
        a.get(k).and_then(|x| x.ident()).map(str::to_string)
    };
    let unreadable = || Refusal(format!("cannot read an action of ALTER TABLE {t}"));
    match w(0) {
        "add" => match w(1) {
            "constraint" | "primary" | "unique" | "check" | "foreign" | "exclude" => {
                Ok(Action::Constraint)
            }
            _ => column(1).map(Action::AddColumn).ok_or_else(unreadable),
        },
        "drop" => match w(1) {
            "constraint" => Ok(Action::Constraint),
            _ => column(1).map(Action::DropColumn).ok_or_else(unreadable),
        },
        "alter" if w(1) == "constraint" => Ok(Action::Constraint),
        "alter" => {
            let k = if w(1) == "column" { 2 } else { 1 };
            let name = a.get(k).and_then(|x| x.ident()).ok_or_else(unreadable)?;
            let rest = (w(k + 1), w(k + 2));
            match rest {
                ("type", _) | ("set", "data") => Ok(Action::AlterType(name.to_string())),
                ("set" | "drop", "default" | "not")
                | ("set", "statistics" | "storage" | "compression")
                | ("reset", _) => Ok(Action::ColumnSetting(name.to_string())),
                ("set", "") if a.get(k + 2) == Some(&&Token::Open) => {
                    Ok(Action::ColumnSetting(name.to_string()))
                }
                _ => Err(Refusal(format!(
                    "ALTER TABLE {t} ALTER COLUMN {} {} {}: identity and generated-column changes are not run by pgmesh ddl (each node has its own sequence: run them on every node, then `pgmesh sequences --apply`)",
                    sqlquote::ident(name),
                    rest.0.to_uppercase(),
                    rest.1.to_uppercase()
                ))),
            }
        }
        "validate" => Ok(Action::Constraint),
        "owner" | "cluster" | "reset" => Ok(Action::Other),
        "set" if a.get(1) == Some(&&Token::Open) || w(1) == "without" => Ok(Action::Other),
        "rename" => Err(Refusal(format!(
            "renaming a table or column of {t} is not supported: the peer's changes in flight still carry the old name. Add a new column, copy the values with an UPDATE (replicated), then drop the old one, each step with pgmesh ddl"
        ))),
        "replica" => Err(Refusal(format!(
            "REPLICA IDENTITY of {t}: pgmesh needs a primary key or REPLICA IDENTITY FULL (with [replication].full_identity); change it on every node while no sidecar runs, then run `pgmesh setup --check`"
        ))),
        "enable" | "disable" => Err(Refusal(format!(
            "ENABLE/DISABLE on {t} could switch off pgmesh's tombstone triggers: run it on each node yourself if you are sure"
        ))),
        other => Err(Refusal(format!(
            "ALTER TABLE {t} {}: not run by pgmesh ddl (it supports ADD/DROP/ALTER COLUMN, constraints, OWNER TO, SET/RESET storage parameters); run it on each node yourself if it does not change what is replicated",
            other.to_uppercase()
        ))),
    }
}

fn create(t: &[Token]) -> Result<Statement, Refusal> {
    let mut i = 1;
    skip(t, &mut i, &["or", "replace"]);
    let word = |k: usize| match t.get(k) {
        Some(Token::Word(w)) => w.as_str(),
        _ => "",
    };
    if matches!(word(i), "global" | "local") {
        i += 1;
    }
    match word(i) {
        "temp" | "temporary" | "unlogged" => refuse(
            "temporary and unlogged tables are never replicated: create them on the node that needs them",
        ),
        "table" => {
            i += 1;
            skip(t, &mut i, &["if", "not", "exists"]);
            let Some(table) = table_name(t, &mut i) else {
                return refuse("CREATE TABLE without a table name");
            };
            match word(i) {
                "as" => refuse(
                    "CREATE TABLE … AS fills the table on each node from that node's data: create the table empty with pgmesh ddl, then fill it on one node (the rows replicate)",
                ),
                "partition" | "of" => refuse(
                    "partitions are not supported by pgmesh ddl: create them on each node yourself",
                ),
                _ => Ok(Statement::CreateTable { table }),
            }
        }
        "unique" | "index" => {
            if word(i) == "unique" {
                i += 1;
            }
            if word(i + 1) == "concurrently" {
                return refuse(concurrently("CREATE INDEX"));
            }
            let Some(on) = t[i..].iter().position(|x| x.is("on")) else {
                return refuse("CREATE INDEX without ON <table>");
            };
            let mut k = i + on + 1;
            skip(t, &mut k, &["only"]);
            match table_name(t, &mut k) {
                Some(table) => Ok(Statement::CreateIndex { table }),
                None => refuse("CREATE INDEX without a table name"),
            }
        }
        "type" | "domain" | "schema" | "extension" | "function" | "procedure" | "sequence"
        | "view" => Ok(Statement::Plain),
        other => refuse(format!(
            "CREATE {}: not run by pgmesh ddl; run it on each node yourself",
            other.to_uppercase()
        )),
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
