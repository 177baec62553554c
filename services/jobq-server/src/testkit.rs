//! A queue for unit tests: the real store on a SQLite file of its own (with
//! the real migrations), the real job log, and a manual clock, so the rules
//! (leases, backoff, the reaper, the promoter, dependencies) are tested by
//! moving time instead of waiting for it. (An in-memory SQLite cannot be
//! shared by the pool's connections without shared-cache table locks.)

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::config::SqliteDurability;
use crate::domain::{
    CompleteReport, Defaults, JobQueue, JobSpec, LeaseRequest, LeasedJob, Limits, ManualClock,
    RetryPolicy, WorkerRecord,
};
use crate::logs::{LogLimits, LogStore};
use crate::store::SqlStore;

/// A queue at a standstill until its clock is moved.
pub struct Fixture {
    /// The queue under test.
    pub queue: Arc<JobQueue>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// Its log.
    pub logs: Arc<LogStore>,
    _dir: TempDir,
}

/// 2026-01-01T00:00:00Z.
pub const START: i64 = 1_767_225_600_000;

impl Fixture {
    /// A fresh queue with the default job settings.
    pub async fn new() -> Self {
        Self::with_defaults(Defaults::default()).await
    }

    /// A fresh queue with `defaults`.
    pub async fn with_defaults(defaults: Defaults) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("jobq.db").display());
        let store = Arc::new(
            SqlStore::open(&url, SqliteDurability::Normal, Duration::from_secs(5))
                .await
                .expect("store"),
        );
        let record = store.log_record(dir.path()).expect("log record");
        let logs = Arc::new(LogStore::new(record, LogLimits::default()));
        let clock = Arc::new(ManualClock::at(START));
        let queue = Arc::new(JobQueue::new(
            store,
            logs.clone(),
            clock.clone(),
            defaults,
            Limits::default(),
            CancellationToken::new(),
        ));
        Self {
            queue,
            clock,
            logs,
            _dir: dir,
        }
    }

    /// The directory holding the queue's SQLite file (`jobq.db`).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Leases up to `max_jobs` from `default` for a minute, as worker `w1`.
    pub async fn lease(&self, max_jobs: u64) -> Vec<LeasedJob> {
        self.queue
            .lease(lease_request(max_jobs, Duration::from_secs(60)))
            .await
            .expect("lease")
    }

    /// Reports `leased` done, without a result; it must be accepted.
    pub async fn complete(&self, leased: &LeasedJob) {
        self.queue
            .complete_many(vec![CompleteReport {
                job_id: leased.job.id.clone(),
                lease_token: leased.lease_token.clone(),
                result: None,
            }])
            .await
            .expect("complete")
            .remove(0)
            .expect("completed");
    }

    /// Moves the clock.
    pub fn advance(&self, duration: Duration) {
        self.clock.advance(duration);
    }
}

/// A spec of type `noop` in queue `default`, with `max_attempts` and a 1 s base backoff.
pub fn spec(max_attempts: i32) -> JobSpec {
    JobSpec {
        job_type: "noop".into(),
        queue: "default".into(),
        payload: "{}".into(),
        payload_bytes: 2,
        priority: 0,
        run_at: None,
        delay: None,
        max_attempts,
        timeout: Duration::from_secs(3600),
        retry_policy: RetryPolicy {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        },
        unique_key: None,
        concurrency_key: None,
        concurrency_limit: 0,
        tags: Vec::new(),
        parent_id: None,
        traceparent: None,
        depends_on: Vec::new(),
        schedule_name: None,
    }
}

/// A lease request of worker `w1` for up to `max_jobs` jobs, answered at once.
pub fn lease_request(max_jobs: u64, lease: Duration) -> LeaseRequest {
    LeaseRequest {
        worker: WorkerRecord {
            worker_id: "w1".into(),
            hostname: "test".into(),
            version: "0".into(),
            queues: vec!["default".into()],
            types: Vec::new(),
            lease_duration: Some(lease),
            first_seen_at: 0,
            last_seen_at: 0,
        },
        max_jobs,
        wait: Duration::ZERO,
        lease_duration: Some(lease),
        max_payload_bytes: 4 * 1024 * 1024,
    }
}
