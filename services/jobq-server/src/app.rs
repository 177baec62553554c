//! Wiring: `App::start` opens the store, starts the background loops and
//! serves every gRPC service on one listener. `main` and the tests both use it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jobq_proto::v1::job_queue_service_server::JobQueueServiceServer;
use jobq_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::server::HealthReporter;

use crate::auth;
use crate::background;
use crate::config::Config;
use crate::dashboard;
use crate::domain::{JobHistory, JobObserver, JobQueue, JobTally, SystemClock};
use crate::grpc::{QueueApi, WatchPresence, WorkerApi, limits};
use crate::logs::LogStore;
use crate::logs::reader::LogReader;
use crate::net;
use crate::store::{DatabaseKind, SqlStore, peers};
use crate::telemetry::lifecycle::{LifecycleSpans, Observers};
use crate::telemetry::metrics::ServerMetrics;
use crate::telemetry::rpc::RpcLayer;

/// The server, assembled.
pub struct App;

/// A started server: its address and how to stop it.
pub struct RunningServer {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    health: HealthReporter,
    /// Fires first on shutdown: long polls return, background loops stop.
    stop: CancellationToken,
    /// Fires second: tonic stops accepting and drains in-flight calls.
    stop_serving: CancellationToken,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    background: TaskTracker,
    /// Tasks feeding server streams (log follows, job watches).
    streams: TaskTracker,
    store: Arc<SqlStore>,
    grace: Duration,
}

/// Every service name registered with the health service.
const SERVICE_NAMES: [&str; 3] = ["", "jobq.v1.JobQueueService", "jobq.v1.WorkerService"];

impl App {
    /// Opens the database in `config`, migrates it, and serves on `listener`.
    pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<RunningServer> {
        config.validate().map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        check_writable(&config.data_dir)?;
        let store = Arc::new(
            SqlStore::open(
                &config.effective_database_url(),
                config.sqlite_synchronous,
                config.database_connect_timeout,
            )
            .await
            .context("opening the database")?,
        );
        let record = store
            .log_record(&config.data_dir)
            .context("opening the job log directory")?;
        let logs = Arc::new(LogStore::new(record, config.log_limits()));
        let stop = CancellationToken::new();
        let queue = Arc::new(JobQueue::new(
            store.clone(),
            logs.clone(),
            Arc::new(SystemClock),
            config.job_defaults(),
            config.limits(),
            stop.child_token(),
        ));

        let background = TaskTracker::new();
        let tally = Arc::new(JobTally::default());
        // Counted before anything is served, so no change overlaps the count.
        background::count_jobs(&queue, &tally).await;
        let stats = background::stats_feed(
            queue.clone(),
            tally.clone(),
            config.metrics_recount,
            &background,
            stop.child_token(),
        );
        let metrics = config.metrics_listen.map(|_| {
            let metrics = ServerMetrics::new(
                &queue,
                &logs,
                tally.clone(),
                store.connection().clone(),
                store.sqlite_file(),
            );
            store.time_statements(metrics.statement_histogram());
            metrics
        });
        // Each start writes history as a new replica: rows of a run before
        // a restart are never overwritten, reads sum them.
        let history = Arc::new(JobHistory::new(
            store.clone(),
            Arc::new(SystemClock),
            uuid::Uuid::new_v4().to_string(),
            config.history_retention,
        ));
        background.spawn(background::history(history.clone(), stop.child_token()));
        let mut observers: Vec<Arc<dyn JobObserver>> =
            vec![Arc::new(LifecycleSpans), tally, history.clone()];
        if let Some(metrics) = &metrics {
            observers.push(metrics.clone());
        }
        queue.set_observer(Arc::new(Observers(observers)));
        let metrics_addr = match (config.metrics_listen, &metrics) {
            (Some(address), Some(metrics)) => Some(
                jobq_telemetry::metrics::spawn(
                    address,
                    metrics.registry(),
                    stop.clone().cancelled_owned(),
                )
                .await?,
            ),
            _ => None,
        };
        let presence = if store.kind() == DatabaseKind::Postgres {
            let peers = peers::start(
                &config.effective_database_url(),
                store.connection().clone(),
                queue.clone(),
                logs.clone(),
                &background,
                stop.child_token(),
            );
            queue.set_peers(peers.clone());
            WatchPresence::new(Some(peers))
        } else {
            WatchPresence::new(None)
        };
        background.spawn(background::reaper(
            queue.clone(),
            config.reaper_interval,
            stop.child_token(),
        ));
        background.spawn(background::promoter(queue.clone(), stop.child_token()));
        background.spawn(background::scheduler(queue.clone(), stop.child_token()));
        background.spawn(background::retention(
            queue.clone(),
            config.retention_finished,
            config.retention_dead,
            stop.child_token(),
        ));

        let (health, health_service) = tonic_health::server::health_reporter();
        for name in SERVICE_NAMES {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        background.spawn(background::database_health(
            queue.clone(),
            health.clone(),
            &SERVICE_NAMES,
            stop.child_token(),
        ));
        let tls = match config.tls_files() {
            Some(files) => {
                let tls = crate::tls::TlsState::load(files).context("loading TLS")?;
                background.spawn(crate::tls::watch(
                    tls.clone(),
                    config.tls_reload_interval,
                    stop.child_token(),
                ));
                Some(tls)
            }
            None => None,
        };
        background.close();
        let streams = TaskTracker::new();

        // grpcurl 1.8 speaks only v1alpha reflection; buf curl speaks v1.
        // The descriptor set holds google.rpc's error details too, so
        // grpcurl can print them.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(jobq_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building reflection v1alpha")?;

        let local_addr = listener.local_addr().context("reading the bound address")?;
        let stop_serving = CancellationToken::new();
        let serving_stopped = stop_serving.clone();
        let tokens =
            Arc::new(auth::Tokens::parse(&config.auth_tokens).map_err(anyhow::Error::msg)?);
        if tokens.is_empty() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                %local_addr,
                "SERVING WITHOUT AUTHENTICATION on a non-loopback address (--insecure): \
                 anyone who can reach it can read, change and delete every job; \
                 give --auth-token role:token entries"
            );
        }
        let message_limit = config.max_message_bytes;
        let mut grpc = Routes::builder();
        grpc.add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(
                JobQueueServiceServer::new(
                    QueueApi::new(
                        queue.clone(),
                        LogReader::new(queue.clone(), logs.clone()),
                        streams.clone(),
                        presence,
                        stats,
                    )
                    .with_history(history),
                )
                .max_decoding_message_size(message_limit)
                .max_encoding_message_size(message_limit),
                auth::interceptor(tokens.clone()),
            ))
            .add_service(InterceptedService::new(
                WorkerServiceServer::new(WorkerApi::new(queue, logs))
                    .max_decoding_message_size(message_limit)
                    .max_encoding_message_size(message_limit),
                auth::interceptor(tokens),
            ));
        // grpc-web in front of the gRPC methods only (it refuses other
        // HTTP/1.1 requests); everything that is not a method is the dashboard.
        let routes = grpc
            .routes()
            .into_axum_router()
            // Inside grpc-web: the layer sees gRPC's own status trailers.
            .route_layer(RpcLayer::new(metrics))
            .route_layer(tonic_web::GrpcWebLayer::new())
            .fallback(dashboard::serve)
            .layer(tower::util::MapResponseLayer::new(move |response| {
                limits::name_message_limit(response, message_limit)
            }));
        let router = tonic::transport::Server::builder()
            // HTTP/1.1 for grpc-web clients (browsers) and the dashboard.
            .accept_http1(true)
            // A peer that stops answering pings is gone: its connection is closed.
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .layer(tower::util::MapRequestLayer::new(auth::record_path))
            .add_routes(Routes::from(routes));
        let limits = config.connection_limits();
        tracing::debug!(?limits, "connection limits");
        let incoming = net::incoming(listener, limits, serving_stopped.clone());
        let serve = match &tls {
            Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::tls::accept(incoming, tls),
                serving_stopped.cancelled_owned(),
            )),
            None => tokio::spawn(
                router.serve_with_incoming_shutdown(incoming, serving_stopped.cancelled_owned()),
            ),
        };
        tracing::info!(%local_addr, tls = tls.is_some(), "jobq server started");
        Ok(RunningServer {
            local_addr,
            metrics_addr,
            health,
            stop,
            stop_serving,
            serve,
            background,
            streams,
            store,
            grace: config.shutdown_grace,
        })
    }
}

