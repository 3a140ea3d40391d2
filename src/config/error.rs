//! Errors from loading and validating the config. Each names the file and the key, and
//! says what to write instead.

use std::path::PathBuf;

/// Why a config could not be loaded. Always the operator's to fix (never transient).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type or a missing key (serde's message, with
    /// line and column, plus an example for the key).
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A value that parsed but makes no sense.
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    /// An environment variable override that does not name a known key or does not parse.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A command-line override that does not parse.
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
    #[error("cannot read password file {path} for node {node}: {source}")]
    PasswordFile {
        node: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The DSN does not parse as a libpq key=value string or URL. The message never
    /// contains the DSN itself (it may hold a password).
    #[error("node {node}: invalid dsn: {message}")]
    Dsn { node: String, message: String },
}
