//! Connection options of a replication connection, parsed from a libpq-style DSN.
//!
//! Both forms are accepted: `host=… port=… user=… sslmode=verify-full` and
//! `postgresql://user:pw@host:port/db?sslmode=require`. `sslmode`, `sslrootcert` and
//! `passfile` are handled here (tokio-postgres knows only part of sslmode); everything else
//! is parsed by [`tokio_postgres::Config`], so quoting and URL rules match it.
//!
//! The password comes from, in order: the DSN, `PGPASSWORD`, the `passfile` option or
//! `PGPASSFILE` (pgpass format, `host:port:db:user:password` with `*` wildcards). It is
//! never printed: `Debug` and `Display` show `***`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::SourceError;

/// How hard to insist on TLS, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it (no verification), else plain.
    #[default]
    Prefer,
    /// TLS, no certificate verification (encryption only), like libpq. With an
    /// `sslrootcert` it verifies the chain like `verify-ca` (libpq does the same).
    Require,
    /// TLS, chain checked against `sslrootcert`; the host name is not checked.
    VerifyCa,
    /// TLS, chain and host name checked (roots from `sslrootcert`, else webpki-roots).
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, SourceError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(SourceError::Config(format!(
                    "sslmode={other:?}: expected disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A password that never shows up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    #[must_use]
    pub fn new(p: impl Into<String>) -> Password {
        Password(p.into())
    }

    /// The secret itself, for the authentication exchange only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where to connect: a TCP host (optionally with a fixed address) or a unix socket dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAddr {
    /// Connect to `host` (resolved) or to `hostaddr` when given; TLS checks `host`.
    Tcp {
        host: String,
        hostaddr: Option<IpAddr>,
    },
    /// Directory holding `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// Options of one replication connection.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Candidate hosts, tried in order (libpq semantics), each with its port.
    pub hosts: Vec<(HostAddr, u16)>,
    pub user: String,
    pub password: Option<Password>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// Server settings for the session, sent as the startup packet's `options`
    /// (`-c name=value` each), e.g. the walsender's `logical_decoding_work_mem`.
    pub settings: Vec<(String, String)>,
}

/// Default for `connect_timeout` when the DSN has none (libpq waits forever; we do not).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl SourceConfig {
    /// Parses a DSN, taking `PGPASSWORD` / `PGPASSFILE` from the process environment.
    pub fn from_dsn(dsn: &str) -> Result<SourceConfig, SourceError> {
        Self::from_dsn_with_env(dsn, |k| std::env::var(k).ok())
    }

    /// Parses a DSN with an explicit environment lookup (for tests).
    pub fn from_dsn_with_env(
        dsn: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<SourceConfig, SourceError> {
        let (pg, own) = parse_dsn(dsn)?;
        let OwnOptions {
            sslmode,
            sslrootcert,
            passfile,
        } = own;

        let ports = pg.get_ports();
        let port_at = |i: usize| -> u16 {
            match ports.len() {
                0 => 5432,
                1 => ports[0],
                _ => ports.get(i).copied().unwrap_or(5432),
            }
        };
        let mut hosts = Vec::new();
        let hostaddrs = pg.get_hostaddrs();
        for (i, h) in pg.get_hosts().iter().enumerate() {
            let addr = match h {
                tokio_postgres::config::Host::Tcp(name) => HostAddr::Tcp {
                    host: name.clone(),
                    hostaddr: hostaddrs.get(i).copied(),
                },
                tokio_postgres::config::Host::Unix(p) => HostAddr::Unix(p.clone()),
            };
            hosts.push((addr, port_at(i)));
        }
        if hosts.is_empty() {
            for (i, a) in hostaddrs.iter().enumerate() {
                hosts.push((
                    HostAddr::Tcp {
                        host: a.to_string(),
                        hostaddr: Some(*a),
                    },
                    port_at(i),
                ));
            }
        }
        if hosts.is_empty() {
            hosts.push((
                HostAddr::Unix(PathBuf::from("/var/run/postgresql")),
                port_at(0),
            ));
        }

        let user = match pg.get_user() {
            Some(u) => u.to_string(),
            None => env("PGUSER")
                .or_else(|| env("USER"))
                .ok_or_else(|| SourceError::Config("no user= in the DSN and no PGUSER".into()))?,
        };
        let dbname = pg.get_dbname().unwrap_or(&user).to_string();
        let password = match pg.get_password() {
            Some(p) => {
                Some(Password(String::from_utf8(p.to_vec()).map_err(|_| {
                    SourceError::Config("password is not UTF-8".into())
                })?))
            }
            None => env("PGPASSWORD").map(Password).or_else(|| {
                let file = passfile
                    .clone()
                    .or_else(|| env("PGPASSFILE").map(PathBuf::from))
                    .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
                let text = std::fs::read_to_string(file).ok()?;
                let (host, port) = match hosts.first() {
                    Some((HostAddr::Tcp { host, .. }, p)) => (host.clone(), *p),
                    Some((HostAddr::Unix(_), p)) => ("localhost".to_string(), *p),
                    None => ("localhost".to_string(), 5432),
                };
                pgpass_lookup(&text, &host, port, &dbname, &user).map(Password)
            }),
        };
        if passfile.is_some() && password.is_none() && pg.get_password().is_none() {
            tracing::debug!("passfile has no entry matching this connection");
        }

        Ok(SourceConfig {
            hosts,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            application_name: pg.get_application_name().unwrap_or("pgmesh").to_string(),
            settings: Vec::new(),
            connect_timeout: pg
                .get_connect_timeout()
                .copied()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }

    /// `host:port` of the first candidate, for messages.
    #[must_use]
    pub fn target(&self) -> String {
        match self.hosts.first() {
            Some((h, p)) => describe_host(h, *p),
            None => "(no host)".to_string(),
        }
    }
}

pub(crate) fn describe_host(h: &HostAddr, port: u16) -> String {
    match h {
        HostAddr::Tcp { host, .. } if host.contains(':') => format!("[{host}]:{port}"),
        HostAddr::Tcp { host, .. } => format!("{host}:{port}"),
        HostAddr::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
    }
}

impl fmt::Display for SourceConfig {
    /// A DSN without the password, safe for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, p)| describe_host(h, *p))
            .collect();
        write!(
            f,
            "{} user={} dbname={} sslmode={}",
            hosts.join(","),
            self.user,
            self.dbname,
            self.sslmode
        )?;
        if self.password.is_some() {
            f.write_str(" password=***")?;
        }
        Ok(())
    }
}

/// The DSN options tokio-postgres does not know (or only partly), parsed by us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnOptions {
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub passfile: Option<PathBuf>,
}

/// Splits a DSN into the driver's config (every option tokio-postgres knows, with its
/// quoting and URL rules) and our own options. The driver config keeps tokio-postgres's
/// default sslmode: callers that connect through it map [`OwnOptions::sslmode`] onto it.
pub fn parse_dsn(dsn: &str) -> Result<(tokio_postgres::Config, OwnOptions), SourceError> {
    let (rest, own) = split_own_options(dsn)?;
    let pg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| SourceError::Config(format!("{e}")))?;
    let mut out = OwnOptions::default();
    for (k, v) in own {
        match k.as_str() {
            "sslmode" => out.sslmode = SslMode::parse(&v)?,
            "sslrootcert" => out.sslrootcert = Some(PathBuf::from(v)),
            "passfile" => out.passfile = Some(PathBuf::from(v)),
            _ => {}
        }
    }
    Ok((pg, out))
}

/// Options tokio-postgres does not know (or only partly): pulled out of the DSN.
const OWN_KEYS: &[&str] = &["sslmode", "sslrootcert", "passfile"];

/// Splits our own options out of a DSN; returns the rest for tokio-postgres.
fn split_own_options(dsn: &str) -> Result<(String, Vec<(String, String)>), SourceError> {
    let dsn = dsn.trim();
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let Some((base, query)) = dsn.split_once('?') else {
            return Ok((dsn.to_string(), Vec::new()));
        };
        let mut keep = Vec::new();
        let mut own = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if OWN_KEYS.contains(&k) {
                own.push((k.to_string(), percent_decode(v)?));
            } else {
                keep.push(pair);
            }
        }
        let rest = if keep.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", keep.join("&"))
        };
        return Ok((rest, own));
    }
    let mut rest = String::new();
    let mut own = Vec::new();
    for (k, v) in parse_key_values(dsn)? {
        if OWN_KEYS.contains(&k.as_str()) {
            own.push((k, v));
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&k);
            rest.push_str("='");
            for c in v.chars() {
                if c == '\'' || c == '\\' {
                    rest.push('\\');
                }
                rest.push(c);
            }
            rest.push('\'');
        }
    }
    Ok((rest, own))
}

