//! `pgmesh tail` command-line options.

use std::path::PathBuf;

use crate::Lsn;

/// Print each committed transaction from a logical replication slot as one JSON line.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Connection string of the server to read from (key=value or postgres:// URL).
    /// A password is better given by PGPASSWORD or --password-file than here.
    #[arg(long, env = "PGMESH_DSN")]
    pub dsn: String,

    /// File holding the password (first line), instead of one in the DSN.
    #[arg(long)]
    pub password_file: Option<PathBuf>,

    /// Logical replication slot to stream from.
    #[arg(long)]
    pub slot: String,

    /// Publication(s) to decode, comma-separated (pgoutput; wal2json streams every table).
    #[arg(long, value_delimiter = ',')]
    pub publication: Vec<String>,

    /// The slot's output plugin: `pgoutput`, or `wal2json` (format 2; the same output).
    #[arg(long, value_enum, default_value_t = Plugin::Pgoutput)]
    pub plugin: Plugin,

    /// Create the slot (with --plugin) if it does not exist.
    #[arg(long)]
    pub create_slot: bool,

    /// Start at this LSN instead of the slot's confirmed position (the server never goes
    /// back before the confirmed position).
    #[arg(long)]
    pub from: Option<Lsn>,

    /// Stop (and acknowledge) once a transaction ending at or after this LSN is printed,
    /// or when the server reports it has sent WAL up to this LSN.
    #[arg(long)]
    pub endpos: Option<Lsn>,

    /// `any` prints every transaction; `none` drops those that carry a replication origin
    /// (server-side on PostgreSQL 16+, client-side on 15).
    #[arg(long, value_enum, default_value_t = OriginFilter::Any)]
    pub origin: OriginFilter,

    /// `json` prints one line per transaction; `none` only decodes (for measuring).
    #[arg(long, value_enum, default_value_t = Output::Json)]
    pub output: Output,

    /// Highest pgoutput protocol version to ask for (default: the server's highest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub proto_version: Option<u32>,

    /// Ask for binary column values (shown as hex).
    #[arg(long)]
    pub binary: bool,

    /// Memory held for one transaction before it spills to a temp file.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_txn_memory: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plugin {
    Pgoutput,
    Wal2json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OriginFilter {
    Any,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    None,
}
