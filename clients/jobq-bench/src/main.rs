//! `jobq-bench`: see `jobq_bench::run_cli`.

use clap::Parser;

/// The bench's worker processes run the SDK as a worker binary would (see
/// services/jobq-server/src/main.rs for why mimalloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jobq_bench::run_cli(&[], jobq_bench::BenchArgs::parse())
}
