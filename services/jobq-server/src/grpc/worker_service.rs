//! `jobq.v1.WorkerService`: leasing, heartbeats, reports and log pushes
//! from workers. Reports of a batch are applied in one transaction.

use std::sync::Arc;
use std::time::Duration;

use jobq_proto::v1 as pb;
use jobq_proto::v1::worker_service_server::WorkerService;
use tonic::{Request, Response, Status};

use super::convert::{self, DEFAULT_QUEUE, proto_job, timestamp};
use super::status::{rpc_ok, rpc_status};
use crate::domain::{
    CompleteReport, DEFAULT_LEASE_RESPONSE_BYTES, FailReport, HeartbeatLease, HeartbeatOutcome,
    Job, JobId, JobQueue, JobState, LEASE_RANGE, LeaseRequest, LeaseToken, MAX_ERROR_BYTES,
    MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_WAIT, Millis, QueueError, QueueResult, WorkerRecord,
};
use crate::logs::{LogStore, LogStream, NewLine};

/// Room kept in a lease answer for everything but the payloads (ids,
/// tokens, names, times, tags): a job's fields besides its payload fit in
/// far less, even with the most tags and the longest names.
const LEASED_JOB_OVERHEAD: u64 = 8 * 1024;

/// The worker API over a [`JobQueue`] and the job logs.
pub struct WorkerApi {
    queue: Arc<JobQueue>,
    logs: Arc<LogStore>,
}

impl WorkerApi {
    /// The API over `queue` and `logs`.
    pub fn new(queue: Arc<JobQueue>, logs: Arc<LogStore>) -> Self {
        Self { queue, logs }
    }

    fn check_batch<T>(&self, items: &[T], field: &str) -> QueueResult<()> {
        let max = self.queue.limits().max_batch;
        if items.is_empty() || items.len() > max {
            return Err(QueueError::invalid(
                field,
                format!("has {} entries; a batch holds 1 to {max}", items.len()),
            ));
        }
        Ok(())
    }
}

fn lease_duration(
    raw: Option<&prost_types::Duration>,
    field: &str,
) -> QueueResult<Option<Duration>> {
    let Some(raw) = raw else { return Ok(None) };
    let duration = convert::duration_of(raw, field, *LEASE_RANGE.end())?;
    if !LEASE_RANGE.contains(&duration) {
        return Err(QueueError::invalid(field, "must be between 1s and 1h"));
    }
    Ok(Some(duration))
}

fn job_lease(lease: Option<&pb::JobLease>, field: &str) -> QueueResult<(JobId, LeaseToken)> {
    let lease = lease.ok_or_else(|| QueueError::invalid(field, "is required"))?;
    let job_id = convert::job_id(&lease.job_id, &format!("{field}.job_id"))?;
    let token = convert::bounded_text(&lease.lease_token, &format!("{field}.lease_token"), 64)?;
    if token.is_empty() {
        return Err(QueueError::invalid(
            format!("{field}.lease_token"),
            "is required",
        ));
    }
    Ok((job_id, LeaseToken::from_string(token)))
}

fn complete_report(
    request: pb::CompleteJobRequest,
    queue: &JobQueue,
) -> QueueResult<CompleteReport> {
    let (job_id, lease_token) = job_lease(request.lease.as_ref(), "lease")?;
    let result = convert::json_value(request.result.as_ref(), "result", queue.limits())?
        .map(|(text, _)| text);
    Ok(CompleteReport {
        job_id,
        lease_token,
        result,
    })
}

fn fail_report(request: pb::FailJobRequest) -> QueueResult<FailReport> {
    let (job_id, lease_token) = job_lease(request.lease.as_ref(), "lease")?;
    let error = convert::bounded_text(&request.error, "error", MAX_ERROR_BYTES)?;
    let retry_after = request
        .retry_after
        .as_ref()
        .map(|d| convert::duration_of(d, "retry_after", MAX_WAIT))
        .transpose()?;
    Ok(FailReport {
        job_id,
        lease_token,
        error,
        retryable: request.retryable,
        retry_after,
    })
}

/// Where a report left a job.
fn outcome(job: &Job) -> pb::ReportOutcome {
    pb::ReportOutcome {
        job_id: job.id.to_string(),
        state: convert::proto_state(job.state).into(),
        attempt: job.attempt,
        next_run_at: matches!(job.state, JobState::Retrying | JobState::Queued)
            .then(|| timestamp(job.run_at)),
    }
}