/// libpq `key = value` syntax: values may be single-quoted with `\'` and `\\` escapes.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, SourceError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(SourceError::Config(format!(
                "expected key=value, found {key:?} without '='"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => break,
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(SourceError::Config(format!(
                            "unterminated quoted value for {key}"
                        )))
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, SourceError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| SourceError::Config(format!("bad percent escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SourceError::Config(format!("{s:?} is not UTF-8")))
}

/// Finds the password for a connection in a pgpass file (first matching line wins).
#[must_use]
pub fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() != 5 {
            continue;
        }
        let matches = |f: &str, v: &str| f == "*" || f == v;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], db)
            && matches(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), fields.last_mut()) {
                    last.push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_key_value_dsn_with_our_sslmodes() {
        let c = SourceConfig::from_dsn_with_env(
            "host=db.example port=6543 user=rep password='s3 cr\\'t' dbname=app \
             sslmode=verify-full sslrootcert=/etc/ca.pem application_name=sidecar \
             connect_timeout=3",
            no_env,
        )
        .unwrap();
        assert_eq!(
            c.hosts,
            vec![(
                HostAddr::Tcp {
                    host: "db.example".into(),
                    hostaddr: None
                },
                6543
            )]
        );
        assert_eq!(c.user, "rep");
        assert_eq!(c.password.as_ref().map(Password::expose), Some("s3 cr't"));
        assert_eq!(c.dbname, "app");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.application_name, "sidecar");
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn parses_url_dsn() {
        let c = SourceConfig::from_dsn_with_env(
            "postgresql://rep:p%40ss@127.0.0.1:5433/app?sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
            no_env,
        )
        .unwrap();
        assert_eq!(c.password.as_ref().map(Password::expose), Some("p@ss"));
        assert_eq!(c.sslmode, SslMode::VerifyCa);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(c.application_name, "x");
        assert_eq!(c.target(), "127.0.0.1:5433");
    }

    #[test]
    fn hostaddr_is_kept_for_tls_name_checks() {
        let c = SourceConfig::from_dsn_with_env(
            "host=db.example hostaddr=127.0.0.1 port=1 user=u",
            no_env,
        )
        .unwrap();
        assert_eq!(
            c.hosts[0].0,
            HostAddr::Tcp {
                host: "db.example".into(),
                hostaddr: Some("127.0.0.1".parse().unwrap())
            }
        );
        assert_eq!(c.dbname, "u");
        assert_eq!(c.sslmode, SslMode::Prefer);
    }

    #[test]
    fn password_from_env_then_passfile() {
        let c = SourceConfig::from_dsn_with_env("host=h user=u", |k| {
            (k == "PGPASSWORD").then(|| "envpw".to_string())
        })
        .unwrap();
        assert_eq!(c.password.unwrap().expose(), "envpw");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "# comment\nother:*:*:*:no\nh:5432:*:u:pa\\:ss\n").unwrap();
        let c = SourceConfig::from_dsn_with_env(
            &format!("host=h user=u passfile={}", file.display()),
            no_env,
        )
        .unwrap();
        assert_eq!(c.password.unwrap().expose(), "pa:ss");
    }

    #[test]
    fn never_prints_the_password() {
        let c = SourceConfig::from_dsn_with_env("host=h user=u password=hunter2", no_env).unwrap();
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn rejects_bad_input() {
        for dsn in [
            "host=h user=u sslmode=sometimes",
            "host=h user",
            "host=h user='unterminated",
            "host=h user=u bogus_option=1",
        ] {
            let e = SourceConfig::from_dsn_with_env(dsn, no_env).unwrap_err();
            assert!(matches!(e, SourceError::Config(_)), "{dsn}: {e}");
        }
    }

    #[test]
    fn pgpass_wildcards_and_escapes() {
        let text = "*:*:db1:u:one\n*:5432:*:u:two\n";
        assert_eq!(
            pgpass_lookup(text, "h", 1, "db1", "u").as_deref(),
            Some("one")
        );
        assert_eq!(
            pgpass_lookup(text, "h", 5432, "x", "u").as_deref(),
            Some("two")
        );
        assert_eq!(pgpass_lookup(text, "h", 1, "x", "u"), None);
    }
}
