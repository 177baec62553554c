//! The worker runtime: register handlers, then [`Worker::run`] leases jobs and
//! runs them until it is told to stop.
//!
//! How it works:
//! - A concurrency slot (semaphore permit) is taken *before* each LeaseJobs
//!   long poll, which asks for as many jobs as there are free slots (up to the
//!   batch size): the worker never holds a job it cannot start.
//! - One heartbeat loop renews all leases in one call and forwards progress;
//!   its answers (cancelled, timed out, lease lost) fire the job's
//!   cancellation token.
//! - Each job runs in its own task under a supervisor that catches panics,
//!   enforces the attempt deadline and the cancel grace, flushes the job's log
//!   and reports the outcome, retrying while the server is unreachable.
//! - A graceful shutdown stops leasing, waits for running jobs up to the grace
//!   period, then cancels the rest and hands their leases back (ReleaseJobs).

mod backoff;
mod config;
mod context;
mod handler;
mod heartbeat;
mod logs;
mod shutdown;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jobq_proto::v1 as pb;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::{WorkerConfig, WorkerConfigBuilder, hostname};
pub use context::{JobContext, StopCause};
pub use handler::{FnHandler, Handler, JobError, JobResult, ResultExt, handler_fn};
pub use logs::JobLogger;
pub use shutdown::Shutdown;

use self::backoff::Backoff;
use self::context::ActiveJob;
use crate::client::Client;
use crate::convert::{proto_duration, system_time, until};

/// How long a LeaseJobs call in flight when a shutdown starts may take to
/// answer before it is abandoned.
const SHUTDOWN_SETTLE: Duration = Duration::from_millis(750);

/// Why [`Worker::run`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No handler is registered, so there is nothing to lease.
    #[error("no job handler is registered")]
    NoHandlers,
    /// The server refused the worker in a way no retry fixes (bad token,
    /// invalid queue name...). Running jobs were drained first.
    #[error("the server refused the worker: {code:?}: {message}")]
    Refused {
        /// The gRPC code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
}

