//! Server configuration: flags, each also a `JOBQ_*` environment variable,
//! with defaults that work out of the box.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::domain::{Defaults, Limits, RetryPolicy};

/// How the server writes its own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// How SQLite syncs commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteDurability {
    /// Every commit is on disk before the client hears OK.
    Full,
    /// Commits are on disk at WAL checkpoints; safe against a server crash.
    Normal,
}

/// Everything `jobq-server` can be told.
#[derive(Debug, Clone, Parser)]
#[command(name = "jobq-server", version, about = "The jobq queue server")]
pub struct Config {
    /// Address to serve gRPC, grpc-web and the dashboard on. Port 0 picks a free port.
    #[arg(long, env = "JOBQ_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database and job logs.
    #[arg(long, env = "JOBQ_DATA_DIR", default_value = "jobq-data")]
    pub data_dir: PathBuf,

    /// Database URL (sqlite://... or postgres://...). Default: jobq.db in the
    /// data dir. A PostgreSQL on this machine is reached without TLS unless
    /// the URL has an sslmode (or PGSSLMODE is set).
    #[arg(long, env = "JOBQ_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Bearer tokens as role:token (roles: admin, producer, worker); several
    /// by repeating the flag or separating with commas. None: no authentication.
    #[arg(
        long = "auth-token",
        env = "JOBQ_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,

