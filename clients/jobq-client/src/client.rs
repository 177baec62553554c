//! [`Client`]: one typed method per `jobq.v1.JobQueueService` RPC.

use std::future::Future;
use std::time::Duration;

use jobq_proto::v1 as pb;
use jobq_proto::v1::job_queue_service_client::JobQueueServiceClient;
use jobq_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::codec::Streaming;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::ClientConfig;
use crate::error::ClientError;

/// The transport every generated client runs on: a channel that adds the token.
pub(crate) type AuthChannel = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every call when a token is
/// configured, and the caller's W3C trace context when spans are exported.
#[derive(Clone, Debug)]
pub struct BearerToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        // The caller's span goes along, so the server's span continues its trace.
        if jobq_telemetry::exporting() {
            jobq_telemetry::propagation::inject_current(request.metadata_mut());
        }
        Ok(request)
    }
}

/// The result of an enqueue.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The stored job (the existing one when `already_exists`).
    pub job: pb::Job,
    /// True when an existing job was returned instead of a new one (its
    /// unique key was held, or the request_id was seen before).
    pub already_exists: bool,
}

/// The TLS settings of an `https://` endpoint: the given CA (else the
/// system's roots), the client identity, the name to check.
fn tls_config(config: &ClientConfig) -> ClientTlsConfig {
    let tls = &config.tls;
    let mut settings = ClientTlsConfig::new();
    settings = match &tls.ca {
        Some(ca) => settings.ca_certificate(Certificate::from_pem(ca.bytes())),
        None => settings.with_native_roots(),
    };
    if let Some((cert, key)) = &tls.identity {
        settings = settings.identity(Identity::from_pem(cert.bytes(), key.bytes()));
    }
    if let Some(name) = &tls.domain_name {
        settings = settings.domain_name(name.clone());
    }
    settings
}

/// A connection to a jobq server: the producer/admin API, and the raw worker
/// API the [`crate::Worker`] runtime uses. Cheap to clone; clones share the
/// connection, which reconnects by itself after the server comes back.
#[derive(Clone, Debug)]
pub struct Client {
    queue: JobQueueServiceClient<AuthChannel>,
    worker: WorkerServiceClient<AuthChannel>,
    config: ClientConfig,
}

