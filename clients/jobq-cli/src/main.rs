//! `jobq`: see `jobq_cli::run_cli`.

/// `jobq up` runs the server in this process: the server's allocator (see
/// services/jobq-server/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jobq_cli::run_cli()
}
