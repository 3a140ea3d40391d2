//! A walsender connection (`replication=database`): connect, TLS, authenticate, and run
//! simple queries (replication commands and plain SQL) with text results.
//!
//! The connection owns its socket and buffers; [`super::stream::ReplicationStream`] takes
//! it over for CopyBoth mode. Authentication supports trust, cleartext password, md5 and
//! SCRAM-SHA-256 (without channel binding: we answer `n`, "client does not support it",
//! which servers accept also when they offer SCRAM-SHA-256-PLUS).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::config::{describe_host, HostAddr, SourceConfig, SslMode};
use super::error::{classify, DbError, ErrorContext, SourceError};
use super::tls;
use super::wire::{self, AuthRequest, Frame};

/// Oldest server major version pgmesh supports.
pub const MIN_SERVER_MAJOR: u32 = 15;

trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// One row of a simple query: every value as text (or NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    columns: Arc<Vec<String>>,
    values: Vec<Option<String>>,
}

impl Row {
    /// The value of column `name`; `None` if NULL or no such column.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.get_idx(i)
    }

    /// The value at position `i`; `None` if NULL or out of range.
    #[must_use]
    pub fn get_idx(&self, i: usize) -> Option<&str> {
        self.values.get(i)?.as_deref()
    }

    #[must_use]
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.values.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// An authenticated replication connection, ready for commands.
pub struct ReplicationConnection {
    io: Pin<Box<dyn Transport>>,
    rbuf: BytesMut,
    /// When the last bytes were read from the socket: the arrival of every frame they
    /// carried (one clock read per read, not per frame).
    last_read: tokio::time::Instant,
    wbuf: BytesMut,
    params: HashMap<String, String>,
    server_version_num: u32,
    backend_pid: i32,
    target: String,
    user: String,
    tls: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("server_version_num", &self.server_version_num)
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects to the first reachable host of `cfg` in `replication=database` mode.
    ///
    /// Hosts are tried in order; only transient failures (refused, timeout, server
    /// starting up) move on to the next host.
    pub async fn connect(cfg: &SourceConfig) -> Result<ReplicationConnection, SourceError> {
        let mut last = None;
        for (host, port) in &cfg.hosts {
            let target = describe_host(host, *port);
            let attempt = tokio::time::timeout(
                cfg.connect_timeout,
                Self::connect_one(cfg, host, *port, &target),
            )
            .await;
            let err = match attempt {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => e,
                Err(_) => SourceError::Timeout {
                    target: target.clone(),
                    what: "connecting",
                    after: cfg.connect_timeout,
                },
            };
            tracing::debug!(%target, error = %err, "replication connection attempt failed");
            if !err.is_transient() {
                return Err(err);
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| SourceError::Config("no host to connect to".into())))
    }

