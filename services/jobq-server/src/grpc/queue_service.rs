//! `jobq.v1.JobQueueService`: producers, admins and the dashboard. Thin
//! handlers: validate and convert, call the queue, convert back.

use std::sync::Arc;
use std::time::Duration;

use jobq_proto::v1 as pb;
use jobq_proto::v1::job_queue_service_server::JobQueueService;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::convert::{self, proto_job, proto_state, timestamp};
use super::history;
use super::streams::{EventFilter, LogFollow, STREAM_BUFFER, WatchPresence, watch_events};
use super::watch_lists::{ListTriggers, watch_list, watch_stats};
use crate::background::StatsFeed;
use crate::domain::{
    Detail, JobEvent, JobEventKind, JobFilter, JobHistory, JobId, JobOrder, JobQueue, JobSelector,
    JobSpec, JobState, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_RATE, MAX_TAGS, MissedTicks,
    PageCursor, PageRequest, QueueControls, QueueError, QueueResult, ScheduleDefinition,
    ScheduleRecord, StatsSnapshot,
};
use crate::logs::reader::LogReader;

/// Page size when the request leaves it out.
const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page.
const MAX_PAGE_SIZE: i32 = 500;
/// Log lines per GetJobLogs page by default, and at most.
const DEFAULT_LOG_PAGE: usize = 500;
const MAX_LOG_PAGE: i32 = 5000;
/// ListWorkers leaves out workers silent for longer than this unless asked.
const STALE_WORKER_MS: i64 = 3_600_000;
/// Most jobs one bulk operation touches.
const MAX_BULK: i32 = 10_000;
/// WatchWorkers reads the workers again this often anyway: a worker that
/// stops heartbeating turns lost with no event.
const WORKERS_REREAD: Duration = Duration::from_secs(2);
/// Fewest time between two reads of the workers (a drain starts and ends
/// thousands of runs a second).
const WORKERS_GAP: Duration = Duration::from_secs(1);
/// WatchQueues and WatchSchedules read again this often anyway: other
/// replicas' changes and schedule ticks are not announced here.
const CONTROLS_REREAD: Duration = Duration::from_secs(5);
/// Fewest time between two reads of queues or schedules.
const LIST_GAP: Duration = Duration::from_millis(250);

/// A change that starts or ends a run: it shows in a worker's running jobs.
fn starts_or_ends_a_run(event: &JobEvent) -> bool {
    match &event.kind {
        JobEventKind::StateChanged { from } | JobEventKind::AttemptFailed { from, .. } => {
            *from == JobState::Running || event.job.state == JobState::Running
        }
        _ => false,
    }
}

/// One read of a Watch* list.
type BoxedRead<T> = std::pin::Pin<Box<dyn std::future::Future<Output = QueueResult<T>> + Send>>;

/// What of the workers is worth a message: a heartbeat alone changes only
/// last_seen_at.
fn workers_shown(workers: &[pb::Worker]) -> Vec<pb::Worker> {
    let mut workers = workers.to_vec();
    for worker in &mut workers {
        worker.last_seen_at = None;
    }
    workers
}

/// A new job: a schedule that fires makes one (and moves its next tick).
fn created(event: &JobEvent) -> bool {
    event.kind == JobEventKind::Created
}

/// The producer/admin API over a [`JobQueue`] and the job logs.
pub struct QueueApi {
    queue: Arc<JobQueue>,
    logs: LogReader,
    /// Tasks feeding open server streams; they watch the shutdown token.
    streams: TaskTracker,
    /// Tells other replicas that watchers are open here.
    presence: WatchPresence,
    /// Job counts as they change.
    stats: StatsFeed,
    /// Bumped when this server changes a queue's controls or a schedule.
    controls: Arc<watch::Sender<u64>>,
    /// Per-minute job history, when the server keeps it.
    history: Option<Arc<JobHistory>>,
}

impl QueueApi {
    /// The API over `queue` and `logs`; stream tasks are spawned on `streams`.
    pub fn new(
        queue: Arc<JobQueue>,
        logs: LogReader,
        streams: TaskTracker,
        presence: WatchPresence,
        stats: StatsFeed,
    ) -> Self {
        Self {
            queue,
            logs,
            streams,
            presence,
            stats,
            controls: Arc::new(watch::channel(0).0),
            history: None,
        }
    }

    fn controls_changed(&self) {
        self.controls
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Spawns a Watch* list stream into `sender`: `read` again on `triggers`.
    fn spawn_list<T, K, R, F>(
        &self,
        triggers: ListTriggers,
        read: R,
        sender: mpsc::Sender<Result<T, Status>>,
        shown: fn(&T) -> K,
    ) where
        T: Send + 'static,
        K: PartialEq + Send + 'static,
        R: FnMut() -> F + Send + 'static,
        F: std::future::Future<Output = QueueResult<T>> + Send + 'static,
    {
        self.streams.spawn(watch_list(
            self.queue.clone(),
            self.presence.clone(),
            triggers,
            sender,
            read,
            shown,
        ));
    }

    /// Spawns a stats stream of `queues` (all when empty) into `sender`.
    fn spawn_stats<T: Send + 'static>(
        &self,
        queues: Vec<String>,
        sender: mpsc::Sender<Result<T, Status>>,
        message: impl Fn(pb::GetQueueStatsResponse) -> T + Send + 'static,
    ) {
        self.streams.spawn(watch_stats(
            self.queue.clone(),
            self.presence.clone(),
            self.stats.clone(),
            queues,
            sender,
            move |snapshot| message(stats_response(snapshot)),
        ));
    }

