//! The `pgmesh` binary: parses the command line and runs the chosen command.

fn main() -> std::process::ExitCode {
    pgmesh::cli::main()
}
