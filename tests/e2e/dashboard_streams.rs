//! The Watch* streams a dashboard keeps open instead of polling: job counts,
//! workers, queues and schedules arrive at once, again on every change, and
//! not at all while nothing changes.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::pb::{
    self, DeleteScheduleRequest, JobSpec, JobState, LeaseJobsRequest, PutScheduleRequest, Schedule,
    SetSchedulePausedRequest, UpdateQueueRequest, WatchQueueStatsRequest, WatchQueuesRequest,
    WatchSchedulesRequest, WatchWorkersRequest,
};
use jobq_tests::{TestServer, bounded, lease_request, spec};
use tonic::Streaming;

/// Longest wait for a message that is expected (the server sends it at once
/// or within a second; the bound only turns a hang into a failure).
const EXPECTED: Duration = Duration::from_secs(20);
/// How long a stream is watched for a message that must not come.
const QUIET: Duration = Duration::from_secs(3);
/// A pause with no message after which a stream counts as settled.
const SETTLE: Duration = Duration::from_secs(2);

/// Reads `stream` until a message satisfies `wanted`; returns it.
async fn until<T>(
    stream: &mut Streaming<T>,
    what: &str,
    mut wanted: impl FnMut(&T) -> bool,
) -> Result<T> {
    bounded(EXPECTED, what, async {
        loop {
            let message = stream
                .message()
                .await
                .with_context(|| format!("the stream failed waiting for {what}"))?
                .with_context(|| format!("the stream ended waiting for {what}"))?;
            if wanted(&message) {
                return Ok(message);
            }
        }
    })
    .await?
}

/// Fails if `stream` sends anything within [`QUIET`], once what is still
/// under way has arrived (a queue's next oldest ready job is looked up
/// within a second of the oldest leaving).
async fn stays_quiet<T: std::fmt::Debug>(stream: &mut Streaming<T>, what: &str) -> Result<()> {
    let mut settling = 0;
    while let Ok(message) = tokio::time::timeout(SETTLE, stream.message()).await {
        message.with_context(|| format!("{what} failed while settling"))?;
        settling += 1;
        ensure!(settling < 10, "{what} keeps sending while nothing changes");
    }
    match tokio::time::timeout(QUIET, stream.message()).await {
        Err(_) => Ok(()),
        Ok(message) => bail!("{what}: expected no message while nothing changed, got {message:?}"),
    }
}

/// A queue's count of jobs in `state` in a stats message (0 when absent).
fn count(message: &pb::WatchQueueStatsResponse, queue: &str, state: JobState) -> i64 {
    message
        .stats
        .iter()
        .flat_map(|stats| &stats.queues)
        .filter(|stats| stats.queue == queue)
        .flat_map(|stats| &stats.counts)
        .filter(|count| count.state() == state)
        .map(|count| count.count)
        .sum()
}

