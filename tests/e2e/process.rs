//! The server as a process: durability across kill -9, graceful shutdown on
//! SIGTERM (and in-process), flags and environment variables.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{JobSpec, JobState, LeaseJobsRequest, LeasedJob};
use jobq_tests::{
    Backend, JobqClient, LeasedJobExt, ServerCommand, TestDatabase, TestServer, bounded, duration,
    lease_request, spec,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use crate::server_binary;

const ACKED_JOBS: usize = 200;

fn temp_data_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("jobq-e2e-")
        .tempdir()
        .context("creating a temp data dir")
}

/// Starts a LeaseJobs that waits up to `wait` for a job that never comes.
fn waiting_lease(client: JobqClient, wait: Duration) -> JoinHandle<Result<Vec<LeasedJob>, Status>> {
    tokio::spawn(async move {
        client
            .try_lease(LeaseJobsRequest {
                wait: Some(duration(wait)),
                ..lease_request("waiter", 1)
            })
            .await
    })
}

/// A long poll cut short by shutdown must end with an empty answer or UNAVAILABLE.
fn check_poll_ended_by_shutdown(outcome: Result<Vec<LeasedJob>, Status>) -> Result<()> {
    match outcome {
        Ok(jobs) => ensure!(
            jobs.is_empty(),
            "the poll leased {} job(s) from a queue with none",
            jobs.len()
        ),
        Err(status) => ensure!(
            status.code() == Code::Unavailable,
            "the poll ended with {:?} ({:?}), expected an empty answer or UNAVAILABLE",
            status.code(),
            status.message()
        ),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enqueues_survive_kill_9() -> Result<()> {
    let data_dir = temp_data_dir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;

    let server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .spawn()
        .await?;
    let jobq = server.client().await?;
    let mut acked = Vec::new();
    for n in 0..ACKED_JOBS {
        let job = jobq
            .enqueue(JobSpec {
                payload: json!({ "n": n }).to_string(),
                ..spec("durable")
            })
            .await?;
        acked.push((job.id, n));
    }
    let status = server.kill_9().await?;
    ensure!(
        !status.success(),
        "the killed server reported success: {status}"
    );
    drop(jobq);

    let restarted = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .spawn()
        .await?;
    let jobq = restarted.client().await?;
    for (id, n) in &acked {
        let job = jobq
            .get(id)
            .await
            .with_context(|| format!("acknowledged job #{n} is gone after kill -9"))?;
        assert_eq!(job.state(), JobState::Queued);
        let payload: Value = serde_json::from_str(&job.payload).context("payload")?;
        assert_eq!(payload, json!({ "n": n }), "payload of job #{n}");
    }

    let mut completed = HashSet::new();
    for _ in 0..ACKED_JOBS {
        let leased = jobq.lease_now("worker-after-restart", 100).await?;
        if leased.is_empty() {
            break;
        }
        for job in &leased {
            jobq.complete(job).await?;
            ensure!(
                completed.insert(job.id().to_owned()),
                "job {} leased twice",
                job.id()
            );
        }
    }
    let acked_ids: HashSet<_> = acked.into_iter().map(|(id, _)| id).collect();
    ensure!(
        completed == acked_ids,
        "completed {} jobs after the restart, {} were acknowledged",
        completed.len(),
        acked_ids.len()
    );
    assert_eq!(
        jobq.count_in_state(JobState::Succeeded).await?,
        ACKED_JOBS as i64
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_long_polls_and_exits_0() -> Result<()> {
    let data_dir = temp_data_dir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let mut server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .spawn()
        .await?;
    let poll = waiting_lease(server.client().await?, Duration::from_secs(30));
    // Let the poll reach the server and park; this sets the scene, it waits for nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !poll.is_finished(),
        "LeaseJobs with a 30 s wait returned at once"
    );

    server.sigterm().await?;
    let status = server.wait_exit(Duration::from_secs(20)).await?;
    let outcome = bounded(
        Duration::from_secs(5),
        "the long poll after the server exited",
        poll,
    )
    .await??;
    ensure!(
        status.code() == Some(0),
        "exit status after SIGTERM: {status}; stderr:\n{}",
        server.stderr_tail()
    );
    check_poll_ended_by_shutdown(outcome)?;
    let extra = server.extra_stdout_lines();
    ensure!(
        extra.is_empty(),
        "stdout must hold exactly the one listening line; also got {extra:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_ends_long_polls() -> Result<()> {
    let server = TestServer::start().await?;
    let poll = waiting_lease(server.connect().await?, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !poll.is_finished(),
        "LeaseJobs with a 30 s wait returned at once"
    );

    bounded(
        Duration::from_secs(20),
        "RunningServer::shutdown",
        server.shutdown(),
    )
    .await??;
    let outcome = bounded(Duration::from_secs(5), "the long poll after shutdown", poll).await??;
    check_poll_ended_by_shutdown(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_comes_from_jobq_environment_variables() -> Result<()> {
    let data_dir = temp_data_dir()?;
    let mut server = ServerCommand::new(server_binary())
        .env("JOBQ_LISTEN", "127.0.0.1:0")
        .env("JOBQ_DATA_DIR", data_dir.path())
        .env("JOBQ_REAPER_INTERVAL", "50ms")
        .spawn()
        .await?;
    ensure!(
        server.addr().ip().is_loopback() && server.addr().port() != 0,
        "bound to {}",
        server.addr()
    );
    let jobq = server.client().await?;
    jobq.enqueue(spec("env")).await?;
    let files = std::fs::read_dir(data_dir.path())
        .context("reading the data dir")?
        .count();
    ensure!(
        files > 0,
        "JOBQ_DATA_DIR is empty after an enqueue: the default SQLite file belongs there"
    );

    server.sigterm().await?;
    let status = server.wait_exit(Duration::from_secs(20)).await?;
    ensure!(status.success(), "exit status after SIGTERM: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_address_without_auth_is_refused_at_start() -> Result<()> {
    let data_dir = temp_data_dir()?;
    // Never actually listens: the server must refuse before binding.
    let (status, stderr) = ServerCommand::new(server_binary())
        .arg("--listen")
        .arg("0.0.0.0:0")
        .arg("--data-dir")
        .arg(data_dir.path())
        .run_to_exit(Duration::from_secs(30))
        .await?;
    ensure!(
        !status.success(),
        "the server started on 0.0.0.0 without --insecure ({status})"
    );
    ensure!(
        stderr.contains("insecure"),
        "the refusal should point at --insecure; stderr:\n{stderr}"
    );
    Ok(())
}
