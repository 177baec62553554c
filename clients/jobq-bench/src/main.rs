//! `jobq-bench`: see `jobq_bench::run_cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    jobq_bench::run_cli(&[], jobq_bench::BenchArgs::parse())
}
