//! Command line of the `pgmesh` binary.

use clap::Parser;
use std::process::ExitCode;

mod setup;
mod teardown;

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
    /// Check every node (--check) and create pgmesh's schema, publication, triggers,
    /// origins and slots.
    Setup(setup::SetupArgs),
    /// Remove everything setup created, keeping user data.
    Teardown(teardown::TeardownArgs),
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("pgmesh {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Setup(args) => block_on(setup::run(args)),
        Command::Teardown(args) => block_on(teardown::run(args)),
    }
}

/// Runs an async command on a fresh runtime; an unexpected error exits 1.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(fut).unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}