/// Fails at once, and says why, when the data dir cannot be written (the
/// database would only say it cannot open its file, after retrying).
fn check_writable(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let probe = data_dir.join(".jobq-write-check");
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::ReadOnlyFilesystem => anyhow::bail!(
            "the data dir {} is on a read-only file system: the server writes its database and job logs there",
            data_dir.display()
        ),
        Err(error) => Err(error).with_context(|| {
            format!(
                "the data dir {} is not writable: the server writes its database and job logs there",
                data_dir.display()
            )
        }),
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where Prometheus metrics are served, when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops gracefully: health turns NOT_SERVING, waiting long polls return,
    /// in-flight calls finish (within the grace period), the database closes.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for name in SERVICE_NAMES {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        self.stop.cancel();
        self.stop_serving.cancel();
        let mut serve = self.serve;
        let served = match tokio::time::timeout(self.grace, &mut serve).await {
            Ok(joined) => joined
                .context("server task panicked")?
                .context("serving gRPC"),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "in-flight calls did not finish within the grace period");
                serve.abort();
                Ok(())
            }
        };
        self.background.wait().await;
        self.streams.close();
        self.streams.wait().await;
        match Arc::try_unwrap(self.store) {
            Ok(store) => store.close().await.context("closing the database")?,
            Err(_) => {
                tracing::warn!("database still in use at shutdown; leaving it to close on exit")
            }
        }
        tracing::info!("jobq server stopped");
        served
    }

    /// Runs until the server stops on its own (it only does on a fatal error).
    pub async fn wait_for_exit(&mut self) -> anyhow::Result<()> {
        (&mut self.serve)
            .await
            .context("server task panicked")?
            .context("serving gRPC")
    }
}
