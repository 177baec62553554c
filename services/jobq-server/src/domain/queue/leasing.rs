//! Leasing: long-polled LeaseJobs within the queues' controls, heartbeats,
//! and the worker registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{JobQueue, lock};
use crate::domain::clock::Millis;
use crate::domain::control::{QueueControls, WorkerRecord};
use crate::domain::error::{QueueError, QueueResult};
use crate::domain::job::{AttemptOutcome, Job, JobId, JobState, LeaseToken, LeasedJob, StopReason};
use crate::domain::store::{JobChange, LeaseChange, LeaseQuery};
use crate::domain::transitions::{self, Renewal};

/// A LeaseJobs call, validated.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The worker asking, as the registry records it.
    pub worker: WorkerRecord,
    /// Most jobs to return.
    pub max_jobs: u64,
    /// Longest wait for a job.
    pub wait: Duration,
    /// Lease length; `None` takes the default.
    pub lease_duration: Option<Duration>,
    /// Most payload bytes in the answer.
    pub max_payload_bytes: i64,
}

/// One lease in a heartbeat, with the progress to record.
#[derive(Debug, Clone)]
pub struct HeartbeatLease {
    /// Job id.
    pub job_id: JobId,
    /// Lease token.
    pub lease_token: LeaseToken,
    /// New progress percent, if any.
    pub progress_percent: Option<i32>,
    /// New progress message, if any ("" clears it).
    pub progress_message: Option<String>,
}

/// Answer to one heartbeat lease.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatOutcome {
    /// Keep going; the lease now runs until this time.
    Continue {
        /// New lease deadline.
        lease_expires_at: Millis,
    },
    /// Stop working on the job.
    Stop {
        /// Why.
        reason: StopReason,
        /// Until when the worker still holds the lease to report (a
        /// cancelled job), if it does.
        lease_expires_at: Option<Millis>,
    },
}

/// How long queue controls read from the store are trusted before they are
/// read again (changes made through this server apply at once).
const CONTROLS_TTL_MS: Millis = 1000;

/// What leasing keeps between calls.
#[derive(Default)]
pub(super) struct LeaseState {
    controls: Mutex<Option<(Millis, Arc<Vec<QueueControls>>)>>,
    /// LeaseJobs calls waiting for a job, oldest first.
    parked: Mutex<Vec<Parked>>,
    next_parked: AtomicU64,
}

/// A LeaseJobs call waiting for a job. An enqueue for its queues takes it
/// and leases for it in the enqueue's own transaction (one commit instead of
/// two, and no wake-up in between), then hands it the jobs.
pub(crate) struct Parked {
    id: u64,
    request: Arc<LeaseRequest>,
    lease_duration: Duration,
    deliver: oneshot::Sender<Vec<LeasedJob>>,
}

impl Parked {
    /// A waiting call for `request`, as if it had parked, and where its jobs arrive.
    #[cfg(test)]
    pub(crate) fn for_test(request: LeaseRequest) -> (Self, oneshot::Receiver<Vec<LeasedJob>>) {
        let (deliver, handed) = oneshot::channel();
        let lease_duration = request.lease_duration.unwrap_or(Duration::from_secs(30));
        let call = Parked {
            id: u64::MAX,
            request: Arc::new(request),
            lease_duration,
            deliver,
        };
        (call, handed)
    }

    /// Whether the call would take `job`.
    fn wants(&self, job: &Job) -> bool {
        let worker = &self.request.worker;
        worker.queues.contains(&job.queue)
            && (worker.types.is_empty() || worker.types.contains(&job.job_type))
    }
}

/// A parked call leaves the list when it stops waiting, however it stops.
struct ParkedGuard<'q> {
    queue: &'q JobQueue,
    id: u64,
}

impl ParkedGuard<'_> {
    /// Leaves the list; false if an enqueue took the call (its jobs are coming).
    fn leave(&self) -> bool {
        let mut parked = lock(&self.queue.leasing.parked);
        let before = parked.len();
        parked.retain(|waiting| waiting.id != self.id);
        parked.len() < before
    }
}

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// How a parked call woke up.
enum Woke {
    /// An enqueue leased for it.
    Handed(Vec<LeasedJob>),
    /// Some job may have become leasable.
    Changed,
    /// Its wait is over (deadline, shutdown).
    Over,
}

