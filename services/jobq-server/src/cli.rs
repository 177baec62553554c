//! The `jobq-server` command: parse the config, set up logging, serve until
//! SIGTERM or SIGINT, then shut down gracefully.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::app::App;
use crate::config::{Config, LogFormat};

/// Runs the server as the `jobq-server` binary does; returns its exit code.
pub fn run_cli() -> ExitCode {
    let config = Config::parse();
    if let Err(problem) = config.validate() {
        eprintln!("jobq-server: {problem}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jobq-server: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        // Inside the runtime: the span exporter's channel needs it.
        let telemetry = jobq_telemetry::init(jobq_telemetry::Settings {
            service_name: "jobq-server",
            log_format: match config.log_format {
                LogFormat::Human => jobq_telemetry::LogFormat::Human,
                LogFormat::Json => jobq_telemetry::LogFormat::Json,
            },
            default_log_filter: "info",
            otlp_endpoint: jobq_telemetry::otlp_endpoint(config.otlp_endpoint.as_deref()),
        });
        let served = serve(config).await;
        telemetry.shutdown();
        served
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jobq-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Before anything is served: a SIGTERM that comes as soon as the
    // server answers (a busy machine may run a client before this task)
    // is a graceful stop, not the default kill.
    let mut signals = ShutdownSignals::install()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let mut server = App::start(config, listener).await?;
    // Scripts and tests read the bound port from this one stdout line.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    if let Some(metrics) = server.metrics_addr() {
        writeln!(stdout, "metrics on {metrics}")?;
    }
    stdout.flush()?;

    tokio::select! {
        signal = signals.next() => {
            tracing::info!(signal, "shutting down");
        }
        exited = server.wait_for_exit() => return exited,
    }
    server.shutdown().await
}

/// The signals that stop the server gracefully.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// The next stop signal, by name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
