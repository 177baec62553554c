//! The real `jobq` CLI, built under this package so the end-to-end tests can
//! run it as a process (`env!("CARGO_BIN_EXE_jobq-test-cli")`).

/// The shipped binary's allocator (see services/jobq-server/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jobq_cli::run_cli()
}
