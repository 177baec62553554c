//! `jobq-worker`: see `jobq_worker::run_cli`.

/// The same allocator as the server (see services/jobq-server/src/main.rs):
/// a worker leasing and reporting many short jobs allocates much the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jobq_worker::run_cli()
}