    /// Spawns a WatchJobs feed into `sender`; INVALID_ARGUMENT for a bad filter.
    fn spawn_job_events(
        &self,
        request: pb::WatchJobsRequest,
        sender: mpsc::Sender<Result<pb::WatchJobsResponse, Status>>,
    ) -> QueueResult<()> {
        let view = convert::job_view(request.view, "view", pb::JobView::Basic)?;
        let filter = EventFilter {
            queues: request.queues,
            types: request.types,
            states: request
                .states
                .iter()
                .map(|raw| convert::job_state(*raw, "states"))
                .collect::<QueueResult<_>>()?,
            job_ids: request
                .job_ids
                .iter()
                .enumerate()
                .map(|(index, raw)| convert::job_id(raw, &format!("job_ids[{index}]")))
                .collect::<QueueResult<_>>()?,
            view,
        };
        self.streams.spawn(watch_events(
            self.queue.clone(),
            self.queue.subscribe(),
            filter,
            sender,
            self.presence.clone(),
        ));
        Ok(())
    }

    /// Spawns a WatchJobHistory feed into `sender`; `field` names the
    /// request in errors ("" for the whole request).
    fn spawn_history(
        &self,
        request: pb::GetJobHistoryRequest,
        sender: mpsc::Sender<Result<pb::GetJobHistoryResponse, Status>>,
        field: &str,
    ) -> Result<(), Status> {
        let history = self.history()?.clone();
        let (query, sliding) = history::query_of(request, history.now()).map_err(|error| {
            if field.is_empty() {
                error
            } else {
                error.within(field)
            }
        })?;
        self.streams.spawn(history::watch_history(
            history,
            query,
            sliding,
            sender,
            self.queue.shutdown_token().clone(),
        ));
        Ok(())
    }

    /// Spawns a task that passes what `from` carries on to `to`, made into
    /// `to`'s messages by `wrap`, until either end closes.
    fn forward<T, U>(
        &self,
        mut from: mpsc::Receiver<Result<T, Status>>,
        to: mpsc::Sender<Result<U, Status>>,
        wrap: impl Fn(T) -> U + Send + 'static,
    ) where
        T: Send + 'static,
        U: Send + 'static,
    {
        self.streams.spawn(async move {
            loop {
                let message = tokio::select! {
                    message = from.recv() => message,
                    () = to.closed() => return,
                };
                let Some(message) = message else { return };
                let failed = message.is_err();
                if to.send(message.map(&wrap)).await.is_err() || failed {
                    return;
                }
            }
        });
    }

    /// What wakes a workers stream, and how it reads them.
    fn workers_source(
        &self,
        include_stale: bool,
    ) -> (
        ListTriggers,
        impl FnMut() -> BoxedRead<pb::WatchWorkersResponse> + Send + 'static,
    ) {
        let queue = self.queue.clone();
        let triggers = ListTriggers {
            events: Some((self.queue.subscribe(), starts_or_ends_a_run)),
            stats: None,
            controls: self.controls.subscribe(),
            every: WORKERS_REREAD,
            gap: WORKERS_GAP,
        };
        let read = move || -> BoxedRead<pb::WatchWorkersResponse> {
            let queue = queue.clone();
            Box::pin(async move {
                let workers = workers(&queue, include_stale).await?;
                Ok(pb::WatchWorkersResponse { workers })
            })
        };
        (triggers, read)
    }

    /// What wakes a queues stream, and how it reads them.
    fn queues_source(
        &self,
    ) -> (
        ListTriggers,
        impl FnMut() -> BoxedRead<pb::WatchQueuesResponse> + Send + 'static,
    ) {
        let queue = self.queue.clone();
        let stats = self.stats.clone();
        let triggers = ListTriggers {
            events: None,
            stats: Some(self.stats.clone()),
            controls: self.controls.subscribe(),
            every: CONTROLS_REREAD,
            gap: LIST_GAP,
        };
        let read = move || -> BoxedRead<pb::WatchQueuesResponse> {
            let queue = queue.clone();
            // Queue names from the tally: a DISTINCT over the jobs table
            // would read every job.
            let names: Vec<String> = stats
                .borrow()
                .queues
                .iter()
                .map(|q| q.queue.clone())
                .collect();
            Box::pin(async move {
                let queues = queue.queues_among(names).await?;
                Ok(pb::WatchQueuesResponse {
                    queues: queues.into_iter().map(proto_queue).collect(),
                })
            })
        };
        (triggers, read)
    }

