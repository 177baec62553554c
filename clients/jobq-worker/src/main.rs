//! `jobq-worker`: see `jobq_worker::run_cli`.

fn main() -> std::process::ExitCode {
    jobq_worker::run_cli()
}
