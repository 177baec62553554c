//! WatchJobs: the exact events of a job's life (created, state changes,
//! failed attempts, progress, deletion), the filters, and a watcher that
//! stops reading being told it lagged without holding back anyone else.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::pb::{
    DeleteJobsRequest, FailJobRequest, JobEvent, JobEventType, JobSelector, JobSpec, JobState,
    LeaseProgress, WatchJobsRequest, WatchJobsResponse,
};
use jobq_tests::{JobqClient, LeasedJobExt, TestServer, bounded, duration, lease_request, spec};
use tokio::sync::watch;
use tonic::Streaming;

use crate::logs::small_window_client;

/// Longest wait for an event that is expected (the server sends it at once;
/// the bound only turns a hang into a failure). Above the retry wait below.
const NEXT_EVENT: Duration = Duration::from_secs(15);

/// Opens WatchJobs; the server has subscribed by the time this returns.
pub(crate) async fn open_watch(
    jobq: &JobqClient,
    request: WatchJobsRequest,
) -> Result<Streaming<WatchJobsResponse>> {
    Ok(jobq
        .queue()
        .watch_jobs(request)
        .await
        .context("WatchJobs")?
        .into_inner())
}

/// The next event of a watch; a lag or the end of the stream is a failure.
pub(crate) async fn next_event(stream: &mut Streaming<WatchJobsResponse>) -> Result<JobEvent> {
    let message = bounded(NEXT_EVENT, "the next WatchJobs event", stream.message())
        .await?
        .context("WatchJobs answered an error")?
        .context("the WatchJobs stream ended")?;
    ensure!(!message.lagged, "the watcher was told it lagged");
    message
        .event
        .context("a WatchJobs message without an event nor lagged")
}

/// An event as (type, previous state, state, job id), for comparing sequences.
pub(crate) type EventShape = (JobEventType, JobState, JobState, String);

/// The shape of an event.
pub(crate) fn shape(event: &JobEvent) -> Result<EventShape> {
    let job = event.job.as_ref().context("an event without its job")?;
    Ok((
        event.r#type(),
        event.previous_state(),
        job.state(),
        job.id.clone(),
    ))
}