/// The batch entry for one report: accepted, or refused with the status the
/// single RPC would give.
fn report_result(job_id: String, applied: Result<Job, Status>) -> pb::ReportResult {
    match applied {
        Ok(job) => pb::ReportResult {
            job_id,
            status: Some(rpc_ok()),
            outcome: Some(outcome(&job)),
        },
        Err(status) => pb::ReportResult {
            job_id,
            status: Some(rpc_status(&status)),
            outcome: None,
        },
    }
}

/// A pushed log entry, validated.
fn log_entry(
    entry: pb::LogEntry,
    field: &str,
    now: Millis,
    cseq: Option<u64>,
) -> QueueResult<NewLine> {
    let stream = convert::log_stream(entry.stream, &format!("{field}.stream"))?;
    let time = entry
        .time
        .as_ref()
        .map(|ts| convert::millis_of(ts, &format!("{field}.time")))
        .transpose()?
        .unwrap_or(now);
    let mut fields = convert::fields_of(entry.fields.as_ref(), &format!("{field}.fields"))?;
    if let Some(percent) = entry.progress_percent {
        if !(0..=100).contains(&percent) {
            return Err(QueueError::invalid(
                format!("{field}.progress_percent"),
                format!("{percent} is outside 0..=100"),
            ));
        }
        if stream == LogStream::Progress {
            let object = fields.get_or_insert_with(|| serde_json::json!({}));
            if let Some(map) = object.as_object_mut() {
                map.insert("percent".to_owned(), percent.into());
            }
        }
    }
    Ok(NewLine {
        stream,
        time,
        message: entry.message,
        fields,
        cseq,
    })
}

/// Applies the valid reports of a batch together (one transaction) and
/// answers every entry in request order.
async fn batch_results<R, Fut>(
    entries: Vec<(String, QueueResult<R>)>,
    apply: impl FnOnce(Vec<R>) -> Fut,
) -> Result<Vec<pb::ReportResult>, Status>
where
    Fut: std::future::Future<Output = QueueResult<Vec<QueueResult<Job>>>>,
{
    let mut valid = Vec::new();
    let mut slots = Vec::with_capacity(entries.len());
    for (job_id, report) in entries {
        match report {
            Ok(report) => {
                valid.push(report);
                slots.push((job_id, None));
            }
            Err(invalid) => slots.push((job_id, Some(Status::from(invalid)))),
        }
    }
    let mut applied = if valid.is_empty() {
        Vec::new().into_iter()
    } else {
        apply(valid).await?.into_iter()
    };
    Ok(slots
        .into_iter()
        .map(|(job_id, invalid)| {
            let result = match invalid {
                Some(status) => Err(status),
                None => match applied.next() {
                    Some(result) => result.map_err(Status::from),
                    None => Err(Status::internal("batch answer missing")),
                },
            };
            report_result(job_id, result)
        })
        .collect())
}

fn lease_job_id(lease: Option<&pb::JobLease>) -> String {
    lease
        .map(|lease| convert::bounded_text(&lease.job_id, "", 64).unwrap_or_default())
        .unwrap_or_default()
}

