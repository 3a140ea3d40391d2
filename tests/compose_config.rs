//! `docker-compose.yml` cannot run here (no container engine), so it is checked for what
//! can be checked: Docker Compose itself (Debian's `docker-compose`, installed by
//! `scripts/install-control.sh`) accepts it, the pgmesh config it mounts passes pgmesh's
//! own validation, every pgmesh command it runs exists with the flags it passes, and the
//! ports and names agree between the compose file, the pgmesh config and HAProxy's config.

use std::collections::BTreeSet;
use std::process::Command;

use pgmesh::config::{Config, Env};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The compose file as Docker Compose resolves it (anchors merged), as JSON.
fn resolved() -> serde_json::Value {
    let out = Command::new("docker-compose")
        .current_dir(ROOT)
        .args(["-f", "docker-compose.yml", "config"])
        .output()
        .expect("docker-compose (Debian package docker-compose: scripts/install-control.sh)");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Debian's python3: PyYAML comes with the docker-compose package.
    let mut py = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), &out.stdout).unwrap();
    let json = py.wait_with_output().unwrap();
    assert!(json.status.success(), "PyYAML (comes with docker-compose)");
    serde_json::from_slice(&json.stdout).unwrap()
}

fn config() -> Config {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/compose/pgmesh.toml")).unwrap();
    Config::parse(
        &text,
        "deploy/compose/pgmesh.toml",
        &Env::from_pairs([("PGMESH_PG_PASSWORD", "secret")]),
    )
    .expect("the compose config passes pgmesh's validation")
}

fn pgmesh_commands(compose: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, s)| s["image"] == "pgmesh:latest")
        .map(|(name, s)| {
            let argv = s["command"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: command as a list"))
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            (name.clone(), argv)
        })
        .collect()
}

#[test]
fn docker_compose_accepts_the_file() {
    let c = resolved();
    let services: BTreeSet<&str> = c["services"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for s in [
        "etcd-a",
        "etcd-b",
        "etcd-w",
        "pg-a",
        "pg-b",
        "setup",
        "sidecar-a",
        "sidecar-b",
        "agent-a",
        "agent-b",
        "haproxy",
    ] {
        assert!(services.contains(s), "service {s} missing: {services:?}");
    }
}

#[test]
fn every_pgmesh_command_in_it_exists_with_its_flags() {
    let c = resolved();
    let commands = pgmesh_commands(&c);
    assert!(commands.len() >= 5, "{commands:?}");
    let cfg = config();
    for (service, argv) in commands {
        let sub = &argv[0];
        let help = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args([sub.as_str(), "--help"])
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "{service}: pgmesh {sub} --help failed"
        );
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        for flag in argv.iter().filter(|a| a.starts_with('-')) {
            assert!(
                help.contains(flag.as_str()),
                "{service}: pgmesh {sub} has no {flag}"
            );
        }
        // --node names a node of the mounted config.
        if let Some(i) = argv.iter().position(|a| a == "--node") {
            let node = &argv[i + 1];
            assert!(cfg.nodes.contains_key(node), "{service}: no node {node}");
            assert!(
                service.ends_with(&format!("-{node}")),
                "{service} runs node {node}"
            );
        }
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "-c" && w[1] == "/etc/pgmesh/pgmesh.toml"),
            "{service} reads the mounted config"
        );
    }
}

#[test]
fn ports_and_names_agree_between_compose_pgmesh_and_haproxy() {
    let c = resolved();
    let cfg = config();
    let ctl = cfg.control.as_ref().expect("[control]");
    let haproxy = std::fs::read_to_string(format!("{ROOT}/deploy/compose/haproxy.cfg")).unwrap();
    // HAProxy checks each agent on the port the agent listens on.
    for (service, argv) in pgmesh_commands(&c) {
        if argv[0] != "agent" {
            continue;
        }
        let i = argv.iter().position(|a| a == "--http-listen").unwrap();
        let port = argv[i + 1].rsplit(':').next().unwrap().to_string();
        assert!(
            haproxy.contains(&format!("check addr {service} port {port}")),
            "haproxy.cfg checks {service} on port {port}"
        );
    }
    // One HAProxy listener per endpoint, checking that endpoint, published by compose.
    let published: Vec<String> = c["services"]["haproxy"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["target"].to_string().trim_matches('"').to_string())
        .collect();
    for e in ctl.endpoints.keys() {
        assert!(
            haproxy.contains(&format!("listen {e}\n")),
            "no listener for {e}"
        );
        assert!(
            haproxy.contains(&format!("GET /owner/{e}\n")),
            "{e} is checked on /owner/{e}"
        );
        let section = &haproxy[haproxy.find(&format!("listen {e}\n")).unwrap()..];
        let bind = section
            .lines()
            .find_map(|l| l.trim().strip_prefix("bind :"))
            .unwrap();
        assert!(
            published.contains(&bind.to_string()),
            "{e} on {bind}: {published:?}"
        );
    }
    // Each primary and etcd member the config names is a compose service.
    let services = c["services"].as_object().unwrap();
    for n in cfg.nodes.values() {
        let dsn = n.dsn.expose();
        let host = dsn
            .split_whitespace()
            .find_map(|p| p.strip_prefix("host="))
            .unwrap();
        assert!(services.contains_key(host), "node {} at {host}", n.name);
    }
    for url in &ctl.etcd {
        let host = url.trim_start_matches("http://").split(':').next().unwrap();
        assert!(services.contains_key(host), "etcd member {host}");
    }
    // The agents probe each sidecar where it listens.
    let http = cfg.http.as_ref().expect("[http]");
    let sidecar = ctl.health.sidecar_url.as_deref().unwrap();
    assert_eq!(
        sidecar,
        format!("http://sidecar-{{node}}:{}", http.listen.port())
    );
}

