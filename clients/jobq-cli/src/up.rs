//! `jobq up`: the queue server and a worker with the built-in job types in one
//! process, on the SQLite default — what a newcomer runs first.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use jobq_client::{Client, ClientConfig, Shutdown};

use crate::{CmdResult, Failure, exit};

/// `jobq up`: every `jobq-server` flag, and every `jobq-worker` flag but the
/// connection (the worker dials the server it runs beside, with a `worker`
/// or `admin` token of `--auth-token` when there are tokens).
#[derive(Debug, Args)]
#[command(
    after_help = "With --auth-token, the local worker uses a worker token of the set (else an admin one). \
                  --no-worker runs the server and the dashboard alone; start workers with jobq-worker. \
                  With --tls-cert the local worker dials https://, trusting --tls-ca (default: the \
                  --tls-cert file, right for a self-signed leaf certificate) for the name \
                  --tls-server-name (default: localhost)."
)]
pub struct UpArgs {
    /// Server settings (see `jobq-server --help`).
    #[command(flatten)]
    pub server: jobq_server::Config,

    /// Worker settings (see `jobq-worker --help`).
    #[command(flatten)]
    pub worker: jobq_worker::WorkerOptions,

    /// How the local worker checks the server's certificate when the server
    /// serves TLS: --tls-ca defaults to --tls-cert (a self-signed leaf
    /// certificate, CA:FALSE, is its own CA), --tls-server-name to `localhost`; with
    /// --tls-client-ca, give the worker --tls-client-cert and --tls-client-key.
    #[command(flatten)]
    pub worker_tls: jobq_worker::ClientTlsArgs,

    /// Run the server and the dashboard only, without the local worker (for
    /// workers started elsewhere with jobq-worker).
    #[arg(long)]
    pub no_worker: bool,
}

/// Runs until SIGTERM/SIGINT: the worker drains (grace period), then the server stops.
/// A second signal stops at once.
pub async fn up(args: UpArgs) -> CmdResult {
    let mut config = args.server;
    let telemetry = jobq_telemetry::init(jobq_telemetry::Settings {
        service_name: "jobq",
        log_format: match config.log_format {
            jobq_server::config::LogFormat::Human => jobq_telemetry::LogFormat::Human,
            jobq_server::config::LogFormat::Json => jobq_telemetry::LogFormat::Json,
        },
        default_log_filter: "info",
        otlp_endpoint: jobq_telemetry::otlp_endpoint(config.otlp_endpoint.as_deref()),
    });
    config.validate().map_err(Failure::usage)?;
    if config.metrics_listen.is_none() {
        config.metrics_listen = default_metrics_address();
    }
    // Checked before the server starts: a worker that cannot get in is a usage error.
    let worker_token = if args.no_worker {
        None
    } else {
        worker_token(&config.auth_tokens).map_err(Failure::usage)?
    };
    let tls = config.tls_cert.as_ref().map(|cert| {
        let mut tls = args.worker_tls.clone();
        tls.tls_ca.get_or_insert_with(|| cert.clone());
        tls.tls_server_name
            .get_or_insert_with(|| "localhost".to_owned());
        tls
    });
    let connection = WorkerConnection {
        token: worker_token,
        max_message_bytes: config.max_message_bytes,
        tls,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| {
            Failure::new(
                exit::ERROR,
                format!("cannot listen on {}: {error}", config.listen),
            )
        })?;
    let data_dir = config.data_dir.clone();
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let server = jobq_server::App::start(config, listener)
        .await
        .map_err(|error| Failure::new(exit::ERROR, format!("starting the server: {error:#}")))?;
    let addr = server.local_addr();
    // Like jobq-server: scripts read the bound port from this line.
    println!("listening on {addr}");
    if let Some(metrics) = server.metrics_addr() {
        println!("metrics on {metrics}");
    }
    let _ = std::io::stdout().flush();

    let shutdown = Shutdown::on_signals()?;
    let outcome = if args.no_worker {
        eprintln!(
            "jobq is up: server on {scheme}://{addr} (data in {}), no worker",
            data_dir.display()
        );
        shutdown.requested().await;
        Ok(exit::OK)
    } else {
        run_worker(
            &args.worker,
            addr,
            connection,
            data_dir.join("media"),
            shutdown.clone(),
        )
        .await
    };
    tracing::info!("stopping the server");
    let stopped = tokio::select! {
        stopped = server.shutdown() => stopped,
        () = shutdown.forced() => Ok(()),
    };
    telemetry.shutdown();
    if let Err(error) = stopped {
        return Err(Failure::new(
            exit::ERROR,
            format!("stopping the server: {error:#}"),
        ));
    }
    outcome
}