    /// What wakes a schedules stream, and how it reads them.
    fn schedules_source(
        &self,
    ) -> (
        ListTriggers,
        impl FnMut() -> BoxedRead<pb::WatchSchedulesResponse> + Send + 'static,
    ) {
        let queue = self.queue.clone();
        let triggers = ListTriggers {
            events: Some((self.queue.subscribe(), created)),
            stats: None,
            controls: self.controls.subscribe(),
            every: CONTROLS_REREAD,
            gap: LIST_GAP,
        };
        let read = move || -> BoxedRead<pb::WatchSchedulesResponse> {
            let queue = queue.clone();
            Box::pin(async move {
                let schedules = queue.schedules().await?;
                Ok(pb::WatchSchedulesResponse {
                    schedules: schedules.into_iter().map(proto_schedule).collect(),
                })
            })
        };
        (triggers, read)
    }

    /// Answers GetJobHistory and WatchJobHistory from `history`.
    pub fn with_history(mut self, history: Arc<JobHistory>) -> Self {
        self.history = Some(history);
        self
    }

    fn history(&self) -> Result<&Arc<JobHistory>, Status> {
        self.history
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this server keeps no job history"))
    }

    async fn enqueue(
        &self,
        specs: Vec<pb::JobSpec>,
        request_id: &str,
        field_of: impl Fn(usize) -> String,
    ) -> QueueResult<Vec<pb::EnqueueJobResponse>> {
        let request_id = match request_id {
            "" => None,
            raw => Some(convert::name(raw, "request_id")?),
        };
        let specs = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let field = field_of(index);
                convert::job_spec(spec, self.queue.defaults(), self.queue.limits())
                    .map_err(|e| e.within(&field))
                    .map(|spec| (spec, field))
            })
            .collect::<QueueResult<Vec<_>>>()?;
        let (specs, spans) = trace_enqueues(specs);
        // Once started, an enqueue runs to its end even if the caller goes
        // away: it may have leased jobs for waiting workers in its commit,
        // and only it can hand them over.
        let queue = self.queue.clone();
        let stored = tokio::spawn(async move { queue.enqueue(specs, request_id.as_deref()).await })
            .await
            .map_err(|error| QueueError::Storage(format!("the enqueue stopped: {error}")))??;
        for (span, (job, already_exists)) in spans.iter().zip(&stored) {
            span.record("job_id", job.id.as_str());
            span.record("already_exists", *already_exists);
        }
        drop(spans);
        Ok(stored
            .into_iter()
            .map(|(job, already_exists)| pb::EnqueueJobResponse {
                job: Some(proto_job(job, pb::JobView::Basic)),
                already_exists,
            })
            .collect())
    }
}

/// One span per job while spans are exported, the start of the job's
/// trace: a child of the caller's context the job spec names, or else of
/// the call's. The job keeps the span's context as its `traceparent`, so
/// its attempts continue the trace.
fn trace_enqueues(specs: Vec<(JobSpec, String)>) -> (Vec<(JobSpec, String)>, Vec<tracing::Span>) {
    if !jobq_telemetry::exporting() {
        return (specs, Vec::new());
    }
    let mut spans = Vec::with_capacity(specs.len());
    let specs = specs
        .into_iter()
        .map(|(mut spec, field)| {
            let span = tracing::info_span!(
                "job",
                otel.name = "job.enqueue",
                otel.kind = "producer",
                job_id = tracing::field::Empty,
                job_type = %spec.job_type,
                queue = %spec.queue,
                already_exists = tracing::field::Empty,
            );
            if let Some(parent) = &spec.traceparent {
                jobq_telemetry::propagation::set_parent(&span, parent);
            }
            if let Some(traceparent) = jobq_telemetry::propagation::traceparent_of(&span) {
                spec.traceparent = Some(traceparent);
            }
            spans.push(span);
            (spec, field)
        })
        .collect();
    (specs, spans)
}

fn job_filter(request: &pb::ListJobsRequest) -> QueueResult<JobFilter> {
    Ok(JobFilter {
        states: request
            .states
            .iter()
            .map(|raw| convert::job_state(*raw, "states"))
            .collect::<QueueResult<_>>()?,
        types: request.types.clone(),
        queues: request.queues.clone(),
        created_after: request
            .created_after
            .as_ref()
            .map(|ts| convert::millis_of(ts, "created_after"))
            .transpose()?,
        created_before: request
            .created_before
            .as_ref()
            .map(|ts| convert::millis_of(ts, "created_before"))
            .transpose()?,
        parent_id: match request.parent_id.as_str() {
            "" => None,
            raw => Some(convert::job_id(raw, "parent_id")?),
        },
        search: match request.search.as_str() {
            "" => None,
            text => Some(convert::bounded_text(text, "search", MAX_NAME_BYTES)?),
        },
        tags: {
            if request.tags.len() > MAX_TAGS {
                return Err(QueueError::invalid(
                    "tags",
                    format!("has {} tags, more than {MAX_TAGS}", request.tags.len()),
                ));
            }
            request
                .tags
                .iter()
                .enumerate()
                .map(|(index, tag)| convert::name(tag, &format!("tags[{index}]")))
                .collect::<QueueResult<_>>()?
        },
        payload: convert::payload_filters(&request.payload_filters, "payload_filters")?,
        order: convert::job_order(request.order, "order")?,
    })
}

