//! [`WorkerConfig`]: how a worker leases, heartbeats and shuts down.

use std::time::Duration;

use crate::error::ClientError;

/// Longest lease the server grants.
const MAX_LEASE: Duration = Duration::from_secs(3600);
/// Longest long poll the server accepts.
const MAX_POLL_WAIT: Duration = Duration::from_secs(60);

/// How a [`super::Worker`] behaves. Build one with [`WorkerConfig::builder`];
/// every knob has a working default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub(crate) worker_id: String,
    pub(crate) hostname: String,
    pub(crate) version: String,
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) max_lease_batch: usize,
    pub(crate) lease_ahead: usize,
    pub(crate) lease_ahead_wait: Duration,
    pub(crate) poll_wait: Duration,
    pub(crate) lease_duration: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) progress_interval: Duration,
    pub(crate) grace_period: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) log_flush_interval: Duration,
    pub(crate) log_buffer_lines: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) report_linger: Duration,
}

impl WorkerConfig {
    /// A builder with the defaults: 4 jobs at once from queue `default`,
    /// 30 s leases renewed every 10 s, 30 s grace period at shutdown.
    pub fn builder() -> WorkerConfigBuilder {
        WorkerConfigBuilder {
            config: WorkerConfig {
                worker_id: default_worker_id(),
                hostname: hostname(),
                version: concat!("jobq-client/", env!("CARGO_PKG_VERSION")).to_owned(),
                queues: vec!["default".to_owned()],
                concurrency: 4,
                max_lease_batch: 100,
                lease_ahead: usize::MAX,
                lease_ahead_wait: Duration::from_secs(1),
                poll_wait: Duration::from_secs(20),
                lease_duration: Duration::from_secs(30),
                heartbeat_interval: Duration::ZERO,
                progress_interval: Duration::from_secs(1),
                grace_period: Duration::from_secs(30),
                cancel_grace: Duration::from_secs(10),
                log_flush_interval: Duration::from_millis(200),
                log_buffer_lines: 10_000,
                reconnect_min: Duration::from_millis(100),
                reconnect_max: Duration::from_secs(10),
                report_linger: Duration::from_millis(2),
            },
        }
    }

    /// The id this worker leases under.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Queues it leases from.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Most jobs run at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Lease length asked for, renewed by every heartbeat.
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    /// Time between heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// How long running jobs may take to finish after a graceful shutdown starts.
    pub fn grace_period(&self) -> Duration {
        self.grace_period
    }
}

/// Builds a [`WorkerConfig`]; [`WorkerConfigBuilder::build`] checks it.
#[derive(Debug, Clone)]
pub struct WorkerConfigBuilder {
    config: WorkerConfig,
}

