//! The `jobq` command line: enqueue, inspect and steer jobs on a jobq server;
//! `jobq up` runs a server and a local worker in one process.
//!
//! Data goes to stdout (a table, or JSON with `--json`), diagnostics to
//! stderr. Exit codes scripts can rely on are in [`exit`].

mod admin;
mod jobs;
pub mod output;
mod streams;
mod up;

use std::process::ExitCode;
use std::time::Duration;
use tracing::Instrument;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// The server could not be reached, or did not answer: the message is
    /// to name the address tried (see [`Failure::at_server`]).
    server_trouble: Option<ServerTrouble>,
}

/// Why a call never got an answer from the server.
#[derive(Debug, Clone)]
enum ServerTrouble {
    /// No connection (refused, unknown host, shutting down...): the details.
    Unreachable(String),
    /// Connected, but no answer within the request timeout.
    Silent(Duration),
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            server_trouble: None,
        }
    }

    /// Bad usage (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    /// The failure with the address of the server in its message, when the
    /// server could not be reached or did not answer.
    pub fn at_server(mut self, endpoint: &str) -> Self {
        match self.server_trouble.take() {
            Some(ServerTrouble::Unreachable(detail)) => {
                self.message = format!("cannot reach the jobq server at {endpoint}: {detail}");
            }
            Some(ServerTrouble::Silent(limit)) => {
                self.message = format!(
                    "no answer from the jobq server at {endpoint} within {}",
                    humantime::format_duration(limit)
                );
            }
            None => {}
        }
        self
    }
}

/// A status's message with the errors under it (a transport error says
/// little by itself: "tcp connect error").
pub(crate) fn status_detail(status: &tonic::Status) -> String {
    let mut detail = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&text);
        }
        source = cause.source();
    }
    if detail.is_empty() {
        detail = status.code().description().to_owned();
    }
    detail
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
        let server_trouble = match &error {
            ClientError::Status(status) if status.code() == Code::Unavailable => {
                Some(ServerTrouble::Unreachable(status_detail(status)))
            }
            ClientError::Timeout(limit) => Some(ServerTrouble::Silent(*limit)),
            _ => None,
        };
        let message = match &server_trouble {
            Some(ServerTrouble::Unreachable(detail)) => {
                format!("cannot reach the jobq server: {detail}")
            }
            _ => error.to_string(),
        };
        Self {
            code,
            message,
            server_trouble,
        }
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
    /// The client flags given before the command.
    #[command(flatten)]
    pub leading: LeadingOptions,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command reaches the server and prints its answer. Every
/// command but `jobq up` (which runs its own server) takes these, after the
/// command or (see [`LeadingOptions`]) before it.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
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

    /// TLS for an https:// server.
    #[command(flatten)]
    pub tls: jobq_worker::ClientTlsArgs,
}

impl ClientOptions {
    /// These options, with those given before the command where the same
    /// one was not given after it. `given` holds the command's matches (for
    /// where each value came from: a flag after the command beats one
    /// before it, which beats the environment and the defaults).
    fn merged(mut self, leading: LeadingOptions, given: Option<&ArgMatches>) -> Self {
        let after_command = |id: &str| {
            given.and_then(|given| given.value_source(id))
                == Some(clap::parser::ValueSource::CommandLine)
        };
        if let Some(server) = leading.server
            && !after_command("server")
        {
            self.server = server;
        }
        if let Some(token) = leading.token
            && !after_command("token")
        {
            self.token = Some(token);
        }
        if let Some(timeout) = leading.request_timeout
            && !after_command("request_timeout")
        {
            self.request_timeout = timeout;
        }
        let tls = &mut self.tls;
        for (id, leading, value) in [
            ("tls_ca", leading.tls_ca, &mut tls.tls_ca),
            (
                "tls_client_cert",
                leading.tls_client_cert,
                &mut tls.tls_client_cert,
            ),
            (
                "tls_client_key",
                leading.tls_client_key,
                &mut tls.tls_client_key,
            ),
        ] {
            if let Some(path) = leading
                && !after_command(id)
            {
                *value = Some(path);
            }
        }
        if let Some(name) = leading.tls_server_name
            && !after_command("tls_server_name")
        {
            tls.tls_server_name = Some(name);
        }
        self.json |= leading.json;
        self
    }
}

