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
                payload: Some(jobq_tests::json(json!({ "n": n }))),
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
        let payload: Value = jobq_tests::json_of(&job.payload);
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

/// Producers: single EnqueueJob calls.
const BURST_SINGLE_PRODUCERS: usize = 12;
/// Producers: EnqueueJobs of `BURST_BATCH` jobs.
const BURST_BATCH_PRODUCERS: usize = 4;
const BURST_BATCH: usize = 10;
/// Acknowledged enqueues to see before the kill.
const BURST_ACKS_BEFORE_KILL: usize = 400;

/// What the producers and the worker of the burst were told before the kill.
#[derive(Default)]
struct BurstAcks {
    /// Single enqueues: request id, job id.
    singles: Vec<(String, String)>,
    /// Batches: request id, job ids.
    batches: Vec<(String, Vec<String>)>,
    /// Request ids sent, acknowledged or not, with their batch size (1: single).
    sent: Vec<(String, usize)>,
    /// Jobs whose CompleteJob was acknowledged.
    completed: Vec<String>,
}

fn burst_spec(request_id: &str, index: usize) -> JobSpec {
    JobSpec {
        payload: Some(jobq_tests::json(
            json!({ "request": request_id, "index": index }),
        )),
        ..spec("burst")
    }
}

/// Group commit answers each caller only after its group is on disk: with
/// many producers and a worker writing at once, a kill -9 at any moment
/// loses no acknowledged enqueue or completion, and leaves no batch half
/// written. Every call carries a request_id, so after the restart each one
/// sent is sent again: acknowledged ones must come back whole as already
/// existing, unacknowledged ones must be all there or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_in_the_middle_of_a_burst() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let data_dir = temp_data_dir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .spawn()
        .await?;
    let jobq = server.client().await?;
    let acks = Arc::new(Mutex::new(BurstAcks::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let record = |acks: &Arc<Mutex<BurstAcks>>, change: &dyn Fn(&mut BurstAcks)| {
        change(
            &mut acks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    };

    let mut tasks = Vec::new();
    for producer in 0..BURST_SINGLE_PRODUCERS + BURST_BATCH_PRODUCERS {
        let (jobq, acks, stop) = (jobq.clone(), acks.clone(), stop.clone());
        let batch = if producer < BURST_SINGLE_PRODUCERS {
            1
        } else {
            BURST_BATCH
        };
        tasks.push(tokio::spawn(async move {
            let mut call = 0;
            while !stop.load(Ordering::Relaxed) {
                let request_id = format!("burst-{producer}-{call}");
                call += 1;
                record(&acks, &|acks| acks.sent.push((request_id.clone(), batch)));
                if batch == 1 {
                    let Ok(answer) = jobq
                        .try_enqueue_with_request_id(burst_spec(&request_id, 0), &request_id)
                        .await
                    else {
                        return;
                    };
                    let id = answer.job.map(|job| job.id).unwrap_or_default();
                    record(&acks, &|acks| {
                        acks.singles.push((request_id.clone(), id.clone()))
                    });
                } else {
                    let specs = (0..batch)
                        .map(|index| burst_spec(&request_id, index))
                        .collect();
                    let Ok(answer) = jobq
                        .queue()
                        .enqueue_jobs(jobq_tests::pb::EnqueueJobsRequest {
                            jobs: specs,
                            request_id: request_id.clone(),
                        })
                        .await
                    else {
                        return;
                    };
                    let ids: Vec<String> = answer
                        .into_inner()
                        .results
                        .into_iter()
                        .filter_map(|result| result.job.map(|job| job.id))
                        .collect();
                    record(&acks, &|acks| {
                        acks.batches.push((request_id.clone(), ids.clone()))
                    });
                }
            }
        }));
    }
    {
        // A worker completing jobs meanwhile: completions are group-committed too.
        let (jobq, acks, stop) = (jobq.clone(), acks.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(leased) = jobq
                    .try_lease(LeaseJobsRequest {
                        types: vec!["burst".into()],
                        wait: Some(duration(Duration::from_millis(200))),
                        ..lease_request("burst-worker", 16)
                    })
                    .await
                else {
                    return;
                };
                for job in leased {
                    if jobq.try_complete(job.lease(), None).await.is_err() {
                        return;
                    }
                    record(&acks, &|acks| acks.completed.push(job.id().to_owned()));
                }
            }
        }));
    }

    let acknowledged = || {
        let acks = acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        acks.singles.len() + acks.batches.len() * BURST_BATCH
    };
    let patience = tokio::time::Instant::now() + Duration::from_secs(120);
    while acknowledged() < BURST_ACKS_BEFORE_KILL {
        ensure!(
            tokio::time::Instant::now() < patience,
            "only {} enqueues acknowledged in 120 s",
            acknowledged()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Killed while the producers and the worker are still writing.
    let status = server.kill_9().await?;
    ensure!(
        !status.success(),
        "the killed server reported success: {status}"
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        bounded(Duration::from_secs(60), "a burst task to stop", task).await??;
    }
    drop(jobq);

    let restarted = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .spawn()
        .await?;
    let jobq = restarted.client().await?;
    let acks = std::mem::take(
        &mut *acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for (request_id, id) in &acks.singles {
        let again = jobq
            .try_enqueue_with_request_id(burst_spec(request_id, 0), request_id)
            .await?;
        ensure!(
            again.already_exists && again.job.as_ref().map(|job| job.id.as_str()) == Some(id),
            "acknowledged enqueue {request_id} (job {id}) is gone after kill -9: {again:?}"
        );
    }
    for id in &acks.completed {
        let job = jobq.get(id).await?;
        ensure!(
            job.state() == JobState::Succeeded,
            "job {id} was acknowledged complete before the kill, now {:?}",
            job.state()
        );
    }
    let acked_batches: std::collections::HashMap<&str, &Vec<String>> = acks
        .batches
        .iter()
        .map(|(request_id, ids)| (request_id.as_str(), ids))
        .collect();
    for (request_id, size) in acks.sent.iter().filter(|(_, size)| *size > 1) {
        let specs = (0..*size)
            .map(|index| burst_spec(request_id, index))
            .collect();
        let again = jobq
            .queue()
            .enqueue_jobs(jobq_tests::pb::EnqueueJobsRequest {
                jobs: specs,
                request_id: request_id.clone(),
            })
            .await?
            .into_inner()
            .results;
        let existed = again.iter().filter(|result| result.already_exists).count();
        ensure!(
            existed == 0 || existed == *size,
            "batch {request_id} was half written: {existed} of {size} jobs existed after kill -9"
        );
        if let Some(ids) = acked_batches.get(request_id.as_str()) {
            let again_ids: Vec<&str> = again
                .iter()
                .filter_map(|result| result.job.as_ref().map(|job| job.id.as_str()))
                .collect();
            ensure!(
                existed == *size && again_ids == ids.iter().map(String::as_str).collect::<Vec<_>>(),
                "acknowledged batch {request_id} is not whole after kill -9: {existed} of {size} existed"
            );
        }
    }
    ensure!(
        !acks.singles.is_empty() && !acks.batches.is_empty() && !acks.completed.is_empty(),
        "the burst acknowledged {} singles, {} batches, {} completions before the kill",
        acks.singles.len(),
        acks.batches.len(),
        acks.completed.len()
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
