//! Network namespaces for the cross-region lab: one per site (region a, region b, the
//! witness, the clients), joined by veth pairs, so that a partition cuts a real network
//! path and each site's programs bind their own addresses. Driven through `ip(8)` from
//! iproute2 (the crate has no unsafe code for the syscalls); needs root.
//!
//! Every namespace is named with a prefix that says which lab made it, and removed when
//! its [`Netns`] drops; [`remove_leftovers`] deletes what a crashed lab left behind, so a
//! second start cleans the first's remains.

use std::process::{Command, Output};

/// Why a namespace operation failed; the message carries `ip`'s own words.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    #[error("cannot run ip(8) (iproute2): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`ip {args}` failed: {stderr} (the lab needs root and iproute2)")]
    Failed { args: String, stderr: String },
    #[error("namespace name {0:?}: use 1-15 letters, digits, - or _ (interface names are built from it)")]
    BadName(String),
}

fn ip(args: &[&str]) -> Result<Output, NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::Spawn)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetnsError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A network namespace with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (replacing a leftover of the same name).
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        let ok = !name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(NetnsError::BadName(name.to_string()));
        }
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to run inside the namespace (`ip netns exec NAME program ...`).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Joins this namespace and `other` with a veth pair: `addr` (CIDR, e.g.
    /// `10.201.1.1/30`) here, `other_addr` there; both ends up.
    pub fn connect(&self, addr: &str, other: &Netns, other_addr: &str) -> Result<(), NetnsError> {
        let here = format!("v-{}", other.name);
        let there = format!("v-{}", self.name);
        // Interface names are at most 15 bytes: the namespace names are kept short.
        let here = &here[..here.len().min(15)];
        let there = &there[..there.len().min(15)];
        ip(&[
            "-n",
            &self.name,
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            &other.name,
        ])?;
        ip(&["-n", &self.name, "addr", "add", addr, "dev", here])?;
        ip(&["-n", &other.name, "addr", "add", other_addr, "dev", there])?;
        ip(&["-n", &self.name, "link", "set", here, "up"])?;
        ip(&["-n", &other.name, "link", "set", there, "up"])?;
        Ok(())
    }
}

impl Netns {
    /// Joins this namespace to the host's (the lab process's) with a veth pair:
    /// `addr` here, `host_addr` on the host's end (named `host_if`).
    pub fn connect_host(
        &self,
        addr: &str,
        host_if: &str,
        host_addr: &str,
    ) -> Result<(), NetnsError> {
        let _ = ip(&["link", "del", host_if]);
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "uplink", "netns", &self.name,
        ])?;
        ip(&["addr", "add", host_addr, "dev", host_if])?;
        ip(&["-n", &self.name, "addr", "add", addr, "dev", "uplink"])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&["-n", &self.name, "link", "set", "uplink", "up"])?;
        Ok(())
    }

    /// Adds a route inside the namespace (`ip route add DEST via GATEWAY`).
    pub fn route(&self, dest: &str, via: &str) -> Result<(), NetnsError> {
        ip(&["-n", &self.name, "route", "add", dest, "via", via])?;
        Ok(())
    }
}

/// Kills every process still inside namespace `name` (a namespace outlives its deletion
/// while a process holds it, and so would its servers' ports and files).
fn kill_inside(name: &str) {
    if let Ok(out) = ip(&["netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_inside(&self.name);
        // Deleting the namespace deletes its veth ends (and their peers) with it.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Deletes every namespace whose name starts with `prefix` (a crashed lab's); returns
/// their names.
pub fn remove_leftovers(prefix: &str) -> Result<Vec<String>, NetnsError> {
    let out = ip(&["netns", "list"])?;
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `NAME` or `NAME (id: 3)`.
        let name = line.split_whitespace().next().unwrap_or("");
        if !prefix.is_empty() && name.starts_with(prefix) {
            kill_inside(name);
            ip(&["netns", "del", name])?;
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str) -> bool {
        ip(&["netns", "list"]).is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
        })
    }

    #[test]
    fn names_that_cannot_become_interfaces_are_refused() {
        assert!(matches!(
            Netns::create("a-name-that-is-too-long"),
            Err(NetnsError::BadName(_))
        ));
        assert!(matches!(Netns::create("a b"), Err(NetnsError::BadName(_))));
    }

    #[test]
    fn two_sites_talk_over_their_link_and_leave_nothing_behind() {
        let prefix = format!("pmt{}", std::process::id() % 100_000);
        let (na, nb) = (format!("{prefix}a"), format!("{prefix}b"));
        let a = match Netns::create(&na) {
            Ok(a) => a,
            Err(NetnsError::Failed { stderr, .. })
                if stderr.contains("Operation not permitted") =>
            {
                eprintln!("skipped: network namespaces need root here ({stderr})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let b = Netns::create(&nb).unwrap();
        a.connect("10.201.9.1/30", &b, "10.201.9.2/30").unwrap();
        // A TCP listener in b answers a client in a, across the veth pair.
        let server = b
            .command("python3")
            .args([
                "-c",
                "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('10.201.9.2', 7001)); s.listen(); print('up', flush=True); c,_=s.accept(); c.sendall(b'hello from b')",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = server;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "up");
        let got = a
            .command("python3")
            .args([
                "-c",
                "import socket; c=socket.create_connection(('10.201.9.2', 7001), timeout=5); print(c.recv(100).decode())",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello from b");
        let _ = server.wait();
        // A lab that crashed leaves its namespaces; the next start removes them.
        std::mem::forget(a);
        assert!(listed(&na));
        let removed = remove_leftovers(&prefix).unwrap();
        assert!(removed.contains(&na), "{removed:?}");
        assert!(!listed(&na));
        drop(b);
        assert!(!listed(&nb));
    }
}