/// The client flags before the command (`jobq --server URL list`), for the
/// commands that talk to a server; `jobq up` refuses them.
#[derive(Debug, Clone, Default, Args)]
pub struct LeadingOptions {
    /// The jobq server [env: JOBQ_SERVER; default: http://127.0.0.1:50051].
    #[arg(long = "server", id = "leading_server", value_name = "SERVER")]
    pub server: Option<String>,

    /// Bearer token for the server [env: JOBQ_TOKEN].
    #[arg(long = "token", id = "leading_token", value_name = "TOKEN")]
    pub token: Option<String>,

    /// JSON output for scripts (one document, or one per line for streams).
    #[arg(long = "json", id = "leading_json")]
    pub json: bool,

    /// Longest wait for one answer of the server [default: 30s].
    #[arg(long = "request-timeout", id = "leading_request_timeout", value_name = "REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,

    /// CA certificate(s) of an https:// server [env: JOBQ_TLS_CA].
    #[arg(long = "tls-ca", id = "leading_tls_ca", value_name = "TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate for mutual TLS [env: JOBQ_TLS_CLIENT_CERT].
    #[arg(
        long = "tls-client-cert",
        id = "leading_tls_client_cert",
        value_name = "TLS_CLIENT_CERT"
    )]
    pub tls_client_cert: Option<std::path::PathBuf>,

    /// Its private key [env: JOBQ_TLS_CLIENT_KEY].
    #[arg(
        long = "tls-client-key",
        id = "leading_tls_client_key",
        value_name = "TLS_CLIENT_KEY"
    )]
    pub tls_client_key: Option<std::path::PathBuf>,

    /// The name the server's certificate must hold [env: JOBQ_TLS_SERVER_NAME].
    #[arg(
        long = "tls-server-name",
        id = "leading_tls_server_name",
        value_name = "TLS_SERVER_NAME"
    )]
    pub tls_server_name: Option<String>,
}

impl LeadingOptions {
    /// The flags given, as they were spelled.
    fn given(&self) -> Vec<&'static str> {
        [
            ("--server", self.server.is_some()),
            ("--token", self.token.is_some()),
            ("--json", self.json),
            ("--request-timeout", self.request_timeout.is_some()),
            ("--tls-ca", self.tls_ca.is_some()),
            ("--tls-client-cert", self.tls_client_cert.is_some()),
            ("--tls-client-key", self.tls_client_key.is_some()),
            ("--tls-server-name", self.tls_server_name.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

/// A client command's own arguments with the [`ClientOptions`].
#[derive(Debug, Args)]
pub struct WithClient<T: Args> {
    /// Server and output.
    #[command(flatten)]
    pub client: ClientOptions,
    /// The command's arguments.
    #[command(flatten)]
    pub args: T,
}

/// A group of client subcommands with the [`ClientOptions`] (they may be
/// given before or after the subcommand: `jobq queues --json list`).
#[derive(Debug, Args)]
pub struct ClientGroup<S: Subcommand> {
    /// Server and output.
    #[command(flatten)]
    pub client: ClientOptions,
    /// The subcommand.
    #[command(subcommand)]
    pub command: S,
}

/// Every `jobq` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The commands that talk to a jobq server.
    #[command(flatten)]
    Client(Box<ClientCommand>),
    /// Run a server (with the dashboard) and a worker with the built-in job
    /// types in this process; `--no-worker` runs the server alone.
    Up(Box<up::UpArgs>),
    /// Measure a server: enqueue, drain, pickup latency, burn-down and
    /// mixed workloads, with workers in separate processes; every job is
    /// checked to have run exactly once.
    Bench(Box<jobq_bench::BenchArgs>),
}

/// The commands that talk to a jobq server.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Enqueue a job; prints its id.
    Enqueue(WithClient<jobs::EnqueueArgs>),
    /// Show one job with its attempts.
    Get(WithClient<jobs::IdArg>),
    /// List jobs, newest first.
    List(WithClient<jobs::ListArgs>),
    /// Cancel a job (a running one stops at its worker's next heartbeat).
    Cancel(WithClient<jobs::CancelArgs>),
    /// Queue a finished (dead, cancelled or succeeded) job again.
    Retry(WithClient<jobs::IdArg>),
    /// Delete a job that is not running.
    Delete(WithClient<jobs::IdArg>),
    /// Wait until jobs are finished; exit 0 if all succeeded, 7 if one did not.
    Wait(WithClient<streams::WaitArgs>),
    /// Job counts by queue and state.
    Stats(WithClient<admin::StatsArgs>),
    /// Stream job events as they happen.
    Watch(WithClient<streams::WatchArgs>),
    /// Print a job's log; -f follows it until the job finishes.
    Logs(WithClient<streams::LogsArgs>),
    /// The dead-letter queue: list, requeue, purge.
    #[command(name = "dead-letter")]
    DeadLetter(ClientGroup<admin::DeadLetterCommand>),
    /// Queues: list, pause, resume, limits.
    Queues(ClientGroup<admin::QueuesCommand>),
    /// Workers the server has heard from.
    Workers(WithClient<admin::WorkersArgs>),
    /// Cron schedules: list, put, pause, resume, delete.
    Schedules(ClientGroup<admin::SchedulesCommand>),
}

impl ClientCommand {
    fn options(&self) -> &ClientOptions {
        match self {
            ClientCommand::Enqueue(command) => &command.client,
            ClientCommand::Get(command)
            | ClientCommand::Retry(command)
            | ClientCommand::Delete(command) => &command.client,
            ClientCommand::List(command) => &command.client,
            ClientCommand::Cancel(command) => &command.client,
            ClientCommand::Wait(command) => &command.client,
            ClientCommand::Stats(command) => &command.client,
            ClientCommand::Watch(command) => &command.client,
            ClientCommand::Logs(command) => &command.client,
            ClientCommand::DeadLetter(group) => &group.client,
            ClientCommand::Queues(group) => &group.client,
            ClientCommand::Workers(command) => &command.client,
            ClientCommand::Schedules(group) => &group.client,
        }
    }

