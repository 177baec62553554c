//! The jobq worker with the built-in job types: `channel_download` and
//! `playlist_download` (yt-dlp), `metadata_extraction` (yt-dlp or ffprobe),
//! `cleanup`, and `noop`. Each tool runs as a subprocess in its own process
//! group, its output goes line by line into the job's log, its progress into
//! the job's progress, and a stop kills the whole group.
//!
//! [`run_cli`] is the `jobq-worker` binary; [`WorkerOptions`] and
//! [`build_worker`] let `jobq up` run the same worker in-process.
//! [`metrics`] is the binary's Prometheus endpoint (`--metrics-listen`).

pub mod jobs;
pub mod metrics;
pub mod process;
pub mod progress;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, ValueEnum};
use jobq_client::{Client, ClientConfig, Shutdown, Worker, WorkerConfig};

use crate::metrics::WorkerMetrics;

/// How the worker is run: everything but the server connection.
#[derive(Debug, Clone, Args)]
pub struct WorkerOptions {
    /// Worker id shown in the server (default: HOSTNAME-PID-RANDOM).
    #[arg(long, env = "JOBQ_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Queues to lease from, comma-separated.
    #[arg(
        long,
        env = "JOBQ_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,

    /// Job types to run, comma-separated (default: every built-in type).
    #[arg(long, env = "JOBQ_TYPES", value_delimiter = ',')]
    pub types: Vec<String>,

    /// Most jobs run at once.
    #[arg(long, env = "JOBQ_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// Directory downloads go to, created by the first download that needs
    /// it. Default: `jobq-media` in the working directory, or `media` in the
    /// data dir under `jobq up`.
    #[arg(long, env = "JOBQ_MEDIA_ROOT")]
    pub media_root: Option<PathBuf>,

    /// Directories cleanup jobs may delete in (repeat, or comma-separate in the
    /// variable). Default: the media root.
    #[arg(
        long = "cleanup-root",
        env = "JOBQ_CLEANUP_ROOTS",
        value_delimiter = ','
    )]
    pub cleanup_roots: Vec<PathBuf>,

    /// How long running jobs may take to finish after SIGTERM/SIGINT before
    /// they are cancelled and released to other workers.
    #[arg(long, env = "JOBQ_GRACE_PERIOD", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace_period: Duration,

    /// How long a cancelled job's handler may take to stop before it is aborted.
    #[arg(long, env = "JOBQ_CANCEL_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub cancel_grace: Duration,

    /// Lease length asked for; heartbeats renew it every third of it.
    #[arg(long = "lease", env = "JOBQ_WORKER_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// Longest wait of one LeaseJobs long poll.
    #[arg(long, env = "JOBQ_POLL_WAIT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub poll_wait: Duration,

    /// The yt-dlp executable.
    #[arg(long = "yt-dlp", env = "JOBQ_YT_DLP", default_value = "yt-dlp")]
    pub yt_dlp: PathBuf,

    /// The ffprobe executable.
    #[arg(long, env = "JOBQ_FFPROBE", default_value = "ffprobe")]
    pub ffprobe: PathBuf,

    /// How many downloads of one channel or playlist run at once, across all
    /// workers, when a download fans out (each child gets the concurrency
    /// key `channel:<id>` with this limit; a payload's `channel_concurrency`
    /// overrides it). 0: no key.
    #[arg(long, env = "JOBQ_CHANNEL_CONCURRENCY", default_value_t = jobs::DEFAULT_CHANNEL_CONCURRENCY,
          value_parser = clap::value_parser!(i32).range(0..=10_000))]
    pub channel_concurrency: i32,
}

/// How the worker binary writes its own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line (with the fields of the job's span inside a job).
    Json,
}

impl From<LogFormat> for jobq_telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Human => jobq_telemetry::LogFormat::Human,
            LogFormat::Json => jobq_telemetry::LogFormat::Json,
        }
    }
}