/// The one answer of a batch of one, or the status the single RPC gives.
fn single(mut results: Vec<QueueResult<Job>>) -> Result<Job, Status> {
    results
        .pop()
        .unwrap_or_else(|| {
            Err(QueueError::Storage(
                "a batch of one answered nothing".into(),
            ))
        })
        .map_err(Status::from)
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn lease_jobs(
        &self,
        request: Request<pb::LeaseJobsRequest>,
    ) -> Result<Response<pb::LeaseJobsResponse>, Status> {
        let request = request.into_inner();
        let limits = self.queue.limits();
        let worker_id = convert::name(&request.worker_id, "worker_id")?;
        let queues = if request.queues.is_empty() {
            vec![DEFAULT_QUEUE.to_owned()]
        } else {
            request
                .queues
                .iter()
                .enumerate()
                .map(|(index, queue)| convert::queue_name(queue, &format!("queues[{index}]")))
                .collect::<QueueResult<_>>()?
        };
        let types = request
            .types
            .iter()
            .enumerate()
            .map(|(index, name)| convert::name(name, &format!("types[{index}]")))
            .collect::<QueueResult<Vec<_>>>()?;
        let max_jobs = request.max_jobs;
        if max_jobs < 1 || max_jobs as usize > limits.max_lease_jobs {
            return Err(QueueError::invalid(
                "max_jobs",
                format!("{max_jobs} is outside 1..={}", limits.max_lease_jobs),
            )
            .into());
        }
        let wait = request
            .wait
            .as_ref()
            .map(|d| convert::duration_of(d, "wait", limits.max_lease_wait))
            .transpose()?
            .unwrap_or_default();
        // What the worker can take in, and what the server can send: one
        // answer never holds more jobs than fit.
        let answer_bytes = match request.max_response_bytes {
            0 => DEFAULT_LEASE_RESPONSE_BYTES,
            bytes => bytes,
        }
        .min(limits.max_message_bytes as u64);
        let max_payload_bytes = answer_bytes.saturating_sub(LEASED_JOB_OVERHEAD * max_jobs as u64);
        if max_payload_bytes == 0 {
            return Err(QueueError::invalid(
                "max_response_bytes",
                format!(
                    "leaves no room for payloads with max_jobs {max_jobs}: allow at least {} bytes",
                    LEASED_JOB_OVERHEAD * max_jobs as u64 + 1024
                ),
            )
            .into());
        }
        let lease_duration = lease_duration(request.lease_duration.as_ref(), "lease_duration")?;
        let leased = self
            .queue
            .lease(LeaseRequest {
                worker: WorkerRecord {
                    worker_id,
                    hostname: convert::bounded_text(&request.hostname, "hostname", MAX_NAME_BYTES)?,
                    version: convert::bounded_text(&request.version, "version", MAX_NAME_BYTES)?,
                    queues,
                    types,
                    lease_duration,
                    first_seen_at: 0,
                    last_seen_at: 0,
                },
                max_jobs: max_jobs as u64,
                wait,
                lease_duration,
                max_payload_bytes: max_payload_bytes.min(i64::MAX as u64) as i64,
            })
            .await?;
        Ok(Response::new(pb::LeaseJobsResponse {
            jobs: leased
                .into_iter()
                .map(|leased| pb::LeasedJob {
                    lease_token: leased.lease_token.as_str().to_owned(),
                    lease_expires_at: Some(timestamp(leased.lease_expires_at)),
                    attempt_deadline: Some(timestamp(leased.attempt_deadline)),
                    attempt_seq: leased.job.history_seq,
                    job: Some(proto_job(leased.job, pb::JobView::Full)),
                })
                .collect(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let worker_id = convert::name(&request.worker_id, "worker_id")?;
        if request.leases.len() > self.queue.limits().max_batch {
            return Err(
                QueueError::invalid("leases", "has more entries than a batch holds").into(),
            );
        }
        let extend_by = lease_duration(request.lease_duration.as_ref(), "lease_duration")?;
        // Validate everything first, so a bad entry fails the call before any lease is touched.
        let leases = request
            .leases
            .into_iter()
            .enumerate()
            .map(|(index, entry)| {
                let field = format!("leases[{index}]");
                let (job_id, lease_token) =
                    job_lease(entry.lease.as_ref(), &format!("{field}.lease"))?;
                if let Some(percent) = entry.progress_percent
                    && !(0..=100).contains(&percent)
                {
                    return Err(QueueError::invalid(
                        format!("{field}.progress_percent"),
                        format!("{percent} is outside 0..=100"),
                    ));
                }
                let progress_message = entry
                    .progress_message
                    .as_deref()
                    .map(|message| {
                        convert::bounded_text(
                            message,
                            &format!("{field}.progress_message"),
                            MAX_MESSAGE_BYTES,
                        )
                    })
                    .transpose()?;
                Ok(HeartbeatLease {
                    job_id,
                    lease_token,
                    progress_percent: entry.progress_percent,
                    progress_message,
                })
            })
            .collect::<QueueResult<Vec<_>>>()?;
        let job_ids: Vec<String> = leases
            .iter()
            .map(|lease| lease.job_id.to_string())
            .collect();
        let outcomes = self.queue.heartbeat(&worker_id, leases, extend_by).await?;
        let results = job_ids
            .into_iter()
            .zip(outcomes)
            .map(|(job_id, outcome)| match outcome {
                HeartbeatOutcome::Continue { lease_expires_at } => pb::HeartbeatResult {
                    job_id,
                    stop: false,
                    reason: pb::StopReason::Unspecified.into(),
                    lease_expires_at: Some(timestamp(lease_expires_at)),
                },
                HeartbeatOutcome::Stop {
                    reason,
                    lease_expires_at,
                } => pb::HeartbeatResult {
                    job_id,
                    stop: true,
                    reason: convert::proto_stop_reason(reason).into(),
                    lease_expires_at: convert::opt_timestamp(lease_expires_at),
                },
            })
            .collect();
        Ok(Response::new(pb::HeartbeatResponse { results }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let report = complete_report(request.into_inner(), &self.queue)?;
        let job = single(self.queue.complete_many(vec![report]).await?)?;
        Ok(Response::new(pb::CompleteJobResponse {
            outcome: Some(outcome(&job)),
        }))
    }

    async fn complete_jobs(
        &self,
        request: Request<pb::CompleteJobsRequest>,
    ) -> Result<Response<pb::CompleteJobsResponse>, Status> {
        let reports = request.into_inner().jobs;
        self.check_batch(&reports, "jobs")?;
        let entries = reports
            .into_iter()
            .enumerate()
            .map(|(index, report)| {
                let job_id = lease_job_id(report.lease.as_ref());
                (
                    job_id,
                    complete_report(report, &self.queue)
                        .map_err(|e| e.within(&format!("jobs[{index}]"))),
                )
            })
            .collect();
        let results = batch_results(entries, |valid| self.queue.complete_many(valid)).await?;
        Ok(Response::new(pb::CompleteJobsResponse { results }))
    }

    async fn fail_job(
        &self,
        request: Request<pb::FailJobRequest>,
    ) -> Result<Response<pb::FailJobResponse>, Status> {
        let report = fail_report(request.into_inner())?;
        let job = single(self.queue.fail_many(vec![report]).await?)?;
        Ok(Response::new(pb::FailJobResponse {
            outcome: Some(outcome(&job)),
        }))
    }

    async fn fail_jobs(
        &self,
        request: Request<pb::FailJobsRequest>,
    ) -> Result<Response<pb::FailJobsResponse>, Status> {
        let reports = request.into_inner().jobs;
        self.check_batch(&reports, "jobs")?;
        let entries = reports
            .into_iter()
            .enumerate()
            .map(|(index, report)| {
                let job_id = lease_job_id(report.lease.as_ref());
                (
                    job_id,
                    fail_report(report).map_err(|e| e.within(&format!("jobs[{index}]"))),
                )
            })
            .collect();
        let results = batch_results(entries, |valid| self.queue.fail_many(valid)).await?;
        Ok(Response::new(pb::FailJobsResponse { results }))
    }

    async fn release_jobs(
        &self,
        request: Request<pb::ReleaseJobsRequest>,
    ) -> Result<Response<pb::ReleaseJobsResponse>, Status> {
        let request = request.into_inner();
        convert::name(&request.worker_id, "worker_id")?;
        self.check_batch(&request.leases, "leases")?;
        let entries = request
            .leases
            .iter()
            .enumerate()
            .map(|(index, lease)| {
                (
                    lease_job_id(Some(lease)),
                    job_lease(Some(lease), &format!("leases[{index}]")),
                )
            })
            .collect();
        let results = batch_results(entries, |valid| self.queue.release_many(valid)).await?;
        Ok(Response::new(pb::ReleaseJobsResponse { results }))
    }

    async fn push_job_logs(
        &self,
        request: Request<tonic::Streaming<pb::PushJobLogsRequest>>,
    ) -> Result<Response<pb::PushJobLogsResponse>, Status> {
        let mut messages = request.into_inner();
        let mut totals = pb::PushJobLogsResponse::default();
        while let Some(message) = messages.message().await? {
            let (job_id, lease_token) = job_lease(message.lease.as_ref(), "lease")?;
            if message.entries.is_empty() || message.entries.len() > self.queue.limits().max_batch {
                return Err(
                    QueueError::invalid("entries", "a message carries 1 to 1000 lines").into(),
                );
            }
            let now = self.queue.now();
            let first = message.first_sequence;
            let lines = message
                .entries
                .into_iter()
                .enumerate()
                .map(|(index, entry)| {
                    let cseq = (first > 0).then(|| first + index as u64);
                    log_entry(entry, &format!("entries[{index}]"), now, cseq)
                })
                .collect::<QueueResult<Vec<_>>>()?;
            // Checked with each message: a lease lost mid-stream stops the push there.
            let outcome = self.logs.push(&job_id, &lease_token, lines).await?;
            totals.accepted_lines += outcome.accepted;
            totals.truncated_lines += outcome.truncated;
            totals.dropped_lines += outcome.dropped;
            totals.duplicate_lines += outcome.duplicates;
            totals.last_position = totals.last_position.max(outcome.last_position);
        }
        Ok(Response::new(totals))
    }
}
