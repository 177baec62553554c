//! The worker runtime: register handlers, then [`Worker::run`] leases jobs and
//! runs them until it is told to stop.
//!
//! How it works:
//! - A LeaseJobs long poll asks for as many jobs as there are free slots
//!   (up to the batch size), plus, when jobs are short, the jobs expected to
//!   end during one lease round trip ([`pace`]): those wait in the worker
//!   for a slot, so a slot that frees up starts its next job without a round
//!   trip. Jobs of seconds or more are never leased ahead: the worker then
//!   holds no job it cannot start. Up to two lease calls are in flight at
//!   once.
//! - One heartbeat loop renews all leases in one call and forwards progress;
//!   its answers (cancelled, timed out, lease lost) fire the job's
//!   cancellation token.
//! - Each job runs in its own task under a supervisor that catches panics,
//!   enforces the attempt deadline and the cancel grace, and hands the
//!   outcome to the reporter, which sends the outcomes of all jobs in
//!   batches (CompleteJobs, FailJobs) after a short linger.
//! - One log pusher sends the lines of all jobs, one call per flush.
//! - A graceful shutdown stops leasing, waits for running jobs up to the grace
//!   period, then cancels the rest and hands their leases back (ReleaseJobs).

mod backoff;
mod config;
mod context;
mod handler;
mod heartbeat;
mod logs;
mod pace;
mod reports;
mod shutdown;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jobq_proto::v1 as pb;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
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
use self::logs::LogSink;
use self::pace::Pace;
use self::reports::{Outcome, Report, Reporter};
use crate::client::Client;
use crate::convert::{proto_duration, proto_value, system_time, until};

/// How long a LeaseJobs call in flight when a shutdown starts may take to
/// answer before it is abandoned.
const SHUTDOWN_SETTLE: Duration = Duration::from_millis(750);
/// Lease calls in flight at once.
const MAX_LEASE_CALLS: usize = 2;
/// How long the last reports and log lines may take once the jobs are done.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

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

/// Called for every outcome the server answered: the job id and whether it
/// was recorded (false: refused, e.g. the lease had expired).
pub type ReportedHook = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// A worker: handlers by job type plus the runtime that feeds them.
pub struct Worker {
    client: Client,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
    on_reported: Option<ReportedHook>,
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
    /// Jobs whose leases are held: running, or waiting for their report to be accepted.
    active: Mutex<HashMap<String, Arc<ActiveJob>>>,
    pub progress_wake: Arc<Notify>,
    /// Leases of jobs stopped by the shutdown, to hand back in one call.
    to_release: Mutex<Vec<pb::JobLease>>,
    /// Fires on a forced stop: supervisors abort their handlers at once.
    pub force: CancellationToken,
    /// Fires when a stop is asked for: jobs leased ahead are handed back unstarted.
    graceful: CancellationToken,
    /// One permit per job running now.
    slots: Arc<Semaphore>,
    /// How long jobs and leases take: how many jobs to lease ahead.
    pace: Mutex<Pace>,
    logs: LogSink,
    reporter: Mutex<Option<Reporter>>,
    pub on_reported: Option<ReportedHook>,
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

    /// Takes a job off the heartbeat list: its lease is no longer held.
    pub fn remove(&self, job_id: &str) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job_id);
    }

    /// Jobs worth leasing beyond the slots now.
    fn lease_ahead(&self) -> usize {
        self.pace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ahead(self.config.concurrency, self.config.lease_ahead)
    }

    fn running_count(&self) -> usize {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn report(&self, report: Report) {
        match self
            .reporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(reporter) => reporter.send(report),
            None => tracing::warn!(
                job_id = report.active.job_id(),
                "the reporter has stopped; the job's outcome is not reported"
            ),
        }
    }
}

impl Worker {
    /// A worker with no handlers yet.
    pub fn new(client: Client, config: WorkerConfig) -> Self {
        Self {
            client,
            config,
            handlers: HashMap::new(),
            on_reported: None,
        }
    }

