//! The real `jobq` CLI, built under this package so the end-to-end tests can
//! run it as a process (`env!("CARGO_BIN_EXE_jobq-test-cli")`).

fn main() -> std::process::ExitCode {
    jobq_cli::run_cli()
}
