//! Command line of the `pgmesh` binary.

use clap::Parser;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "pgmesh",
    version,
    about = "Active-active replication for PostgreSQL 15-18"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the version and exit.
    Version,
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("pgmesh {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
