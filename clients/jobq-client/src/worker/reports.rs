//! The reporter: the outcomes of a worker's jobs go to the server in
//! batches, so that a worker running many short jobs pays one round trip
//! (and the server one commit) per batch rather than per job. An outcome
//! waits in the [`Outbox`]: the next LeaseJobs call takes it along (the
//! server records it in the lease's own transaction, so reporting costs no
//! round trip of its own), or after a short linger the reporter task sends
//! it by itself (CompleteJobs, FailJobs). A job stays on the heartbeat list
//! until its report is accepted, so a report retried while the server is
//! unreachable does not lose its lease meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tracing::Instrument;

use jobq_proto::v1 as pb;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use super::backoff::Backoff;
use super::context::ActiveJob;
use crate::convert::proto_duration;
use crate::error::is_transient;

/// Most reports in one call (the server's batch limit).
const MAX_REPORTS_PER_CALL: usize = 1000;

/// How an attempt ended, as the server is told.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Success, with the handler's result.
    Complete(Option<prost_types::Value>),
    /// Failure.
    Fail {
        error: String,
        retryable: bool,
        retry_after: Option<Duration>,
    },
}

/// One report waiting to be sent.
pub(crate) struct Report {
    pub active: Arc<ActiveJob>,
    pub outcome: Outcome,
}

/// The reports waiting to go out.
pub(crate) struct Outbox {
    waiting: Mutex<Vec<Report>>,
    /// Wakes the reporter task: a report came, or the outbox closed.
    wake: Notify,
    closed: AtomicBool,
    /// Cleared once a server answered a lease without the results of the
    /// reports it carried (a server older than that drops them unread):
    /// reports then go by themselves.
    with_leases: AtomicBool,
}

impl Outbox {
    pub fn new() -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            with_leases: AtomicBool::new(true),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Report>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a report; it goes with the next lease call or batch.
    pub fn send(&self, report: Report) {
        if self.closed.load(Ordering::Acquire) {
            tracing::warn!(
                job_id = report.active.job_id(),
                "the reporter has stopped; the job's outcome is not reported"
            );
            return;
        }
        self.waiting().push(report);
        self.wake.notify_one();
    }

    /// Up to a call's worth of the waiting reports.
    fn take(&self) -> Vec<Report> {
        let mut waiting = self.waiting();
        let count = waiting.len().min(MAX_REPORTS_PER_CALL);
        let taken: Vec<Report> = waiting.drain(..count).collect();
        if !waiting.is_empty() {
            // Reports beyond the call's limit wait for the next batch.
            self.wake.notify_one();
        }
        taken
    }

    /// Reports for a lease call to carry: those waiting, unless the server
    /// does not take reports with leases.
    pub fn take_for_lease(&self) -> Carried {
        if !self.with_leases.load(Ordering::Relaxed) {
            return Carried::default();
        }
        let (completes, fails) = self
            .take()
            .into_iter()
            .partition(|report| matches!(report.outcome, Outcome::Complete(_)));
        Carried { completes, fails }
    }

    /// From now on reports go by themselves only.
    pub fn stop_riding_leases(&self) {
        self.with_leases.store(false, Ordering::Relaxed);
    }

    /// Reports a lease call did not deliver: the reporter sends them.
    fn hand_back(&self, reports: impl IntoIterator<Item = Report>) {
        let mut waiting = self.waiting();
        let before = waiting.len();
        waiting.extend(reports);
        if waiting.len() > before {
            self.wake.notify_one();
        }
    }

    /// No more reports come: the reporter sends what waits and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The reports one LeaseJobs call carries, completions and failures apart
/// as the call lists them.
#[derive(Default)]
pub(crate) struct Carried {
    completes: Vec<Report>,
    fails: Vec<Report>,
}

impl Carried {
    pub fn is_empty(&self) -> bool {
        self.completes.is_empty() && self.fails.is_empty()
    }

    /// The request's completions and failures.
    pub fn requests(&self) -> (Vec<pb::CompleteJobRequest>, Vec<pb::FailJobRequest>) {
        (
            self.completes.iter().filter_map(complete_request).collect(),
            self.fails.iter().filter_map(fail_request).collect(),
        )
    }

    /// Settles each report by its result in the answer; reports the answer
    /// says nothing of (a server that does not take reports with leases)
    /// go back to the outbox, to be sent by themselves.
    pub fn answered(
        self,
        shared: &Shared,
        completion_results: &[pb::ReportResult],
        failure_results: &[pb::ReportResult],
    ) {
        if self.is_empty() {
            return;
        }
        if completion_results.len() != self.completes.len()
            || failure_results.len() != self.fails.len()
        {
            tracing::info!(
                "the server does not take reports with leases; sending them by themselves"
            );
            shared.outbox.stop_riding_leases();
            self.undelivered(shared);
            return;
        }
        for (report, result) in self.completes.iter().zip(completion_results) {
            settle(shared, report, result);
        }
        for (report, result) in self.fails.iter().zip(failure_results) {
            settle(shared, report, result);
        }
    }

