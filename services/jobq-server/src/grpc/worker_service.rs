//! `jobq.v1.WorkerService`: leasing, heartbeats and reports from workers.

use std::sync::Arc;
use std::time::Duration;

use jobq_proto::v1 as pb;
use jobq_proto::v1::worker_service_server::WorkerService;
use tonic::{Request, Response, Status};

use super::convert::{self, DEFAULT_QUEUE, proto_job, timestamp};
use crate::domain::{
    CompleteReport, FailReport, HeartbeatLease, HeartbeatOutcome, JobId, JobQueue, LeaseRequest,
    LeaseToken, MAX_ERROR_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, Millis, QueueError,
    QueueResult, WorkerRecord,
};
use crate::logs::{LogStore, LogStream, NewLine};

/// Shortest and longest lease a worker may ask for.
const LEASE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);

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
    let duration = convert::duration_of(raw, field)?;
    if !LEASE_RANGE.contains(&duration) {
        return Err(QueueError::invalid(field, "must be between 1s and 10m"));
    }
    Ok(Some(duration))
}

fn job_lease(lease: Option<&pb::JobLease>, field: &str) -> QueueResult<(JobId, LeaseToken)> {
    let lease = lease.ok_or_else(|| QueueError::invalid(field, "is required"))?;
    let job_id = convert::job_id(&lease.job_id, &format!("{field}.job_id"))?;
    if lease.lease_token.is_empty() {
        return Err(QueueError::invalid(
            format!("{field}.lease_token"),
            "is required",
        ));
    }
    Ok((job_id, LeaseToken::from_string(lease.lease_token.clone())))
}

fn complete_report(
    request: pb::CompleteJobRequest,
    queue: &JobQueue,
) -> QueueResult<CompleteReport> {
    let (job_id, lease_token) = job_lease(request.lease.as_ref(), "lease")?;
    let result = convert::json_text(&request.result, "result", queue.limits(), None)?;
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
        .map(|d| convert::duration_of(d, "retry_after"))
        .transpose()?;
    Ok(FailReport {
        job_id,
        lease_token,
        error,
        retryable: request.retryable,
        retry_after,
    })
}

/// The batch entry for one report: accepted, or refused with the code the single RPC would give.
fn report_result(job_id: String, outcome: Result<(), Status>) -> pb::ReportResult {
    match outcome {
        Ok(()) => pb::ReportResult {
            job_id,
            accepted: true,
            code: 0,
            message: String::new(),
        },
        Err(status) => pb::ReportResult {
            job_id,
            accepted: false,
            code: status.code() as i32,
            message: status.message().to_owned(),
        },
    }
}

/// A pushed log entry, validated.
fn log_entry(entry: pb::LogEntry, field: &str, now: Millis) -> QueueResult<NewLine> {
    let stream = convert::log_stream(entry.stream, &format!("{field}.stream"))?;
    let time = entry
        .time
        .as_ref()
        .map(|ts| convert::millis_of(ts, &format!("{field}.time")))
        .transpose()?
        .unwrap_or(now);
    let mut fields = match entry.fields.as_str() {
        "" => None,
        raw => match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(value @ serde_json::Value::Object(_)) => Some(value),
            _ => {
                return Err(QueueError::invalid(
                    format!("{field}.fields"),
                    "must be a JSON object",
                ));
            }
        },
    };
    if stream == LogStream::Progress && entry.progress_percent >= 0 {
        if entry.progress_percent > 100 {
            return Err(QueueError::invalid(
                format!("{field}.progress_percent"),
                "must be within 0..=100 (or -1)",
            ));
        }
        let object = fields.get_or_insert_with(|| serde_json::json!({}));
        if let Some(map) = object.as_object_mut() {
            map.insert("percent".to_owned(), entry.progress_percent.into());
        }
    }
    Ok(NewLine {
        stream,
        time,
        message: entry.message,
        fields,
    })
}

/// Applies the valid reports of a batch together (one transaction) and
/// answers every entry in request order: accepted, or refused with the code
/// the single-job RPC would have given.
async fn batch_results<R, Fut>(
    entries: Vec<(String, QueueResult<R>)>,
    apply: impl FnOnce(Vec<R>) -> Fut,
) -> Result<Vec<pb::ReportResult>, Status>
where
    Fut: std::future::Future<Output = QueueResult<Vec<QueueResult<crate::domain::Job>>>>,
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
    let mut applied = apply(valid).await?.into_iter();
    Ok(slots
        .into_iter()
        .map(|(job_id, invalid)| {
            let outcome = match invalid {
                Some(status) => Err(status),
                None => match applied.next() {
                    Some(result) => result.map(drop).map_err(Status::from),
                    None => Err(Status::internal("batch answer missing")),
                },
            };
            report_result(job_id, outcome)
        })
        .collect())
}