    async fn connect_one(
        cfg: &SourceConfig,
        host: &HostAddr,
        port: u16,
        target: &str,
    ) -> Result<ReplicationConnection, SourceError> {
        let connect_err = |source| SourceError::Connect {
            target: target.to_string(),
            source,
        };
        let io: Pin<Box<dyn Transport>>;
        let mut tls_on = false;
        match host {
            HostAddr::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                io = Box::pin(UnixStream::connect(path).await.map_err(connect_err)?);
            }
            HostAddr::Tcp { host, hostaddr } => {
                let mut tcp = match hostaddr {
                    Some(ip) => TcpStream::connect((*ip, port)).await,
                    None => TcpStream::connect((host.as_str(), port)).await,
                }
                .map_err(connect_err)?;
                let _ = tcp.set_nodelay(true);
                match tls::client_config(cfg.sslmode, cfg.sslrootcert.as_deref(), target)? {
                    None => io = Box::pin(tcp),
                    Some(config) => {
                        if tls::negotiate(&mut tcp, target).await? {
                            let name = tls::server_name(host, target)?;
                            let connector = tokio_rustls::TlsConnector::from(config);
                            let stream = connector.connect(name, tcp).await.map_err(|e| {
                                SourceError::Tls {
                                    target: target.to_string(),
                                    detail: tls::describe_handshake_error(&e, cfg.sslmode),
                                }
                            })?;
                            tls_on = true;
                            io = Box::pin(stream);
                        } else if cfg.sslmode == SslMode::Prefer {
                            io = Box::pin(tcp);
                        } else {
                            return Err(SourceError::TlsNotSupported {
                                target: target.to_string(),
                                sslmode: cfg.sslmode.to_string(),
                            });
                        }
                    }
                }
            }
        }
        let mut conn = ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            last_read: tokio::time::Instant::now(),
            wbuf: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            server_version_num: 0,
            backend_pid: 0,
            target: target.to_string(),
            user: cfg.user.clone(),
            tls: tls_on,
        };
        conn.startup(cfg).await?;
        Ok(conn)
    }

    async fn startup(&mut self, cfg: &SourceConfig) -> Result<(), SourceError> {
        // Names and values are ours (settings pgmesh chooses); a space or backslash in a
        // value is escaped as libpq does for `options`.
        let options: Vec<String> = cfg
            .settings
            .iter()
            .map(|(k, v)| format!("-c {k}={}", v.replace('\\', "\\\\").replace(' ', "\\ ")))
            .collect();
        let options = options.join(" ");
        let mut params = vec![
            ("user", cfg.user.as_str()),
            ("database", cfg.dbname.as_str()),
            ("replication", "database"),
            ("application_name", cfg.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if !options.is_empty() {
            params.push(("options", options.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| SourceError::Config(format!("startup message: {e}")))?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        let target = self.target.clone();
        let password = || {
            cfg.password
                .as_ref()
                .map(|p| p.expose().as_bytes().to_vec())
                .ok_or_else(|| SourceError::PasswordMissing {
                    target: target.clone(),
                    user: cfg.user.clone(),
                })
        };
        loop {
            let f = self.recv().await?;
            match f.tag {
                b'R' => {
                    let req = wire::parse_auth(&f.body)
                        .map_err(|e| SourceError::protocol(&self.target, e.to_string()))?;
                    let bad =
                        |e: std::io::Error| SourceError::protocol(&self.target, e.to_string());
                    match req {
                        AuthRequest::Ok => {}
                        AuthRequest::Cleartext => {
                            let pw = password()?;
                            frontend::password_message(&pw, &mut self.wbuf).map_err(bad)?;
                            self.flush().await?;
                        }
                        AuthRequest::Md5 { salt } => {
                            let pw = password()?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                cfg.user.as_bytes(),
                                &pw,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                                .map_err(bad)?;
                            self.flush().await?;
                        }
                        AuthRequest::Sasl { mechanisms } => {
                            if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                                return Err(SourceError::UnsupportedAuth {
                                    target: self.target.clone(),
                                    method: format!("SASL ({})", mechanisms.join(", ")),
                                });
                            }
                            let s = ScramSha256::new(&password()?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut self.wbuf,
                            )
                            .map_err(bad)?;
                            scram = Some(s);
                            self.flush().await?;
                        }
                        AuthRequest::SaslContinue(data) => {
                            let s = scram.as_mut().ok_or_else(|| {
                                SourceError::protocol(
                                    &self.target,
                                    "SASL continue before SASL start",
                                )
                            })?;
                            s.update(&data).map_err(bad)?;
                            frontend::sasl_response(s.message(), &mut self.wbuf).map_err(bad)?;
                            self.flush().await?;
                        }
                        AuthRequest::SaslFinal(data) => {
                            let s = scram.as_mut().ok_or_else(|| {
                                SourceError::protocol(&self.target, "SASL final before SASL start")
                            })?;
                            s.finish(&data).map_err(|e| {
                                SourceError::protocol(
                                    &self.target,
                                    format!("server's SCRAM signature is invalid: {e}"),
                                )
                            })?;
                        }
                        AuthRequest::Other(code) => {
                            let method = match code {
                                2 => "Kerberos V5".to_string(),
                                6 => "SCM credential".to_string(),
                                7 | 8 => "GSSAPI".to_string(),
                                9 => "SSPI".to_string(),
                                c => format!("unknown method {c}"),
                            };
                            return Err(SourceError::UnsupportedAuth {
                                target: self.target.clone(),
                                method,
                            });
                        }
                    }
                }
                b'K' => {
                    self.backend_pid = wire::parse_backend_pid(&f.body)
                        .map_err(|e| SourceError::protocol(&self.target, e.to_string()))?;
                }
                b'E' => return Err(self.server_error(&f.body, &ErrorContext::default())),
                b'Z' => break,
                b'v' => {} // NegotiateProtocolVersion: we ask for 3.0 only, nothing to adjust.
                other => {
                    return Err(SourceError::protocol(
                        &self.target,
                        format!("unexpected message {:?} during startup", char::from(other)),
                    ))
                }
            }
        }

        self.server_version_num = server_version_num(&self.params).ok_or_else(|| {
            SourceError::protocol(&self.target, "server did not report server_version")
        })?;
        if self.server_major() < MIN_SERVER_MAJOR {
            return Err(SourceError::ServerTooOld {
                target: self.target.clone(),
                version: self
                    .params
                    .get("server_version")
                    .cloned()
                    .unwrap_or_else(|| self.server_version_num.to_string()),
            });
        }
        tracing::debug!(
            target = %self.target,
            server_version = self.server_version_num,
            pid = self.backend_pid,
            tls = self.tls,
            "replication connection ready"
        );
        Ok(())
    }

    /// `host:port` this connection talks to.
    #[must_use]
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The role we logged in as.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    /// E.g. 150020 for 15.20, 180006 for 18.6.
    #[must_use]
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// The server's major version (15, 16, …).
    #[must_use]
    pub fn server_major(&self) -> u32 {
        self.server_version_num / 10000
    }

    /// The walsender's process id (as in `pg_stat_replication.pid`).
    #[must_use]
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A ParameterStatus value the server reported (`server_version`, `TimeZone`, …).
    #[must_use]
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Runs `sql` (one or more statements, or a replication command) and returns all rows
    /// as text. A server error is classified (see [`SourceError`]).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, SourceError> {
        self.query_ctx(sql, &ErrorContext::default()).await
    }

    pub(crate) async fn query_ctx(
        &mut self,
        sql: &str,
        ctx: &ErrorContext<'_>,
    ) -> Result<Vec<Row>, SourceError> {
        tracing::trace!(target = %self.target, sql, "simple query");
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| SourceError::Config(format!("query text: {e}")))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut columns = Arc::new(Vec::new());
        let mut error = None;
        loop {
            let f = self.recv().await?;
            let bad = |e: wire::WireError| SourceError::protocol(&self.target, e.to_string());
            match f.tag {
                b'T' => columns = Arc::new(wire::parse_row_description(&f.body).map_err(bad)?),
                b'D' => rows.push(Row {
                    columns: columns.clone(),
                    values: wire::parse_data_row(&f.body).map_err(bad)?,
                }),
                b'C' | b'I' => {}
                b'E' => {
                    if error.is_none() {
                        error = Some(self.server_error(&f.body, ctx));
                    }
                }
                b'Z' => break,
                other => {
                    return Err(SourceError::protocol(
                        &self.target,
                        format!(
                            "unexpected message {:?} after a simple query",
                            char::from(other)
                        ),
                    ))
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Ends the session politely (Terminate) and closes the socket.
    pub async fn close(mut self) -> Result<(), SourceError> {
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    // ---- crate-internal plumbing for the stream ----

    pub(crate) fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes out everything buffered.
    ///
    /// Cancel-safe: bytes leave the write buffer only once written, so a caller that drops
    /// this future (e.g. in `tokio::select!`) never leaves half a message on the wire; the
    /// rest goes out with the next flush.
    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        while !self.wbuf.is_empty() {
            let n = self
                .io
                .write(&self.wbuf)
                .await
                .map_err(|e| self.io_err(e))?;
            if n == 0 {
                return Err(SourceError::Closed {
                    target: self.target.clone(),
                });
            }
            bytes::Buf::advance(&mut self.wbuf, n);
        }
        self.io.flush().await.map_err(|e| self.io_err(e))
    }

    /// Sends one CopyData message carrying `payload`.
    pub(crate) async fn send_copy_data(&mut self, payload: Bytes) -> Result<(), SourceError> {
        frontend::CopyData::new(payload)
            .map_err(|e| SourceError::protocol(&self.target, e.to_string()))?
            .write(&mut self.wbuf);
        self.flush().await
    }

    fn io_err(&self, e: std::io::Error) -> SourceError {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SourceError::Closed {
                target: self.target.clone(),
            },
            _ => SourceError::Io {
                target: self.target.clone(),
                source: e,
            },
        }
    }

    pub(crate) fn server_error(&self, body: &Bytes, ctx: &ErrorContext<'_>) -> SourceError {
        match wire::parse_error_fields(body) {
            Ok(db) => {
                let ctx = ErrorContext {
                    target: &self.target,
                    user: &self.user,
                    slot: ctx.slot,
                    plugin: ctx.plugin,
                };
                classify(db, &ctx)
            }
            Err(e) => SourceError::protocol(&self.target, e.to_string()),
        }
    }

    /// When the bytes of the last frame [`ReplicationConnection::recv`] returned were
    /// read from the socket.
    pub(crate) fn last_read(&self) -> tokio::time::Instant {
        self.last_read
    }

    /// Whether a whole CopyData frame is already read and waiting: the next `recv`
    /// returns it without I/O.
    pub(crate) fn frame_buffered(&self) -> bool {
        // Only CopyData: `recv` answers a notice or parameter status itself and may
        // then wait for the socket.
        self.rbuf.first() == Some(&b'd') && wire::frame_ready(&self.rbuf)
    }

    /// Reads whatever the socket holds right now, without waiting: whether anything
    /// (or the end of the stream) came. Nothing read means nothing arrived since the
    /// last frame, as far as the runtime's I/O driver has seen (another worker thread
    /// waits on it, so it notices within microseconds); a miss only ends a batch early.
    pub(crate) fn read_now(&mut self) -> Result<bool, SourceError> {
        use futures_util::FutureExt;
        match self.io.read_buf(&mut self.rbuf).now_or_never() {
            None => Ok(false),
            Some(Ok(n)) => {
                if n > 0 {
                    self.last_read = tokio::time::Instant::now();
                }
                // n == 0 is the end of the stream, which the next `recv` reports.
                Ok(true)
            }
            Some(Err(e)) => Err(self.io_err(e)),
        }
    }

    /// The next message that needs the caller's attention. ParameterStatus is recorded,
    /// NoticeResponse logged, NotificationResponse ignored. Cancel-safe: a partially read
    /// message stays buffered.
    pub(crate) async fn recv(&mut self) -> Result<Frame, SourceError> {
        loop {
            let frame = wire::take_frame(&mut self.rbuf)
                .map_err(|e| SourceError::protocol(&self.target, e.to_string()))?;
            let Some(f) = frame else {
                let n = self
                    .io
                    .read_buf(&mut self.rbuf)
                    .await
                    .map_err(|e| self.io_err(e))?;
                if n == 0 {
                    return Err(SourceError::Closed {
                        target: self.target.clone(),
                    });
                }
                self.last_read = tokio::time::Instant::now();
                continue;
            };
            match f.tag {
                b'S' => {
                    if let Ok((k, v)) = wire::parse_parameter_status(&f.body) {
                        self.params.insert(k, v);
                    }
                }
                b'N' => log_notice(&self.target, &f.body),
                b'A' => {}
                _ => return Ok(f),
            }
        }
    }
}

fn log_notice(target: &str, body: &Bytes) {
    match wire::parse_error_fields(body) {
        Ok(DbError {
            severity,
            code,
            message,
            detail,
            ..
        }) => {
            if severity == "WARNING" {
                tracing::warn!(%target, %code, %message, ?detail, "server warning");
            } else {
                tracing::info!(%target, %severity, %code, %message, ?detail, "server notice");
            }
        }
        Err(e) => tracing::warn!(%target, error = %e, "malformed notice from server"),
    }
}

/// `server_version_num` if reported, else derived from `server_version` ("15.20 (Debian…)",
/// "18.6", "16beta1").
fn server_version_num(params: &HashMap<String, String>) -> Option<u32> {
    if let Some(n) = params
        .get("server_version_num")
        .and_then(|v| v.parse().ok())
    {
        return Some(n);
    }
    let v = params.get("server_version")?;
    let digits = |s: &str| -> String { s.chars().take_while(char::is_ascii_digit).collect() };
    let major_text = digits(v);
    let major: u32 = major_text.parse().ok()?;
    let minor: u32 = v[major_text.len()..]
        .strip_prefix('.')
        .and_then(|rest| digits(rest).parse().ok())
        .unwrap_or(0);
    Some(major * 10000 + minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_parameter_status() {
        let p = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            server_version_num(&p("server_version_num", "180006")),
            Some(180006)
        );
        assert_eq!(
            server_version_num(&p("server_version", "15.20 (Debian 15.20-0+deb12u1)")),
            Some(150020)
        );
        assert_eq!(
            server_version_num(&p("server_version", "18.6")),
            Some(180006)
        );
        assert_eq!(
            server_version_num(&p("server_version", "16beta1")),
            Some(160000)
        );
        assert_eq!(server_version_num(&p("server_version", "")), None);
        assert_eq!(server_version_num(&HashMap::new()), None);
    }
}
