//! The `jobq-worker` binary as a process: kill -9 mid-job, SIGTERM with
//! running jobs, and a server restart under a running job.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{AttemptOutcome, GetJobLogsRequest, JobSpec, JobState};
use jobq_tests::worker_process::WorkerProcess;
use jobq_tests::{
    Backend, JobqClient, ServerCommand, TestDatabase, TestServer, attempt_outcomes, eventually,
    settings, spec,
};
use serde_json::json;

fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobq-test-worker"))
}

fn noop(payload: serde_json::Value) -> JobSpec {
    JobSpec {
        payload: Some(jobq_tests::json(payload)),
        ..spec("noop")
    }
}

/// Worker flags for a noop-only worker with its own media dir.
fn worker_args<'a>(id: &'a str, media: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--worker-id",
        id,
        "--types",
        "noop",
        "--media-root",
        media,
        "--poll-wait",
        "2s",
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_with_sigkill_mid_job_is_taken_over_after_the_lease_expires() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let media = tempfile::tempdir()?;
    let media_path = media.path().display().to_string();

    let job = jobq.enqueue(noop(json!({ "sleep_ms": 2500 }))).await?;
    let first = WorkerProcess::spawn(
        worker_binary(),
        server.addr(),
        &worker_args("victim", &media_path, &["--lease", "2s"]),
    )?;
    let running = jobq
        .wait_for_state(&job.id, JobState::Running, Duration::from_secs(20))
        .await?;
    assert_eq!(running.worker_id, "victim");
    first.kill_9().await?;

    let second = WorkerProcess::spawn(
        worker_binary(),
        server.addr(),
        &worker_args("rescuer", &media_path, &["--lease", "2s"]),
    )?;
    let done = jobq
        .wait_for_state(&job.id, JobState::Succeeded, Duration::from_secs(30))
        .await
        .with_context(|| second.stderr_tail())?;
    let done = jobq.get(&done.id).await?;
    assert_eq!(
        attempt_outcomes(&done),
        vec![AttemptOutcome::LeaseExpired, AttemptOutcome::Succeeded]
    );
    assert_eq!(done.attempts[0].worker_id, "victim");
    assert_eq!(done.attempts[1].worker_id, "rescuer");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_jobs_finish_and_releases_the_rest_to_another_worker() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let media = tempfile::tempdir()?;
    let media_path = media.path().display().to_string();

    let short = jobq.enqueue(noop(json!({ "sleep_ms": 1000 }))).await?;
    let long = jobq.enqueue(noop(json!({ "sleep_ms": 600_000 }))).await?;
    // 30 s leases: a job that reaches the next worker quickly was released, not expired.
    let mut first = WorkerProcess::spawn(
        worker_binary(),
        server.addr(),
        &worker_args(
            "leaving",
            &media_path,
            &[
                "--lease",
                "30s",
                "--grace-period",
                "3s",
                "--concurrency",
                "2",
            ],
        ),
    )?;
    for id in [&short.id, &long.id] {
        started_on(&jobq, id, "leaving")
            .await
            .with_context(|| first.stderr_tail())?;
    }
    first.sigterm().await?;
    let status = first.wait_exit(Duration::from_secs(20)).await?;
    ensure!(
        status.success(),
        "the worker must exit 0 after SIGTERM: {status}; log:\n{}",
        first.stderr_tail()
    );

    let short = jobq.get(&short.id).await?;
    assert_eq!(
        short.state(),
        JobState::Succeeded,
        "the short job finishes within the grace period"
    );
    let long_now = jobq.get(&long.id).await?;
    assert_eq!(
        long_now.state(),
        JobState::Queued,
        "the long job is handed back at once"
    );
    assert_eq!(attempt_outcomes(&long_now), vec![AttemptOutcome::Released]);

    let second = WorkerProcess::spawn(
        worker_binary(),
        server.addr(),
        &worker_args("next", &media_path, &[]),
    )?;
    let taken = eventually(
        Duration::from_secs(20),
        "the released job to run on the next worker",
        || async {
            let job = jobq.get(&long.id).await?;
            Ok((job.state() == JobState::Running && job.worker_id == "next").then_some(job))
        },
    )
    .await
    .with_context(|| second.stderr_tail())?;
    assert_eq!(taken.attempt, 1, "a release does not use up an attempt");
    jobq.cancel(&long.id, "test over").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_under_a_running_job_still_records_it_once() -> Result<()> {
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let binary = crate::server_binary();
    let server = ServerCommand::fast(binary, data_dir.path(), &database)
        .spawn()
        .await?;
    let addr = server.addr();
    let jobq = server.client().await?;
    let media = tempfile::tempdir()?;
    let media_path = media.path().display().to_string();

    let job = jobq.enqueue(noop(json!({ "sleep_ms": 4000 }))).await?;
    let worker = WorkerProcess::spawn(
        binary_for_worker(),
        addr,
        &worker_args("steady", &media_path, &["--lease", "20s"]),
    )?;
    jobq.wait_for_state(&job.id, JobState::Running, Duration::from_secs(20))
        .await
        .with_context(|| worker.stderr_tail())?;

    // Down hard, then up again on the same port and data.
    server.kill_9().await?;
    let mut command = ServerCommand::new(binary)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir.path());
    if let Some(url) = database.url() {
        command = command.arg("--database-url").arg(url);
    }
    let restarted = settings::flags()
        .into_iter()
        .fold(command, ServerCommand::arg)
        .spawn()
        .await?;
    let jobq = restarted.client().await?;

    let done = jobq
        .wait_for_state(&job.id, JobState::Succeeded, Duration::from_secs(30))
        .await
        .with_context(|| {
            format!(
                "worker log:\n{}\nserver log:\n{}",
                worker.stderr_tail(),
                restarted.stderr_tail()
            )
        })?;
    let done = jobq.get(&done.id).await?;
    assert_eq!(
        attempt_outcomes(&done),
        vec![AttemptOutcome::Succeeded],
        "one attempt, recorded once"
    );
    let succeeded = jobq.count_in_state(JobState::Succeeded).await?;
    assert_eq!(succeeded, 1);
    Ok(())
}

/// Waits until the job's log shows it leased by `worker_id` and its handler
/// running there (the `noop` handler's first progress line, "sleeping", is
/// pushed by the worker): a job the server shows as running may still be on
/// its way to the worker.
pub async fn started_on(jobq: &JobqClient, job_id: &str, worker_id: &str) -> Result<()> {
    let leased = format!("leased by worker {worker_id}");
    eventually(
        Duration::from_secs(20),
        &format!("job {job_id} to start on {worker_id}"),
        || async {
            let request = GetJobLogsRequest {
                job_id: job_id.to_owned(),
                page_size: 5000,
                ..Default::default()
            };
            let lines = jobq
                .queue()
                .get_job_logs(request)
                .await
                .context("GetJobLogs")?
                .into_inner()
                .lines;
            let position = lines
                .iter()
                .rposition(|line| line.message.contains(&leased));
            Ok(position
                .is_some_and(|at| lines[at..].iter().any(|line| line.message == "sleeping"))
                .then_some(()))
        },
    )
    .await
}

fn binary_for_worker() -> &'static Path {
    worker_binary()
}