/// A fingerprint of a filter: page tokens carry it, so a token is refused
/// when reused with another filter (it would skip or repeat jobs).
fn filter_fingerprint(filter: &JobFilter) -> u64 {
    let text = format!("{filter:?}");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A cursor without a finished_at, in a token of the FINISHED_DESC order.
const UNFINISHED: u64 = u64::MAX;

/// An opaque page token: the filter's fingerprint (the order included) and
/// the last id, in hex; in the FINISHED_DESC order also the last job's
/// finished_at.
fn page_token(filter: &JobFilter, last: &PageCursor) -> String {
    let mut token = format!(
        "{:016x}{}",
        filter_fingerprint(filter),
        last.id.as_str().replace('-', "")
    );
    if filter.order == JobOrder::FinishedDesc {
        let finished_at = last
            .finished_at
            .and_then(|at| u64::try_from(at).ok())
            .unwrap_or(UNFINISHED);
        token.push_str(&format!("{finished_at:016x}"));
    }
    token
}

fn page_request(request: &pb::ListJobsRequest, filter: &JobFilter) -> QueueResult<PageRequest> {
    let limit = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        size @ 1..=MAX_PAGE_SIZE => size as u64,
        size => {
            return Err(QueueError::invalid(
                "page_size",
                format!("{size} is outside 1..={MAX_PAGE_SIZE}"),
            ));
        }
    };
    let after = match request.page_token.as_str() {
        "" => None,
        token => {
            let not_ours =
                || QueueError::invalid("page_token", "is not a token returned by ListJobs");
            if !token.is_ascii() || (token.len() != 48 && token.len() != 64) {
                return Err(not_ours());
            }
            let (fingerprint, rest) = token.split_at(16);
            let (id, finished_at) = rest.split_at(32);
            let fingerprint = u64::from_str_radix(fingerprint, 16).map_err(|_| not_ours())?;
            let id = JobId::parse(id, "page_token").map_err(|_| not_ours())?;
            let finished_at = match finished_at {
                "" => None,
                hex => {
                    // from_str_radix takes a sign: only hex digits are ours.
                    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(not_ours());
                    }
                    match u64::from_str_radix(hex, 16).map_err(|_| not_ours())? {
                        UNFINISHED => None,
                        at => Some(i64::try_from(at).map_err(|_| not_ours())?),
                    }
                }
            };
            // A token of another filter, or of the other order.
            let wants_finished = filter.order == JobOrder::FinishedDesc;
            if fingerprint != filter_fingerprint(filter) || wants_finished != (token.len() == 64) {
                return Err(QueueError::invalid(
                    "page_token",
                    "belongs to a listing with another filter: PAGE_TOKEN_MISMATCH (start again without a token)",
                ));
            }
            Some(PageCursor { id, finished_at })
        }
    };
    Ok(PageRequest { limit, after })
}

#[cfg(test)]
pub(super) fn fuzz_page_token(token: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    let filter = JobFilter::default();
    let request = pb::ListJobsRequest {
        page_token: token.to_owned(),
        ..pb::ListJobsRequest::default()
    };
    match page_request(&request, &filter) {
        Ok(page) => {
            if let Some(after) = page.after {
                // A token that parses is one this filter's listing would make.
                prop_assert!(page_token(&filter, &after) == token);
            }
        }
        Err(QueueError::InvalidArgument { field, .. }) => prop_assert!(field == "page_token"),
        Err(other) => prop_assert!(false, "not INVALID_ARGUMENT: {other}"),
    }
    // And a token made for one filter is refused under another.
    let id = JobId::generate();
    let made = page_token(
        &filter,
        &PageCursor {
            id: id.clone(),
            finished_at: None,
        },
    );
    let other = JobFilter {
        queues: vec![token.to_owned()],
        ..JobFilter::default()
    };
    let back = page_request(
        &pb::ListJobsRequest {
            page_token: made.clone(),
            ..pb::ListJobsRequest::default()
        },
        &filter,
    );
    let came_back =
        matches!(back, Ok(PageRequest { after: Some(ref after), .. }) if after.id == id);
    prop_assert!(came_back, "a token made here was not taken back");
    let elsewhere = page_request(
        &pb::ListJobsRequest {
            page_token: made,
            ..pb::ListJobsRequest::default()
        },
        &other,
    );
    prop_assert!(elsewhere.is_err());
    Ok(())
}