    /// The call failed or got no answer: the reporter sends them (a report
    /// the server did record is answered as the first was).
    pub fn undelivered(self, shared: &Shared) {
        shared
            .outbox
            .hand_back(self.completes.into_iter().chain(self.fails));
    }
}

/// Sends reports until the outbox is closed and empty. A report waits the
/// linger first: more reports, or a lease call to carry them, may come.
pub(crate) async fn run(shared: Arc<Shared>) {
    let outbox = &shared.outbox;
    let linger = shared.config.report_linger;
    loop {
        let waiting = !outbox.waiting().is_empty();
        let closed = outbox.closed.load(Ordering::Acquire);
        if !waiting {
            if closed {
                return;
            }
            outbox.wake.notified().await;
            continue;
        }
        if !closed && !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
        let batch = outbox.take();
        if batch.is_empty() {
            continue;
        }
        let span = tracing::info_span!("report", otel.name = "jobq.report", jobs = batch.len());
        deliver(&shared, batch).instrument(span).await;
    }
}

/// Sends one batch, trying again while the server cannot be reached and
/// the leases may still be valid.
async fn deliver(shared: &Shared, mut batch: Vec<Report>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    loop {
        let (completes, fails): (Vec<&Report>, Vec<&Report>) = batch
            .iter()
            .partition(|report| matches!(report.outcome, Outcome::Complete(_)));
        let (completed, failed) = tokio::join!(
            send_completes(shared, &completes),
            send_fails(shared, &fails)
        );
        let mut retry = Vec::new();
        let mut problem = None;
        for (reports, answered) in [(completes, completed), (fails, failed)] {
            match answered {
                Ok(results) => {
                    for (report, result) in reports.iter().zip(results) {
                        settle(shared, report, &result);
                    }
                }
                Err(status) if is_transient(status.code()) => {
                    problem = Some(format!("{:?}: {}", status.code(), status.message()));
                    retry.extend(
                        reports
                            .iter()
                            .map(|report| report.active.job_id().to_owned()),
                    );
                }
                Err(status) => {
                    tracing::error!(code = ?status.code(), "reports refused: {}", status.message());
                    for report in reports {
                        shared.remove(report.active.job_id());
                    }
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        batch.retain(|report| retry.iter().any(|id| id == report.active.job_id()));
        // A report after its lease must have run out would be refused anyway.
        let now = Instant::now();
        batch.retain(|report| {
            let valid = report.active.lease_valid_until() > now && !shared.force.is_cancelled();
            if !valid {
                tracing::warn!(
                    job_id = report.active.job_id(),
                    "the job's outcome could not be delivered before its lease ran out"
                );
                shared.remove(report.active.job_id());
            }
            valid
        });
        if batch.is_empty() {
            return;
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            reports = batch.len(),
            ?delay,
            "reporting failed (server unreachable?), retrying: {}",
            problem.unwrap_or_default()
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.force.cancelled() => {}
        }
    }
}

/// Logs how a report went and takes the job off the heartbeat list.
fn settle(shared: &Shared, report: &Report, result: &pb::ReportResult) {
    let job_id = report.active.job_id();
    let code = result.status.as_ref().map_or(0, |status| status.code);
    if let Some(hook) = &shared.on_reported {
        hook(job_id, code == 0);
    }
    if code == 0 {
        tracing::debug!(job_id, "outcome recorded");
    } else {
        let message = result
            .status
            .as_ref()
            .map(|status| status.message.as_str())
            .unwrap_or_default();
        tracing::warn!(
            job_id,
            code,
            "the outcome was refused (the lease is no longer ours?): {message}"
        );
    }
    shared.remove(job_id);
}

fn complete_request(report: &Report) -> Option<pb::CompleteJobRequest> {
    match &report.outcome {
        Outcome::Complete(result) => Some(pb::CompleteJobRequest {
            lease: Some(report.active.lease.clone()),
            result: result.clone(),
        }),
        Outcome::Fail { .. } => None,
    }
}

fn fail_request(report: &Report) -> Option<pb::FailJobRequest> {
    match &report.outcome {
        Outcome::Fail {
            error,
            retryable,
            retry_after,
        } => Some(pb::FailJobRequest {
            lease: Some(report.active.lease.clone()),
            error: error.clone(),
            retryable: *retryable,
            retry_after: retry_after.map(proto_duration),
        }),
        Outcome::Complete(_) => None,
    }
}

async fn send_completes(
    shared: &Shared,
    reports: &[&Report],
) -> Result<Vec<pb::ReportResult>, tonic::Status> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let jobs = reports
        .iter()
        .filter_map(|report| complete_request(report))
        .collect();
    let mut worker = shared.client.worker_service();
    let call = worker.complete_jobs(pb::CompleteJobsRequest { jobs });
    answer(shared, call).await.map(|response| response.results)
}

async fn send_fails(
    shared: &Shared,
    reports: &[&Report],
) -> Result<Vec<pb::ReportResult>, tonic::Status> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let jobs = reports
        .iter()
        .filter_map(|report| fail_request(report))
        .collect();
    let mut worker = shared.client.worker_service();
    let call = worker.fail_jobs(pb::FailJobsRequest { jobs });
    answer(shared, call).await.map(|response| response.results)
}

async fn answer<T>(
    shared: &Shared,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let limit = shared.client.config().request_timeout();
    match tokio::time::timeout(limit, call).await {
        Ok(answered) => answered.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {limit:?}"
        ))),
    }
}
