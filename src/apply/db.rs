//! The apply session's connection as the executors see it: the client and its prepared
//! statements.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::error::ApplyError;

/// Prepared statements by SQL text, per connection.
#[derive(Default)]
pub struct Statements(HashMap<String, Statement>);

impl Statements {
    pub async fn get(&mut self, client: &Client, sql: &str) -> Result<Statement, ApplyError> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(sql).await?;
        self.0.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// The apply transaction's connection and its statement cache: every lookup and write of
/// the apply path goes through one.
pub struct Db<'a> {
    pub client: &'a Client,
    pub statements: &'a mut Statements,
}

impl Db<'_> {
    /// The prepared statement for `sql` (prepared once per connection).
    pub async fn statement(&mut self, sql: &str) -> Result<Statement, ApplyError> {
        self.statements.get(self.client, sql).await
    }

    /// Runs `sql` (prepared once) with `params`; the number of rows it changed.
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, ApplyError> {
        let stmt = self.statement(sql).await?;
        Ok(self.client.execute(&stmt, params).await?)
    }

    /// Runs the query `sql` (prepared once) with `params`.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, ApplyError> {
        let stmt = self.statement(sql).await?;
        Ok(self.client.query(&stmt, params).await?)
    }
}