    /// SQLite durability: `full` syncs every commit to disk before answering
    /// (survives power loss); `normal` syncs at checkpoints (survives a crash
    /// of the server, not of the machine) and commits several times faster.
    #[arg(
        long,
        env = "JOBQ_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "full"
    )]
    pub sqlite_synchronous: SqliteDurability,

    /// Serve TLS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "JOBQ_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "JOBQ_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: clients must present a certificate signed by this CA
    /// (PEM). Its subject CN (else first DNS name) names the client in the
    /// server's log; tokens still decide what it may call.
    #[arg(long, env = "JOBQ_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// How often the TLS certificate and key files are checked for changes.
    #[arg(long, env = "JOBQ_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// Allow listening on a non-loopback address without authentication.
    #[arg(long, env = "JOBQ_INSECURE")]
    pub insecure: bool,

    /// Attempts a job gets when its spec does not say.
    #[arg(long, env = "JOBQ_DEFAULT_MAX_ATTEMPTS", default_value_t = 25,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub default_max_attempts: i32,

    /// Longest run time of one attempt when the job does not say.
    #[arg(long, env = "JOBQ_DEFAULT_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub default_timeout: Duration,

    /// Backoff after the first failed attempt, doubled each time.
    #[arg(long, env = "JOBQ_DEFAULT_BACKOFF_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub default_backoff_base: Duration,

    /// Longest backoff between attempts.
    #[arg(long, env = "JOBQ_DEFAULT_BACKOFF_MAX", default_value = "1h", value_parser = humantime::parse_duration)]
    pub default_backoff_max: Duration,

    /// Lease length when a worker does not ask for one.
    #[arg(long, env = "JOBQ_LEASE_DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How often the reaper looks for expired leases and timed-out attempts.
    #[arg(long, env = "JOBQ_REAPER_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reaper_interval: Duration,

    /// Largest job payload or result, as JSON text, in bytes.
    #[arg(long, env = "JOBQ_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub max_payload_bytes: usize,

    /// Largest gRPC message the server accepts or sends, in bytes; a larger
    /// request is refused with RESOURCE_EXHAUSTED. At least the payload limit
    /// plus 64 KiB; clients receiving lists of full jobs need as much.
    #[arg(long, env = "JOBQ_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// How long the server keeps trying to reach its database at start
    /// before it gives up (it says where and why while it tries).
    #[arg(long, env = "JOBQ_DATABASE_CONNECT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub database_connect_timeout: Duration,

    /// Longest log line kept whole; longer ones are cut and marked.
    #[arg(long, env = "JOBQ_MAX_LOG_LINE_BYTES", default_value_t = 16 * 1024)]
    pub max_log_line_bytes: usize,

    /// Most log bytes kept per job; further lines are dropped and counted.
    #[arg(long, env = "JOBQ_MAX_JOB_LOG_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_job_log_bytes: u64,

    /// Succeeded and cancelled jobs (and their logs) are purged this long after they finish.
    #[arg(long, env = "JOBQ_RETENTION_FINISHED", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention_finished: Duration,

    /// Dead jobs are purged this long after they died.
    #[arg(long, env = "JOBQ_RETENTION_DEAD", default_value = "30days", value_parser = humantime::parse_duration)]
    pub retention_dead: Duration,

    /// Per-minute job history (counts, wait and run times) is kept this long.
    #[arg(long, env = "JOBQ_HISTORY_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub history_retention: Duration,

    /// How long shutdown waits for in-flight calls before it gives up on them.
    #[arg(long, env = "JOBQ_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format of the server's own log (stderr).
    #[arg(long, env = "JOBQ_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, env = "JOBQ_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// How often jobs per queue and state are counted again in the
    /// database, for the stats streams and the metrics (between counts they
    /// follow committed changes; other replicas' only while watched).
    #[arg(long, env = "JOBQ_METRICS_RECOUNT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub metrics_recount: Duration,

    /// Open connections at most (default: the open-file limit less 128, so
    /// connections alone never run the server out of descriptors); over
    /// it, new connections are closed at once.
    #[arg(long, env = "JOBQ_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open connections from one IP address at most.
    #[arg(long, env = "JOBQ_MAX_CONNECTIONS_PER_PEER", default_value_t = 512)]
    pub max_connections_per_peer: usize,

    /// How long a new connection has to start its first request before it is closed.
    #[arg(long, env = "JOBQ_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub first_request_timeout: Duration,

    /// How often an idle HTTP/2 connection is pinged.
    #[arg(long, env = "JOBQ_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "JOBQ_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Streams (calls) open at once on one HTTP/2 connection at most.
    #[arg(long, env = "JOBQ_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Export traces over OTLP/gRPC to this endpoint (default: the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT; neither: no export).
    #[arg(long, env = "JOBQ_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// The built-in defaults, whatever the environment says (no `JOBQ_*`
    /// variable is read), with the given data dir and a free loopback port:
    /// what tests start from.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Config::command().mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["jobq-server"]);
        let mut config = match Config::from_arg_matches(&matches) {
            Ok(config) => config,
            // The defaults parse; a failure here is a bug in the flags above.
            Err(error) => panic!("built-in defaults do not parse: {error}"),
        };
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = data_dir.into();
        config
    }

    /// Checks what clap cannot: combinations and the safety rule on open addresses.
    pub fn validate(&self) -> Result<(), String> {
        let tokens = crate::auth::Tokens::parse(&self.auth_tokens)?;
        if !self.listen.ip().is_loopback() && tokens.is_empty() && !self.insecure {
            return Err(format!(
                "refusing to listen on non-loopback address {} without authentication; \
                 pass --insecure (JOBQ_INSECURE=true) to do it anyway",
                self.listen
            ));
        }
        if self.history_retention.is_zero() {
            return Err("--history-retention must be greater than zero".into());
        }
        if self.default_backoff_base.is_zero() {
            return Err("--default-backoff-base must be greater than zero".into());
        }
        if self.default_backoff_max < self.default_backoff_base {
            return Err("--default-backoff-max must be at least --default-backoff-base".into());
        }
        if self.max_log_line_bytes < 64 {
            return Err("--max-log-line-bytes must be at least 64".into());
        }
        if self.max_message_bytes < self.max_payload_bytes + 64 * 1024 {
            return Err(format!(
                "--max-message-bytes ({}) must be at least --max-payload-bytes ({}) plus 64 KiB",
                self.max_message_bytes, self.max_payload_bytes
            ));
        }
        if !crate::domain::LEASE_RANGE.contains(&self.lease_duration) {
            return Err("--lease-duration must be between 1s and 1h".into());
        }
        if self.reaper_interval.is_zero() {
            return Err("--reaper-interval must be greater than zero".into());
        }
        if self.max_connections == Some(0) || self.max_connections_per_peer == 0 {
            return Err(
                "--max-connections and --max-connections-per-peer must be at least 1".into(),
            );
        }
        if self.first_request_timeout.is_zero()
            || self.http2_keepalive_interval.is_zero()
            || self.http2_keepalive_timeout.is_zero()
        {
            return Err(
                "--first-request-timeout and --http2-keepalive-* must be greater than zero".into(),
            );
        }
        if self.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be at least 1".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
        }
        if self.tls_reload_interval < Duration::from_millis(100) {
            return Err("--tls-reload-interval must be at least 100ms".into());
        }
        if self.metrics_recount < Duration::from_secs(1) {
            return Err("--metrics-recount must be at least 1s".into());
        }
        Ok(())
    }

    /// How connections are admitted.
    pub fn connection_limits(&self) -> crate::net::ConnectionLimits {
        crate::net::ConnectionLimits {
            max_connections: self
                .max_connections
                .unwrap_or_else(crate::net::default_max_connections),
            max_per_peer: self.max_connections_per_peer,
            first_bytes_timeout: self.first_request_timeout,
        }
    }

    /// The database URL in force: the flag, or a SQLite file in the data
    /// dir (a PostgreSQL on this machine without TLS, unless asked for).
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => crate::store::without_loopback_tls(url),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("jobq.db").display()
            ),
        }
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Job defaults for the domain.
    pub fn job_defaults(&self) -> Defaults {
        Defaults {
            max_attempts: self.default_max_attempts,
            timeout: self.default_timeout,
            retry_policy: RetryPolicy {
                base_backoff: self.default_backoff_base,
                max_backoff: self.default_backoff_max,
            },
            lease_duration: self.lease_duration,
        }
    }

    /// Job log limits.
    pub fn log_limits(&self) -> crate::logs::LogLimits {
        crate::logs::LogLimits {
            max_line_bytes: self.max_log_line_bytes,
            max_job_bytes: self.max_job_log_bytes,
        }
    }

    /// Input limits for the domain.
    pub fn limits(&self) -> Limits {
        Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_message_bytes: self.max_message_bytes,
            ..Limits::default()
        }
    }
}