/// TLS settings for an `https://` server (shared by `jobq-worker` and the
/// `jobq` client commands).
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// CA certificate(s) (PEM) that signed the server's certificate; without
    /// it an https:// server is checked against the system's roots.
    #[arg(long, global = true, env = "JOBQ_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a server that requires one (mutual TLS).
    #[arg(
        long,
        global = true,
        env = "JOBQ_TLS_CLIENT_CERT",
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-client-cert.
    #[arg(
        long,
        global = true,
        env = "JOBQ_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,

    /// The name the server's certificate must hold, when it is not the
    /// host of the server's URL (e.g. a URL with an IP address).
    #[arg(long, global = true, env = "JOBQ_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// `config` with these settings.
    pub fn apply(
        &self,
        mut config: jobq_client::ClientConfigBuilder,
    ) -> jobq_client::ClientConfigBuilder {
        if let Some(ca) = &self.tls_ca {
            config = config.tls_ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            config = config.tls_client_identity_files(cert, key);
        }
        if let Some(name) = &self.tls_server_name {
            config = config.tls_domain_name(name.clone());
        }
        config
    }
}

/// The `jobq-worker` command line.
#[derive(Debug, Parser)]
#[command(
    name = "jobq-worker",
    version,
    about = "Runs jobq jobs: yt-dlp downloads, metadata extraction, cleanup"
)]
pub struct WorkerCli {
    /// The jobq server.
    #[arg(long, env = "JOBQ_SERVER", default_value = jobq_client::DEFAULT_ENDPOINT)]
    pub server: String,

    /// Bearer token for the server.
    #[arg(long, env = "JOBQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// TLS for an https:// server.
    #[command(flatten)]
    pub tls: ClientTlsArgs,

    /// Log format (stderr); the level comes from JOBQ_LOG (default `info`).
    #[arg(long, env = "JOBQ_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// `http://127.0.0.1:4317`); without it, OTEL_EXPORTER_OTLP_ENDPOINT
    /// (or _TRACES_ENDPOINT) applies, and with neither nothing is exported.
    #[arg(long, env = "JOBQ_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Serve the worker's Prometheus metrics at http://ADDR/metrics (port 0
    /// picks one; the bound address is logged). Off by default.
    #[arg(long, env = "JOBQ_WORKER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Everything else.
    #[command(flatten)]
    pub options: WorkerOptions,
}

/// The worker with the built-in handlers, configured by `options`;
/// `default_media_root` applies when `options.media_root` is unset.
pub fn build_worker(
    client: Client,
    options: &WorkerOptions,
    default_media_root: PathBuf,
) -> anyhow::Result<Worker> {
    build_measured_worker(client, options, default_media_root, None)
}

/// [`build_worker`], with its handlers and tools measured in `metrics` when given.
pub fn build_measured_worker(
    client: Client,
    options: &WorkerOptions,
    default_media_root: PathBuf,
    metrics: Option<Arc<WorkerMetrics>>,
) -> anyhow::Result<Worker> {
    for job_type in &options.types {
        anyhow::ensure!(
            jobs::types::ALL.contains(&job_type.as_str()),
            "--types: unknown job type {job_type:?} (built-in: {})",
            jobs::types::ALL.join(", ")
        );
    }
    let media_root = options.media_root.clone().unwrap_or(default_media_root);
    let mut settings = jobs::Settings::prepare(
        &media_root,
        &options.cleanup_roots,
        options.yt_dlp.clone(),
        options.ffprobe.clone(),
    )
    .with_context(|| format!("preparing the media root {}", media_root.display()))?;
    settings.channel_concurrency = options.channel_concurrency;
    settings.metrics = metrics;
    check_tool(&settings.yt_dlp, "--version");
    check_tool(&settings.ffprobe, "-version");
    tracing::info!(media_root = %settings.media_root.display(), cleanup_roots = ?settings.cleanup_roots, "built-in job settings");

    let mut config = WorkerConfig::builder()
        .queues(options.queues.clone())
        .concurrency(options.concurrency)
        .grace_period(options.grace_period)
        .cancel_grace(options.cancel_grace)
        .lease_duration(options.lease)
        .poll_wait(options.poll_wait)
        .version(concat!("jobq-worker/", env!("CARGO_PKG_VERSION")));
    if let Some(id) = &options.worker_id {
        config = config.worker_id(id.clone());
    }
    let config = config.build().context("worker configuration")?;
    Ok(jobs::register(
        Worker::new(client, config),
        settings,
        &options.types,
    ))
}

