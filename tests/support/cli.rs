//! Running the `pgmesh` binary as an operator would: a config for two clusters, one-shot
//! commands, sidecars for both nodes.

use pgmesh::testkit::Cluster;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// `pgmesh.toml` for nodes a and b with `tables` (TOML list items) and `extra` sections.
pub fn write_config_with(
    dir: &Path,
    a: &Cluster,
    b: &Cluster,
    tables: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join("pgmesh.toml");
    std::fs::write(
        &path,
        format!(
            "[nodes.a]\ndsn = \"{}\"\n[nodes.b]\ndsn = \"{}\"\n[replication]\ntables = [{tables}]\n{extra}",
            a.dsn(),
            b.dsn()
        ),
    )
    .unwrap();
    path
}

pub fn write_config(dir: &Path, a: &Cluster, b: &Cluster, tables: &str) -> PathBuf {
    write_config_with(dir, a, b, tables, "")
}

pub fn pgmesh(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `pgmesh run` for both nodes; killed on drop.
pub struct Sidecars(Vec<Child>);

impl Sidecars {
    pub fn start(config: &Path) -> Sidecars {
        let run = |node: &str| {
            Command::new(env!("CARGO_BIN_EXE_pgmesh"))
                .args(["run", "--node", node, "-c"])
                .arg(config)
                .env("RUST_LOG", "pgmesh=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        };
        Sidecars(vec![run("a"), run("b")])
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
