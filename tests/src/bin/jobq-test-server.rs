//! The real `jobq-server`, built under this package so the end-to-end tests can
//! spawn it as a process (`env!("CARGO_BIN_EXE_jobq-test-server")`).

/// The shipped binary's allocator (see services/jobq-server/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jobq_server::run_cli()
}
