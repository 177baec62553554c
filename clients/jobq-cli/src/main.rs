//! `jobq`: see `jobq_cli::run_cli`.

fn main() -> std::process::ExitCode {
    jobq_cli::run_cli()
}
