//! The worker SDK (`jobq-client`'s runtime) against a real server: handlers,
//! results, logs and progress, fatal vs retryable errors, panics, bounded
//! concurrency, cancellation, children, graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_client::{
    Client, ClientConfig, JobContext, JobError, JobResult, NewJob, ResultExt, Shutdown, StopCause,
    Worker, WorkerConfig, WorkerError, handler_fn,
};
use jobq_tests::pb::{self, AttemptOutcome, JobState};
use jobq_tests::{TestServer, attempt_outcomes, bounded, eventually};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A client of the SDK for `server`.
pub fn sdk_client(server: &TestServer) -> Result<Client> {
    let config = ClientConfig::builder(format!("http://{}", server.addr())).build()?;
    Ok(Client::connect(config)?)
}

/// Worker settings for tests: short leases and polls, fast backoff.
pub fn test_worker_config(concurrency: usize) -> Result<WorkerConfig> {
    Ok(WorkerConfig::builder()
        .concurrency(concurrency)
        .lease_duration(Duration::from_secs(5))
        .poll_wait(Duration::from_secs(5))
        .grace_period(Duration::from_secs(5))
        .cancel_grace(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()?)
}

/// A worker running in this process, stopped with [`RunningWorker::stop`].
pub struct RunningWorker {
    shutdown: Shutdown,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Runs `worker` in the background.
    pub fn start(worker: Worker) -> Self {
        let shutdown = Shutdown::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        Self { shutdown, task }
    }

    /// Asks for a graceful stop without waiting for it.
    pub fn request_stop(&self) {
        self.shutdown.request_graceful();
    }

    /// Graceful stop; waits (bounded) for the worker to finish.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.request_graceful();
        bounded(Duration::from_secs(20), "the worker's shutdown", self.task)
            .await?
            .context("worker task")??;
        Ok(())
    }
}

