//! The reporter: one task per worker that sends the outcomes of its jobs in
//! batches (CompleteJobs, FailJobs), gathered over a short linger, so that a
//! worker running many short jobs pays one round trip (and the server one
//! commit) per batch rather than per job. A job stays on the heartbeat list
//! until its report is accepted, so a report retried while the server is
//! unreachable does not lose its lease meanwhile.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use jobq_proto::v1 as pb;
use tokio::sync::mpsc;
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

/// The sending side: supervisors hand their reports here.
#[derive(Clone, Debug)]
pub(crate) struct Reporter {
    inbox: mpsc::UnboundedSender<Report>,
}

impl Reporter {
    /// A reporter and the receiving end for [`run`].
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Report>) {
        let (inbox, receiver) = mpsc::unbounded_channel();
        (Self { inbox }, receiver)
    }

    /// Queues a report; it is sent with the next batch.
    pub fn send(&self, report: Report) {
        if let Err(unsent) = self.inbox.send(report) {
            tracing::warn!(
                job_id = unsent.0.active.job_id(),
                "the reporter has stopped; the job's outcome is not reported"
            );
        }
    }
}

/// Sends reports until every [`Reporter`] is dropped and the last batch is out.
pub(crate) async fn run(shared: Arc<Shared>, mut inbox: mpsc::UnboundedReceiver<Report>) {
    let linger = shared.config.report_linger;
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        let until = Instant::now() + linger;
        while batch.len() < MAX_REPORTS_PER_CALL {
            match inbox.try_recv() {
                Ok(report) => batch.push(report),
                Err(_) if linger.is_zero() => break,
                Err(_) => tokio::select! {
                    report = inbox.recv() => match report {
                        Some(report) => batch.push(report),
                        None => break,
                    },
                    () = tokio::time::sleep_until(until) => break,
                },
            }
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

async fn send_completes(
    shared: &Shared,
    reports: &[&Report],
) -> Result<Vec<pb::ReportResult>, tonic::Status> {
    if reports.is_empty() {
        return Ok(Vec::new());
    }
    let jobs = reports
        .iter()
        .map(|report| pb::CompleteJobRequest {
            lease: Some(report.active.lease.clone()),
            result: match &report.outcome {
                Outcome::Complete(result) => result.clone(),
                Outcome::Fail { .. } => None,
            },
        })
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
        .filter_map(|report| match &report.outcome {
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
        })
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
