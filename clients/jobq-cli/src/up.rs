//! `jobq up`: the queue server and a worker with the built-in job types in one
//! process, on the SQLite default — what a newcomer runs first.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use jobq_client::{Client, ClientConfig, Shutdown};

use crate::{CmdResult, Failure, exit};

/// `jobq up`: every `jobq-server` flag, and every `jobq-worker` flag but the connection.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Server settings (see `jobq-server --help`).
    #[command(flatten)]
    pub server: jobq_server::Config,

    /// Worker settings (see `jobq-worker --help`).
    #[command(flatten)]
    pub worker: jobq_worker::WorkerOptions,

    /// Run the server only, no worker.
    #[arg(long)]
    pub no_worker: bool,
}

/// Runs until SIGTERM/SIGINT: the worker drains (grace period), then the server stops.
/// A second signal stops at once.
pub async fn up(args: UpArgs) -> CmdResult {
    let config = args.server;
    jobq_worker::init_logging(config.log_format == jobq_server::config::LogFormat::Json);
    config.validate().map_err(Failure::usage)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| {
            Failure::new(
                exit::ERROR,
                format!("cannot listen on {}: {error}", config.listen),
            )
        })?;
    let data_dir = config.data_dir.clone();
    let server = jobq_server::App::start(config, listener)
        .await
        .map_err(|error| Failure::new(exit::ERROR, format!("starting the server: {error:#}")))?;
    let addr = server.local_addr();
    // Like jobq-server: scripts read the bound port from this line.
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();

    let shutdown = Shutdown::on_signals()?;
    let outcome = if args.no_worker {
        eprintln!(
            "jobq is up: server on http://{addr} (data in {}), no worker",
            data_dir.display()
        );
        shutdown.requested().await;
        Ok(exit::OK)
    } else {
        run_worker(&args.worker, addr, data_dir.join("media"), shutdown.clone()).await
    };
    tracing::info!("stopping the server");
    let stopped = tokio::select! {
        stopped = server.shutdown() => stopped,
        () = shutdown.forced() => Ok(()),
    };
    if let Err(error) = stopped {
        return Err(Failure::new(
            exit::ERROR,
            format!("stopping the server: {error:#}"),
        ));
    }
    outcome
}

async fn run_worker(
    options: &jobq_worker::WorkerOptions,
    addr: std::net::SocketAddr,
    default_media_root: PathBuf,
    shutdown: Shutdown,
) -> CmdResult {
    let fail = |error: &dyn std::fmt::Display| {
        Failure::new(exit::ERROR, format!("starting the worker: {error}"))
    };
    let config = ClientConfig::builder(format!("http://{addr}"))
        .build()
        .map_err(|error| fail(&error))?;
    let client = Client::connect(config).map_err(|error| fail(&error))?;
    let worker = jobq_worker::build_worker(client, options, default_media_root)
        .map_err(|error| fail(&format!("{error:#}")))?;
    eprintln!(
        "jobq is up: server on http://{addr}, worker {} running {} (queues {})",
        worker.config().worker_id(),
        worker.job_types().join(", "),
        worker.config().queues().join(", ")
    );
    eprintln!("try: jobq enqueue noop '{{\"sleep_ms\": 1000}}' --wait");
    worker
        .run(shutdown)
        .await
        .map_err(|error| Failure::new(exit::ERROR, error.to_string()))?;
    Ok(exit::OK)
}