impl Client {
    /// A client of the server in `config`. The connection is made lazily, on
    /// the first call, so this only fails on an unusable configuration; an
    /// unreachable server shows up as [`ClientError::is_unavailable`] errors.
    pub fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|err| {
                ClientError::Config(format!("server endpoint {:?}: {err}", config.endpoint))
            })?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(config.keep_alive_interval)
            .keep_alive_timeout(config.keep_alive_interval)
            .keep_alive_while_idle(true);
        let endpoint = if config.endpoint.starts_with("https://") {
            endpoint
                .tls_config(tls_config(&config))
                .map_err(|err| ClientError::Config(format!("TLS: {err}")))?
        } else {
            endpoint
        };
        let header = match &config.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                ClientError::Config("the token is not a valid header value".into())
            })?),
            None => None,
        };
        let channel = InterceptedService::new(endpoint.connect_lazy(), BearerToken { header });
        let limit = config.max_message_bytes;
        Ok(Self {
            queue: JobQueueServiceClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            worker: WorkerServiceClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            config,
        })
    }

    /// The configuration this client was made from.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The generated `JobQueueService` client, for anything not wrapped here.
    pub fn queue_service(&self) -> JobQueueServiceClient<InterceptedService<Channel, BearerToken>> {
        self.queue.clone()
    }

    /// The generated `WorkerService` client (what the worker runtime uses).
    pub fn worker_service(&self) -> WorkerServiceClient<InterceptedService<Channel, BearerToken>> {
        self.worker.clone()
    }

    /// Runs a unary call with the request timeout.
    async fn unary<T, F>(&self, call: F) -> Result<T, ClientError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        within(self.config.request_timeout, call).await
    }

    // ---- jobs --------------------------------------------------------------

    /// Runs an idempotent write, trying again while the server cannot be
    /// reached (the same request each time, so it happens at most once).
    async fn retried<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut pause = Duration::from_millis(100);
        let mut tries = 1;
        loop {
            match self.unary(call()).await {
                Err(error) if error.is_unavailable() && tries < self.config.enqueue_tries => {
                    tracing::debug!(%error, tries, "enqueue failed; trying again with the same request_id");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Enqueues one job (EnqueueJob). The call carries a fresh request_id and
    /// is tried again with it while the server cannot be reached, so the job
    /// is enqueued once even if an answer is lost.
    pub async fn enqueue(&self, spec: impl Into<pb::JobSpec>) -> Result<Enqueued, ClientError> {
        self.enqueue_with_request_id(spec, &new_request_id()).await
    }

    /// Enqueues one job under the caller's idempotency key: a repeated call
    /// with the same `request_id` returns the job the first one created.
    pub async fn enqueue_with_request_id(
        &self,
        spec: impl Into<pb::JobSpec>,
        request_id: &str,
    ) -> Result<Enqueued, ClientError> {
        let request = pb::EnqueueJobRequest {
            job: Some(spec.into()),
            request_id: request_id.to_owned(),
        };
        let response = self
            .retried(|| {
                let mut queue = self.queue.clone();
                let request = request.clone();
                async move { queue.enqueue_job(request).await }
            })
            .await?;
        enqueued(response)
    }

    /// Enqueues up to 1,000 jobs in one transaction (EnqueueJobs); results in
    /// request order. Retried like [`Client::enqueue`].
    pub async fn enqueue_many(
        &self,
        specs: Vec<pb::JobSpec>,
    ) -> Result<Vec<Enqueued>, ClientError> {
        let request = pb::EnqueueJobsRequest {
            jobs: specs,
            request_id: new_request_id(),
        };
        let response = self
            .retried(|| {
                let mut queue = self.queue.clone();
                let request = request.clone();
                async move { queue.enqueue_jobs(request).await }
            })
            .await?;
        response.results.into_iter().map(enqueued).collect()
    }

    /// One job with its payload, result and attempt history (GetJob).
    pub async fn get_job(&self, id: &str) -> Result<pb::Job, ClientError> {
        let response = self
            .unary(self.queue.clone().get_job(pb::GetJobRequest {
                job_id: id.to_owned(),
            }))
            .await?;
        response.job.ok_or(ClientError::MissingField("job"))
    }

    /// One page of jobs, newest first (ListJobs).
    pub async fn list_jobs(
        &self,
        request: pb::ListJobsRequest,
    ) -> Result<pb::ListJobsResponse, ClientError> {
        self.unary(self.queue.clone().list_jobs(request)).await
    }

    /// Cancels a job (CancelJob): at once, or flagged for its worker if it runs.
    pub async fn cancel_job(&self, id: &str, reason: &str) -> Result<pb::Job, ClientError> {
        let request = pb::CancelJobRequest {
            job_id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self.unary(self.queue.clone().cancel_job(request)).await?;
        response.job.ok_or(ClientError::MissingField("job"))
    }

    /// Queues a dead, cancelled or succeeded job again (RetryJob).
    pub async fn retry_job(&self, id: &str) -> Result<pb::Job, ClientError> {
        let response = self
            .unary(self.queue.clone().retry_job(pb::RetryJobRequest {
                job_id: id.to_owned(),
            }))
            .await?;
        response.job.ok_or(ClientError::MissingField("job"))
    }

    /// Deletes a job that is not running (DeleteJob).
    pub async fn delete_job(&self, id: &str) -> Result<(), ClientError> {
        self.unary(self.queue.clone().delete_job(pb::DeleteJobRequest {
            job_id: id.to_owned(),
        }))
        .await?;
        Ok(())
    }

    /// Counts by queue and state (GetQueueStats); empty `queues` means all.
    pub async fn queue_stats(
        &self,
        queues: Vec<String>,
    ) -> Result<pb::GetQueueStatsResponse, ClientError> {
        self.unary(
            self.queue
                .clone()
                .get_queue_stats(pb::GetQueueStatsRequest { queues }),
        )
        .await
    }

    /// Queues many finished jobs again (RetryJobs); returns the ids queued.
    pub async fn retry_jobs(&self, selector: pb::JobSelector) -> Result<Vec<String>, ClientError> {
        let request = pb::RetryJobsRequest {
            selector: Some(selector),
        };
        Ok(self
            .unary(self.queue.clone().retry_jobs(request))
            .await?
            .job_ids)
    }

    /// Deletes many jobs (DeleteJobs); returns the ids deleted.
    pub async fn delete_jobs(&self, selector: pb::JobSelector) -> Result<Vec<String>, ClientError> {
        let request = pb::DeleteJobsRequest {
            selector: Some(selector),
        };
        Ok(self
            .unary(self.queue.clone().delete_jobs(request))
            .await?
            .job_ids)
    }

    // ---- logs and events ---------------------------------------------------

    /// A job's log as a stream (StreamJobLogs); with `follow` it stays open
    /// until the job is terminal. Read it with `Streaming::message`.
    pub async fn stream_job_logs(
        &self,
        request: pb::StreamJobLogsRequest,
    ) -> Result<Streaming<pb::StreamJobLogsResponse>, ClientError> {
        self.unary(self.queue.clone().stream_job_logs(request))
            .await
    }

    /// One page of a job's log (GetJobLogs).
    pub async fn get_job_logs(
        &self,
        request: pb::GetJobLogsRequest,
    ) -> Result<pb::GetJobLogsResponse, ClientError> {
        self.unary(self.queue.clone().get_job_logs(request)).await
    }

    /// Live job events matching the filter (WatchJobs), until dropped.
    pub async fn watch_jobs(
        &self,
        request: pb::WatchJobsRequest,
    ) -> Result<Streaming<pb::WatchJobsResponse>, ClientError> {
        self.unary(self.queue.clone().watch_jobs(request)).await
    }

    // ---- queues, workers, schedules ----------------------------------------

    /// Every queue with its controls (ListQueues).
    pub async fn list_queues(&self) -> Result<Vec<pb::Queue>, ClientError> {
        Ok(self
            .unary(self.queue.clone().list_queues(pb::ListQueuesRequest {}))
            .await?
            .queues)
    }

    /// Changes a queue's controls (UpdateQueue).
    pub async fn update_queue(
        &self,
        request: pb::UpdateQueueRequest,
    ) -> Result<pb::Queue, ClientError> {
        let response = self.unary(self.queue.clone().update_queue(request)).await?;
        response.queue.ok_or(ClientError::MissingField("queue"))
    }

    /// Workers heard from recently (ListWorkers).
    pub async fn list_workers(&self, include_stale: bool) -> Result<Vec<pb::Worker>, ClientError> {
        let request = pb::ListWorkersRequest { include_stale };
        Ok(self
            .unary(self.queue.clone().list_workers(request))
            .await?
            .workers)
    }

    /// Creates or replaces a cron schedule (PutSchedule).
    pub async fn put_schedule(&self, schedule: pb::Schedule) -> Result<pb::Schedule, ClientError> {
        let request = pb::PutScheduleRequest {
            schedule: Some(schedule),
        };
        let response = self.unary(self.queue.clone().put_schedule(request)).await?;
        response
            .schedule
            .ok_or(ClientError::MissingField("schedule"))
    }

    /// Every schedule (ListSchedules).
    pub async fn list_schedules(&self) -> Result<Vec<pb::Schedule>, ClientError> {
        Ok(self
            .unary(
                self.queue
                    .clone()
                    .list_schedules(pb::ListSchedulesRequest {}),
            )
            .await?
            .schedules)
    }

    /// Pauses or resumes a schedule (SetSchedulePaused).
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<pb::Schedule, ClientError> {
        let request = pb::SetSchedulePausedRequest {
            name: name.to_owned(),
            paused,
        };
        let response = self
            .unary(self.queue.clone().set_schedule_paused(request))
            .await?;
        response
            .schedule
            .ok_or(ClientError::MissingField("schedule"))
    }

    /// Deletes a schedule (DeleteSchedule).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ClientError> {
        self.unary(
            self.queue
                .clone()
                .delete_schedule(pb::DeleteScheduleRequest {
                    name: name.to_owned(),
                }),
        )
        .await?;
        Ok(())
    }
}

/// Awaits `call` for at most `limit`.
pub(crate) async fn within<T, F>(limit: Duration, call: F) -> Result<T, ClientError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(ClientError::Status(status)),
        Err(_) => Err(ClientError::Timeout(limit)),
    }
}

fn enqueued(response: pb::EnqueueJobResponse) -> Result<Enqueued, ClientError> {
    let job = response.job.ok_or(ClientError::MissingField("job"))?;
    Ok(Enqueued {
        job,
        already_exists: response.already_exists,
    })
}

/// A fresh request id: a time-ordered UUID (v7), so the server's index of
/// request ids grows at one end instead of being written all over.
fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
