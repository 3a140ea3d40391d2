//! Usage and config errors under `--json`: a script that reads stdout gets JSON it can
//! parse (`{"ok": false, "error": …}`) and exit code 2, not clap's text on stderr.

use std::process::Command;

fn pgmesh(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(args)
        .env_remove("PGMESH_CONFIG")
        .output()
        .expect("run pgmesh");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_error(stdout: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"));
    assert_eq!(v["ok"], false, "{v}");
    v["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn an_unknown_flag_under_json_is_a_json_error_with_exit_2() {
    let (code, stdout, _) = pgmesh(&["status", "--json", "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(json_error(&stdout).contains("--no-such-flag"), "{stdout}");
    // Without --json, clap's own message on stderr, nothing on stdout.
    let (code, stdout, stderr) = pgmesh(&["status", "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(
        stdout.is_empty() && stderr.contains("--no-such-flag"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_under_json_is_a_json_error_with_exit_2() {
    for cmd in ["setup", "verify", "sequences", "status", "conflicts"] {
        let (code, stdout, _) = pgmesh(&[cmd, "--json", "-c", "/nonexistent/pgmesh.toml"]);
        assert_eq!(code, Some(2), "{cmd}: {stdout}");
        assert!(
            json_error(&stdout).contains("/nonexistent/pgmesh.toml"),
            "{cmd}: {stdout}"
        );
    }
}

#[test]
fn help_and_version_still_print_and_exit_0() {
    let (code, stdout, _) = pgmesh(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("pgmesh "), "{stdout}");
    let (code, stdout, _) = pgmesh(&["status", "--json", "--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("Usage"), "{stdout}");
}

#[test]
fn tail_with_pgoutput_needs_a_publication() {
    let (code, _, stderr) = pgmesh(&[
        "tail",
        "--dsn",
        "host=127.0.0.1 port=1 user=x dbname=x",
        "--slot",
        "s",
    ]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--publication is required"), "{stderr}");
}