    async fn run(self, ctx: &Ctx) -> CmdResult {
        match self {
            ClientCommand::Enqueue(command) => jobs::enqueue(ctx, command.args).await,
            ClientCommand::Get(command) => jobs::get(ctx, command.args).await,
            ClientCommand::List(command) => jobs::list(ctx, command.args).await,
            ClientCommand::Cancel(command) => jobs::cancel(ctx, command.args).await,
            ClientCommand::Retry(command) => jobs::retry(ctx, command.args).await,
            ClientCommand::Delete(command) => jobs::delete(ctx, command.args).await,
            ClientCommand::Wait(command) => streams::wait(ctx, command.args).await,
            ClientCommand::Stats(command) => admin::stats(ctx, command.args).await,
            ClientCommand::Watch(command) => streams::watch(ctx, command.args).await,
            ClientCommand::Logs(command) => streams::logs(ctx, command.args).await,
            ClientCommand::DeadLetter(group) => admin::dead_letter(ctx, group.command).await,
            ClientCommand::Queues(group) => admin::queues(ctx, group.command).await,
            ClientCommand::Workers(command) => admin::workers(ctx, command.args).await,
            ClientCommand::Schedules(group) => admin::schedules(ctx, group.command).await,
        }
    }
}

/// The context every client command gets.
pub struct Ctx {
    /// Print JSON.
    pub json: bool,
    /// The server, as given (`--server`).
    pub server: String,
    token: Option<String>,
    request_timeout: Duration,
    tls: jobq_worker::ClientTlsArgs,
}

impl Ctx {
    /// The context of `options`.
    pub fn new(options: ClientOptions) -> Self {
        Self {
            json: options.json,
            server: options.server,
            token: options.token,
            request_timeout: options.request_timeout,
            tls: options.tls,
        }
    }

    fn config(&self) -> Result<ClientConfig, ClientError> {
        let mut config = self.tls.apply(
            ClientConfig::builder(self.server.clone()).request_timeout(self.request_timeout),
        );
        if let Some(token) = &self.token {
            config = config.token(token.clone());
        }
        config.build()
    }

    /// A client of the server named by the flags.
    pub fn client(&self) -> Result<Client, Failure> {
        Ok(Client::connect(self.config()?)?)
    }

