//! Connected clients of both services, with the calls tests make all the time.
//!
//! Methods named `try_*` return the raw `tonic::Status` so a test can check an
//! error; the others turn any error into an `anyhow` error with context, for
//! calls that must succeed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use jobq_proto::v1::job_queue_service_client::JobQueueServiceClient;
use jobq_proto::v1::worker_service_client::WorkerServiceClient;
use jobq_proto::v1::{
    CancelJobRequest, CompleteJobRequest, DeleteJobRequest, EnqueueJobRequest, EnqueueJobResponse,
    EnqueueJobsRequest, FailJobRequest, GetJobRequest, GetQueueStatsRequest, GetQueueStatsResponse,
    HeartbeatRequest, HeartbeatResult, Job, JobLease, JobSpec, JobState, LeaseJobsRequest,
    LeaseProgress, LeasedJob, ListJobsRequest, ListJobsResponse, ReleaseJobsRequest, ReportOutcome,
    ReportResult, RetryJobRequest,
};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::specs::lease_request;
use crate::status::state_name;
use crate::wait::eventually;

/// Longest any single RPC may take. Above the longest long poll a test makes
/// (30 s), so a hung server fails the test instead of hanging it.
const RPC_TIMEOUT: Duration = Duration::from_secs(45);

/// Most pages [`JobqClient::list_all`] follows before it calls the paging broken.
const MAX_PAGES: usize = 1000;

/// Access to a [`LeasedJob`]'s parts. Jobs come from [`JobqClient`]'s lease
/// methods, which check that the server filled them in.
pub trait LeasedJobExt {
    /// The leased job.
    fn job(&self) -> &Job;
    /// Its id.
    fn id(&self) -> &str;
    /// The lease to report with.
    fn lease(&self) -> JobLease;
}

impl LeasedJobExt for LeasedJob {
    fn job(&self) -> &Job {
        self.job
            .as_ref()
            .expect("JobqClient checks that every leased job is filled in")
    }

    fn id(&self) -> &str {
        &self.job().id
    }

    fn lease(&self) -> JobLease {
        JobLease {
            job_id: self.id().to_owned(),
            lease_token: self.lease_token.clone(),
        }
    }
}

/// Reading a batch item's outcome (its embedded google.rpc.Status).
pub trait ReportResultExt {
    /// The report was recorded (status OK).
    fn accepted(&self) -> bool;
    /// The gRPC code the single-job call would have returned (0 when recorded).
    fn code(&self) -> i32;
    /// Why it was refused.
    fn message(&self) -> &str;
}

impl ReportResultExt for ReportResult {
    fn accepted(&self) -> bool {
        self.code() == 0
    }

    fn code(&self) -> i32 {
        self.status.as_ref().map_or(0, |status| status.code)
    }

    fn message(&self) -> &str {
        self.status
            .as_ref()
            .map_or("", |status| status.message.as_str())
    }
}

/// A producer's and a worker's client on one connection. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct JobqClient {
    queue: JobQueueServiceClient<Channel>,
    worker: WorkerServiceClient<Channel>,
}