fn job_selector(selector: Option<pb::JobSelector>) -> QueueResult<JobSelector> {
    let selector = selector.ok_or_else(|| QueueError::invalid("selector", "is required"))?;
    let limit = match selector.limit {
        0 => 1000,
        limit @ 1..=MAX_BULK => limit as u64,
        limit => {
            return Err(QueueError::invalid(
                "selector.limit",
                format!("{limit} is outside 1..={MAX_BULK}"),
            ));
        }
    };
    if selector.job_ids.len() > 1000 {
        return Err(QueueError::invalid(
            "selector.job_ids",
            "names more than 1000 jobs",
        ));
    }
    let ids = selector
        .job_ids
        .iter()
        .enumerate()
        .map(|(index, raw)| convert::job_id(raw, &format!("selector.job_ids[{index}]")))
        .collect::<QueueResult<Vec<_>>>()?;
    let states = selector
        .states
        .iter()
        .map(|raw| convert::job_state(*raw, "selector.states"))
        .collect::<QueueResult<Vec<_>>>()?;
    if ids.is_empty() && states.is_empty() {
        return Err(QueueError::invalid(
            "selector.states",
            "is required when no job_ids are given",
        ));
    }
    Ok(JobSelector {
        ids,
        states,
        queues: selector.queues,
        types: selector.types,
        limit,
    })
}

fn proto_queue(controls: QueueControls) -> pb::Queue {
    pb::Queue {
        name: controls.name,
        paused: controls.paused,
        concurrency_limit: controls.concurrency_limit,
        rate_limit_per_second: controls.rate_limit_per_second,
        rate_burst: controls.rate_burst,
    }
}

fn proto_schedule(record: ScheduleRecord) -> pb::Schedule {
    pb::Schedule {
        name: record.name,
        cron: record.cron,
        time_zone: record.time_zone,
        job: Some(convert::proto_spec(record.template)),
        paused: record.paused,
        next_run_at: Some(timestamp(record.next_run_at)),
        last_run_at: convert::opt_timestamp(record.last_run_at),
        last_job_id: record
            .last_job_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        created_at: Some(timestamp(record.created_at)),
        missed_ticks: match record.missed_ticks {
            MissedTicks::RunOnce => pb::MissedTicks::RunOnce,
            MissedTicks::Skip => pb::MissedTicks::Skip,
        }
        .into(),
    }
}

fn detail_of(view: pb::JobView) -> Detail {
    if view == pb::JobView::Full {
        Detail::Full
    } else {
        Detail::Basic
    }
}

#[tonic::async_trait]
impl JobQueueService for QueueApi {
    async fn enqueue_job(
        &self,
        request: Request<pb::EnqueueJobRequest>,
    ) -> Result<Response<pb::EnqueueJobResponse>, Status> {
        let request = request.into_inner();
        let spec = request
            .job
            .ok_or_else(|| QueueError::invalid("job", "is required"))?;
        let mut results = self
            .enqueue(vec![spec], &request.request_id, |_| "job".to_owned())
            .await?;
        let result = results
            .pop()
            .ok_or_else(|| Status::internal("enqueue returned no job"))?;
        Ok(Response::new(result))
    }