fn lease_job_id(lease: Option<&pb::JobLease>) -> String {
    lease.map(|lease| lease.job_id.clone()).unwrap_or_default()
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
            .map(|d| convert::duration_of(d, "wait"))
            .transpose()?
            .unwrap_or_default();
        if wait > limits.max_lease_wait {
            return Err(QueueError::invalid(
                "wait",
                format!("is longer than {:?}", limits.max_lease_wait),
            )
            .into());
        }
        let leased = self
            .queue
            .lease(LeaseRequest {
                worker: WorkerRecord {
                    worker_id,
                    hostname: convert::bounded_text(&request.hostname, "hostname", MAX_NAME_BYTES)?,
                    version: convert::bounded_text(&request.version, "version", MAX_NAME_BYTES)?,
                    queues,
                    types: request.types,
                    first_seen_at: 0,
                    last_seen_at: 0,
                },
                max_jobs: max_jobs as u64,
                wait,
                lease_duration: lease_duration(request.lease_duration.as_ref(), "lease_duration")?,
            })
            .await?;
        Ok(Response::new(pb::LeaseJobsResponse {
            jobs: leased
                .into_iter()
                .map(|leased| pb::LeasedJob {
                    lease_token: leased.lease_token.as_str().to_owned(),
                    lease_expires_at: Some(timestamp(leased.lease_expires_at)),
                    attempt_deadline: Some(timestamp(leased.attempt_deadline)),
                    job: Some(proto_job(leased.job)),
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
                let progress_percent = match entry.progress_percent {
                    -1 => None,
                    percent @ 0..=100 => Some(percent),
                    other => {
                        return Err(QueueError::invalid(
                            format!("{field}.progress_percent"),
                            format!("{other} is outside 0..=100 (or -1)"),
                        ));
                    }
                };
                let message = convert::bounded_text(
                    &entry.progress_message,
                    &format!("{field}.progress_message"),
                    MAX_MESSAGE_BYTES,
                )?;
                let progress_message = (!message.is_empty()).then_some(message);
                Ok(HeartbeatLease {
                    job_id,
                    lease_token,
                    progress_percent,
                    progress_message,
                })
            })
            .collect::<QueueResult<Vec<_>>>()?;
        self.queue.worker_seen(&worker_id).await;
        let mut results = Vec::with_capacity(leases.len());
        for lease in leases {
            let job_id = lease.job_id.to_string();
            let result = match self.queue.heartbeat(lease, extend_by).await? {
                HeartbeatOutcome::Continue { lease_expires_at } => pb::HeartbeatResult {
                    job_id,
                    stop: false,
                    reason: pb::StopReason::Unspecified.into(),
                    lease_expires_at: Some(timestamp(lease_expires_at)),
                },
                HeartbeatOutcome::Stop(reason) => pb::HeartbeatResult {
                    job_id,
                    stop: true,
                    reason: convert::proto_stop_reason(reason).into(),
                    lease_expires_at: None,
                },
            };
            results.push(result);
        }
        Ok(Response::new(pb::HeartbeatResponse { results }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let report = complete_report(request.into_inner(), &self.queue)?;
        let job = self.queue.complete(report).await?;
        Ok(Response::new(pb::CompleteJobResponse {
            job: Some(proto_job(job)),
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
        let job = self.queue.fail(report).await?;
        Ok(Response::new(pb::FailJobResponse {
            job: Some(proto_job(job)),
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
        let mut results = Vec::with_capacity(request.leases.len());
        for (index, lease) in request.leases.iter().enumerate() {
            let job_id = lease.job_id.clone();
            let outcome = match job_lease(Some(lease), &format!("leases[{index}]")) {
                Ok((id, token)) => self
                    .queue
                    .release(&id, token)
                    .await
                    .map(drop)
                    .map_err(Status::from),
                Err(invalid) => Err(Status::from(invalid)),
            };
            results.push(report_result(job_id, outcome));
        }
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
            let lines = message
                .entries
                .into_iter()
                .enumerate()
                .map(|(index, entry)| log_entry(entry, &format!("entries[{index}]"), now))
                .collect::<QueueResult<Vec<_>>>()?;
            // Checked per message: a lease lost mid-stream stops the push there.
            let job = self.queue.check_lease(&job_id, &lease_token).await?;
            let outcome = self.logs.append(&job_id, job.attempt, lines).await?;
            totals.accepted_lines += outcome.accepted;
            totals.truncated_lines += outcome.truncated;
            totals.dropped_lines += outcome.dropped;
            // A message whose lines were all dropped stores nothing: keep the last stored position.
            totals.last_position = totals.last_position.max(outcome.last_position);
        }
        Ok(Response::new(totals))
    }
}