impl JobqClient {
    /// Opens a new plaintext HTTP/2 connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .context("endpoint URI")?
            .connect_timeout(Duration::from_secs(5))
            .timeout(RPC_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("connecting to the jobq server at {addr}"))?;
        Ok(Self::from_channel(channel))
    }

    /// Clients on an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            queue: JobQueueServiceClient::new(channel.clone()),
            worker: WorkerServiceClient::new(channel),
        }
    }

    /// The raw JobQueueService client.
    pub fn queue(&self) -> JobQueueServiceClient<Channel> {
        self.queue.clone()
    }

    /// The raw WorkerService client.
    pub fn worker(&self) -> WorkerServiceClient<Channel> {
        self.worker.clone()
    }

    // ---- producer side ---------------------------------------------------

    /// EnqueueJob, raw.
    pub async fn try_enqueue(&self, spec: JobSpec) -> Result<EnqueueJobResponse, Status> {
        Ok(self
            .queue()
            .enqueue_job(EnqueueJobRequest {
                job: Some(spec),
                request_id: String::new(),
            })
            .await?
            .into_inner())
    }

    /// EnqueueJob with an idempotency key, raw.
    pub async fn try_enqueue_with_request_id(
        &self,
        spec: JobSpec,
        request_id: &str,
    ) -> Result<EnqueueJobResponse, Status> {
        Ok(self
            .queue()
            .enqueue_job(EnqueueJobRequest {
                job: Some(spec),
                request_id: request_id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Enqueues one job and returns it as stored.
    pub async fn enqueue(&self, spec: JobSpec) -> anyhow::Result<Job> {
        let job_type = spec.r#type.clone();
        let response = self
            .try_enqueue(spec)
            .await
            .with_context(|| format!("EnqueueJob of a {job_type:?} job"))?;
        response.job.context("EnqueueJob answered without a job")
    }

    /// EnqueueJobs, raw.
    pub async fn try_enqueue_batch(
        &self,
        specs: Vec<JobSpec>,
    ) -> Result<Vec<EnqueueJobResponse>, Status> {
        Ok(self
            .queue()
            .enqueue_jobs(EnqueueJobsRequest {
                jobs: specs,
                request_id: String::new(),
            })
            .await?
            .into_inner()
            .results)
    }

    /// Enqueues a batch and returns the stored jobs, in request order.
    pub async fn enqueue_batch(&self, specs: Vec<JobSpec>) -> anyhow::Result<Vec<Job>> {
        let count = specs.len();
        let results = self
            .try_enqueue_batch(specs)
            .await
            .with_context(|| format!("EnqueueJobs of {count} jobs"))?;
        ensure!(
            results.len() == count,
            "EnqueueJobs answered {} results for {count} jobs",
            results.len()
        );
        results
            .into_iter()
            .enumerate()
            .map(|(index, result)| {
                result
                    .job
                    .with_context(|| format!("EnqueueJobs result {index} has no job"))
            })
            .collect()
    }

    /// GetJob, raw.
    pub async fn try_get(&self, id: &str) -> Result<Job, Status> {
        let response = self
            .queue()
            .get_job(GetJobRequest {
                job_id: id.to_owned(),
            })
            .await?
            .into_inner();
        response
            .job
            .ok_or_else(|| Status::internal("test harness: GetJob answered without a job"))
    }

    /// The job with its attempt history.
    pub async fn get(&self, id: &str) -> anyhow::Result<Job> {
        self.try_get(id)
            .await
            .with_context(|| format!("GetJob {id}"))
    }

    /// ListJobs, raw.
    pub async fn try_list(&self, request: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        Ok(self.queue().list_jobs(request).await?.into_inner())
    }

    /// One page of ListJobs.
    pub async fn list(&self, request: ListJobsRequest) -> anyhow::Result<ListJobsResponse> {
        self.try_list(request).await.context("ListJobs")
    }

    /// Every job matching `request`, following `next_page_token` to the last page.
    pub async fn list_all(&self, mut request: ListJobsRequest) -> anyhow::Result<Vec<Job>> {
        let mut jobs = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self.list(request.clone()).await?;
            jobs.extend(page.jobs);
            if page.next_page_token.is_empty() {
                return Ok(jobs);
            }
            request.page_token = page.next_page_token;
        }
        bail!("ListJobs still had a next page after {MAX_PAGES} pages")
    }

    /// GetQueueStats of every queue.
    pub async fn stats(&self) -> anyhow::Result<GetQueueStatsResponse> {
        Ok(self
            .queue()
            .get_queue_stats(GetQueueStatsRequest::default())
            .await
            .context("GetQueueStats")?
            .into_inner())
    }

    /// How many jobs are in `state` over all queues, by GetQueueStats' totals.
    pub async fn count_in_state(&self, state: JobState) -> anyhow::Result<i64> {
        let stats = self.stats().await?;
        Ok(stats
            .totals
            .iter()
            .filter(|count| count.state() == state)
            .map(|count| count.count)
            .sum())
    }

    /// CancelJob, raw.
    pub async fn try_cancel(&self, id: &str, reason: &str) -> Result<Job, Status> {
        let request = CancelJobRequest {
            job_id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self.queue().cancel_job(request).await?.into_inner();
        response
            .job
            .ok_or_else(|| Status::internal("test harness: CancelJob answered without a job"))
    }

    /// Cancels a job; returns it after the cancel.
    pub async fn cancel(&self, id: &str, reason: &str) -> anyhow::Result<Job> {
        self.try_cancel(id, reason)
            .await
            .with_context(|| format!("CancelJob {id}"))
    }

    /// RetryJob, raw.
    pub async fn try_retry(&self, id: &str) -> Result<Job, Status> {
        let response = self
            .queue()
            .retry_job(RetryJobRequest {
                job_id: id.to_owned(),
            })
            .await?
            .into_inner();
        response
            .job
            .ok_or_else(|| Status::internal("test harness: RetryJob answered without a job"))
    }

    /// Queues a terminal job again; returns it after the retry.
    pub async fn retry(&self, id: &str) -> anyhow::Result<Job> {
        self.try_retry(id)
            .await
            .with_context(|| format!("RetryJob {id}"))
    }

    /// DeleteJob, raw.
    pub async fn try_delete(&self, id: &str) -> Result<(), Status> {
        self.queue()
            .delete_job(DeleteJobRequest {
                job_id: id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Polls GetJob until the job is in `state`; returns it then.
    pub async fn wait_for_state(
        &self,
        id: &str,
        state: JobState,
        within: Duration,
    ) -> anyhow::Result<Job> {
        let what = format!("job {id} to reach {}", state.as_str_name());
        let last_seen = std::sync::Mutex::new(None);
        let found = eventually(within, &what, || async {
            let job = self.get(id).await?;
            if let Ok(mut last) = last_seen.lock() {
                *last = Some(job.state);
            }
            Ok((job.state() == state).then_some(job))
        })
        .await;
        let last_seen = last_seen.lock().ok().and_then(|last| *last);
        found.with_context(|| {
            format!(
                "last state seen: {}",
                last_seen.map_or("none".into(), state_name)
            )
        })
    }

    // ---- worker side -----------------------------------------------------

    /// LeaseJobs, raw.
    pub async fn try_lease(&self, request: LeaseJobsRequest) -> Result<Vec<LeasedJob>, Status> {
        Ok(self.worker().lease_jobs(request).await?.into_inner().jobs)
    }

    /// LeaseJobs; checks that every leased job is filled in and running.
    pub async fn lease(&self, request: LeaseJobsRequest) -> anyhow::Result<Vec<LeasedJob>> {
        let worker_id = request.worker_id.clone();
        let leased = self
            .try_lease(request)
            .await
            .with_context(|| format!("LeaseJobs of worker {worker_id:?}"))?;
        for (index, leased_job) in leased.iter().enumerate() {
            let job = leased_job
                .job
                .as_ref()
                .with_context(|| format!("LeaseJobs entry {index} has no job"))?;
            ensure!(
                job.state() == JobState::Running,
                "leased job {} is {}, not running",
                job.id,
                state_name(job.state)
            );
            ensure!(
                !leased_job.lease_token.is_empty(),
                "leased job {} has an empty lease token",
                job.id
            );
        }
        Ok(leased)
    }

    /// Leases up to `max_jobs` ready jobs without waiting (30 s leases).
    pub async fn lease_now(
        &self,
        worker_id: &str,
        max_jobs: i32,
    ) -> anyhow::Result<Vec<LeasedJob>> {
        self.lease(lease_request(worker_id, max_jobs)).await
    }

    /// Leases exactly one job that must be ready now.
    pub async fn lease_one(&self, worker_id: &str) -> anyhow::Result<LeasedJob> {
        let mut leased = self.lease_now(worker_id, 1).await?;
        ensure!(leased.len() <= 1, "asked for 1 job, got {}", leased.len());
        leased
            .pop()
            .with_context(|| format!("worker {worker_id:?} found no ready job to lease"))
    }

    /// Polls LeaseJobs (no wait) until a job is leased, e.g. once a backoff or
    /// run_at has passed.
    pub async fn lease_one_eventually(
        &self,
        worker_id: &str,
        within: Duration,
    ) -> anyhow::Result<LeasedJob> {
        eventually(
            within,
            &format!("a job for worker {worker_id:?} to lease"),
            || async { Ok(self.lease_now(worker_id, 1).await?.pop()) },
        )
        .await
    }

    /// Heartbeat with the server's default lease length; one result per lease.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        leases: Vec<LeaseProgress>,
    ) -> anyhow::Result<Vec<HeartbeatResult>> {
        let count = leases.len();
        let request = HeartbeatRequest {
            worker_id: worker_id.to_owned(),
            leases,
            lease_duration: None,
        };
        let results = self
            .worker()
            .heartbeat(request)
            .await
            .context("Heartbeat")?
            .into_inner()
            .results;
        ensure!(
            results.len() == count,
            "Heartbeat answered {} results for {count} leases",
            results.len()
        );
        Ok(results)
    }

    /// Heartbeat for one lease, progress unchanged.
    pub async fn heartbeat_one(
        &self,
        worker_id: &str,
        leased: &LeasedJob,
    ) -> anyhow::Result<HeartbeatResult> {
        let progress = LeaseProgress {
            lease: Some(leased.lease()),
            progress_percent: None,
            progress_message: None,
        };
        let mut results = self.heartbeat(worker_id, vec![progress]).await?;
        results.pop().context("Heartbeat answered no result")
    }

    /// CompleteJob, raw.
    pub async fn try_complete(
        &self,
        lease: JobLease,
        result: Option<serde_json::Value>,
    ) -> Result<ReportOutcome, Status> {
        let request = CompleteJobRequest {
            lease: Some(lease),
            result: result.map(crate::json),
        };
        let response = self.worker().complete_job(request).await?.into_inner();
        response.outcome.ok_or_else(|| {
            Status::internal("test harness: CompleteJob answered without an outcome")
        })
    }

    /// Reports success with no result.
    pub async fn complete(&self, leased: &LeasedJob) -> anyhow::Result<ReportOutcome> {
        self.try_complete(leased.lease(), None)
            .await
            .with_context(|| format!("CompleteJob {}", leased.id()))
    }

    /// Reports success with a JSON result.
    pub async fn complete_with(
        &self,
        leased: &LeasedJob,
        result: serde_json::Value,
    ) -> anyhow::Result<ReportOutcome> {
        self.try_complete(leased.lease(), Some(result))
            .await
            .with_context(|| format!("CompleteJob {}", leased.id()))
    }

    /// FailJob, raw.
    pub async fn try_fail(&self, request: FailJobRequest) -> Result<ReportOutcome, Status> {
        let response = self.worker().fail_job(request).await?.into_inner();
        response
            .outcome
            .ok_or_else(|| Status::internal("test harness: FailJob answered without an outcome"))
    }

    /// Reports a failed attempt with the default backoff.
    pub async fn fail(
        &self,
        leased: &LeasedJob,
        error: &str,
        retryable: bool,
    ) -> anyhow::Result<ReportOutcome> {
        let request = FailJobRequest {
            lease: Some(leased.lease()),
            error: error.to_owned(),
            retryable,
            retry_after: None,
        };
        self.try_fail(request)
            .await
            .with_context(|| format!("FailJob {}", leased.id()))
    }

    /// ReleaseJobs; one result per lease.
    pub async fn release(
        &self,
        worker_id: &str,
        leases: Vec<JobLease>,
    ) -> anyhow::Result<Vec<ReportResult>> {
        let count = leases.len();
        let request = ReleaseJobsRequest {
            worker_id: worker_id.to_owned(),
            leases,
        };
        let results = self
            .worker()
            .release_jobs(request)
            .await
            .context("ReleaseJobs")?
            .into_inner()
            .results;
        ensure!(
            results.len() == count,
            "ReleaseJobs answered {} results for {count} leases",
            results.len()
        );
        Ok(results)
    }
}

/// The ids of the jobs in EnqueueJobs results, in order ("" for a result
/// without a job).
pub fn job_ids(results: &[jobq_proto::v1::EnqueueJobResponse]) -> Vec<String> {
    results
        .iter()
        .map(|result| {
            result
                .job
                .as_ref()
                .map(|job| job.id.clone())
                .unwrap_or_default()
        })
        .collect()
}
