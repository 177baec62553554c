//! `jobq-server`: see `jobq_server::run_cli`.

fn main() -> std::process::ExitCode {
    jobq_server::run_cli()
}