/// Logs whether a tool answers; jobs that need a missing tool fail (retryably) later.
fn check_tool(program: &std::path::Path, version_flag: &str) {
    match std::process::Command::new(program)
        .arg(version_flag)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => {
            let version = String::from_utf8_lossy(&output.stdout);
            let version = version.lines().next().unwrap_or_default().trim().to_owned();
            tracing::info!(tool = %program.display(), %version, "tool found");
        }
        Ok(output) => {
            tracing::warn!(tool = %program.display(), status = %output.status, "tool answered with an error")
        }
        Err(error) => {
            tracing::warn!(tool = %program.display(), "tool not found ({error}); jobs that need it will fail")
        }
    }
}

fn telemetry_settings(
    log_format: LogFormat,
    otlp_endpoint: Option<String>,
) -> jobq_telemetry::Settings {
    jobq_telemetry::Settings {
        service_name: "jobq-worker",
        log_format: log_format.into(),
        default_log_filter: "info",
        otlp_endpoint,
    }
}

/// Runs the `jobq-worker` binary: exit 0 after a clean stop, 1 on an error,
/// 2 on bad flags.
pub fn run_cli() -> ExitCode {
    let cli = WorkerCli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jobq-worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's channel needs the runtime, so telemetry starts in it.
    let (served, telemetry) = runtime.block_on(async {
        let endpoint = jobq_telemetry::otlp_endpoint(cli.otlp_endpoint.as_deref());
        let telemetry = jobq_telemetry::init(telemetry_settings(cli.log_format, endpoint));
        (serve(cli).await, telemetry)
    });
    if let Err(error) = &served {
        eprintln!("jobq-worker: {error:#}");
    }
    // Flushes the spans still queued while the runtime still runs the exporter.
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn serve(cli: WorkerCli) -> anyhow::Result<()> {
    let mut config = cli.tls.apply(ClientConfig::builder(cli.server.clone()));
    if let Some(token) = &cli.token {
        config = config.token(token.clone());
    }
    let client = Client::connect(config.build()?)?;
    let metrics = cli.metrics_listen.map(|_| WorkerMetrics::new());
    let worker = build_measured_worker(
        client,
        &cli.options,
        PathBuf::from("jobq-media"),
        metrics.clone(),
    )?;
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    // The endpoint stays up while the worker drains, and stops with it.
    let endpoint_stop = tokio_util::sync::CancellationToken::new();
    if let (Some(address), Some(metrics)) = (cli.metrics_listen, &metrics) {
        let stop = endpoint_stop.clone();
        jobq_telemetry::metrics::spawn(address, metrics.registry(), async move {
            stop.cancelled().await;
        })
        .await?;
    }
    let _stop_endpoint = endpoint_stop.drop_guard();
    tracing::info!(server = %cli.server, worker_id = worker.config().worker_id(), "connecting");
    worker.run(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn building_the_worker_leaves_no_media_root_behind() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let media_root = dir.path().join("jobq-media");
        let options = WorkerOptions {
            worker_id: None,
            queues: vec!["default".into()],
            types: Vec::new(),
            concurrency: 1,
            media_root: None,
            cleanup_roots: Vec::new(),
            grace_period: Duration::from_secs(1),
            cancel_grace: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            poll_wait: Duration::from_secs(1),
            yt_dlp: PathBuf::from("jobq-test-no-such-tool"),
            ffprobe: PathBuf::from("jobq-test-no-such-tool"),
            channel_concurrency: 1,
        };
        // The connection is lazy: no server is needed to build the worker.
        let client = Client::connect(ClientConfig::builder("http://127.0.0.1:9").build()?)?;
        let worker = build_worker(client, &options, media_root.clone())?;
        assert_eq!(worker.job_types().len(), jobs::types::ALL.len());
        assert!(!media_root.exists(), "{} was created", media_root.display());
        Ok(())
    }
}
