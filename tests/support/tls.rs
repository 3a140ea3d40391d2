//! A throwaway CA and server certificate (made with the openssl CLI), and turning TLS on
//! in a test cluster with them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgmesh::testkit::Cluster;

/// The name and address the server certificate is valid for.
pub const CERT_HOST: &str = "db.pgmesh.test";

/// A CA (`ca.crt`) and a server certificate for [`CERT_HOST`] and 127.0.0.1 signed by it
/// (`server.crt`, `server.key`), in a temporary directory.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// A new CA with subject `ca_name` (e.g. `/CN=pgmesh test CA`) and its server cert.
    pub fn new(ca_name: &str) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        make_certs(dir.path(), ca_name);
        Certs { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate, for `sslrootcert`.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}

/// Installs `certs`' server certificate in `c` and turns `ssl` on. With `tls_only`, TCP
/// connections without TLS find no pg_hba.conf entry (`hostssl` lines only; `extra_hba`
/// lines go first).
pub fn enable_tls(c: &Cluster, certs: &Certs, tls_only: bool, extra_hba: &[&str]) {
    for f in ["server.crt", "server.key"] {
        c.write_file(f, &std::fs::read(certs.dir().join(f)).unwrap(), 0o600)
            .unwrap();
    }
    if tls_only {
        let mut hba: String = extra_hba.iter().map(|l| format!("{l}\n")).collect();
        hba.push_str(
            "local all all trust\nlocal replication all trust\n\
             hostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
        );
        c.write_file("pg_hba.conf", hba.as_bytes(), 0o600).unwrap();
    }
    c.psql("ALTER SYSTEM SET ssl = on").unwrap();
    c.reload().unwrap();
    // The postmaster loads pg_hba.conf in the same reload, before it starts a backend
    // that sees ssl = on.
    let start = Instant::now();
    while c.psql("SHOW ssl").unwrap() != "on" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for ssl = on"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA and a server certificate for `db.pgmesh.test` and 127.0.0.1, made with openssl.
pub fn make_certs(dir: &Path, ca_name: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:{CERT_HOST},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        ca_name,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req", "-nodes"];
    csr.extend(ec);
    let subj = format!("/CN={CERT_HOST}");
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &subj,
    ]);
    run(&csr);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
