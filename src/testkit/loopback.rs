//! Loopback networking for the testkit's daemons: free ports and a tiny HTTP GET.
//!
//! The daemons (etcd, Prometheus) only need "is it healthy / what does this query say" over
//! 127.0.0.1, so a blocking HTTP/1.0 request on a `TcpStream` is enough and keeps the
//! testkit synchronous and free of an HTTP client dependency. HTTP/1.0 with
//! `Connection: close` means the server answers with a plain body (never chunked) and
//! closes the connection, so reading to EOF yields the whole response.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use super::TestkitError;

/// `n` distinct free ports on 127.0.0.1.
///
/// All listeners stay bound until every port is chosen, so the ports differ from each other;
/// another process can still take one before the daemon binds it, which is why callers retry
/// a whole start with fresh ports when the daemon reports "address already in use".
pub(super) fn free_ports(n: usize) -> Result<Vec<u16>, TestkitError> {
    let io = |source| TestkitError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source,
    };
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
        ports.push(l.local_addr().map_err(io)?.port());
        held.push(l);
    }
    Ok(ports)
}

/// An HTTP answer: status code and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// `GET path` from `127.0.0.1:port` with `timeout` for connecting and for each read/write.
///
/// The timeout matters: a SIGSTOPped etcd member accepts the TCP connection (the kernel does)
/// but never answers, and a health poll must not hang on it. `path` must already be
/// percent-encoded.
pub(super) fn http_get(port: u16, path: &str, timeout: Duration) -> std::io::Result<HttpReply> {
    http_get_at(SocketAddr::from(([127, 0, 0, 1], port)), path, timeout)
}

/// `GET path` from `addr` (HTTP/1.0, whole body); any address, not only loopback.
pub fn http_get_at(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<HttpReply> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} from {addr}{path}: {:?}", truncate(&text)),
        )
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    Ok(HttpReply {
        status,
        body: body.to_string(),
    })
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters pass through).
pub(super) fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Polls `GET /-/ready` on `port` until 200 (Prometheus and Alertmanager both answer it
/// once they serve), failing early when `exited` reports the daemon gone. `what` names it
/// in errors; `log` gives its log for them.
pub(super) fn wait_http_ready(
    what: &str,
    port: u16,
    deadline: Duration,
    mut exited: impl FnMut() -> Option<String>,
    log: impl Fn() -> String,
) -> Result<(), super::TestkitError> {
    const LOG_TAIL: usize = 30;
    let until = std::time::Instant::now() + deadline;
    loop {
        if let Some(status) = exited() {
            return Err(super::TestkitError::NotReady {
                what: format!("{what} exited ({status}) before it was ready"),
                log: super::daemon::tail(&log(), LOG_TAIL),
            });
        }
        let last = match http_get(port, "/-/ready", Duration::from_secs(1)) {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => format!("HTTP {}: {}", r.status, r.body.trim()),
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() >= until {
            return Err(super::TestkitError::NotReady {
                what: format!(
                    "{what} at http://127.0.0.1:{port} not ready after {deadline:?}; last /-/ready answer: {last}"
                ),
                log: super::daemon::tail(&log(), LOG_TAIL),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on `port` as JSON; an answer that is not JSON is an error with the status
/// and body (APIs answer bad requests with a JSON body that says why).
pub(super) fn get_json(
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<serde_json::Value, super::TestkitError> {
    let what = format!("GET http://127.0.0.1:{port}{path}");
    let reply = http_get(port, path, timeout).map_err(|e| super::TestkitError::Failed {
        what: what.clone(),
        status: "no answer".to_string(),
        stderr: e.to_string(),
    })?;
    serde_json::from_str(&reply.body).map_err(|e| super::TestkitError::Failed {
        what,
        status: format!("HTTP {}", reply.status),
        stderr: format!("{e}: {}", reply.body.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode_query_value(r#"up{job="a b"} == 1"#),
            "up%7Bjob%3D%22a%20b%22%7D%20%3D%3D%201"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(6).unwrap();
        let mut q = p.clone();
        q.sort_unstable();
        q.dedup();
        assert_eq!(p.len(), q.len());
    }
}
