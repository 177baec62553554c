//! The `jobq` command line: enqueue, inspect and steer jobs on a jobq server;
//! `jobq up` runs a server and a local worker in one process.
//!
//! Data goes to stdout (a table, or JSON with `--json`), diagnostics to
//! stderr. Exit codes scripts can rely on are in [`exit`].

mod admin;
mod bench;
mod jobs;
pub mod output;
mod streams;
mod up;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jobq_client::{Client, ClientConfig, ClientError};

/// Exit codes of `jobq`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other failure (a server error, an I/O error...).
    pub const ERROR: u8 = 1;
    /// Bad usage: unknown flag, bad value, invalid payload, or the server
    /// refused the input (`INVALID_ARGUMENT`).
    pub const USAGE: u8 = 2;
    /// The job (or schedule) does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// The job's state does not allow that (`FAILED_PRECONDITION`), e.g.
    /// cancelling a finished job or deleting a running one.
    pub const CONFLICT: u8 = 4;
    /// The server could not be reached or did not answer in time.
    pub const UNAVAILABLE: u8 = 5;
    /// Missing or wrong token, or not allowed (`UNAUTHENTICATED`, `PERMISSION_DENIED`).
    pub const AUTH: u8 = 6;
    /// `wait` / `enqueue --wait`: the job ended dead or cancelled.
    pub const JOB_FAILED: u8 = 7;
    /// `wait` / `enqueue --wait`: the job did not finish within `--timeout`.
    pub const TIMEOUT: u8 = 8;
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code (see [`exit`]).
    pub code: u8,
    /// Message for stderr.
    pub message: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Bad usage (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        use tonic::Code;
        let code = match error.code() {
            Some(Code::NotFound) => exit::NOT_FOUND,
            Some(Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted) => exit::CONFLICT,
            Some(Code::InvalidArgument | Code::OutOfRange) => exit::USAGE,
            Some(Code::Unavailable | Code::DeadlineExceeded) => exit::UNAVAILABLE,
            Some(Code::Unauthenticated | Code::PermissionDenied) => exit::AUTH,
            None if matches!(error, ClientError::Config(_)) => exit::USAGE,
            _ => exit::ERROR,
        };
        let message = match error.code() {
            Some(Code::Unavailable) => format!("cannot reach the jobq server: {error}"),
            _ => error.to_string(),
        };
        Self { code, message }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self::new(exit::ERROR, error.to_string())
    }
}

/// What a command returns: its exit code, or a failure.
pub type CmdResult = Result<u8, Failure>;

/// `jobq`: the jobq command line.
#[derive(Debug, Parser)]
#[command(
    name = "jobq",
    version,
    about = "Enqueue, inspect and steer jobs on a jobq server",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage or invalid input, 3 not found, 4 conflict with the job's state, \
                  5 server unreachable, 6 not authorized, 7 job ended dead/cancelled (wait), 8 wait timed out."
)]
pub struct Cli {
    /// The jobq server.
    #[arg(long, global = true, env = "JOBQ_SERVER", default_value = jobq_client::DEFAULT_ENDPOINT)]
    pub server: String,

    /// Bearer token for the server.
    #[arg(long, global = true, env = "JOBQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// JSON output for scripts (one document, or one per line for streams).
    #[arg(long, global = true)]
    pub json: bool,

    /// Longest wait for one answer of the server.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `jobq` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enqueue a job; prints its id.
    Enqueue(jobs::EnqueueArgs),
    /// Show one job with its attempts.
    Get(jobs::IdArg),
    /// List jobs, newest first.
    List(jobs::ListArgs),
    /// Cancel a job (a running one stops at its worker's next heartbeat).
    Cancel(jobs::CancelArgs),
    /// Queue a finished (dead, cancelled or succeeded) job again.
    Retry(jobs::IdArg),
    /// Delete a job that is not running.
    Delete(jobs::IdArg),
    /// Wait until jobs are finished; exit 0 if all succeeded, 7 if one did not.
    Wait(streams::WaitArgs),
    /// Job counts by queue and state.
    Stats(admin::StatsArgs),
    /// Stream job events as they happen.
    Watch(streams::WatchArgs),
    /// Print a job's log; -f follows it until the job finishes.
    Logs(streams::LogsArgs),
    /// The dead-letter queue: list, requeue, purge.
    #[command(subcommand, name = "dead-letter")]
    DeadLetter(admin::DeadLetterCommand),
    /// Queues: list, pause, resume, limits.
    #[command(subcommand)]
    Queues(admin::QueuesCommand),
    /// Workers the server has heard from.
    Workers(admin::WorkersArgs),
    /// Cron schedules: list, put, pause, resume, delete.
    #[command(subcommand)]
    Schedules(admin::SchedulesCommand),
    /// Run a server and a worker with the built-in job types in this process.
    Up(Box<up::UpArgs>),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// The context every command gets.
pub struct Ctx {
    /// Print JSON.
    pub json: bool,
    /// The global flags, for commands that connect differently.
    pub server: String,
    token: Option<String>,
    request_timeout: Duration,
}

impl Ctx {
    /// A client of the server named by the flags.
    pub fn client(&self) -> Result<Client, Failure> {
        let mut config =
            ClientConfig::builder(self.server.clone()).request_timeout(self.request_timeout);
        if let Some(token) = &self.token {
            config = config.token(token.clone());
        }
        Ok(Client::connect(config.build()?)?)
    }
}

/// Prints JSON (pretty for one document).
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Runs the `jobq` binary and returns its exit code.
pub fn run_cli() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jobq: cannot start the async runtime: {error}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let ctx = Ctx {
        json: cli.json,
        server: cli.server,
        token: cli.token,
        request_timeout: cli.request_timeout,
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Enqueue(args) => jobs::enqueue(&ctx, args).await,
            Command::Get(args) => jobs::get(&ctx, args).await,
            Command::List(args) => jobs::list(&ctx, args).await,
            Command::Cancel(args) => jobs::cancel(&ctx, args).await,
            Command::Retry(args) => jobs::retry(&ctx, args).await,
            Command::Delete(args) => jobs::delete(&ctx, args).await,
            Command::Wait(args) => streams::wait(&ctx, args).await,
            Command::Stats(args) => admin::stats(&ctx, args).await,
            Command::Watch(args) => streams::watch(&ctx, args).await,
            Command::Logs(args) => streams::logs(&ctx, args).await,
            Command::DeadLetter(command) => admin::dead_letter(&ctx, command).await,
            Command::Queues(command) => admin::queues(&ctx, command).await,
            Command::Workers(args) => admin::workers(&ctx, args).await,
            Command::Schedules(command) => admin::schedules(&ctx, command).await,
            Command::Up(args) => up::up(*args).await,
            Command::Bench(command) => bench::bench(&ctx, command).await,
        }
    });
    // Streams may leave tasks behind (e.g. a pending watch): do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("jobq: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
