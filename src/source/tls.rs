//! TLS for the replication connection: rustls client configs per `sslmode`, and the
//! SSLRequest negotiation that precedes the TLS handshake in PostgreSQL's protocol.
//!
//! | sslmode     | encryption | chain check          | host name check |
//! |-------------|------------|----------------------|-----------------|
//! | prefer      | if offered | no                   | no              |
//! | require     | yes        | only with sslrootcert (libpq does the same) | no |
//! | verify-ca   | yes        | against sslrootcert  | no              |
//! | verify-full | yes        | sslrootcert, else webpki roots | yes   |
//!
//! "No check" still verifies the handshake signatures, so the session is encrypted to
//! whoever holds the presented certificate's key (libpq's `require` semantics).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::config::SslMode;
use super::error::SourceError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(target: &str, detail: impl Into<String>) -> SourceError {
    SourceError::Tls {
        target: target.to_string(),
        detail: detail.into(),
    }
}

/// Loads PEM certificates from `sslrootcert` (`system` means the webpki roots).
fn load_roots(path: &Path, target: &str) -> Result<RootCertStore, SourceError> {
    let mut roots = RootCertStore::empty();
    if path == Path::new("system") {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    }
    let pem = std::fs::read(path).map_err(|e| {
        tls_err(
            target,
            format!("cannot read sslrootcert {}: {e}", path.display()),
        )
    })?;
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| {
            tls_err(
                target,
                format!("sslrootcert {} is not valid PEM: {e}", path.display()),
            )
        })?;
        roots.add(cert).map_err(|e| {
            tls_err(
                target,
                format!(
                    "sslrootcert {} holds an unusable certificate: {e}",
                    path.display()
                ),
            )
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(tls_err(
            target,
            format!("sslrootcert {} contains no certificate", path.display()),
        ));
    }
    Ok(roots)
}

/// The rustls config for `mode`, or `None` for `disable`.
pub fn client_config(
    mode: SslMode,
    sslrootcert: Option<&Path>,
    target: &str,
) -> Result<Option<Arc<ClientConfig>>, SourceError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(target, e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, sslrootcert) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer, _) | (SslMode::Require, None) => Arc::new(AcceptAnyCert { provider }),
        (SslMode::VerifyCa | SslMode::Require, Some(path)) => Arc::new(ChainOnly {
            inner: webpki_verifier(load_roots(path, target)?, provider, target)?,
        }),
        (SslMode::VerifyCa, None) => {
            return Err(SourceError::Config(
                "sslmode=verify-ca needs sslrootcert=<CA file> (or sslrootcert=system)".into(),
            ))
        }
        (SslMode::VerifyFull, path) => {
            let roots = match path {
                Some(p) => load_roots(p, target)?,
                None => load_roots(Path::new("system"), target)?,
            };
            webpki_verifier(roots, provider, target)?
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    target: &str,
) -> Result<Arc<WebPkiServerVerifier>, SourceError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| tls_err(target, format!("cannot build certificate verifier: {e}")))
}

/// `require` without a CA: any certificate, but a valid handshake signature.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the webpki chain check, ignoring only a host name mismatch (webpki checks
/// the chain before the name, so a name error means the chain was fine).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS server name for `host` (an IP address or a DNS name).
pub fn server_name(host: &str, target: &str) -> Result<ServerName<'static>, SourceError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|e| {
        tls_err(
            target,
            format!("{host:?} is not a valid TLS server name: {e}"),
        )
    })
}

/// Sends SSLRequest and reads the one-byte answer: `true` if the server will do TLS.
pub async fn negotiate<S>(stream: &mut S, target: &str) -> Result<bool, SourceError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut buf);
    let io = |source| SourceError::Io {
        target: target.to_string(),
        source,
    };
    stream.write_all(&buf).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    // Read exactly one byte: anything after 'S' must come through TLS (CVE-2021-23222).
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SourceError::Closed {
                target: target.to_string(),
            }
        } else {
            io(e)
        }
    })?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(SourceError::protocol(
            target,
            format!("unexpected answer {other:#04x} to SSLRequest"),
        )),
    }
}

/// Describes a handshake failure so an operator knows which knob to turn.
pub fn describe_handshake_error(e: &std::io::Error, mode: SslMode) -> String {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned();
    match inner {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the server certificate is not valid for this host name (sslmode={mode}): \
             connect with the name in the certificate's subjectAltName, or use \
             sslmode=verify-ca ({e})"
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "the server certificate is not signed by a CA in sslrootcert (sslmode={mode}): \
             point sslrootcert at the CA that issued the server certificate ({e})"
        ),
        Some(rustls::Error::InvalidCertificate(ce)) => {
            format!("the server certificate was rejected (sslmode={mode}): {ce:?}")
        }
        _ => format!("TLS handshake failed (sslmode={mode}): {e}"),
    }
}
