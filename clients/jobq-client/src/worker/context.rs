//! The per-job context a handler gets, and the runtime's record of a running job.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use jobq_proto::v1 as pb;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handler::JobError;
use super::logs::JobLogger;
use crate::client::{Client, Enqueued};
use crate::convert::json_value;
use crate::error::ClientError;

/// Why the runtime asked a handler to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// A client cancelled the job.
    Cancelled,
    /// The attempt ran past the job's timeout.
    TimedOut,
    /// The lease is no longer this worker's (expired while the server was
    /// unreachable, or the job moved on); nothing will be reported.
    LeaseLost,
    /// The worker is shutting down; the job is released to another worker.
    Shutdown,
}

impl StopCause {
    /// A short description for logs and errors.
    pub fn describe(self) -> &'static str {
        match self {
            StopCause::Cancelled => "cancelled",
            StopCause::TimedOut => "timed out",
            StopCause::LeaseLost => "lease lost",
            StopCause::Shutdown => "worker shutting down",
        }
    }

    pub(crate) fn from_reason(reason: pb::StopReason) -> Self {
        match reason {
            pb::StopReason::Cancelled => StopCause::Cancelled,
            pb::StopReason::TimedOut => StopCause::TimedOut,
            pb::StopReason::LeaseLost | pb::StopReason::Unspecified => StopCause::LeaseLost,
        }
    }
}

/// Progress waiting to go out with the next heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Progress {
    pub percent: i32,
    pub message: String,
}

/// The runtime's record of one leased job, shared by its supervisor, its
/// context and the heartbeat loop.
#[derive(Debug)]
pub(crate) struct ActiveJob {
    pub lease: pb::JobLease,
    pub token: CancellationToken,
    stop: OnceLock<StopCause>,
    progress: Mutex<Option<Progress>>,
    /// Local estimate of when the server expires the lease unless renewed.
    lease_valid_until: Mutex<Instant>,
}

impl ActiveJob {
    pub fn new(lease: pb::JobLease, lease_valid_until: Instant) -> Self {
        Self {
            lease,
            token: CancellationToken::new(),
            stop: OnceLock::new(),
            progress: Mutex::new(None),
            lease_valid_until: Mutex::new(lease_valid_until),
        }
    }

    pub fn job_id(&self) -> &str {
        &self.lease.job_id
    }

    /// Records why the job must stop (the first cause wins) and fires its token.
    pub fn stop(&self, cause: StopCause) {
        let _ = self.stop.set(cause);
        self.token.cancel();
    }

    pub fn stop_cause(&self) -> Option<StopCause> {
        self.stop.get().copied()
    }