/// A worker: handlers by job type plus the runtime that feeds them.
pub struct Worker {
    client: Client,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.config.worker_id)
            .field("types", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What the runtime's tasks share.
pub(crate) struct Shared {
    pub client: Client,
    pub config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
    active: Mutex<HashMap<String, Arc<ActiveJob>>>,
    pub progress_wake: Arc<Notify>,
    /// Leases of jobs stopped by the shutdown, to hand back in one call.
    to_release: Mutex<Vec<pb::JobLease>>,
    /// Fires on a forced stop: supervisors abort their handlers at once.
    force: CancellationToken,
}

impl Shared {
    pub fn active_jobs(&self) -> Vec<Arc<ActiveJob>> {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn insert(&self, job: Arc<ActiveJob>) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.job_id().to_owned(), job);
    }

    fn remove(&self, job_id: &str) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job_id);
    }

    fn running_count(&self) -> usize {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Worker {
    /// A worker with no handlers yet.
    pub fn new(client: Client, config: WorkerConfig) -> Self {
        Self {
            client,
            config,
            handlers: HashMap::new(),
        }
    }

    /// Registers the handler of `job_type` (replacing an earlier one).
    pub fn handler(mut self, job_type: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.insert(job_type.into(), Arc::new(handler));
        self
    }

    /// Registers a shared handler of `job_type`.
    pub fn handler_arc(mut self, job_type: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        self.handlers.insert(job_type.into(), handler);
        self
    }

    /// The job types it runs.
    pub fn job_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.handlers.keys().cloned().collect();
        types.sort();
        types
    }

    /// Its configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Leases and runs jobs until `shutdown` says stop, then drains: running
    /// jobs get the grace period, the rest are cancelled and released. An
    /// unreachable server is retried (with capped backoff) forever; only a
    /// refusal no retry can fix ends the run early, with an error.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), WorkerError> {
        if self.handlers.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        let types = self.job_types();
        let shared = Arc::new(Shared {
            client: self.client,
            config: self.config,
            handlers: self.handlers,
            active: Mutex::new(HashMap::new()),
            progress_wake: Arc::new(Notify::new()),
            to_release: Mutex::new(Vec::new()),
            force: shutdown.force_token(),
        });
        let config = &shared.config;
        tracing::info!(
            worker_id = %config.worker_id,
            queues = ?config.queues,
            ?types,
            concurrency = config.concurrency,
            "worker started"
        );

        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat::heartbeat_loop(
            shared.clone(),
            heartbeat_stop.clone(),
        ));
        let jobs = TaskTracker::new();
        let refused = lease_loop(&shared, &types, &jobs, &shutdown).await;
        jobs.close();

        drain(&shared, &jobs, &shutdown).await;
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        release_stopped(&shared).await;
        tracing::info!(worker_id = %shared.config.worker_id, "worker stopped");
        match refused {
            Some(status) => Err(WorkerError::Refused {
                code: status.code(),
                message: status.message().to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// Leases until the shutdown is requested; returns the status that made the
/// server's refusal final, if that is why it stopped.
async fn lease_loop(
    shared: &Arc<Shared>,
    types: &[String],
    jobs: &TaskTracker,
    shutdown: &Shutdown,
) -> Option<tonic::Status> {
    let config = &shared.config;
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut unreachable_since: Option<Instant> = None;
    loop {
        // A slot first: never lease a job that cannot start now.
        let first = tokio::select! {
            biased;
            () = shutdown.requested() => return None,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return None,
            },
        };
        let mut permits = vec![first];
        while permits.len() < config.max_lease_batch {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let request = pb::LeaseJobsRequest {
            worker_id: config.worker_id.clone(),
            queues: config.queues.clone(),
            types: types.to_vec(),
            max_jobs: i32::try_from(permits.len()).unwrap_or(1),
            wait: Some(proto_duration(config.poll_wait)),
            lease_duration: Some(proto_duration(config.lease_duration)),
            hostname: config.hostname.clone(),
            version: config.version.clone(),
        };
        let limit = config.poll_wait + shared.client.config().request_timeout();
        let asked_at = Instant::now();
        let mut worker = shared.client.worker_service();
        let call = tokio::time::timeout(limit, worker.lease_jobs(request));
        tokio::pin!(call);
        let answer = tokio::select! {
            biased;
            answer = &mut call => answer,
            () = shutdown.requested() => {
                // Dropping the long poll could lose jobs the server is leasing to us
                // right now (they would sit until their lease expires): give the
                // call a moment to answer, and hand back whatever it brings.
                if let Ok(Ok(Ok(response))) = tokio::time::timeout(SHUTDOWN_SETTLE, &mut call).await {
                    let leases: Vec<pb::JobLease> = response
                        .into_inner()
                        .jobs
                        .into_iter()
                        .filter_map(|leased| {
                            let job = leased.job?;
                            Some(pb::JobLease { job_id: job.id, lease_token: leased.lease_token })
                        })
                        .collect();
                    if !leases.is_empty() {
                        release(shared, leases).await;
                    }
                }
                return None;
            }
        };
        let leased = match answer {
            Ok(Ok(response)) => response.into_inner().jobs,
            Ok(Err(status)) if is_final_refusal(&status) => {
                tracing::error!(code = ?status.code(), "the server refused to lease jobs: {}", status.message());
                return Some(status);
            }
            Ok(Err(status)) => {
                let delay = backoff.next_delay();
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                tracing::warn!(
                    code = ?status.code(),
                    ?delay,
                    down_for = ?since.elapsed(),
                    "LeaseJobs failed (is the server reachable?), retrying: {}",
                    status.message()
                );
                drop(permits);
                tokio::select! {
                    () = shutdown.requested() => return None,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
            Err(_) => {
                tracing::warn!(?limit, "LeaseJobs got no answer in time, retrying");
                continue;
            }
        };
        if let Some(since) = unreachable_since.take() {
            tracing::info!(down_for = ?since.elapsed(), "server reachable again");
        }
        backoff.reset();
        let mut permits = permits.into_iter();
        for leased_job in leased {
            let Some(permit) = permits.next() else {
                // The server gave more than asked; hand the extra back at once.
                tracing::warn!("the server leased more jobs than asked for; releasing the extra");
                if let Some(job) = &leased_job.job {
                    let lease = pb::JobLease {
                        job_id: job.id.clone(),
                        lease_token: leased_job.lease_token.clone(),
                    };
                    release(shared, vec![lease]).await;
                }
                continue;
            };
            start_job(shared, jobs, leased_job, asked_at, permit);
        }
    }
}

/// Errors of LeaseJobs that no retry fixes.
fn is_final_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::Unimplemented
    )
}

/// Registers a leased job and spawns its supervisor.
fn start_job(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    leased: pb::LeasedJob,
    asked_at: Instant,
    permit: OwnedSemaphorePermit,
) {
    let Some(job) = leased.job else {
        tracing::warn!("LeaseJobs answered an entry without a job; ignoring it");
        return;
    };
    let lease = pb::JobLease {
        job_id: job.id.clone(),
        lease_token: leased.lease_token.clone(),
    };
    // Counting from when the lease was asked for errs on the safe side.
    let active = Arc::new(ActiveJob::new(
        lease,
        asked_at + shared.config.lease_duration,
    ));
    shared.insert(active.clone());
    let deadline = leased
        .attempt_deadline
        .as_ref()
        .and_then(until)
        .map(|left| Instant::now() + left);
    let attempt_deadline = leased.attempt_deadline.as_ref().and_then(system_time);
    let span =
        tracing::info_span!("job", job_id = %job.id, job_type = %job.r#type, attempt = job.attempt);
    let shared = shared.clone();
    jobs.spawn(
        async move {
            supervise(&shared, job, active.clone(), deadline, attempt_deadline).await;
            shared.remove(active.job_id());
            drop(permit);
        }
        .instrument(span),
    );
}

/// How a handler's task ended.
enum Ended {
    Returned(JobResult),
    Panicked(String),
    Aborted,
}

/// Runs one attempt: the handler in its own task, the deadline, the cancel
/// grace, the log flush, and the report.
async fn supervise(
    shared: &Arc<Shared>,
    job: pb::Job,
    active: Arc<ActiveJob>,
    deadline: Option<Instant>,
    attempt_deadline: Option<std::time::SystemTime>,
) {
    let config = &shared.config;
    let job_type = job.r#type.clone();
    let attempt = job.attempt;

    let log_closing = CancellationToken::new();
    let (logger, pusher) = logs::job_log(
        shared.client.worker_service(),
        active.lease.clone(),
        config.log_flush_interval,
        config.log_buffer_lines,
        shared.client.config().request_timeout(),
        Backoff::new(config.reconnect_min, config.reconnect_max),
        log_closing.clone(),
    );
    let pusher = tokio::spawn(pusher.run());
    logger.system(format!(
        "attempt {attempt} started on worker {}",
        config.worker_id
    ));
    tracing::info!("job started");

    let Some(handler) = shared.handlers.get(&job_type).cloned() else {
        let error = JobError::retryable(format!(
            "worker {} has no handler for job type {job_type:?}",
            config.worker_id
        ));
        logger.system(error.message().to_owned());
        finish_logs(&log_closing, pusher, config.cancel_grace).await;
        report(shared, &active, Ended::Returned(Err(error))).await;
        return;
    };
    let ctx = JobContext::new(
        job,
        attempt_deadline,
        active.clone(),
        logger.clone(),
        shared.client.clone(),
        config.worker_id.clone(),
        shared.progress_wake.clone(),
    );
    let mut task = tokio::spawn(async move { handler.run(ctx).await });

    let joined = tokio::select! {
        biased;
        joined = &mut task => Some(joined),
        () = shared.force.cancelled() => None,
        () = active.token.cancelled() => None,
        () = sleep_until(deadline) => {
            active.stop(StopCause::TimedOut);
            None
        }
    };
    let joined = match joined {
        Some(joined) => joined,
        None => {
            // Asked to stop: the handler gets the cancel grace (none on a forced stop).
            if shared.force.is_cancelled() {
                active.stop(StopCause::Shutdown);
            }
            let cause = active.stop_cause().map_or("stopped", StopCause::describe);
            logger.system(format!("stopping: {cause}"));
            tracing::info!(cause, "stopping the job");
            let grace = if shared.force.is_cancelled() {
                Duration::ZERO
            } else {
                config.cancel_grace
            };
            tokio::select! {
                joined = &mut task => joined,
                () = tokio::time::sleep(grace) => {
                    task.abort();
                    if !shared.force.is_cancelled() {
                        logger.system(format!("the handler did not stop within {grace:?}; aborted"));
                    }
                    (&mut task).await
                }
                () = shared.force.cancelled() => {
                    task.abort();
                    (&mut task).await
                }
            }
        }
    };
    let ended = match joined {
        Ok(result) => Ended::Returned(result),
        Err(error) if error.is_panic() => Ended::Panicked(panic_message(error.into_panic())),
        Err(_) => Ended::Aborted,
    };
    match &ended {
        Ended::Returned(Ok(_)) => logger.system(format!("attempt {attempt} succeeded")),
        Ended::Returned(Err(error)) => logger.system(format!("attempt {attempt} failed: {error}")),
        Ended::Panicked(message) => logger.system(format!(
            "attempt {attempt} failed: the handler panicked: {message}"
        )),
        Ended::Aborted => logger.system(format!("attempt {attempt} aborted")),
    }
    drop(logger);
    let flush_limit = if shared.force.is_cancelled() {
        Duration::from_millis(500)
    } else {
        config.cancel_grace
    };
    finish_logs(&log_closing, pusher, flush_limit).await;
    if matches!(ended, Ended::Returned(Ok(_))) && !shared.force.is_cancelled() {
        flush_progress(shared, &active).await;
    }
    report(shared, &active, ended).await;
}

/// Sends progress reported since the last heartbeat (typically "100%, done"),
/// so the job's final progress is stored before it is reported.
async fn flush_progress(shared: &Shared, active: &ActiveJob) {
    let Some(progress) = active.take_progress() else {
        return;
    };
    let request = pb::HeartbeatRequest {
        worker_id: shared.config.worker_id.clone(),
        leases: vec![pb::LeaseProgress {
            lease: Some(active.lease.clone()),
            progress_percent: progress.percent,
            progress_message: progress.message,
        }],
        lease_duration: Some(proto_duration(shared.config.lease_duration)),
    };
    let limit = shared.client.config().request_timeout();
    if let Ok(Err(status)) =
        tokio::time::timeout(limit, shared.client.worker_service().heartbeat(request)).await
    {
        tracing::debug!(
            "the last progress of the job was not delivered: {}",
            status.message()
        );
    }
}

async fn finish_logs(
    closing: &CancellationToken,
    pusher: tokio::task::JoinHandle<()>,
    limit: Duration,
) {
    closing.cancel();
    let abort = pusher.abort_handle();
    if tokio::time::timeout(limit, pusher).await.is_err() {
        abort.abort();
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// What to tell the server about an ended attempt.
enum Report {
    Complete(String),
    Fail {
        error: String,
        retryable: bool,
        retry_after: Option<Duration>,
    },
    Release,
    Nothing,
}

async fn report(shared: &Arc<Shared>, active: &ActiveJob, ended: Ended) {
    let job_id = active.job_id();
    let cause = active.stop_cause();
    let report = match (cause, ended) {
        (Some(StopCause::LeaseLost), _) => Report::Nothing,
        (_, Ended::Returned(Ok(value))) => Report::Complete(if value.is_null() {
            String::new()
        } else {
            value.to_string()
        }),
        (Some(StopCause::Shutdown), _) => Report::Release,
        (Some(cause @ (StopCause::Cancelled | StopCause::TimedOut)), ended) => {
            let detail = match ended {
                Ended::Returned(Err(error)) => format!(": {}", error.message()),
                Ended::Panicked(message) => format!(": the handler panicked: {message}"),
                Ended::Returned(Ok(_)) | Ended::Aborted => String::new(),
            };
            Report::Fail {
                error: format!("{}{detail}", cause.describe()),
                retryable: true,
                retry_after: None,
            }
        }
        (None, Ended::Returned(Err(error))) => Report::Fail {
            error: error.message().to_owned(),
            retryable: error.is_retryable(),
            retry_after: error.retry_delay(),
        },
        (None, Ended::Panicked(message)) => {
            tracing::error!(job_id, "handler panicked: {message}");
            Report::Fail {
                error: format!("the handler panicked: {message}"),
                retryable: true,
                retry_after: None,
            }
        }
        (None, Ended::Aborted) => Report::Fail {
            error: "the handler was aborted".into(),
            retryable: true,
            retry_after: None,
        },
    };
    match report {
        Report::Nothing => tracing::warn!(job_id, "lease lost; the job's outcome is not reported"),
        Report::Release => {
            shared
                .to_release
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(active.lease.clone());
        }
        Report::Complete(result) => {
            let request = pb::CompleteJobRequest {
                lease: Some(active.lease.clone()),
                result,
            };
            send_report(shared, active, "CompleteJob", move |mut worker| {
                let request = request.clone();
                async move { worker.complete_job(request).await.map(|_| ()) }
            })
            .await;
        }
        Report::Fail {
            error,
            retryable,
            retry_after,
        } => {
            let request = pb::FailJobRequest {
                lease: Some(active.lease.clone()),
                error,
                retryable,
                retry_after: retry_after.map(proto_duration),
            };
            send_report(shared, active, "FailJob", move |mut worker| {
                let request = request.clone();
                async move { worker.fail_job(request).await.map(|_| ()) }
            })
            .await;
        }
    }
}

/// Sends a report, retrying while the server is unreachable and the lease may
/// still be valid.
async fn send_report<F, Fut>(shared: &Shared, active: &ActiveJob, what: &str, call: F)
where
    F: Fn(
        jobq_proto::v1::worker_service_client::WorkerServiceClient<crate::client::AuthChannel>,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let job_id = active.job_id();
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let timeout = shared.client.config().request_timeout();
    loop {
        let outcome = tokio::time::timeout(timeout, call(shared.client.worker_service())).await;
        let problem = match outcome {
            Ok(Ok(())) => {
                tracing::info!(job_id, "{what} recorded");
                return;
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ) =>
            {
                tracing::warn!(
                    job_id,
                    "{what} refused, the lease is no longer ours: {}",
                    status.message()
                );
                return;
            }
            Ok(Err(status)) if is_final_refusal(&status) => {
                tracing::error!(job_id, code = ?status.code(), "{what} refused: {}", status.message());
                return;
            }
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        // The lease is renewed by heartbeats only while the job runs; a report
        // after its lease must have run out would be refused anyway.
        let lease_left = active
            .lease_valid_until()
            .saturating_duration_since(Instant::now());
        if shared.force.is_cancelled() || lease_left.is_zero() {
            tracing::warn!(
                job_id,
                "{what} could not be delivered before the lease ran out: {problem}"
            );
            return;
        }
        let delay = backoff.next_delay().min(lease_left);
        tracing::warn!(
            job_id,
            ?delay,
            "{what} failed (server unreachable?), retrying: {problem}"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.force.cancelled() => {}
        }
    }
}

/// Waits for running jobs after leasing stopped: the grace period, then
/// cancel (with the cancel grace), or everything at once on a forced stop.
async fn drain(shared: &Arc<Shared>, jobs: &TaskTracker, shutdown: &Shutdown) {
    let running = shared.running_count();
    if running > 0 {
        tracing::info!(running, grace = ?shared.config.grace_period, "waiting for running jobs to finish");
    }
    tokio::select! {
        () = jobs.wait() => return,
        () = tokio::time::sleep(shared.config.grace_period) => {
            tracing::warn!(running = shared.running_count(), "grace period over; stopping and releasing the remaining jobs");
        }
        () = shutdown.forced() => {}
    }
    for job in shared.active_jobs() {
        job.stop(StopCause::Shutdown);
    }
    jobs.wait().await;
}

/// Hands the leases of the jobs stopped by the shutdown back in one call.
async fn release_stopped(shared: &Arc<Shared>) {
    let leases = std::mem::take(
        &mut *shared
            .to_release
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if !leases.is_empty() {
        release(shared, leases).await;
    }
}

async fn release(shared: &Shared, leases: Vec<pb::JobLease>) {
    let count = leases.len();
    let request = pb::ReleaseJobsRequest {
        worker_id: shared.config.worker_id.clone(),
        leases,
    };
    let limit = if shared.force.is_cancelled() {
        Duration::from_secs(2)
    } else {
        shared.client.config().request_timeout()
    };
    match tokio::time::timeout(limit, shared.client.worker_service().release_jobs(request)).await {
        Ok(Ok(response)) => {
            let released = response
                .into_inner()
                .results
                .iter()
                .filter(|result| result.accepted)
                .count();
            tracing::info!(released, of = count, "released jobs for other workers");
        }
        Ok(Err(status)) => tracing::warn!(
            count,
            "ReleaseJobs failed; the jobs return when their leases expire: {}",
            status.message()
        ),
        Err(_) => tracing::warn!(
            count,
            "ReleaseJobs got no answer; the jobs return when their leases expire"
        ),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