    /// The server's address as the client dials it (`http://host:port`).
    pub fn endpoint(&self) -> String {
        self.config().map_or_else(
            |_| self.server.clone(),
            |config| config.endpoint().to_owned(),
        )
    }
}

/// Prints JSON (pretty for one document).
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// What to run, once the command line is read.
enum Invocation {
    /// `jobq up`.
    Up(Box<up::UpArgs>),
    /// `jobq bench`.
    Bench(jobq_bench::BenchArgs),
    /// A command that talks to a server.
    Client(Ctx, Box<ClientCommand>),
}

/// Reads the command line: the command, and the client options in force.
fn invocation(matches: &ArgMatches) -> Result<Invocation, clap::Error> {
    let cli = Cli::from_arg_matches(matches)?;
    let refuse_leading = |command: &str| {
        let given = cli.leading.given();
        if given.is_empty() {
            return Ok(());
        }
        Err(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "`jobq {command}` takes none of {} before it; see `jobq {command} --help`",
                given.join(", ")
            ),
        ))
    };
    match cli.command {
        Command::Up(args) => {
            refuse_leading("up")?;
            Ok(Invocation::Up(args))
        }
        Command::Bench(args) => {
            refuse_leading("bench")?;
            Ok(Invocation::Bench(*args))
        }
        Command::Client(command) => {
            let given = matches.subcommand().map(|(_, matches)| matches);
            let options = command.options().clone().merged(cli.leading, given);
            Ok(Invocation::Client(Ctx::new(options), command))
        }
    }
}

/// Runs the `jobq` binary and returns its exit code.
pub fn run_cli() -> ExitCode {
    let parsed = Cli::command().try_get_matches().and_then(|matches| {
        let name = matches.subcommand_name().unwrap_or("jobq").to_owned();
        invocation(&matches).map(|invocation| (invocation, name))
    });
    let (invocation, name) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    match invocation {
        // The bench starts its own runtime, and its worker processes as `jobq bench ...`.
        Invocation::Bench(args) => jobq_bench::run_cli(&["bench"], args),
        Invocation::Up(args) => run_async(up::up(*args)),
        Invocation::Client(ctx, command) => run_async(async move {
            // Only when traces are exported: the CLI's own output stays clean otherwise.
            let telemetry = jobq_telemetry::otlp_endpoint(None).map(|endpoint| {
                jobq_telemetry::init(jobq_telemetry::Settings {
                    service_name: "jobq-cli",
                    log_format: jobq_telemetry::LogFormat::Human,
                    default_log_filter: "warn",
                    otlp_endpoint: Some(endpoint),
                })
            });
            let span = tracing::info_span!(
                "cli",
                otel.name = format!("jobq {name}"),
                otel.kind = "client"
            );
            let outcome = command
                .run(&ctx)
                .instrument(span)
                .await
                .map_err(|failure| failure.at_server(&ctx.endpoint()));
            if let Some(telemetry) = telemetry {
                telemetry.shutdown();
            }
            outcome
        }),
    }
}