/// The cross-region lab (`pgmesh lab --regions`, `pgmesh drill`) and the compose file
/// describe the same deployment: the same pgmesh commands per region, the same config
/// keys and control settings, endpoints, tables and application schema.
#[test]
fn the_netns_lab_runs_what_compose_runs() {
    use pgmesh::lab::regions::{
        APP_SCHEMA, ETCD_ELECTION_TIMEOUT_MS, ETCD_HEARTBEAT_MS, REGION_COMMANDS,
    };
    use pgmesh::lab::topology::Layout;
    let c = resolved();
    // Commands: each region runs `run` and `agent --http-listen` in both.
    let compose_cmds: BTreeSet<Vec<String>> = pgmesh_commands(&c)
        .into_iter()
        .filter(|(_, argv)| argv[0] != "setup")
        .map(|(_, argv)| {
            let mut v = vec![argv[0].clone()];
            v.extend(
                argv.iter()
                    .filter(|a| a.starts_with("--") && *a != "--node")
                    .cloned(),
            );
            v
        })
        .collect();
    let lab_cmds: BTreeSet<Vec<String>> = REGION_COMMANDS
        .iter()
        .map(|c| c.iter().map(|s| (*s).to_string()).collect())
        .collect();
    assert_eq!(compose_cmds, lab_cmds);
    // Config: the same keys everywhere, the same control settings, endpoints, tables.
    let lab_text = Layout::default().config("lab", 7760);
    let compose_text =
        std::fs::read_to_string(format!("{ROOT}/deploy/compose/pgmesh.toml")).unwrap();
    let lab: toml::Value = toml::from_str(&lab_text).unwrap();
    let compose: toml::Value = toml::from_str(&compose_text).unwrap();
    fn keys(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Some(t) = v.as_table() {
            for (k, v) in t {
                // Node names are data, not keys.
                let k = if prefix == "nodes" {
                    "NODE"
                } else {
                    k.as_str()
                };
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                keys(v, &path, out);
            }
        }
    }
    let (mut lk, mut ck) = (BTreeSet::new(), BTreeSet::new());
    keys(&lab, "", &mut lk);
    keys(&compose, "", &mut ck);
    assert_eq!(lk, ck, "config keys differ between the lab and compose");
    for key in [
        "lease_ttl",
        "safety_margin",
        "probe_interval",
        "failback",
        "failback_after",
    ] {
        assert_eq!(
            lab["control"][key], compose["control"][key],
            "control.{key}"
        );
    }
    // Both keep the etcd leader on the witness site's member, by its etcd name.
    assert_eq!(lab["control"]["etcd_leader"].as_str(), Some("witness"));
    let leader = compose["control"]["etcd_leader"].as_str().unwrap();
    let compose_yml = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
    assert!(
        compose_yml.contains(&format!("ETCD_NAME: {leader}")) && leader.ends_with("-w"),
        "compose's etcd_leader {leader:?} is not the witness's etcd member"
    );
    // Every etcd member runs the lab's raft timing (the lease's slack is sized for it).
    for member in ["etcd-a", "etcd-b", "etcd-w"] {
        let env = &c["services"][member]["environment"];
        for (var, want) in [
            ("ETCD_HEARTBEAT_INTERVAL", ETCD_HEARTBEAT_MS.to_string()),
            (
                "ETCD_ELECTION_TIMEOUT",
                ETCD_ELECTION_TIMEOUT_MS.to_string(),
            ),
            ("ETCD_PRE_VOTE", "true".to_string()),
        ] {
            assert_eq!(env[var].as_str(), Some(want.as_str()), "{member} {var}");
        }
    }
    assert_eq!(lab["endpoints"], compose["endpoints"]);
    assert_eq!(lab["replication"], compose["replication"]);
    // The application's schema: compose's init.sql creates what the lab creates.
    let init = std::fs::read_to_string(format!("{ROOT}/deploy/compose/init.sql")).unwrap();
    for stmt in APP_SCHEMA
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let head = stmt
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let in_init = init
            .split(';')
            .map(|s| {
                s.lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .any(|s| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .starts_with(&stmt.split_whitespace().collect::<Vec<_>>().join(" "))
            });
        assert!(in_init, "init.sql lacks the lab's `{head} ...`: {stmt}");
    }
}