    async fn enqueue_jobs(
        &self,
        request: Request<pb::EnqueueJobsRequest>,
    ) -> Result<Response<pb::EnqueueJobsResponse>, Status> {
        let request = request.into_inner();
        let max = self.queue.limits().max_batch;
        if request.jobs.is_empty() || request.jobs.len() > max {
            return Err(QueueError::invalid(
                "jobs",
                format!("has {} jobs; a batch holds 1 to {max}", request.jobs.len()),
            )
            .into());
        }
        let results = self
            .enqueue(request.jobs, &request.request_id, |index| {
                format!("jobs[{index}]")
            })
            .await?;
        Ok(Response::new(pb::EnqueueJobsResponse { results }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let id = convert::job_id(&request.into_inner().job_id, "job_id")?;
        let job = self.queue.get(&id, Detail::History).await?;
        let key_running = match &job.concurrency_key {
            Some(key) => self.queue.running_with_key(key).await?,
            None => 0,
        };
        let mut job = proto_job(job, pb::JobView::Full);
        job.concurrency_key_running = i32::try_from(key_running).unwrap_or(i32::MAX);
        Ok(Response::new(pb::GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let view = convert::job_view(request.view, "view", pb::JobView::Basic)?;
        let filter = job_filter(&request)?;
        let page = self
            .queue
            .list(&filter, page_request(&request, &filter)?, detail_of(view))
            .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page
                .jobs
                .into_iter()
                .map(|job| proto_job(job, view))
                .collect(),
            next_page_token: page
                .next_after
                .map(|cursor| page_token(&filter, &cursor))
                .unwrap_or_default(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let request = request.into_inner();
        let id = convert::job_id(&request.job_id, "job_id")?;
        let reason = match convert::bounded_text(&request.reason, "reason", MAX_MESSAGE_BYTES)? {
            reason if reason.is_empty() => "cancelled by a client".to_owned(),
            reason => reason,
        };
        let job = self.queue.cancel(&id, reason).await?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(proto_job(job, pb::JobView::Basic)),
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let id = convert::job_id(&request.into_inner().job_id, "job_id")?;
        let job = self.queue.retry(&id).await?;
        Ok(Response::new(pb::RetryJobResponse {
            job: Some(proto_job(job, pb::JobView::Basic)),
        }))
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let id = convert::job_id(&request.into_inner().job_id, "job_id")?;
        self.queue.delete(&id).await?;
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    async fn get_queue_stats(
        &self,
        request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        let request = request.into_inner();
        let snapshot = self.queue.stats(&request.queues).await?;
        Ok(Response::new(stats_response(snapshot)))
    }

    async fn retry_jobs(
        &self,
        request: Request<pb::RetryJobsRequest>,
    ) -> Result<Response<pb::RetryJobsResponse>, Status> {
        let selector = job_selector(request.into_inner().selector)?;
        let retried = self.queue.retry_many(&selector).await?;
        Ok(Response::new(pb::RetryJobsResponse {
            job_ids: retried.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn delete_jobs(
        &self,
        request: Request<pb::DeleteJobsRequest>,
    ) -> Result<Response<pb::DeleteJobsResponse>, Status> {
        let selector = job_selector(request.into_inner().selector)?;
        let deleted = self.queue.delete_many(&selector).await?;
        Ok(Response::new(pb::DeleteJobsResponse {
            job_ids: deleted.iter().map(ToString::to_string).collect(),
        }))
    }

    type StreamJobLogsStream = ReceiverStream<Result<pb::StreamJobLogsResponse, Status>>;

    async fn stream_job_logs(
        &self,
        request: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamJobLogsStream>, Status> {
        let request = request.into_inner();
        let job_id = convert::job_id(&request.job_id, "job_id")?;
        let streams = convert::log_streams(&request.streams, "streams")?;
        if self.queue.is_terminal(&job_id).await?.is_none() {
            return Err(QueueError::JobNotFound(job_id.to_string()).into());
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let follow = LogFollow {
            reader: self.logs.clone(),
            job_id,
            streams,
            after: request.after_position,
            follow: request.follow,
            presence: self.presence.clone(),
        };
        self.streams.spawn(follow.run(sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_job_logs(
        &self,
        request: Request<pb::GetJobLogsRequest>,
    ) -> Result<Response<pb::GetJobLogsResponse>, Status> {
        let request = request.into_inner();
        let job_id = convert::job_id(&request.job_id, "job_id")?;
        let streams = convert::log_streams(&request.streams, "streams")?;
        let page_size = match request.page_size {
            0 => DEFAULT_LOG_PAGE,
            size @ 1..=MAX_LOG_PAGE => size as usize,
            size => {
                return Err(QueueError::invalid(
                    "page_size",
                    format!("{size} is outside 1..={MAX_LOG_PAGE}"),
                )
                .into());
            }
        };
        let page = self
            .logs
            .page(&job_id, request.after_position, page_size, &streams)
            .await?
            .ok_or_else(|| QueueError::JobNotFound(job_id.to_string()))?;
        Ok(Response::new(pb::GetJobLogsResponse {
            lines: page
                .lines
                .into_iter()
                .map(convert::proto_log_line)
                .collect(),
            next_after_position: page.next_after,
            end_of_log: !page.more,
        }))
    }

    async fn get_job_history(
        &self,
        request: Request<pb::GetJobHistoryRequest>,
    ) -> Result<Response<pb::GetJobHistoryResponse>, Status> {
        let history = self.history()?;
        let (query, _) = history::query_of(request.into_inner(), history.now())?;
        Ok(Response::new(history::answer(history, &query).await?))
    }

    type WatchJobHistoryStream = ReceiverStream<Result<pb::GetJobHistoryResponse, Status>>;

    async fn watch_job_history(
        &self,
        request: Request<pb::GetJobHistoryRequest>,
    ) -> Result<Response<Self::WatchJobHistoryStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        self.spawn_history(request.into_inner(), sender, "")?;
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchJobsStream = ReceiverStream<Result<pb::WatchJobsResponse, Status>>;

    async fn watch_jobs(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        self.spawn_job_events(request.into_inner(), sender)?;
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn list_queues(
        &self,
        _: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let queues = self.queue.queues().await?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues.into_iter().map(proto_queue).collect(),
        }))
    }

    async fn update_queue(
        &self,
        request: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let request = request.into_inner();
        let name = convert::name(&request.name, "name")?;
        let name = convert::queue_name(&name, "name")?;
        if let Some(limit) = request.concurrency_limit
            && limit < 0
        {
            return Err(
                QueueError::invalid("concurrency_limit", format!("{limit} is negative")).into(),
            );
        }
        for (field, value) in [
            ("rate_limit_per_second", request.rate_limit_per_second),
            ("rate_burst", request.rate_burst),
        ] {
            if let Some(value) = value
                && !(0.0..=MAX_RATE).contains(&value)
            {
                return Err(QueueError::invalid(
                    field,
                    format!("{value} is outside 0..={MAX_RATE}"),
                )
                .into());
            }
        }
        let controls = self
            .queue
            .update_queue(name, move |controls| {
                if let Some(paused) = request.paused {
                    controls.paused = paused;
                }
                if let Some(limit) = request.concurrency_limit {
                    controls.concurrency_limit = limit;
                }
                if let Some(rate) = request.rate_limit_per_second {
                    controls.rate_limit_per_second = rate;
                }
                if let Some(burst) = request.rate_burst {
                    controls.rate_burst = burst;
                }
            })
            .await?;
        self.controls_changed();
        Ok(Response::new(pb::UpdateQueueResponse {
            queue: Some(proto_queue(controls)),
        }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = workers(&self.queue, request.into_inner().include_stale).await?;
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn put_schedule(
        &self,
        request: Request<pb::PutScheduleRequest>,
    ) -> Result<Response<pb::PutScheduleResponse>, Status> {
        let schedule = request
            .into_inner()
            .schedule
            .ok_or_else(|| QueueError::invalid("schedule", "is required"))?;
        let name = convert::name(&schedule.name, "schedule.name")?;
        let name = convert::queue_name(&name, "schedule.name")?;
        let spec = schedule
            .job
            .ok_or_else(|| QueueError::invalid("schedule.job", "is required"))?;
        let template = convert::job_spec(spec, self.queue.defaults(), self.queue.limits())
            .map_err(|e| e.within("schedule.job"))?;
        if template.run_at.is_some() {
            return Err(QueueError::invalid(
                "schedule.job.run_at",
                "a schedule decides when its jobs run",
            )
            .into());
        }
        let record = self
            .queue
            .put_schedule(ScheduleDefinition {
                name,
                cron: schedule.cron,
                time_zone: schedule.time_zone,
                template,
                paused: schedule.paused,
                missed_ticks: match pb::MissedTicks::try_from(schedule.missed_ticks) {
                    Ok(pb::MissedTicks::Skip) => MissedTicks::Skip,
                    Ok(pb::MissedTicks::RunOnce | pb::MissedTicks::Unspecified) => {
                        MissedTicks::RunOnce
                    }
                    Err(_) => {
                        return Err(QueueError::invalid(
                            "schedule.missed_ticks",
                            format!("{} is not a known policy", schedule.missed_ticks),
                        )
                        .into());
                    }
                },
            })
            .await?;
        self.controls_changed();
        Ok(Response::new(pb::PutScheduleResponse {
            schedule: Some(proto_schedule(record)),
        }))
    }

    async fn list_schedules(
        &self,
        _: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let schedules = self.queue.schedules().await?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: schedules.into_iter().map(proto_schedule).collect(),
        }))
    }

    async fn set_schedule_paused(
        &self,
        request: Request<pb::SetSchedulePausedRequest>,
    ) -> Result<Response<pb::SetSchedulePausedResponse>, Status> {
        let request = request.into_inner();
        let name = convert::name(&request.name, "name")?;
        let record = self
            .queue
            .set_schedule_paused(&name, request.paused)
            .await?;
        self.controls_changed();
        Ok(Response::new(pb::SetSchedulePausedResponse {
            schedule: Some(proto_schedule(record)),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let name = convert::name(&request.into_inner().name, "name")?;
        self.queue.delete_schedule(&name).await?;
        self.controls_changed();
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    type WatchQueueStatsStream = ReceiverStream<Result<pb::WatchQueueStatsResponse, Status>>;

    async fn watch_queue_stats(
        &self,
        request: Request<pb::WatchQueueStatsRequest>,
    ) -> Result<Response<Self::WatchQueueStatsStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        self.spawn_stats(request.into_inner().queues, sender, |stats| {
            pb::WatchQueueStatsResponse { stats: Some(stats) }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchWorkersStream = ReceiverStream<Result<pb::WatchWorkersResponse, Status>>;

    async fn watch_workers(
        &self,
        request: Request<pb::WatchWorkersRequest>,
    ) -> Result<Response<Self::WatchWorkersStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let (triggers, read) = self.workers_source(request.into_inner().include_stale);
        self.spawn_list(triggers, read, sender, |workers| {
            workers_shown(&workers.workers)
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchQueuesStream = ReceiverStream<Result<pb::WatchQueuesResponse, Status>>;

    async fn watch_queues(
        &self,
        _: Request<pb::WatchQueuesRequest>,
    ) -> Result<Response<Self::WatchQueuesStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let (triggers, read) = self.queues_source();
        self.spawn_list(triggers, read, sender, Clone::clone);
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchSchedulesStream = ReceiverStream<Result<pb::WatchSchedulesResponse, Status>>;

    async fn watch_schedules(
        &self,
        _: Request<pb::WatchSchedulesRequest>,
    ) -> Result<Response<Self::WatchSchedulesStream>, Status> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let (triggers, read) = self.schedules_source();
        self.spawn_list(triggers, read, sender, Clone::clone);
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchDashboardStream = ReceiverStream<Result<pb::WatchDashboardResponse, Status>>;

    async fn watch_dashboard(
        &self,
        request: Request<pb::WatchDashboardRequest>,
    ) -> Result<Response<Self::WatchDashboardStream>, Status> {
        use pb::watch_dashboard_response::Update;
        let request = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        // Checked before anything starts: a bad filter refuses the call.
        if let Some(jobs) = request.jobs {
            let (events, received) = mpsc::channel(STREAM_BUFFER);
            self.spawn_job_events(jobs, events)
                .map_err(|error| error.within("jobs"))?;
            self.forward(received, sender.clone(), |m| pb::WatchDashboardResponse {
                update: Some(Update::Jobs(m)),
            });
        }
        if let Some(history) = request.history {
            let (points, received) = mpsc::channel(STREAM_BUFFER);
            self.spawn_history(history, points, "history")?;
            self.forward(received, sender.clone(), |m| pb::WatchDashboardResponse {
                update: Some(Update::History(m)),
            });
        }
        let part = |update| pb::WatchDashboardResponse {
            update: Some(update),
        };
        self.spawn_stats(Vec::new(), sender.clone(), move |stats| {
            part(Update::Stats(stats))
        });
        let (triggers, mut read) = self.workers_source(request.include_stale_workers);
        let read = move || {
            let workers = read();
            async move { workers.await.map(|w| part(Update::Workers(w))) }
        };
        self.spawn_list(triggers, read, sender.clone(), |message| {
            match &message.update {
                Some(Update::Workers(workers)) => workers_shown(&workers.workers),
                _ => Vec::new(),
            }
        });
        let (triggers, mut read) = self.queues_source();
        let read = move || {
            let queues = read();
            async move { queues.await.map(|q| part(Update::Queues(q))) }
        };
        self.spawn_list(triggers, read, sender.clone(), |message| {
            message.update.clone()
        });
        let (triggers, mut read) = self.schedules_source();
        let read = move || {
            let schedules = read();
            async move { schedules.await.map(|s| part(Update::Schedules(s))) }
        };
        self.spawn_list(triggers, read, sender, |message| message.update.clone());
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// GetQueueStats' answer for `snapshot`.
fn stats_response(snapshot: StatsSnapshot) -> pb::GetQueueStatsResponse {
    let mut totals = std::collections::BTreeMap::new();
    let queues = snapshot
        .queues
        .into_iter()
        .map(|queue| {
            for (state, count) in &queue.counts {
                *totals.entry(*state).or_insert(0) += count;
            }
            let age_ms = queue
                .oldest_ready_run_at
                .map_or(0, |run_at| (snapshot.as_of - run_at).max(0));
            pb::QueueStats {
                queue: queue.queue,
                counts: queue
                    .counts
                    .into_iter()
                    .map(|(state, count)| pb::StateCount {
                        state: proto_state(state).into(),
                        count,
                    })
                    .collect(),
                oldest_ready_age: Some(convert::proto_duration(std::time::Duration::from_millis(
                    age_ms as u64,
                ))),
            }
        })
        .collect();
    pb::GetQueueStatsResponse {
        queues,
        totals: totals
            .into_iter()
            .map(|(state, count)| pb::StateCount {
                state: proto_state(state).into(),
                count,
            })
            .collect(),
        as_of: Some(timestamp(snapshot.as_of)),
    }
}

/// The workers heard from within the hour (or ever), active ones first.
async fn workers(queue: &JobQueue, include_stale: bool) -> QueueResult<Vec<pb::Worker>> {
    let now = queue.now();
    let since = if include_stale {
        0
    } else {
        now - STALE_WORKER_MS
    };
    let default_lease = queue.defaults().lease_duration;
    let mut workers: Vec<pb::Worker> = queue
        .workers(since)
        .await?
        .into_iter()
        .map(|(worker, running)| {
            // Silent for two of its lease periods: it has stopped heartbeating.
            let lease = worker.lease_duration.unwrap_or(default_lease);
            let status = if worker.last_seen_at >= now - 2 * lease.as_millis() as i64 {
                pb::WorkerStatus::Active
            } else {
                pb::WorkerStatus::Lost
            };
            pb::Worker {
                worker_id: worker.worker_id,
                hostname: worker.hostname,
                queues: worker.queues,
                types: worker.types,
                running_job_ids: running.iter().map(ToString::to_string).collect(),
                first_seen_at: Some(timestamp(worker.first_seen_at)),
                last_seen_at: Some(timestamp(worker.last_seen_at)),
                status: status.into(),
                version: worker.version,
            }
        })
        .collect();
    workers.sort_by_key(|worker| worker.status != pb::WorkerStatus::Active as i32);
    Ok(workers)
}