impl JobQueue {
    /// Queue controls, from the cache when fresh.
    async fn cached_controls(&self) -> QueueResult<Arc<Vec<QueueControls>>> {
        let now = self.now();
        if let Some((read_at, controls)) = lock(&self.leasing.controls).as_ref()
            && now - read_at < CONTROLS_TTL_MS
        {
            return Ok(controls.clone());
        }
        let controls = Arc::new(self.store.queue_controls().await?);
        *lock(&self.leasing.controls) = Some((now, controls.clone()));
        Ok(controls)
    }

    /// Forgets cached queue controls (they just changed, here or on
    /// another replica) and wakes waiting calls: a resumed queue or a
    /// raised limit may free jobs for them.
    pub fn controls_changed(&self) {
        *lock(&self.leasing.controls) = None;
        self.wake_pollers();
    }

    /// Whether `queue` may have a concurrency limit, as last read (when the
    /// controls were just forgotten, it may): a job of it that stops running
    /// frees room for waiting calls.
    pub(super) fn queue_has_concurrency_limit(&self, queue: &str) -> bool {
        lock(&self.leasing.controls)
            .as_ref()
            .is_none_or(|(_, controls)| {
                controls
                    .iter()
                    .any(|control| control.name == queue && control.concurrency_limit > 0)
            })
    }