async fn log_messages(server: &TestServer, job_id: &str) -> Result<Vec<(String, String)>> {
    let request = pb::GetJobLogsRequest {
        job_id: job_id.to_owned(),
        page_size: 5000,
        ..Default::default()
    };
    let page = server
        .client()
        .queue()
        .get_job_logs(request)
        .await
        .context("GetJobLogs")?
        .into_inner();
    Ok(page
        .lines
        .into_iter()
        .map(|line| {
            (
                pb::LogStream::try_from(line.stream)
                    .map(|s| s.as_str_name().to_owned())
                    .unwrap_or_default(),
                line.message,
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_reports_result_progress_and_log_lines() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let worker = Worker::new(client.clone(), test_worker_config(2)?).handler(
        "greet",
        handler_fn(|ctx: JobContext| async move {
            let name: String = ctx.payload_field("name")?;
            ctx.log().stdout(format!("hello, {name}"));
            ctx.log().stderr("a warning on stderr");
            ctx.progress(50, "halfway");
            ctx.progress(100, "done greeting");
            JobResult::Ok(json!({ "greeted": name, "attempt": ctx.attempt() }))
        }),
    );
    let running = RunningWorker::start(worker);

    let job = client
        .enqueue(NewJob::new("greet", json!({ "name": "Ada" })))
        .await?
        .job;
    let done = server
        .client()
        .wait_for_state(&job.id, JobState::Succeeded, Duration::from_secs(15))
        .await?;
    let result = jobq_tests::json_of(&done.result);
    assert_eq!(result, json!({ "greeted": "Ada", "attempt": 1 }));
    assert_eq!(
        done.progress_percent, 100,
        "the last progress is stored before the report"
    );
    assert_eq!(done.progress_message, "done greeting");

    let lines = log_messages(&server, &job.id).await?;
    let has = |stream: &str, text: &str| lines.iter().any(|(s, m)| s == stream && m.contains(text));
    ensure!(
        has("LOG_STREAM_STDOUT", "hello, Ada"),
        "stdout line missing: {lines:?}"
    );
    ensure!(
        has("LOG_STREAM_STDERR", "a warning on stderr"),
        "stderr line missing: {lines:?}"
    );
    ensure!(
        has("LOG_STREAM_PROGRESS", "halfway"),
        "progress line missing: {lines:?}"
    );
    ensure!(
        has("LOG_STREAM_SYSTEM", "attempt 1 succeeded"),
        "runtime line missing: {lines:?}"
    );
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_fatal_errors_dead_letter_at_once_and_retryable_ones_retry() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let worker = Worker::new(client.clone(), test_worker_config(2)?)
        .handler(
            "strict",
            handler_fn(|ctx: JobContext| async move {
                // A payload that does not parse is fatal through `?`.
                let count: u32 = serde_json::from_value(ctx.payload_json())
                    .fatal_context("payload must be a number")?;
                JobResult::Ok(json!(count))
            }),
        )
        .handler(
            "flaky",
            handler_fn(|ctx: JobContext| async move {
                if ctx.attempt() < 2 {
                    // std errors convert to retryable ones with `?`.
                    std::fs::read("/nonexistent/jobq/flaky")?;
                }
                JobResult::Ok(json!({ "attempt": ctx.attempt() }))
            }),
        );
    let running = RunningWorker::start(worker);

    let strict = client
        .enqueue(NewJob::new("strict", json!({ "not": "a number" })).max_attempts(5))
        .await?
        .job;
    let flaky = client
        .enqueue(
            NewJob::new("flaky", json!({}))
                .max_attempts(5)
                .backoff(Duration::from_millis(100), Duration::from_millis(100)),
        )
        .await?
        .job;

    let dead = server
        .client()
        .wait_for_state(&strict.id, JobState::Dead, Duration::from_secs(15))
        .await?;
    assert_eq!(dead.attempt, 1, "a fatal error must not be retried");
    ensure!(
        dead.last_error.contains("payload must be a number"),
        "last_error: {}",
        dead.last_error
    );

    server
        .client()
        .wait_for_state(&flaky.id, JobState::Succeeded, Duration::from_secs(15))
        .await?;
    let flaky = server.client().get(&flaky.id).await?;
    assert_eq!(
        attempt_outcomes(&flaky),
        vec![AttemptOutcome::Failed, AttemptOutcome::Succeeded]
    );
    ensure!(
        flaky.attempts[0].error.contains("No such file"),
        "first error: {}",
        flaky.attempts[0].error
    );
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_panicking_handler_fails_the_attempt_and_the_worker_survives() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let worker = Worker::new(client.clone(), test_worker_config(1)?).handler(
        "fragile",
        handler_fn(|ctx: JobContext| async move {
            if ctx.attempt() == 1 {
                panic!("boom on attempt 1");
            }
            JobResult::Ok(serde_json::Value::Null)
        }),
    );
    let running = RunningWorker::start(worker);
    let spec = || {
        NewJob::new("fragile", json!({}))
            .backoff(Duration::from_millis(100), Duration::from_millis(100))
    };
    let first = client.enqueue(spec()).await?.job;
    server
        .client()
        .wait_for_state(&first.id, JobState::Succeeded, Duration::from_secs(15))
        .await?;
    let first = server.client().get(&first.id).await?;
    assert_eq!(
        attempt_outcomes(&first),
        vec![AttemptOutcome::Failed, AttemptOutcome::Succeeded]
    );
    ensure!(
        first.attempts[0]
            .error
            .contains("panicked: boom on attempt 1"),
        "{}",
        first.attempts[0].error
    );

    // The same worker keeps working after the panic.
    let second = client.enqueue(spec()).await?.job;
    server
        .client()
        .wait_for_state(&second.id, JobState::Succeeded, Duration::from_secs(15))
        .await?;
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_concurrency_limit_holds_and_no_extra_job_is_leased() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let running_now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (running_in, most_in, release_in) = (running_now.clone(), most.clone(), release.clone());
    let worker = Worker::new(client.clone(), test_worker_config(2)?).handler(
        "slot",
        handler_fn(move |_ctx: JobContext| {
            let (running, most, release) =
                (running_in.clone(), most_in.clone(), release_in.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                release.notified().await;
                running.fetch_sub(1, Ordering::SeqCst);
                JobResult::Ok(serde_json::Value::Null)
            }
        }),
    );
    let worker_run = RunningWorker::start(worker);
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            client
                .enqueue(NewJob::new("slot", json!({ "n": n })))
                .await?
                .job
                .id,
        );
    }
    let jobq = server.client();
    eventually(Duration::from_secs(10), "two jobs running", || async {
        Ok((running_now.load(Ordering::SeqCst) == 2).then_some(()))
    })
    .await?;
    // Two slots, two leases: the other four stay queued for other workers.
    assert_eq!(jobq.count_in_state(JobState::Running).await?, 2);
    assert_eq!(jobq.count_in_state(JobState::Queued).await?, 4);

    // Let them go one at a time until all are done.
    eventually(
        Duration::from_secs(20),
        "all six jobs to succeed",
        || async {
            release.notify_one();
            Ok((jobq.count_in_state(JobState::Succeeded).await? == 6).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "never more than the concurrency at once"
    );
    worker_run.stop().await
}

/// Starts `worker`, with a handler for type "quick" that returns at once,
/// on `count` quick jobs and waits for them: it has then timed its jobs
/// and its leases, and knows its jobs end within a round trip.
async fn start_after_quick_jobs(
    worker: Worker,
    client: &Client,
    jobq: &jobq_tests::JobqClient,
    count: i64,
) -> Result<RunningWorker> {
    let quick: Vec<pb::JobSpec> = (0..count)
        .map(|n| NewJob::new("quick", json!({ "n": n })).into())
        .collect();
    client.enqueue_many(quick).await?;
    let worker = worker.handler(
        "quick",
        handler_fn(|_ctx: JobContext| async { JobResult::Ok(serde_json::Value::Null) }),
    );
    let running = RunningWorker::start(worker);
    eventually(
        Duration::from_secs(60),
        "the quick jobs to succeed",
        || async { Ok((jobq.count_in_state(JobState::Succeeded).await? == count).then_some(())) },
    )
    .await?;
    Ok(running)
}

/// Short jobs are leased ahead of the free slots (so a slot that frees up
/// needs no round trip), never run beyond the concurrency, and a graceful
/// stop hands the ones not started back at once while the running ones
/// finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_leases_short_jobs_ahead_and_hands_back_the_unstarted_at_shutdown() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let jobq = server.client();
    let running_now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let slow_runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (running_in, most_in, runs_in, release_in) = (
        running_now.clone(),
        most.clone(),
        slow_runs.clone(),
        release.clone(),
    );
    let config = WorkerConfig::builder()
        .concurrency(2)
        .lease_duration(Duration::from_secs(60))
        .poll_wait(Duration::from_secs(5))
        .grace_period(Duration::from_secs(120))
        .lease_ahead_wait(Duration::from_secs(50))
        .build()?;
    let worker = Worker::new(client.clone(), config).handler(
        "slow",
        handler_fn(move |_ctx: JobContext| {
            let (running, most, runs, release) = (
                running_in.clone(),
                most_in.clone(),
                runs_in.clone(),
                release_in.clone(),
            );
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                release.notified().await;
                running.fetch_sub(1, Ordering::SeqCst);
                JobResult::Ok(serde_json::Value::Null)
            }
        }),
    );
    let worker_run = start_after_quick_jobs(worker, &client, &jobq, 200).await?;

    for n in 0..6 {
        client
            .enqueue(NewJob::new("slow", json!({ "n": n })))
            .await?;
    }
    // Two run, two more are held for the slots (leased: running on the
    // server), two stay queued for other workers.
    eventually(
        Duration::from_secs(30),
        "two run and two are leased ahead",
        || async {
            let running = jobq.count_in_state(JobState::Running).await?;
            let queued = jobq.count_in_state(JobState::Queued).await?;
            Ok(
                (running_now.load(Ordering::SeqCst) == 2 && running == 4 && queued == 2)
                    .then_some(()),
            )
        },
    )
    .await?;

    // A graceful stop hands back the two not started while two still run.
    worker_run.request_stop();
    eventually(
        Duration::from_secs(30),
        "the unstarted jobs to be handed back",
        || async { Ok((jobq.count_in_state(JobState::Queued).await? == 4).then_some(())) },
    )
    .await?;
    assert_eq!(
        running_now.load(Ordering::SeqCst),
        2,
        "the running jobs go on"
    );
    assert_eq!(jobq.count_in_state(JobState::Running).await?, 2);

    release.notify_waiters();
    eventually(
        Duration::from_secs(30),
        "the running jobs to finish",
        || async {
            release.notify_waiters();
            Ok((jobq.count_in_state(JobState::Succeeded).await? == 202).then_some(()))
        },
    )
    .await?;
    worker_run.stop().await?;
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "never more than the concurrency at once"
    );
    assert_eq!(
        slow_runs.load(Ordering::SeqCst),
        2,
        "the handed-back jobs never ran here"
    );
    assert_eq!(jobq.count_in_state(JobState::Queued).await?, 4);
    Ok(())
}

/// A job leased ahead that waits too long for a slot (the job before it
/// turned out long) goes back to the queue without using up an attempt,
/// and the worker leases no more ahead until short jobs are seen again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_hands_back_a_job_leased_ahead_that_waits_too_long() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let jobq = server.client();
    let slow_running = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (running_in, release_in) = (slow_running.clone(), release.clone());
    let config = WorkerConfig::builder()
        .concurrency(1)
        .lease_duration(Duration::from_secs(60))
        .poll_wait(Duration::from_secs(5))
        .lease_ahead_wait(Duration::from_millis(500))
        .build()?;
    let worker = Worker::new(client.clone(), config).handler(
        "slow",
        handler_fn(move |_ctx: JobContext| {
            let (running, release) = (running_in.clone(), release_in.clone());
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                JobResult::Ok(serde_json::Value::Null)
            }
        }),
    );
    let worker_run = start_after_quick_jobs(worker, &client, &jobq, 100).await?;

    client.enqueue(NewJob::new("slow", json!({}))).await?;
    eventually(Duration::from_secs(30), "the slow job to start", || async {
        Ok((slow_running.load(Ordering::SeqCst) == 1).then_some(()))
    })
    .await?;
    let behind = client
        .enqueue(NewJob::new("quick", json!({ "behind": true })))
        .await?
        .job
        .id;
    let handed_back = eventually(
        Duration::from_secs(30),
        "the job behind it to be handed back",
        || async {
            let job = jobq.get(&behind).await?;
            Ok((job.state() == JobState::Queued
                && attempt_outcomes(&job).contains(&AttemptOutcome::Released))
            .then_some(job))
        },
    )
    .await?;
    assert_eq!(handed_back.attempt, 0, "the hand-back used up no attempt");
    // The worker now knows its jobs can be long: it does not lease the job
    // again while its one slot is taken (no lease, hand back, lease again).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = jobq.get(&behind).await?;
    assert_eq!(still.state(), JobState::Queued);
    assert_eq!(attempt_outcomes(&still), vec![AttemptOutcome::Released]);

    release.notify_waiters();
    jobq.wait_for_state(&behind, JobState::Succeeded, Duration::from_secs(30))
        .await?;
    let ran = jobq.get(&behind).await?;
    assert_eq!(
        attempt_outcomes(&ran),
        vec![AttemptOutcome::Released, AttemptOutcome::Succeeded]
    );
    worker_run.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_cancel_fires_the_token_and_children_get_their_parent() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let seen_cause = Arc::new(std::sync::Mutex::new(None));
    let seen = seen_cause.clone();
    let worker = Worker::new(
        client.clone(),
        WorkerConfig::builder()
            .concurrency(2)
            .lease_duration(Duration::from_secs(3))
            .heartbeat_interval(Duration::from_millis(200))
            .build()?,
    )
    .handler(
        "parent",
        handler_fn(move |ctx: JobContext| {
            let seen = seen.clone();
            async move {
                let child = ctx
                    .enqueue_child(NewJob::new("child", json!({ "from": ctx.id() })))
                    .await
                    .retryable()?;
                ctx.log().stdout(format!("spawned {}", child.job.id));
                ctx.cancelled().await;
                if let Ok(mut seen) = seen.lock() {
                    *seen = ctx.stop_cause();
                }
                Err::<serde_json::Value, JobError>(ctx.stopped_error())
            }
        }),
    );
    let running = RunningWorker::start(worker);
    let parent = client.enqueue(NewJob::new("parent", json!({}))).await?.job;
    let jobq = server.client();
    let child = eventually(Duration::from_secs(10), "the child job", || async {
        let request = pb::ListJobsRequest {
            parent_id: parent.id.clone(),
            ..Default::default()
        };
        Ok(jobq.list(request).await?.jobs.into_iter().next())
    })
    .await?;
    assert_eq!(child.parent_id, parent.id);
    assert_eq!(child.r#type, "child");

    jobq.cancel(&parent.id, "stop it").await?;
    let cancelled = jobq
        .wait_for_state(&parent.id, JobState::Cancelled, Duration::from_secs(10))
        .await?;
    assert_eq!(cancelled.state(), JobState::Cancelled);
    assert_eq!(
        *seen_cause.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        Some(StopCause::Cancelled)
    );
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_graceful_shutdown_releases_jobs_that_outlast_the_grace_period() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let config = WorkerConfig::builder()
        .concurrency(2)
        .lease_duration(Duration::from_secs(30))
        .grace_period(Duration::from_millis(300))
        .cancel_grace(Duration::from_millis(300))
        .build()?;
    let worker = Worker::new(client.clone(), config).handler(
        "stubborn",
        // Ignores cancellation: the runtime must abort it after the cancel grace.
        handler_fn(|_ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            JobResult::Ok(serde_json::Value::Null)
        }),
    );
    let running = RunningWorker::start(worker);
    let job = client
        .enqueue(NewJob::new("stubborn", json!({})))
        .await?
        .job;
    let jobq = server.client();
    jobq.wait_for_state(&job.id, JobState::Running, Duration::from_secs(10))
        .await?;
    running.stop().await?;

    // Released, not failed: queued again at once (no 30 s lease wait), attempt not burnt.
    let queued = jobq.get(&job.id).await?;
    assert_eq!(
        queued.state(),
        JobState::Queued,
        "released jobs are queued again at once"
    );
    assert_eq!(attempt_outcomes(&queued), vec![AttemptOutcome::Released]);
    Ok(())
}