    pub fn set_progress(&self, progress: Progress) {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner) = Some(progress);
    }

    pub fn take_progress(&self) -> Option<Progress> {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Puts back progress a failed heartbeat did not deliver, unless newer is waiting.
    pub fn restore_progress(&self, progress: Progress) {
        let mut pending = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.is_none() {
            *pending = Some(progress);
        }
    }

    pub fn renew(&self, until: Instant) {
        *self
            .lease_valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }

    pub fn lease_valid_until(&self) -> Instant {
        *self
            .lease_valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything a handler gets for one attempt of one job. Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    job: pb::Job,
    attempt_deadline: Option<SystemTime>,
    active: Arc<ActiveJob>,
    logger: JobLogger,
    client: Client,
    worker_id: String,
    progress_wake: Arc<Notify>,
    last_logged_percent: AtomicI32,
    last_logged_at_ms: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.inner.job.id)
            .field("type", &self.inner.job.r#type)
            .field("attempt", &self.inner.job.attempt)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    pub(crate) fn new(
        job: pb::Job,
        attempt_deadline: Option<SystemTime>,
        active: Arc<ActiveJob>,
        logger: JobLogger,
        client: Client,
        worker_id: String,
        progress_wake: Arc<Notify>,
    ) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                job,
                attempt_deadline,
                active,
                logger,
                client,
                worker_id,
                progress_wake,
                last_logged_percent: AtomicI32::new(-100),
                last_logged_at_ms: AtomicU64::new(0),
                started: Instant::now(),
            }),
        }
    }

    /// The job as leased (state running, attempt counted).
    pub fn job(&self) -> &pb::Job {
        &self.inner.job
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.inner.job.id
    }

    /// The job's type.
    pub fn job_type(&self) -> &str {
        &self.inner.job.r#type
    }

    /// This attempt's number in the current run, from 1 (a released
    /// attempt is not counted; a requeued job starts again from 1).
    pub fn attempt(&self) -> i32 {
        self.inner.job.attempt
    }

    /// Whether a failure now would dead-letter the job.
    pub fn is_last_attempt(&self) -> bool {
        self.inner.job.attempt >= self.inner.job.max_attempts
    }

    /// The id of the worker running it.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// When this attempt must have ended (started + the job's timeout).
    pub fn deadline(&self) -> Option<SystemTime> {
        self.inner.attempt_deadline
    }

    /// The payload as JSON (`{}` when the job has none).
    pub fn payload_json(&self) -> serde_json::Value {
        self.inner
            .job
            .payload
            .as_ref()
            .map_or_else(|| serde_json::json!({}), json_value)
    }

    /// The payload decoded into `T`; a payload that does not fit is a fatal error.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.payload_json())
            .map_err(|error| JobError::fatal(format!("invalid payload: {error}")))
    }

    /// One field of a JSON-object payload; missing or of the wrong type is a fatal error.
    pub fn payload_field<T: DeserializeOwned>(&self, name: &str) -> Result<T, JobError> {
        let mut payload: serde_json::Map<String, serde_json::Value> = self.payload()?;
        let value = payload
            .remove(name)
            .ok_or_else(|| JobError::fatal(format!("payload.{name} is required")))?;
        serde_json::from_value(value)
            .map_err(|error| JobError::fatal(format!("payload.{name}: {error}")))
    }

    /// The job's log: lines go to the server in batches.
    pub fn log(&self) -> &JobLogger {
        &self.inner.logger
    }

    /// Reports progress, 0..100 (clamped), with a short message. It reaches
    /// the server with the next heartbeat (sent early, at most once per the
    /// worker's progress interval) and is written to the job's log now and
    /// then as a `progress` line.
    pub fn progress(&self, percent: i32, message: impl Into<String>) {
        let percent = percent.clamp(0, 100);
        let mut message = message.into();
        if message.len() > 1024 {
            let mut cut = 1024;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.inner.active.set_progress(Progress {
            percent,
            message: message.clone(),
        });
        self.inner.progress_wake.notify_one();

        // A progress line in the log for every 10 points, the end, or every 5 s.
        let now_ms = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last_percent = self.inner.last_logged_percent.load(Ordering::Relaxed);
        let last_at = self.inner.last_logged_at_ms.load(Ordering::Relaxed);
        let worth_a_line = (percent - last_percent).abs() >= 10
            || (percent == 100 && last_percent != 100)
            || now_ms.saturating_sub(last_at) >= 5_000;
        if worth_a_line {
            self.inner
                .last_logged_percent
                .store(percent, Ordering::Relaxed);
            self.inner
                .last_logged_at_ms
                .store(now_ms, Ordering::Relaxed);
            self.inner.logger.progress(Some(percent), message);
        }
    }

    /// Fires when the job must stop: cancelled, timed out, lease lost, or the
    /// worker shutting down. Hand it to anything long-running.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.active.token.clone()
    }

    /// Resolves when the job must stop; see [`JobContext::cancellation_token`].
    pub async fn cancelled(&self) {
        self.inner.active.token.cancelled().await;
    }

    /// Whether the job has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.active.token.is_cancelled()
    }

    /// Why the job was asked to stop, once it was.
    pub fn stop_cause(&self) -> Option<StopCause> {
        self.inner.active.stop_cause()
    }

    /// A [`JobError`] describing why the job stopped (for a handler that
    /// noticed the cancellation and gives up).
    pub fn stopped_error(&self) -> JobError {
        let cause = self
            .stop_cause()
            .map_or("the job was stopped", StopCause::describe);
        JobError::retryable(cause)
    }

    /// Enqueues a child job: `parent_id` is set to this job (and the
    /// traceparent carried over) unless the spec says otherwise.
    pub async fn enqueue_child(
        &self,
        spec: impl Into<pb::JobSpec>,
    ) -> Result<Enqueued, ClientError> {
        let mut spec = spec.into();
        if spec.parent_id.is_empty() {
            spec.parent_id = self.inner.job.id.clone();
        }
        if spec.traceparent.is_empty() {
            spec.traceparent = self.inner.job.traceparent.clone();
        }
        self.inner.client.enqueue(spec).await
    }

    /// The client the worker uses, to read other jobs or enqueue unrelated ones.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}
