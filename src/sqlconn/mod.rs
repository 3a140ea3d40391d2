//! Plain SQL sessions (tokio-postgres) to a node: setup, apply, peer reads.
//!
//! Every connection pgmesh opens to a node reads the same DSN, so `sslmode` and
//! `sslrootcert` mean the same on a SQL session as on the replication connection
//! ([`crate::source::tls`] builds the rustls config for both):
//!
//! | sslmode     | tokio-postgres sees | rustls config                                  |
//! |-------------|---------------------|------------------------------------------------|
//! | disable     | disable             | none                                           |
//! | prefer      | prefer              | any certificate (TLS if offered, else plain)   |
//! | require     | require             | any certificate; the chain with `sslrootcert`  |
//! | verify-ca   | require             | the chain against `sslrootcert`                |
//! | verify-full | require             | chain and host name (`sslrootcert`, else webpki roots) |
//!
//! tokio-postgres knows only disable/prefer/require, so the verify modes become
//! `require` with a verifying config. Unix sockets never carry TLS (libpq ignores sslmode
//! there too), so a DSN of socket directories only connects plain.

mod db_error;
mod error;

use std::path::PathBuf;

use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};

use crate::source::config::{parse_dsn, DEFAULT_CONNECT_TIMEOUT};
use crate::source::{tls, SslMode};

pub use db_error::{db_error_is_transient, db_error_kind, describe_db_error};
pub use error::{pg_message, SqlConnectError};

/// How to open a SQL session to one node.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// The node's name, for messages.
    pub node: String,
    /// Everything tokio-postgres understands (its own sslmode is set at connect time).
    pub pg: tokio_postgres::Config,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// The DSN's `passfile`, for password lookups that need it.
    pub passfile: Option<PathBuf>,
}

impl SqlConfig {
    /// The same config with `application_name` set: each of the sidecar's sessions names
    /// its job in `pg_stat_activity`.
    #[must_use]
    pub fn named(&self, application_name: &str) -> SqlConfig {
        let mut c = self.clone();
        c.pg.application_name(application_name);
        c
    }

    /// Parses `dsn` for node `node`. No password lookup here (see
    /// [`crate::config::NodeConfig::sql_config`]); errors never contain the DSN.
    pub fn from_dsn(node: &str, dsn: &str) -> Result<SqlConfig, SqlConnectError> {
        let (mut pg, own) = parse_dsn(dsn).map_err(|e| SqlConnectError::Config {
            node: node.to_string(),
            message: e.to_string(),
        })?;
        if pg.get_application_name().is_none() {
            pg.application_name("pgmesh");
        }
        // libpq waits forever by default; an unreachable node should say so instead.
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        Ok(SqlConfig {
            node: node.to_string(),
            pg,
            sslmode: own.sslmode,
            sslrootcert: own.sslrootcert,
            passfile: own.passfile,
        })
    }

    /// `host:port/dbname` of the first host: enough to find the node, no secret.
    #[must_use]
    pub fn target(&self) -> String {
        let host = match self.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => match self.pg.get_hostaddrs().first() {
                Some(a) => a.to_string(),
                None => "localhost".into(),
            },
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        let db = self.pg.get_dbname().or(self.pg.get_user()).unwrap_or("?");
        format!("{host}:{port}/{db}")
    }

    /// Whether every host is a socket directory (no TLS possible).
    fn unix_only(&self) -> bool {
        let hosts = self.pg.get_hosts();
        !hosts.is_empty()
            && self.pg.get_hostaddrs().is_empty()
            && hosts.iter().all(|h| !matches!(h, Host::Tcp(_)))
    }
}

/// A connected client and the task that drives its connection (abort it when done; it
/// ends by itself when the client is dropped).
pub type SqlSession = (Client, tokio::task::JoinHandle<()>);

/// Opens a SQL session to `cfg`'s node with its sslmode (see the module table).
pub async fn connect_sql(cfg: &SqlConfig) -> Result<SqlSession, SqlConnectError> {
    let mode = if cfg.unix_only() {
        SslMode::Disable
    } else {
        cfg.sslmode
    };
    let target = cfg.target();
    let rustls = tls::client_config(mode, cfg.sslrootcert.as_deref(), &target)
        .map_err(|e| SqlConnectError::from_source(cfg, mode, e))?;
    let mut pg = cfg.pg.clone();
    let result = match rustls {
        None => {
            pg.ssl_mode(PgSslMode::Disable);
            connect_with(&pg, tokio_postgres::NoTls).await
        }
        Some(config) => {
            pg.ssl_mode(if mode == SslMode::Prefer {
                PgSslMode::Prefer
            } else {
                PgSslMode::Require
            });
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone());
            connect_with(&pg, tls).await
        }
    };
    result.map_err(|e| SqlConnectError::classify(cfg, mode, e))
}

async fn connect_with<T>(
    pg: &tokio_postgres::Config,
    tls: T,
) -> Result<SqlSession, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = pg.connect(tls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "SQL connection ended");
        }
    });
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_our_ssl_options_out_of_the_dsn() {
        let c = SqlConfig::from_dsn(
            "a",
            "host=db.example port=6543 user=u dbname=app sslmode=verify-full \
             sslrootcert=/etc/ca.pem password=secret",
        )
        .unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.target(), "db.example:6543/app");
        assert_eq!(c.pg.get_application_name(), Some("pgmesh"));
        assert_eq!(c.pg.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));

        let c = SqlConfig::from_dsn(
            "b",
            "postgresql://u@127.0.0.1:5433/db?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.pg.get_application_name(), Some("x"));
        assert_eq!(c.target(), "127.0.0.1:5433/db");
        assert!(!c.unix_only());
    }

    #[test]
    fn socket_directories_only_means_no_tls() {
        let c = SqlConfig::from_dsn("a", "host=/tmp user=u sslmode=require").unwrap();
        assert!(c.unix_only());
        let c = SqlConfig::from_dsn("a", "host=/tmp,127.0.0.1 user=u").unwrap();
        assert!(!c.unix_only());
    }

    #[test]
    fn bad_dsn_names_the_node_not_the_secret() {
        for dsn in [
            "host=h user=u password=s3cret sslmode=sometimes",
            "host=h user=u password=s3cret port=notaport",
        ] {
            let e = SqlConfig::from_dsn("a", dsn).unwrap_err().to_string();
            assert!(e.contains("node a") && !e.contains("s3cret"), "{e}");
        }
    }

    #[tokio::test]
    async fn verify_ca_without_a_ca_fails_before_connecting() {
        // Port 1 would refuse; the config error must come first and say what to add.
        let c = SqlConfig::from_dsn("a", "host=127.0.0.1 port=1 user=u sslmode=verify-ca").unwrap();
        let e = connect_sql(&c).await.unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        assert_eq!(e.kind(), crate::source::ErrorKind::NeedsOperator);
    }
}