fn queues_of(message: &pb::WatchQueueStatsResponse) -> Vec<String> {
    message
        .stats
        .iter()
        .flat_map(|stats| &stats.queues)
        .map(|stats| stats.queue.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_stream_sends_counts_at_once_on_every_change_and_nothing_in_between()
-> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let media = "media";
    jobq.enqueue(JobSpec {
        queue: media.to_owned(),
        ..spec("download")
    })
    .await?;
    let mut stats = jobq
        .queue()
        .watch_queue_stats(WatchQueueStatsRequest {
            queues: vec![media.to_owned()],
        })
        .await?
        .into_inner();
    // The first message is the state as of now, without waiting for a change.
    until(&mut stats, "the first stats", |m| {
        count(m, media, JobState::Queued) == 1
    })
    .await?;

    for _ in 0..2 {
        jobq.enqueue(JobSpec {
            queue: media.to_owned(),
            ..spec("download")
        })
        .await?;
    }
    jobq.enqueue(JobSpec {
        queue: "elsewhere".to_owned(),
        ..spec("download")
    })
    .await?;
    let message = until(&mut stats, "three queued", |m| {
        count(m, media, JobState::Queued) == 3
    })
    .await?;
    ensure!(
        queues_of(&message) == [media],
        "the stream was asked for one queue, got {:?}",
        queues_of(&message)
    );
    let as_of = message
        .stats
        .as_ref()
        .and_then(|s| s.as_of)
        .context("as_of")?;
    ensure!(as_of.seconds > 0, "as_of is set");

    let leased = jobq
        .lease(LeaseJobsRequest {
            queues: vec![media.to_owned()],
            ..lease_request("stats-worker", 1)
        })
        .await?;
    let [job] = leased.as_slice() else {
        bail!("expected one leased job, got {}", leased.len());
    };
    until(&mut stats, "one running", |m| {
        count(m, media, JobState::Running) == 1 && count(m, media, JobState::Queued) == 2
    })
    .await?;
    jobq.complete(job).await?;
    until(&mut stats, "one succeeded", |m| {
        count(m, media, JobState::Succeeded) == 1 && count(m, media, JobState::Running) == 0
    })
    .await?;
    // Another queue's change is not this stream's business.
    jobq.enqueue(JobSpec {
        queue: "elsewhere".to_owned(),
        ..spec("download")
    })
    .await?;
    stays_quiet(&mut stats, "WatchQueueStats").await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stream_shows_a_worker_arrive_run_a_job_and_finish_it() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut workers = jobq
        .queue()
        .watch_workers(WatchWorkersRequest::default())
        .await?
        .into_inner();
    until(&mut workers, "the first (empty) list", |m| {
        m.workers.is_empty()
    })
    .await?;

    let job = jobq.enqueue(spec("download")).await?;
    let leased = jobq.lease(lease_request("stream-worker", 1)).await?;
    ensure!(leased.len() == 1, "expected the job leased");
    until(&mut workers, "the worker running the job", |m| {
        m.workers.iter().any(|w| {
            w.worker_id == "stream-worker"
                && w.running_job_ids == [job.id.clone()]
                && w.status() == pb::WorkerStatus::Active
        })
    })
    .await?;
    jobq.complete(&leased[0]).await?;
    until(&mut workers, "the worker idle again", |m| {
        m.workers
            .iter()
            .any(|w| w.worker_id == "stream-worker" && w.running_job_ids.is_empty())
    })
    .await?;
    stays_quiet(&mut workers, "WatchWorkers").await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_schedules_streams_follow_new_queues_and_control_changes() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut queues = jobq
        .queue()
        .watch_queues(WatchQueuesRequest {})
        .await?
        .into_inner();
    let mut schedules = jobq
        .queue()
        .watch_schedules(WatchSchedulesRequest {})
        .await?
        .into_inner();
    until(&mut queues, "the first queue list", |_| true).await?;
    until(&mut schedules, "the first (empty) schedule list", |m| {
        m.schedules.is_empty()
    })
    .await?;

    jobq.enqueue(JobSpec {
        queue: "thumbnails".to_owned(),
        ..spec("thumbnail")
    })
    .await?;
    until(&mut queues, "the new queue", |m| {
        m.queues.iter().any(|q| q.name == "thumbnails" && !q.paused)
    })
    .await?;
    jobq.queue()
        .update_queue(UpdateQueueRequest {
            name: "thumbnails".to_owned(),
            paused: Some(true),
            ..UpdateQueueRequest::default()
        })
        .await?;
    until(&mut queues, "the queue paused", |m| {
        m.queues.iter().any(|q| q.name == "thumbnails" && q.paused)
    })
    .await?;
    stays_quiet(&mut queues, "WatchQueues").await?;

    jobq.queue()
        .put_schedule(PutScheduleRequest {
            schedule: Some(Schedule {
                name: "nightly-cleanup".to_owned(),
                cron: "0 0 3 * * *".to_owned(),
                job: Some(spec("cleanup")),
                ..Schedule::default()
            }),
        })
        .await?;
    until(&mut schedules, "the new schedule", |m| {
        m.schedules
            .iter()
            .any(|s| s.name == "nightly-cleanup" && !s.paused)
    })
    .await?;
    jobq.queue()
        .set_schedule_paused(SetSchedulePausedRequest {
            name: "nightly-cleanup".to_owned(),
            paused: true,
        })
        .await?;
    until(&mut schedules, "the schedule paused", |m| {
        m.schedules
            .iter()
            .any(|s| s.name == "nightly-cleanup" && s.paused)
    })
    .await?;
    jobq.queue()
        .delete_schedule(DeleteScheduleRequest {
            name: "nightly-cleanup".to_owned(),
        })
        .await?;
    until(&mut schedules, "the schedule gone", |m| {
        m.schedules.is_empty()
    })
    .await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_end_with_unavailable_when_the_server_shuts_down() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut stats = jobq
        .queue()
        .watch_queue_stats(WatchQueueStatsRequest::default())
        .await?
        .into_inner();
    let mut workers = jobq
        .queue()
        .watch_workers(WatchWorkersRequest::default())
        .await?
        .into_inner();
    until(&mut stats, "the first stats", |_| true).await?;
    until(&mut workers, "the first workers", |_| true).await?;
    let stopping = tokio::spawn(server.shutdown());
    for (what, outcome) in [
        ("WatchQueueStats", drain_status(&mut stats).await),
        ("WatchWorkers", drain_status(&mut workers).await),
    ] {
        let status = outcome.with_context(|| format!("{what} at shutdown"))?;
        ensure!(
            status.code() == tonic::Code::Unavailable,
            "{what} ended with {status:?}, not UNAVAILABLE"
        );
    }
    stopping.await??;
    Ok(())
}

/// Reads until the stream ends; the status it ended with.
async fn drain_status<T>(stream: &mut Streaming<T>) -> Result<tonic::Status> {
    bounded(EXPECTED, "the end of the stream", async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => bail!("the stream ended without a status"),
                Err(status) => return Ok(status),
            }
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_stream_carries_all_four_parts_over_one_call() -> Result<()> {
    use pb::watch_dashboard_response::Update;
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut dashboard = jobq
        .queue()
        .watch_dashboard(pb::WatchDashboardRequest::default())
        .await?
        .into_inner();
    let mut seen = [false; 4];
    until(&mut dashboard, "every part once", |m| {
        match &m.update {
            Some(Update::Stats(_)) => seen[0] = true,
            Some(Update::Workers(_)) => seen[1] = true,
            Some(Update::Queues(_)) => seen[2] = true,
            Some(Update::Schedules(_)) => seen[3] = true,
            Some(Update::Jobs(_) | Update::History(_)) => {
                panic!("job events or history sent though not asked for")
            }
            None => {}
        }
        seen.iter().all(|part| *part)
    })
    .await?;

    jobq.enqueue(JobSpec {
        queue: "posters".to_owned(),
        ..spec("poster")
    })
    .await?;
    let (mut counted, mut listed) = (false, false);
    until(&mut dashboard, "the new queue counted and listed", |m| {
        match &m.update {
            Some(Update::Stats(stats)) => {
                counted |= stats.queues.iter().any(|q| q.queue == "posters");
            }
            Some(Update::Queues(queues)) => {
                listed |= queues.queues.iter().any(|q| q.name == "posters");
            }
            _ => {}
        }
        counted && listed
    })
    .await?;
    jobq.queue()
        .put_schedule(PutScheduleRequest {
            schedule: Some(Schedule {
                name: "weekly-report".to_owned(),
                cron: "0 0 9 * * 1".to_owned(),
                job: Some(spec("report")),
                ..Schedule::default()
            }),
        })
        .await?;
    until(&mut dashboard, "the new schedule", |m| {
        matches!(&m.update, Some(Update::Schedules(s)) if s.schedules.iter().any(|s| s.name == "weekly-report"))
    })
    .await?;
    stays_quiet(&mut dashboard, "WatchDashboard").await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_stream_carries_job_events_and_history_when_asked() -> Result<()> {
    use pb::watch_dashboard_response::Update;
    let server = TestServer::start().await?;
    let jobq = server.client();
    let now = std::time::SystemTime::now();
    let hour_ago = now - Duration::from_secs(3600);
    let mut dashboard = jobq
        .queue()
        .watch_dashboard(pb::WatchDashboardRequest {
            jobs: Some(pb::WatchJobsRequest::default()),
            history: Some(pb::GetJobHistoryRequest {
                start_time: Some(prost_types::Timestamp::from(hour_ago)),
                ..pb::GetJobHistoryRequest::default()
            }),
            ..pb::WatchDashboardRequest::default()
        })
        .await?
        .into_inner();
    until(&mut dashboard, "the history window", |m| {
        matches!(&m.update, Some(Update::History(_)))
    })
    .await?;
    let job = jobq.enqueue(spec("download")).await?;
    until(&mut dashboard, "the job's created event", |m| {
        matches!(&m.update, Some(Update::Jobs(jobs)) if jobs
            .event
            .as_ref()
            .and_then(|e| e.job.as_ref())
            .is_some_and(|j| j.id == job.id))
    })
    .await?;

    // A bad filter in a part refuses the whole call, naming the part.
    let refused = jobq
        .queue()
        .watch_dashboard(pb::WatchDashboardRequest {
            jobs: Some(pb::WatchJobsRequest {
                states: vec![JobState::Unspecified as i32],
                ..pb::WatchJobsRequest::default()
            }),
            ..pb::WatchDashboardRequest::default()
        })
        .await;
    let status = match refused {
        Ok(_) => bail!("a WatchDashboard with an unspecified job state was accepted"),
        Err(status) => status,
    };
    ensure!(
        status.code() == tonic::Code::InvalidArgument && status.message().contains("jobs.states"),
        "expected INVALID_ARGUMENT naming jobs.states, got {status:?}"
    );
    server.shutdown().await
}