impl WorkerConfigBuilder {
    /// The worker's id (default `HOSTNAME-PID-RANDOM`). At most 128 bytes.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.config.worker_id = id.into();
        self
    }

    /// Host name reported to the server (default: the kernel's host name).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.config.hostname = hostname.into();
        self
    }

    /// Software version reported to the server (default `jobq-client/VERSION`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.config.version = version.into();
        self
    }

    /// Queues to lease from (default `["default"]`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Most jobs run at once (default 4).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency;
        self
    }

    /// Most jobs leased ahead of the free slots (default: the concurrency).
    /// The worker leases ahead only as many as it expects to end during one
    /// lease round trip, so only short jobs are leased ahead; 0 leases only
    /// for free slots.
    pub fn lease_ahead(mut self, jobs: usize) -> Self {
        self.config.lease_ahead = jobs;
        self
    }

    /// How long a job leased ahead waits for a slot before it is handed
    /// back, its attempt not used up (default 1 s; less than the lease).
    /// Its timeout counts from its lease, so this much of it may pass
    /// before it starts.
    pub fn lease_ahead_wait(mut self, wait: Duration) -> Self {
        self.config.lease_ahead_wait = wait;
        self
    }

    /// Most jobs asked for in one LeaseJobs call (default 100, the server's
    /// most; a call never asks for more than there are free slots).
    pub fn max_lease_batch(mut self, jobs: usize) -> Self {
        self.config.max_lease_batch = jobs;
        self
    }

    /// How long one LeaseJobs long poll waits for a job (default 20 s, at most 60 s).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.config.poll_wait = wait;
        self
    }

    /// Lease length (default 30 s; 1 s..1 h). A worker that stops
    /// heartbeating loses its jobs this long after its last heartbeat.
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.config.lease_duration = lease;
        self
    }

    /// Time between heartbeats (default a third of the lease).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// Shortest time between two heartbeats sent early to report progress (default 1 s).
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.config.progress_interval = interval;
        self
    }

    /// How long running jobs may take to finish once a graceful shutdown
    /// starts; the rest are cancelled and released (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.config.grace_period = grace;
        self
    }

    /// How long a cancelled handler may take to return before it is aborted (default 10 s).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.config.cancel_grace = grace;
        self
    }

    /// Longest time a log line waits before it is pushed (default 200 ms).
    pub fn log_flush_interval(mut self, interval: Duration) -> Self {
        self.config.log_flush_interval = interval;
        self
    }

    /// Log lines kept per job while the server cannot take them (default
    /// 10,000); beyond that lines are dropped and the drop is logged.
    pub fn log_buffer_lines(mut self, lines: usize) -> Self {
        self.config.log_buffer_lines = lines;
        self
    }

    /// Backoff while the server is unreachable: first and longest wait
    /// (default 100 ms and 10 s, doubling, with jitter).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.reconnect_min = min;
        self.config.reconnect_max = max;
        self
    }

    /// How long an outcome waits for others to be reported with it (default
    /// 2 ms): one CompleteJobs call for many jobs instead of a call each.
    /// Zero sends whatever is waiting at once.
    pub fn report_linger(mut self, linger: Duration) -> Self {
        self.config.report_linger = linger;
        self
    }

    /// The checked configuration.
    pub fn build(mut self) -> Result<WorkerConfig, ClientError> {
        let config = &mut self.config;
        let invalid = |message: String| Err(ClientError::Config(message));
        if config.worker_id.is_empty()
            || config.worker_id.len() > 128
            || config.worker_id.chars().any(char::is_control)
        {
            return invalid(format!(
                "worker id {:?} must be 1..128 bytes without control characters",
                config.worker_id
            ));
        }
        if config.hostname.len() > 128 || config.version.len() > 128 {
            return invalid("the host name and version must be at most 128 bytes".into());
        }
        if config.queues.is_empty() || config.queues.iter().any(String::is_empty) {
            return invalid("at least one queue, and no empty queue name, is needed".into());
        }
        if config.concurrency == 0 {
            return invalid("concurrency must be at least 1".into());
        }
        config.lease_ahead = config.lease_ahead.min(config.concurrency);
        if !(1..=100).contains(&config.max_lease_batch) {
            return invalid("the lease batch must be 1..100 jobs".into());
        }
        if config.poll_wait > MAX_POLL_WAIT {
            return invalid(format!("the poll wait must be at most {MAX_POLL_WAIT:?}"));
        }
        if config.lease_duration < Duration::from_secs(1) || config.lease_duration > MAX_LEASE {
            return invalid("the lease duration must be 1s..1h".into());
        }
        if config.lease_ahead_wait.is_zero() || config.lease_ahead_wait >= config.lease_duration {
            return invalid(
                "the lease-ahead wait must be greater than zero and shorter than the lease".into(),
            );
        }
        if config.heartbeat_interval.is_zero() {
            config.heartbeat_interval = config.lease_duration / 3;
        }
        if config.heartbeat_interval >= config.lease_duration {
            return invalid("the heartbeat interval must be shorter than the lease".into());
        }
        if config.log_flush_interval.is_zero() || config.log_buffer_lines == 0 {
            return invalid("the log flush interval and buffer must be greater than zero".into());
        }
        if config.report_linger > Duration::from_secs(1) {
            return invalid("the report linger must be at most 1s".into());
        }
        if config.reconnect_min.is_zero() || config.reconnect_max < config.reconnect_min {
            return invalid("the reconnect backoff needs 0 < min <= max".into());
        }
        Ok(self.config)
    }
}

/// `HOSTNAME-PID-XXXXXX`: unique per process, readable in ListWorkers.
fn default_worker_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", hostname(), std::process::id(), &random[..6])
}

/// The machine's host name from the kernel (no environment read), cleaned to
/// `[A-Za-z0-9.-]`; `worker` when it cannot be read.
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "worker".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_heartbeat_is_a_third_of_the_lease() -> Result<(), ClientError> {
        let config = WorkerConfig::builder()
            .lease_duration(Duration::from_secs(9))
            .build()?;
        assert_eq!(config.heartbeat_interval(), Duration::from_secs(3));
        assert!(config.worker_id().contains(&std::process::id().to_string()));
        Ok(())
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(WorkerConfig::builder().concurrency(0).build().is_err());
        assert!(
            WorkerConfig::builder()
                .queues(Vec::<String>::new())
                .build()
                .is_err()
        );
        assert!(
            WorkerConfig::builder()
                .lease_duration(Duration::from_millis(10))
                .build()
                .is_err()
        );
        assert!(
            WorkerConfig::builder()
                .lease_duration(Duration::from_secs(5))
                .heartbeat_interval(Duration::from_secs(5))
                .build()
                .is_err()
        );
    }
}
