//! The real `jobq-worker`, built under this package so the end-to-end tests can
//! spawn it as a process (`env!("CARGO_BIN_EXE_jobq-test-worker")`).

/// The shipped binary's allocator (see services/jobq-server/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jobq_worker::run_cli()
}