/// Runs a command on a new runtime and turns its outcome into the exit code.
fn run_async(command: impl std::future::Future<Output = CmdResult>) -> ExitCode {
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
    let outcome = runtime.block_on(command);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, clap::Error> {
        let matches = Cli::command().try_get_matches_from(args)?;
        invocation(&matches)
    }

    fn client_ctx(args: &[&str]) -> Ctx {
        match parse(args) {
            Ok(Invocation::Client(ctx, _)) => ctx,
            Ok(Invocation::Up(_)) => panic!("{args:?} parsed as `up`"),
            Ok(Invocation::Bench(_)) => panic!("{args:?} parsed as `bench`"),
            Err(error) => panic!("{args:?}: {error}"),
        }
    }

    fn up_help() -> String {
        let mut command = Cli::command();
        command.build();
        command
            .find_subcommand_mut("up")
            .map(|up| up.render_long_help().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn tls_flags_go_before_or_after_the_command_and_after_wins() {
        let before = client_ctx(&[
            "jobq",
            "--tls-ca",
            "a.pem",
            "--tls-server-name",
            "q",
            "list",
        ]);
        assert_eq!(before.tls.tls_ca, Some("a.pem".into()));
        assert_eq!(before.tls.tls_server_name.as_deref(), Some("q"));
        let both = client_ctx(&["jobq", "--tls-ca", "a.pem", "list", "--tls-ca", "b.pem"]);
        assert_eq!(both.tls.tls_ca, Some("b.pem".into()));
        assert!(parse(&["jobq", "--tls-ca", "a.pem", "up"]).is_err());
    }

    #[test]
    fn up_shows_and_takes_none_of_the_client_flags() {
        let help = up_help();
        for flag in ["--server", "--token", "--json", "--request-timeout"] {
            assert!(!help.contains(flag), "`jobq up --help` lists {flag}");
            let after = parse(&["jobq", "up", flag, "x"]);
            assert!(after.is_err(), "`jobq up {flag}` was accepted");
        }
        let before = parse(&["jobq", "--server", "http://x:1", "up"]).err();
        let before = before.map(|error| error.to_string()).unwrap_or_default();
        assert!(before.contains("takes none of --server"), "{before}");
        assert!(parse(&["jobq", "--json", "up"]).is_err());
        assert!(matches!(
            parse(&["jobq", "up", "--listen", "127.0.0.1:0"]),
            Ok(Invocation::Up(_))
        ));
    }

    #[test]
    fn up_documents_no_worker_and_the_worker_token() {
        let help = up_help();
        assert!(help.contains("--no-worker"), "{help}");
        assert!(help.contains("without the local worker"), "{help}");
        assert!(help.contains("--auth-token"), "{help}");
    }

    #[test]
    fn client_flags_go_before_or_after_the_command() {
        let ctx = client_ctx(&["jobq", "list", "--server", "http://after:1", "--json"]);
        assert_eq!((ctx.server.as_str(), ctx.json), ("http://after:1", true));
        let ctx = client_ctx(&["jobq", "--server", "http://before:1", "--json", "list"]);
        assert_eq!((ctx.server.as_str(), ctx.json), ("http://before:1", true));
        let ctx = client_ctx(&[
            "jobq",
            "--server",
            "http://before:1",
            "get",
            "j1",
            "--server",
            "http://after:1",
        ]);
        assert_eq!(ctx.server, "http://after:1");
        let ctx = client_ctx(&[
            "jobq",
            "--token",
            "t0123456789",
            "--request-timeout",
            "2s",
            "stats",
        ]);
        assert_eq!(ctx.token.as_deref(), Some("t0123456789"));
        assert_eq!(ctx.request_timeout, Duration::from_secs(2));
        // In a group, before or after the subcommand.
        let ctx = client_ctx(&["jobq", "queues", "--json", "pause", "q"]);
        assert!(ctx.json);
        let ctx = client_ctx(&["jobq", "queues", "pause", "q", "--server", "http://leaf:1"]);
        assert_eq!(ctx.server, "http://leaf:1");
    }

    #[test]
    fn list_limits_are_checked_in_the_flags_terms() {
        for args in [
            &["jobq", "list", "--limit", "1000"][..],
            &["jobq", "list", "--limit", "0"][..],
            &["jobq", "dead-letter", "list", "--limit", "501"][..],
        ] {
            let error = parse(args).err().map(|error| error.to_string());
            let error = error.unwrap_or_default();
            assert!(
                error.contains("--limit")
                    && error.contains("1..500")
                    && !error.contains("page_size"),
                "{args:?}: {error}"
            );
        }
        assert!(parse(&["jobq", "list", "--limit", "500"]).is_ok());
        let error = parse(&["jobq", "dead-letter", "purge", "--all", "--limit", "20000"]).err();
        assert!(error.is_some_and(|error| error.to_string().contains("--limit")));
    }

    #[test]
    fn unreachable_servers_are_named() {
        let refused = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        // tonic makes such errors UNAVAILABLE; a server shutting down says so too.
        let refused = tonic::Status::new(tonic::Code::Unavailable, refused.message());
        let failure = Failure::from(ClientError::Status(refused)).at_server("http://10.0.0.7:4000");
        assert_eq!(failure.code, exit::UNAVAILABLE);
        assert!(
            failure
                .message
                .starts_with("cannot reach the jobq server at http://10.0.0.7:4000: "),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("Connection refused"),
            "{}",
            failure.message
        );
        let silent = Failure::from(ClientError::Timeout(Duration::from_secs(30)))
            .at_server("http://10.0.0.7:4000");
        assert_eq!(
            silent.message,
            "no answer from the jobq server at http://10.0.0.7:4000 within 30s"
        );
        // Other failures keep their message.
        let missing = Failure::from(ClientError::Status(tonic::Status::not_found("no job x")))
            .at_server("http://10.0.0.7:4000");
        assert_eq!(
            (missing.code, missing.message.contains("10.0.0.7")),
            (exit::NOT_FOUND, false)
        );
    }

    #[test]
    fn the_endpoint_is_what_the_client_dials() {
        let ctx = client_ctx(&["jobq", "list", "--server", "127.0.0.1:4000"]);
        assert_eq!(ctx.endpoint(), "http://127.0.0.1:4000");
    }
}