/// Where `jobq up` serves metrics unless told: the port Prometheus
/// exporters use by convention, when it is free (else none, said once).
fn default_metrics_address() -> Option<std::net::SocketAddr> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], 9464));
    match std::net::TcpListener::bind(address) {
        Ok(_) => Some(address),
        Err(error) => {
            eprintln!(
                "metrics off: {address} is taken ({error}); choose one with --metrics-listen"
            );
            None
        }
    }
}

/// The role names of `--auth-token` entries the local worker may use, in the
/// order it picks them: `worker` is all it needs, `admin` can do it too.
const WORKER_ROLES: [&str; 2] = ["worker", "admin"];

/// The token the local worker presents: a `worker` token of the server's
/// `--auth-token` set, else an `admin` one; none when the server has no
/// tokens. `producer` tokens cannot lease jobs, so a set of only those is an
/// error (the worker would be refused).
fn worker_token(auth_tokens: &[String]) -> Result<Option<String>, String> {
    if auth_tokens.is_empty() {
        return Ok(None);
    }
    // A token given only as its digest cannot be presented.
    let entries: Vec<(&str, &str)> = auth_tokens
        .iter()
        .filter_map(|entry| entry.split_once(':'))
        .filter(|(_, token)| !token.starts_with("sha256:"))
        .collect();
    WORKER_ROLES
        .iter()
        .find_map(|wanted| {
            entries
                .iter()
                .find(|(role, _)| role == wanted)
                .map(|(_, token)| Some((*token).to_owned()))
        })
        .ok_or_else(|| {
            "--auth-token has no worker or admin token (in clear) for the local worker: add one \
             (worker:TOKEN), or run the server alone with --no-worker"
                .to_owned()
        })
}

/// How the local worker dials its server.
#[derive(Debug)]
struct WorkerConnection {
    token: Option<String>,
    max_message_bytes: usize,
    /// Set when the server serves TLS.
    tls: Option<jobq_worker::ClientTlsArgs>,
}

async fn run_worker(
    options: &jobq_worker::WorkerOptions,
    addr: std::net::SocketAddr,
    connection: WorkerConnection,
    default_media_root: PathBuf,
    shutdown: Shutdown,
) -> CmdResult {
    let fail = |error: &dyn std::fmt::Display| {
        Failure::new(exit::ERROR, format!("starting the worker: {error}"))
    };
    let has_token = connection.token.is_some();
    let scheme = if connection.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut config = ClientConfig::builder(format!("{scheme}://{addr}"))
        .max_message_bytes(connection.max_message_bytes);
    if let Some(tls) = &connection.tls {
        config = tls.apply(config);
    }
    if let Some(token) = connection.token {
        config = config.token(token);
    }
    let config = config.build().map_err(|error| fail(&error))?;
    let client = Client::connect(config).map_err(|error| fail(&error))?;
    let worker = jobq_worker::build_worker(client, options, default_media_root)
        .map_err(|error| fail(&format!("{error:#}")))?;
    eprintln!(
        "jobq is up: server on {scheme}://{addr}, worker {} running {} (queues {})",
        worker.config().worker_id(),
        worker.job_types().join(", "),
        worker.config().queues().join(", ")
    );
    let token_flag = if has_token {
        " --token <producer or admin token>"
    } else {
        ""
    };
    eprintln!("try: jobq enqueue noop '{{\"sleep_ms\": 1000}}' --wait{token_flag}");
    worker
        .run(shutdown)
        .await
        .map_err(|error| Failure::new(exit::ERROR, error.to_string()))?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|entry| (*entry).to_owned()).collect()
    }

    #[test]
    fn the_local_worker_takes_a_worker_token_else_an_admin_one() {
        assert_eq!(worker_token(&[]), Ok(None));
        let tokens = entries(&[
            "producer:p-0123456789abcdef",
            "admin:a-0123456789abcdef",
            "worker:w-0123456789:abcdef",
        ]);
        assert_eq!(
            worker_token(&tokens),
            Ok(Some("w-0123456789:abcdef".to_owned()))
        );
        let tokens = entries(&["producer:p-0123456789abcdef", "admin:a-0123456789abcdef"]);
        assert_eq!(
            worker_token(&tokens),
            Ok(Some("a-0123456789abcdef".to_owned()))
        );
        let refused = worker_token(&entries(&["producer:p-0123456789abcdef"]));
        assert!(refused.is_err_and(|error| error.contains("--no-worker")));
    }
}