    /// Calls `hook` for every outcome the server answered (recorded or
    /// refused), e.g. to count acknowledged jobs.
    pub fn on_reported(mut self, hook: impl Fn(&str, bool) + Send + Sync + 'static) -> Self {
        self.on_reported = Some(Arc::new(hook));
        self
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
        let (logs, pusher) = logs::log_pusher(
            self.client.worker_service(),
            self.config.log_flush_interval,
            self.config.log_buffer_lines,
            self.client.config().request_timeout(),
            Backoff::new(self.config.reconnect_min, self.config.reconnect_max),
        );
        let (reporter, reports) = Reporter::new();
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let shared = Arc::new(Shared {
            client: self.client,
            config: self.config,
            handlers: self.handlers,
            active: Mutex::new(HashMap::new()),
            progress_wake: Arc::new(Notify::new()),
            to_release: Mutex::new(Vec::new()),
            force: shutdown.force_token(),
            graceful: shutdown.graceful_token(),
            slots,
            pace: Mutex::new(Pace::default()),
            logs,
            reporter: Mutex::new(Some(reporter)),
            on_reported: self.on_reported,
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
        let pusher_stop = CancellationToken::new();
        let pusher = tokio::spawn(pusher.run(pusher_stop.clone()));
        let reporter = tokio::spawn(reports::run(shared.clone(), reports));
        let jobs = TaskTracker::new();
        let refused = lease_loop(&shared, &types, &jobs, &shutdown).await;
        jobs.close();

        drain(&shared, &jobs, &shutdown).await;
        // The last outcomes and lines go out before the heartbeats stop.
        shared
            .reporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if tokio::time::timeout(FINAL_FLUSH, reporter).await.is_err() {
            tracing::warn!("the last reports did not go out in time");
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        release_stopped(&shared).await;
        pusher_stop.cancel();
        let _ = pusher.await;
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

/// The state lease calls share: the backoff while the server cannot be reached.
struct LeaseBackoff {
    backoff: Backoff,
    unreachable_since: Option<Instant>,
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
    // One permit per job held, running or waiting for a slot; as many as
    // the slots plus the jobs worth leasing ahead now.
    let held = Arc::new(Semaphore::new(config.concurrency));
    let mut held_most = config.concurrency;
    let calls = Arc::new(Semaphore::new(MAX_LEASE_CALLS));
    let backoff = Arc::new(Mutex::new(LeaseBackoff {
        backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
        unreachable_since: None,
    }));
    let types: Arc<[String]> = types.into();
    let mut in_flight: JoinSet<Option<tonic::Status>> = JoinSet::new();
    let refused = loop {
        let call = tokio::select! {
            biased;
            () = shutdown.requested() => break None,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(Some(status)) = done {
                    break Some(status);
                }
                continue;
            }
            permit = calls.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break None,
            },
        };
        let wanted = config.concurrency + shared.lease_ahead();
        if wanted > held_most {
            held.add_permits(wanted - held_most);
            held_most = wanted;
        } else if wanted < held_most {
            // Only free permits can go; the rest go on a later turn.
            held_most -= held.forget_permits(held_most - wanted);
        }
        // A permit first: never lease a job that cannot start now or soon.
        let first = tokio::select! {
            biased;
            () = shutdown.requested() => break None,
            permit = held.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break None,
            },
        };
        // The pace may have changed while this waited (a job leased ahead
        // waited too long): then the permit goes instead of a lease.
        if config.concurrency + shared.lease_ahead() < held_most {
            first.forget();
            held_most -= 1;
            continue;
        }
        let mut permits = vec![first];
        while permits.len() < config.max_lease_batch {
            match held.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let span = tracing::info_span!("lease", otel.name = "jobq.lease", max_jobs = permits.len());
        in_flight.spawn(
            lease_call(
                shared.clone(),
                types.clone(),
                jobs.clone(),
                permits,
                call,
                shutdown.clone(),
                backoff.clone(),
            )
            .instrument(span),
        );
    };
    // Calls still out hand back whatever they bring.
    while in_flight.join_next().await.is_some() {}
    refused
}

/// One LeaseJobs call for the jobs `permits` can start; the call slot is
/// held until the call (and any pause after a failure) is over.
async fn lease_call(
    shared: Arc<Shared>,
    types: Arc<[String]>,
    jobs: TaskTracker,
    permits: Vec<OwnedSemaphorePermit>,
    _call: OwnedSemaphorePermit,
    shutdown: Shutdown,
    backoff: Arc<Mutex<LeaseBackoff>>,
) -> Option<tonic::Status> {
    let config = &shared.config;
    let request = pb::LeaseJobsRequest {
        worker_id: config.worker_id.clone(),
        queues: config.queues.clone(),
        types: types.to_vec(),
        max_jobs: i32::try_from(permits.len()).unwrap_or(1),
        wait: Some(proto_duration(config.poll_wait)),
        lease_duration: Some(proto_duration(config.lease_duration)),
        hostname: config.hostname.clone(),
        version: config.version.clone(),
        max_response_bytes: shared.client.config().max_message_bytes() as u64,
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
                    release(&shared, leases).await;
                }
            }
            return None;
        }
    };
    let leased = match answer {
        Ok(Ok(response)) => {
            let jobs = response.into_inner().jobs;
            // A full answer came without waiting for work: a round trip.
            if jobs.len() == permits.len() {
                shared
                    .pace
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .lease_answered(asked_at.elapsed());
            }
            jobs
        }
        Ok(Err(status)) if is_final_refusal(&status) => {
            tracing::error!(code = ?status.code(), "the server refused to lease jobs: {}", status.message());
            return Some(status);
        }
        Ok(Err(status)) => {
            let (delay, since) = {
                let mut state = backoff.lock().unwrap_or_else(PoisonError::into_inner);
                let since = *state.unreachable_since.get_or_insert_with(Instant::now);
                (state.backoff.next_delay(), since)
            };
            tracing::warn!(
                code = ?status.code(),
                ?delay,
                down_for = ?since.elapsed(),
                "LeaseJobs failed (is the server reachable?), retrying: {}",
                status.message()
            );
            drop(permits);
            tokio::select! {
                () = shutdown.requested() => {}
                () = tokio::time::sleep(delay) => {}
            }
            return None;
        }
        Err(_) => {
            tracing::warn!(?limit, "LeaseJobs got no answer in time, retrying");
            return None;
        }
    };
    {
        let mut state = backoff.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = state.unreachable_since.take() {
            tracing::info!(down_for = ?since.elapsed(), "server reachable again");
        }
        state.backoff.reset();
    }
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
                release(&shared, vec![lease]).await;
            }
            continue;
        };
        start_job(&shared, &jobs, leased_job, asked_at, permit);
    }
    None
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
    let span = attempt_span(&job, leased.attempt_seq);
    let shared = shared.clone();
    jobs.spawn(
        async move {
            supervise(&shared, job, active, deadline, attempt_deadline, permit).await;
        }
        .instrument(span),
    );
}

