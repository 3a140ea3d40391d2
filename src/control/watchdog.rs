//! The watchdog: a process apart from the agent (`pgmesh watchdog`, started by it) that
//! fences the primary when the agent stops telling it "the region may write until T"
//! before T passes — the agent frozen (SIGSTOP), deadlocked, or killed. A frozen agent
//! cannot fence anything itself; Patroni solves the same with the kernel watchdog and a
//! reboot, pgmesh only needs the database fenced.
//!
//! Protocol on the watchdog's stdin, one line per agent tick:
//! - `arm <ms> <why>`: the region may write for `ms` more milliseconds (the agent's lease
//!   deadline, measured by the agent just before writing the line);
//! - `disarm <why>`: the region may not write (the agent fenced it already).
//!
//! The watchdog keeps its own deadline by its own monotonic clock. When it passes with no
//! newer `arm`, it fences (and re-fences every second while still disarmed by silence).
//! When stdin closes (the agent died), it fences at the last deadline, or at once when
//! there was none, then exits.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use super::db::Conn;
use super::fence::{fence, FencePolicy, FenceRequest};

/// The agent's end: writes heartbeats, restarts the watchdog when it died.
pub struct Heartbeat {
    args: Vec<String>,
    child: Option<(Child, ChildStdin)>,
}

impl Heartbeat {
    /// Starts `program args…` (the pgmesh binary with `watchdog -c FILE --node NAME`).
    pub fn start(program: std::path::PathBuf, args: Vec<String>) -> Heartbeat {
        let mut hb = Heartbeat {
            args: std::iter::once(program.display().to_string())
                .chain(args)
                .collect(),
            child: None,
        };
        hb.spawn();
        hb
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.args[0]);
        cmd.args(&self.args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C or a signal to the agent's group must not
            // take the watchdog down with the agent.
            .process_group(0)
            .kill_on_drop(false);
        match cmd.spawn() {
            Ok(mut child) => match child.stdin.take() {
                Some(stdin) => {
                    tracing::info!(pid = child.id(), "watchdog started");
                    self.child = Some((child, stdin));
                }
                None => tracing::error!("watchdog started without stdin"),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the watchdog; the region is unguarded while the agent is frozen")
            }
        }
    }

    /// Tells the watchdog until when the region may write (`None`: it may not).
    pub async fn beat(&mut self, until: Option<Instant>, why: &str) {
        if let Some((child, _)) = &mut self.child {
            if !matches!(child.try_wait(), Ok(None)) {
                tracing::error!("the watchdog exited; starting it again");
                self.child = None;
            }
        }
        if self.child.is_none() {
            self.spawn();
        }
        let line = match until {
            Some(t) => {
                let ms = t.saturating_duration_since(Instant::now()).as_millis();
                format!("arm {ms} {}\n", why.replace('\n', " "))
            }
            None => format!("disarm {}\n", why.replace('\n', " ")),
        };
        if let Some((_, stdin)) = &mut self.child {
            let write =
                tokio::time::timeout(Duration::from_millis(200), stdin.write_all(line.as_bytes()));
            if !matches!(write.await, Ok(Ok(()))) {
                tracing::error!("cannot reach the watchdog; starting it again");
                if let Some((mut c, _)) = self.child.take() {
                    let _ = c.start_kill();
                }
            }
        }
    }
}

/// One line from the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    Arm(Duration),
    Disarm,
}

/// Parses a heartbeat line; `None` for anything else (ignored, never a crash).
#[must_use]
pub fn parse_beat(line: &str) -> Option<Beat> {
    let mut words = line.split_whitespace();
    match words.next()? {
        "arm" => words
            .next()?
            .parse()
            .ok()
            .map(|ms| Beat::Arm(Duration::from_millis(ms))),
        "disarm" => Some(Beat::Disarm),
        _ => None,
    }
}

/// The watchdog process's loop; returns when the agent is gone and the primary fenced.
pub async fn run(local: Conn, node: &str, policy: FencePolicy) {
    let mut local = local;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut deadline: Option<Instant> = None;
    // Keep a session open: at the deadline there must be no connect to wait for.
    let _ = local.get().await;
    loop {
        let sleep_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => match parse_beat(&l) {
                    Some(Beat::Arm(d)) => deadline = Some(Instant::now() + d),
                    Some(Beat::Disarm) => deadline = None,
                    None => tracing::debug!(line = %l, "watchdog ignores an unknown line"),
                },
                Ok(None) | Err(_) => {
                    if let Some(d) = deadline {
                        tokio::time::sleep_until(d.into()).await;
                    }
                    fence_until_done(&mut local, node, &policy, "watchdog: the agent exited").await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(sleep_until.into()) => {
                tracing::error!(node, "watchdog: no heartbeat from the agent before its lease deadline; fencing");
                fence_until_done(&mut local, node, &policy, "watchdog: the agent missed its lease deadline (frozen or stuck)").await;
                deadline = None;
            }
        }
        if deadline.is_none() {
            // Keep the session warm while disarmed (cheap, and it notices a restart).
            let _ = local.get().await;
        }
    }
}

/// Fences, retrying for a while when the primary is unreachable.
async fn fence_until_done(local: &mut Conn, node: &str, policy: &FencePolicy, reason: &str) {
    let by = format!("watchdog {node}");
    for attempt in 0..50 {
        if let Some(client) = local.get().await {
            match fence(
                client,
                &FenceRequest {
                    reason,
                    epoch: 0,
                    by: &by,
                    policy,
                },
            )
            .await
            {
                Ok(r) => {
                    tracing::warn!(
                        node,
                        ended = r.terminated.len(),
                        was_fenced = r.was_fenced,
                        "watchdog fenced the primary: {reason}"
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(node, attempt, error = %e, "watchdog cannot fence yet");
                    local.drop_session();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::error!(
        node,
        "watchdog gave up fencing after 50 attempts: the primary is unreachable"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_parse_and_garbage_is_ignored() {
        assert_eq!(
            parse_beat("arm 1500 owns app-eu"),
            Some(Beat::Arm(Duration::from_millis(1500)))
        );
        assert_eq!(parse_beat("disarm no live lease"), Some(Beat::Disarm));
        assert_eq!(parse_beat("arm x"), None);
        assert_eq!(parse_beat(""), None);
        assert_eq!(parse_beat("reboot"), None);
    }
}