    /// Leases up to `max_jobs` ready jobs, waiting up to `wait` for the first.
    pub async fn lease(&self, request: LeaseRequest) -> QueueResult<Vec<LeasedJob>> {
        let lease_duration = request
            .lease_duration
            .unwrap_or(self.defaults.lease_duration);
        let deadline = tokio::time::Instant::now() + request.wait;
        let mut ready = self.ready.subscribe();
        self.touch_worker(&request.worker).await;
        let request = Arc::new(request);
        loop {
            self.refuse_if_shutting_down()?;
            // Mark the current generation seen before looking, so an enqueue
            // that lands after the query still wakes us.
            ready.borrow_and_update();
            let (leased, retry_at) = self.lease_now(&request, lease_duration).await?;
            if !leased.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(leased);
            }
            // A rate limit's next token comes without any other event.
            let look_again = retry_at.map_or(deadline, |at| {
                let wait = Duration::from_millis((at - self.now()).max(0) as u64);
                deadline.min(tokio::time::Instant::now() + wait)
            });
            let (guard, mut handed) = self.park(request.clone(), lease_duration);
            let woke = tokio::select! {
                jobs = &mut handed => Woke::Handed(jobs.unwrap_or_default()),
                changed = ready.changed() => if changed.is_err() { Woke::Over } else { Woke::Changed },
                () = tokio::time::sleep_until(look_again) => {
                    if look_again < deadline { Woke::Changed } else { Woke::Over }
                }
                () = self.shutdown.cancelled() => Woke::Over,
            };
            let over = match woke {
                Woke::Handed(jobs) if !jobs.is_empty() => return Ok(jobs),
                Woke::Handed(_) => false,
                other => {
                    if !guard.leave() {
                        // An enqueue took this call: its jobs are on the way.
                        let jobs = handed.await.unwrap_or_default();
                        if !jobs.is_empty() {
                            return Ok(jobs);
                        }
                    }
                    matches!(other, Woke::Over)
                }
            };
            if over {
                return Ok(Vec::new());
            }
        }
    }

    /// How many LeaseJobs calls wait for a job.
    #[cfg(test)]
    pub(crate) fn parked_calls(&self) -> usize {
        lock(&self.leasing.parked).len()
    }

    /// Puts a LeaseJobs call on the waiting list.
    fn park(
        &self,
        request: Arc<LeaseRequest>,
        lease_duration: Duration,
    ) -> (ParkedGuard<'_>, oneshot::Receiver<Vec<LeasedJob>>) {
        let id = self.leasing.next_parked.fetch_add(1, Ordering::Relaxed);
        let (deliver, handed) = oneshot::channel();
        lock(&self.leasing.parked).push(Parked {
            id,
            request,
            lease_duration,
            deliver,
        });
        (ParkedGuard { queue: self, id }, handed)
    }

    /// Takes the waiting calls that would lease some of `jobs`, oldest
    /// first, until they can take them all.
    pub(super) fn take_parked(&self, jobs: &[&Job]) -> Vec<Parked> {
        let queued: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|job| job.state == JobState::Queued)
            .collect();
        if queued.is_empty() {
            return Vec::new();
        }
        let mut parked = lock(&self.leasing.parked);
        let mut taken = Vec::new();
        let mut room = 0u64;
        let mut index = 0;
        while index < parked.len() && room < queued.len() as u64 {
            if queued.iter().any(|job| parked[index].wants(job)) {
                let call = parked.remove(index);
                room += call.request.max_jobs;
                taken.push(call);
            } else {
                index += 1;
            }
        }
        taken
    }

    /// The leases to run for taken calls, with the enqueue: one query and
    /// attempt start each (a call whose queues give nothing now gets none).
    pub(super) async fn handover_leases(
        &self,
        taken: &[Parked],
    ) -> QueueResult<Vec<Option<(LeaseQuery, LeaseChange)>>> {
        let now = self.now();
        let mut leases = Vec::with_capacity(taken.len());
        for call in taken {
            let query = self.lease_query(&call.request).await?;
            leases.push(query.may_take_any().then(|| {
                let start =
                    self.attempt_start(&call.request.worker.worker_id, now, call.lease_duration);
                (query, start)
            }));
        }
        Ok(leases)
    }

    /// Hands jobs leased with an enqueue to the calls they were leased for;
    /// a call that went away meanwhile gets its jobs released.
    pub(crate) async fn hand_over(&self, taken: Vec<Parked>, leased: Vec<Vec<(Job, LeaseToken)>>) {
        let now = self.now();
        let mut orphans = Vec::new();
        for (call, jobs) in taken.into_iter().zip(leased) {
            let granted = self.grant(jobs, now).await;
            if let Err(granted) = call.deliver.send(granted) {
                orphans.extend(granted.into_iter().map(|job| (job.job.id, job.lease_token)));
            }
        }
        if !orphans.is_empty()
            && let Err(error) = self.release_many(orphans).await
        {
            tracing::warn!(%error, "could not hand back jobs leased for a call that went away; their leases will expire");
        }
    }

    /// The lease of `request`: queues without controls are read freely, the
    /// others through their gates, which the store applies under its locks.
    async fn lease_query(&self, request: &LeaseRequest) -> QueueResult<LeaseQuery> {
        let controls = self.cached_controls().await?;
        let mut query = LeaseQuery {
            types: request.worker.types.clone(),
            limit: request.max_jobs,
            max_payload_bytes: request.max_payload_bytes,
            now: self.now(),
            ..LeaseQuery::default()
        };
        for queue in &request.worker.queues {
            match controls.iter().find(|control| &control.name == queue) {
                Some(control) if !control.is_open() => query.gated.push(queue.clone()),
                _ => query.open.push(queue.clone()),
            }
        }
        Ok(query)
    }

    /// Leases what the request's queues give now; also says when to look
    /// again if a rate limit holds jobs back.
    async fn lease_now(
        &self,
        request: &LeaseRequest,
        lease_duration: Duration,
    ) -> QueueResult<(Vec<LeasedJob>, Option<Millis>)> {
        let query = self.lease_query(request).await?;
        if !query.may_take_any() {
            return Ok((Vec::new(), None));
        }
        // The attempts start when the rate buckets are counted.
        let now = query.now;
        let start = self.attempt_start(&request.worker.worker_id, now, lease_duration);
        let leased = self.store.lease_jobs(query, start).await?;
        Ok((self.grant(leased.jobs, now).await, leased.retry_at))
    }

    /// How each leased job's attempt starts.
    fn attempt_start(&self, worker_id: &str, now: Millis, lease_duration: Duration) -> LeaseChange {
        let worker_id = worker_id.to_owned();
        Box::new(move |job: &mut Job| {
            let token = LeaseToken::generate();
            transitions::start_attempt(job, &worker_id, token.clone(), now, lease_duration);
            token
        })
    }

    /// After a lease commits: its events, and the answer for the worker.
    async fn grant(&self, leased: Vec<(Job, LeaseToken)>, now: Millis) -> Vec<LeasedJob> {
        if leased.is_empty() {
            return Vec::new();
        }
        let (jobs, tokens): (Vec<Job>, Vec<LeaseToken>) = leased.into_iter().unzip();
        let applied: Vec<_> = jobs
            .into_iter()
            .map(|mut job| {
                // The job as it was queued, for events and metrics: its
                // payload did not change, so it is not copied.
                let payload = job.payload.take();
                let mut before = job.clone();
                before.state = JobState::Queued;
                job.payload = payload;
                crate::domain::Applied {
                    before,
                    job,
                    entry: None,
                }
            })
            .collect();
        self.after_changes(&applied).await;
        applied
            .into_iter()
            .zip(tokens)
            .map(|(change, lease_token)| LeasedJob {
                lease_expires_at: change.job.lease_expires_at.unwrap_or(now),
                attempt_deadline: change.job.attempt_deadline.unwrap_or(now),
                lease_token,
                job: change.job,
            })
            .collect()
    }

    /// True when the worker was not written to the registry within the last second.
    fn worker_touch_due(&self, worker_id: &str, now: Millis) -> bool {
        let mut touched = lock(&self.worker_touched);
        match touched.get(worker_id) {
            Some(at)
                if now - at < crate::domain::store::WORKER_TOUCH_INTERVAL.as_millis() as Millis =>
            {
                false
            }
            _ => {
                if touched.len() >= 10_000 {
                    // Forget workers gone quiet, so the map stays small.
                    touched.retain(|_, at| now - *at < 3_600_000);
                }
                touched.insert(worker_id.to_owned(), now);
                true
            }
        }
    }

    /// Records that a worker asked for jobs, at most once a second per worker.
    async fn touch_worker(&self, worker: &WorkerRecord) {
        let now = self.now();
        if !self.worker_touch_due(&worker.worker_id, now) {
            return;
        }
        let mut record = worker.clone();
        record.first_seen_at = now;
        record.last_seen_at = now;
        if let Err(error) = self.store.touch_workers(vec![record]).await {
            tracing::warn!(%error, worker_id = %worker.worker_id, "could not record worker");
        }
    }

    /// Renews leases and records progress in one transaction; per lease,
    /// says whether the worker must stop.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        leases: Vec<HeartbeatLease>,
        lease_duration: Option<Duration>,
    ) -> QueueResult<Vec<HeartbeatOutcome>> {
        let now = self.now();
        if self.worker_touch_due(worker_id, now)
            && let Err(error) = self
                .store
                .workers_seen(vec![worker_id.to_owned()], now)
                .await
        {
            tracing::warn!(%error, worker_id, "could not record worker");
        }
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let default_lease = self.defaults.lease_duration;
        let changes: Vec<(JobId, JobChange)> = leases
            .iter()
            .map(|lease| {
                let token = lease.lease_token.clone();
                let renewal = Renewal {
                    lease_duration,
                    progress_percent: lease.progress_percent,
                    progress_message: lease.progress_message.clone(),
                };
                let jitter = rand::random::<f64>();
                let change: JobChange = Box::new(move |job| {
                    transitions::renew(job, &token, &renewal, default_lease, now, jitter)
                });
                (lease.job_id.clone(), change)
            })
            .collect();
        let results = self.store.update_jobs(changes).await?;
        let mut applied = Vec::new();
        let mut outcomes = Vec::with_capacity(results.len());
        for (lease, result) in leases.iter().zip(results) {
            outcomes.push(match result {
                Ok(change) => {
                    let job = &change.job;
                    let outcome = if job.state != JobState::Running {
                        HeartbeatOutcome::Stop {
                            reason: StopReason::TimedOut,
                            lease_expires_at: None,
                        }
                    } else if job.cancel_requested {
                        HeartbeatOutcome::Stop {
                            reason: StopReason::Cancelled,
                            lease_expires_at: job.lease_expires_at,
                        }
                    } else {
                        HeartbeatOutcome::Continue {
                            lease_expires_at: job.lease_expires_at.unwrap_or(now),
                        }
                    };
                    applied.push(change);
                    outcome
                }
                Err(QueueError::StaleLease { .. } | QueueError::JobNotFound(_)) => {
                    let ended = self
                        .store
                        .attempt_outcome(&lease.job_id, &lease.lease_token)
                        .await?;
                    HeartbeatOutcome::Stop {
                        reason: match ended {
                            Some(AttemptOutcome::TimedOut) => StopReason::TimedOut,
                            Some(AttemptOutcome::Cancelled) => StopReason::Cancelled,
                            _ => StopReason::LeaseLost,
                        },
                        lease_expires_at: None,
                    }
                }
                Err(other) => return Err(other),
            });
        }
        self.after_changes(&applied).await;
        Ok(outcomes)
    }

    /// The job if `token` is its current lease (no payload or result).
    pub async fn check_lease(&self, id: &JobId, token: &LeaseToken) -> QueueResult<Job> {
        let job = self
            .store
            .get_job(id, crate::domain::Detail::Basic)
            .await?
            .ok_or_else(|| QueueError::JobNotFound(id.to_string()))?;
        transitions::check_lease(&job, token)?;
        Ok(job)
    }

    /// Workers heard from since `since`, with the jobs they hold.
    pub async fn workers(&self, since: Millis) -> QueueResult<Vec<(WorkerRecord, Vec<JobId>)>> {
        self.store.workers(since).await
    }
}