/// The span of one attempt: it continues the trace the job's enqueue
/// started (its child on the first attempt; on a retry, a child of the
/// enqueue too, linked to it as the message it retries), so one trace holds
/// the enqueue, every attempt and the handler's own spans.
fn attempt_span(job: &pb::Job, attempt_seq: i32) -> tracing::Span {
    let trace_id = jobq_telemetry::propagation::trace_id_of(&job.traceparent).unwrap_or_default();
    let span = tracing::info_span!(
        "job",
        otel.name = "job.attempt",
        otel.kind = "consumer",
        job_id = %job.id,
        job_type = %job.r#type,
        queue = %job.queue,
        attempt = job.attempt,
        attempt_seq,
        trace_id,
    );
    if jobq_telemetry::exporting() {
        jobq_telemetry::propagation::set_parent(&span, &job.traceparent);
        if job.attempt > 1 {
            jobq_telemetry::propagation::add_link(&span, &job.traceparent);
        }
    }
    span
}

/// How a handler's task ended.
enum Ended {
    Returned(JobResult),
    Panicked(String),
    Aborted,
}

/// Runs one attempt: the handler in its own task, the deadline, the cancel
/// grace; then pushes the job's last log lines, frees its slot and hands the
/// outcome to the reporter.
async fn supervise(
    shared: &Arc<Shared>,
    job: pb::Job,
    active: Arc<ActiveJob>,
    deadline: Option<Instant>,
    attempt_deadline: Option<std::time::SystemTime>,
    held: OwnedSemaphorePermit,
) {
    let config = &shared.config;
    // A job leased ahead waits here for a slot; one leased for a free slot
    // finds it at once.
    let held_at = Instant::now();
    let slot = tokio::select! {
        biased;
        () = shared.graceful.cancelled() => None,
        () = active.token.cancelled() => None,
        slot = shared.slots.clone().acquire_owned() => slot.ok(),
        () = tokio::time::sleep(config.lease_ahead_wait) => {
            // The jobs running now are longer than the pace said: lease no
            // more ahead until short jobs are seen again.
            shared
                .pace
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .held_too_long(held_at.elapsed(), config.concurrency);
            None
        }
    };
    let Some(slot) = slot else {
        return finish_unstarted(shared, &active, held).await;
    };
    let permit = Held {
        _held: held,
        _slot: slot,
    };
    let started = Instant::now();
    let job_type = job.r#type.clone();
    let logger = shared.logs.open(active.lease.clone()).await;
    tracing::debug!("job started");

    let Some(handler) = shared.handlers.get(&job_type).cloned() else {
        let error = JobError::retryable(format!(
            "worker {} has no handler for job type {job_type:?}",
            config.worker_id
        ));
        logger.system(error.message().to_owned());
        finish(shared, &active, Ended::Returned(Err(error)), permit).await;
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
    // The handler's own spans nest under the attempt's.
    let mut task = tokio::spawn(async move { handler.run(ctx).await }.in_current_span());

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
    shared
        .pace
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .job_ran(started.elapsed());
    let ended = match joined {
        Ok(result) => Ended::Returned(result),
        Err(error) if error.is_panic() => {
            let message = panic_message(error.into_panic());
            logger.system(format!("the handler panicked: {message}"));
            Ended::Panicked(message)
        }
        Err(_) => Ended::Aborted,
    };
    finish(shared, &active, ended, permit).await;
}

/// Wraps an attempt up: its log lines go out first (lines pushed after the
/// report would be refused: the lease ends with it), then its slot is freed
/// and its outcome handed to the reporter.
async fn finish(shared: &Arc<Shared>, active: &Arc<ActiveJob>, ended: Ended, permit: Held) {
    let flush_limit = if shared.force.is_cancelled() {
        Duration::from_millis(500)
    } else {
        shared.config.cancel_grace
    };
    shared.logs.close(active.job_id(), flush_limit).await;
    if matches!(ended, Ended::Returned(Ok(_))) && !shared.force.is_cancelled() {
        flush_progress(shared, active).await;
    }
    drop(permit);
    report(shared, active, ended);
}

/// A job leased ahead that never got a slot: on a shutdown, or after
/// waiting too long, its lease goes back at once for another worker (its
/// attempt is not used up); cancelled, timed out or lost, it is reported
/// as such without running.
async fn finish_unstarted(
    shared: &Arc<Shared>,
    active: &Arc<ActiveJob>,
    held: OwnedSemaphorePermit,
) {
    if active.stop_cause().is_none() || shared.graceful.is_cancelled() {
        shared.remove(active.job_id());
        release(shared, vec![active.lease.clone()]).await;
    } else {
        report(shared, active, Ended::Aborted);
    }
    // Only now: the job is no longer held when the next lease counts.
    drop(held);
}

/// The permits of a running job: held (counted against what the worker
/// leases) and its slot.
struct Held {
    _held: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
}

/// Sends progress reported since the last heartbeat (typically "100%,
/// done"), so the job's last progress is stored before its success; costs
/// nothing when the handler reported none.
async fn flush_progress(shared: &Shared, active: &ActiveJob) {
    let Some(progress) = active.take_progress() else {
        return;
    };
    let request = pb::HeartbeatRequest {
        worker_id: shared.config.worker_id.clone(),
        leases: vec![pb::LeaseProgress {
            lease: Some(active.lease.clone()),
            progress_percent: Some(progress.percent),
            progress_message: Some(progress.message),
        }],
        lease_duration: None,
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

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// Decides what the server is told about an ended attempt, and tells it.
fn report(shared: &Shared, active: &Arc<ActiveJob>, ended: Ended) {
    let job_id = active.job_id();
    let fail = |error: String, retryable: bool, retry_after: Option<Duration>| {
        Some(Outcome::Fail {
            error,
            retryable,
            retry_after,
        })
    };
    let outcome = match (active.stop_cause(), ended) {
        (Some(StopCause::LeaseLost), _) => {
            tracing::warn!(job_id, "lease lost; the job's outcome is not reported");
            None
        }
        (_, Ended::Returned(Ok(value))) => Some(Outcome::Complete(
            (!value.is_null()).then(|| proto_value(value)),
        )),
        (Some(StopCause::Shutdown), _) => {
            shared
                .to_release
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(active.lease.clone());
            None
        }
        (Some(cause @ (StopCause::Cancelled | StopCause::TimedOut)), ended) => {
            let detail = match ended {
                // The handler's own "I stopped" error says nothing more than the cause.
                Ended::Returned(Err(error)) if error.message() == cause.describe() => String::new(),
                Ended::Returned(Err(error)) => format!(": {}", error.message()),
                Ended::Panicked(message) => format!(": the handler panicked: {message}"),
                Ended::Returned(Ok(_)) | Ended::Aborted => String::new(),
            };
            fail(format!("{}{detail}", cause.describe()), true, None)
        }
        (None, Ended::Returned(Err(error))) => fail(
            error.message().to_owned(),
            error.is_retryable(),
            error.retry_delay(),
        ),
        (None, Ended::Panicked(message)) => {
            tracing::error!(job_id, "handler panicked: {message}");
            fail(format!("the handler panicked: {message}"), true, None)
        }
        (None, Ended::Aborted) => fail("the handler was aborted".into(), true, None),
    };
    match outcome {
        Some(outcome) => shared.report(Report {
            active: active.clone(),
            outcome,
        }),
        None => shared.remove(job_id),
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
                .filter(|result| result.status.as_ref().is_none_or(|status| status.code == 0))
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