/// The next event, checked against an expected shape; returns it for more checks.
pub(crate) async fn expect_event(
    stream: &mut Streaming<WatchJobsResponse>,
    expected: (JobEventType, JobState, JobState, &str),
) -> Result<JobEvent> {
    let event = next_event(stream).await?;
    let got = shape(&event)?;
    let (kind, previous, state, id) = expected;
    if got != (kind, previous, state, id.to_owned()) {
        bail!(
            "expected {} ({} -> {}) of job {id}, got {} ({} -> {}) of job {}",
            kind.as_str_name(),
            previous.as_str_name(),
            state.as_str_name(),
            got.0.as_str_name(),
            got.1.as_str_name(),
            got.2.as_str_name(),
            got.3
        );
    }
    Ok(event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_change_of_a_job_through_a_failed_attempt_retry_and_success()
-> Result<()> {
    use JobEventType::{AttemptFailed, Created, StateChanged};
    use JobState::{Queued, Retrying, Running, Succeeded, Unspecified};

    let server = TestServer::start().await?;
    let jobq = server.client();
    let queue = "watched";
    let mut watch = open_watch(
        &jobq,
        WatchJobsRequest {
            queues: vec![queue.to_owned()],
            ..WatchJobsRequest::default()
        },
    )
    .await?;
    let lease_watched = || jobq_tests::pb::LeaseJobsRequest {
        queues: vec![queue.to_owned()],
        ..lease_request("worker-watch", 1)
    };

    // Another queue's job first: the filter must keep it out.
    jobq.enqueue(spec("elsewhere")).await?;
    let job = jobq
        .enqueue(JobSpec {
            queue: queue.to_owned(),
            max_attempts: 3,
            ..spec("watched-job")
        })
        .await?;
    let id = job.id.as_str();
    let created = expect_event(&mut watch, (Created, Unspecified, Queued, id)).await?;
    assert!(created.time.is_some(), "events carry their time");
    assert_eq!(
        created.job.as_ref().map(|job| job.queue.as_str()),
        Some(queue)
    );

    let first = jobq
        .lease(lease_watched())
        .await?
        .pop()
        .context("no job to lease")?;
    let running = expect_event(&mut watch, (StateChanged, Queued, Running, id)).await?;
    assert_eq!(running.job.as_ref().map(|job| job.attempt), Some(1));

    // A retryable failure with a short wait: retrying, then queued by the server.
    jobq.try_fail(FailJobRequest {
        lease: Some(first.lease()),
        error: "disk full".to_owned(),
        retryable: true,
        retry_after: Some(duration(Duration::from_millis(300))),
    })
    .await?;
    let failed = expect_event(&mut watch, (AttemptFailed, Running, Retrying, id)).await?;
    assert_eq!(failed.error, "disk full");
    // The server's own move, seen live rather than polled for.
    expect_event(&mut watch, (StateChanged, Retrying, Queued, id)).await?;

    let second = jobq
        .lease(lease_watched())
        .await?
        .pop()
        .context("no job to lease")?;
    let running = expect_event(&mut watch, (StateChanged, Queued, Running, id)).await?;
    assert_eq!(running.job.as_ref().map(|job| job.attempt), Some(2));
    jobq.complete_with(&second, serde_json::json!({"ok": true}))
        .await?;
    let succeeded = expect_event(&mut watch, (StateChanged, Running, Succeeded, id)).await?;
    assert!(
        succeeded
            .job
            .as_ref()
            .is_some_and(|job| job.result.is_none()),
        "events carry the BASIC view: no result"
    );
    assert_eq!(
        jobq_tests::json_of(&jobq.get(id).await?.result),
        serde_json::json!({"ok": true})
    );

    // Nothing else came for the job: the next event is a new job's creation.
    let sentinel = jobq
        .enqueue(JobSpec {
            queue: queue.to_owned(),
            ..spec("sentinel")
        })
        .await?;
    expect_event(&mut watch, (Created, Unspecified, Queued, &sentinel.id)).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_by_job_id_sees_only_that_job_with_its_progress() -> Result<()> {
    use JobEventType::{Deleted, Progress, StateChanged};
    use JobState::{Queued, Running, Succeeded, Unspecified};

    let server = TestServer::start().await?;
    let jobq = server.client();
    let watched = jobq.enqueue(spec("progress")).await?;
    let other = jobq.enqueue(spec("progress")).await?;
    let id = watched.id.as_str();
    let mut watch = open_watch(
        &jobq,
        WatchJobsRequest {
            job_ids: vec![watched.id.clone()],
            ..WatchJobsRequest::default()
        },
    )
    .await?;

    let leased = jobq.lease_now("worker-progress", 2).await?;
    ensure!(leased.len() == 2, "leased {} jobs, not 2", leased.len());
    let (mine, theirs) = if leased[0].id() == id {
        (&leased[0], &leased[1])
    } else {
        (&leased[1], &leased[0])
    };
    assert_eq!(theirs.id(), other.id);
    expect_event(&mut watch, (StateChanged, Queued, Running, id)).await?;

    let progress =
        |leased: &jobq_tests::pb::LeasedJob, percent: i32, message: &str| LeaseProgress {
            lease: Some(leased.lease()),
            progress_percent: Some(percent),
            progress_message: Some(message.to_owned()),
        };
    jobq.heartbeat(
        "worker-progress",
        vec![
            progress(theirs, 10, "theirs"),
            progress(mine, 40, "halfway"),
        ],
    )
    .await?;
    let event = expect_event(&mut watch, (Progress, Unspecified, Running, id)).await?;
    let job = event.job.context("no job")?;
    assert_eq!(
        (job.progress_percent, job.progress_message.as_str()),
        (40, "halfway")
    );

    // A heartbeat that changes nothing sends nothing; the next change does.
    jobq.heartbeat_one("worker-progress", mine).await?;
    jobq.heartbeat("worker-progress", vec![progress(mine, 80, "almost")])
        .await?;
    let event = expect_event(&mut watch, (Progress, Unspecified, Running, id)).await?;
    let job = event.job.context("no job")?;
    assert_eq!(
        (job.progress_percent, job.progress_message.as_str()),
        (80, "almost")
    );

    jobq.complete(theirs).await?;
    jobq.complete(mine).await?;
    expect_event(&mut watch, (StateChanged, Running, Succeeded, id)).await?;
    jobq.try_delete(&other.id).await?;
    jobq.try_delete(id).await?;
    let deleted = next_event(&mut watch).await?;
    assert_eq!(deleted.r#type(), Deleted);
    assert_eq!(deleted.job.as_ref().map(|job| job.id.as_str()), Some(id));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_filters_by_type_and_state() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut watch = open_watch(
        &jobq,
        WatchJobsRequest {
            types: vec!["fragile".to_owned()],
            states: vec![JobState::Dead.into()],
            ..WatchJobsRequest::default()
        },
    )
    .await?;
    let sturdy = jobq.enqueue(spec("sturdy")).await?;
    let fragile = jobq.enqueue(spec("fragile")).await?;
    let leased = jobq.lease_now("worker-filters", 2).await?;
    ensure!(leased.len() == 2, "leased {} jobs, not 2", leased.len());
    // The other type dies first: had it passed the filter, it would come first.
    for wanted in [&sturdy.id, &fragile.id] {
        let job = leased
            .iter()
            .find(|leased| leased.id() == wanted.as_str())
            .context("job not leased")?;
        jobq.fail(job, "broken for good", false).await?;
    }
    // Not queued nor running (other states), only the failure that killed it.
    let event = expect_event(
        &mut watch,
        (
            JobEventType::AttemptFailed,
            JobState::Running,
            JobState::Dead,
            &fragile.id,
        ),
    )
    .await?;
    assert_eq!(event.error, "broken for good");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_told_it_lagged_and_holds_back_no_one() -> Result<()> {
    // Each round enqueues a batch of jobs and deletes them again: two events
    // per job, and no more than one batch of jobs alive at a time. In all,
    // more events than the server keeps for slow watchers (16,384).
    const ROUNDS: usize = 10;
    const JOBS_PER_ROUND: usize = 1000;
    const EVENTS: usize = ROUNDS * JOBS_PER_ROUND * 2;
    const PAYLOAD_BYTES: usize = 1000;

    let server = TestServer::start().await?;
    let jobq = server.client();
    let request = WatchJobsRequest {
        queues: vec!["flood".to_owned()],
        ..WatchJobsRequest::default()
    };
    // The idle watcher, on a connection of its own with small windows, so
    // the server's bounded buffers are what fill up.
    let idle_client = small_window_client(&server).await?;
    let mut idle = open_watch(&idle_client, request.clone()).await?;

    // A watcher that reads, reporting how many events it has seen.
    let reader_client = server.connect().await?;
    let mut reading = open_watch(&reader_client, request).await?;
    let (progress, mut seen) = watch::channel(0_usize);
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while count < EVENTS {
            let event = next_event(&mut reading).await?;
            ensure!(
                matches!(
                    event.r#type(),
                    JobEventType::Created | JobEventType::Deleted
                ),
                "unexpected event {event:?}"
            );
            count += 1;
            progress.send_replace(count);
        }
        anyhow::Ok(count)
    });

    let payload = jobq_tests::json(serde_json::json!({ "padding": "p".repeat(PAYLOAD_BYTES) }));
    for round in 0..ROUNDS {
        let specs = (0..JOBS_PER_ROUND)
            .map(|_| JobSpec {
                queue: "flood".to_owned(),
                payload: Some(payload.clone()),
                ..spec("flood")
            })
            .collect();
        let jobs = bounded(
            Duration::from_secs(60),
            "EnqueueJobs of 1000 jobs while a watcher does not read",
            jobq.enqueue_batch(specs),
        )
        .await??;
        let ids: Vec<String> = jobs.into_iter().map(|job| job.id).collect();
        let deleted = bounded(
            Duration::from_secs(60),
            "DeleteJobs of 1000 jobs while a watcher does not read",
            jobq.queue().delete_jobs(DeleteJobsRequest {
                selector: Some(JobSelector {
                    job_ids: ids,
                    ..JobSelector::default()
                }),
            }),
        )
        .await??
        .into_inner();
        assert_eq!(deleted.job_ids.len(), JOBS_PER_ROUND);
        // Keep the reader's backlog under the server's buffer, so only the
        // idle watcher can fall behind.
        let target = (round + 1) * JOBS_PER_ROUND * 2;
        bounded(
            Duration::from_secs(60),
            &format!("the reading watcher to see {target} events"),
            seen.wait_for(|count| *count >= target),
        )
        .await?
        .context("the reading watcher stopped")?;
    }
    let read = bounded(Duration::from_secs(10), "the reading watcher", reader)
        .await?
        .context("reader panicked")??;
    assert_eq!(read, EVENTS);

    // The idle watcher: what fit in the buffers, then "lagged" with the
    // count of what it missed, then the rest: every event is delivered or
    // counted, none is swallowed, and the stream goes on.
    let (mut delivered, mut dropped, mut lags) = (0_u64, 0_u64, 0);
    let mut after_lag = 0;
    while delivered + dropped < EVENTS as u64 {
        let message = bounded(
            NEXT_EVENT,
            "the idle watcher's next message",
            idle.message(),
        )
        .await?
        .context("WatchJobs answered an error")?
        .context("the idle watcher's stream ended")?;
        if message.lagged {
            ensure!(message.event.is_none(), "a lagged message carries no event");
            ensure!(
                message.dropped_events > 0,
                "a lag says how many events were missed"
            );
            dropped += message.dropped_events;
            lags += 1;
            continue;
        }
        ensure!(
            message.event.is_some(),
            "a message with neither event nor lag"
        );
        delivered += 1;
        if lags > 0 {
            after_lag += 1;
        }
    }
    assert_eq!(
        delivered + dropped,
        EVENTS as u64,
        "every event delivered or counted"
    );
    assert!(
        lags > 0,
        "the idle watcher got every event and never lagged"
    );
    assert!(after_lag > 0, "the stream goes on after a lag");
    eprintln!(
        "the idle watcher got {delivered} events and was told it missed {dropped} ({lags} lag notices)"
    );
    server.shutdown().await
}
