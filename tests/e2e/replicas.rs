//! Several server replicas on one PostgreSQL database (issue 5). These run on
//! PostgreSQL whatever `JOBQ_TEST_BACKEND` says: replicas need a shared database.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use jobq_server::{App, Config, RunningServer};
use jobq_tests::pb::{
    self, CompleteJobRequest, CompleteJobsRequest, EnqueueJobsRequest, JobState, LeaseJobsRequest,
    ListJobsRequest, PushJobLogsRequest, StreamJobLogsRequest, WatchJobsRequest,
};
use jobq_tests::{
    Backend, JobqClient, LeasedJobExt, ReportResultExt, TestDatabase, bounded, duration,
    eventually, settings, spec,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// One replica: a server on the shared database with a data dir of its own.
struct Replica {
    server: RunningServer,
    client: JobqClient,
    _data_dir: TempDir,
}

impl Replica {
    async fn start(database: &TestDatabase) -> Result<Self> {
        let data_dir = tempfile::Builder::new().prefix("jobq-replica-").tempdir()?;
        let mut config = Config::for_tests(data_dir.path());
        settings::apply(&mut config);
        config.database_url = database.url().map(str::to_owned);
        let listener = TcpListener::bind(config.listen).await?;
        let server = App::start(config, listener)
            .await
            .context("starting a replica")?;
        let client = JobqClient::connect(server.local_addr()).await?;
        Ok(Self {
            server,
            client,
            _data_dir: data_dir,
        })
    }

    async fn stop(self) -> Result<()> {
        self.server.shutdown().await
    }
}

async fn postgres(data_dir: &Path) -> Result<TestDatabase> {
    TestDatabase::provision(Backend::Postgres, data_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_eight_workers_complete_5000_jobs_exactly_once() -> Result<()> {
    const JOBS: usize = 5000;
    const WORKERS: usize = 8;
    let scratch = tempfile::tempdir()?;
    let database = postgres(scratch.path()).await?;
    let (a, b) = (
        Replica::start(&database).await?,
        Replica::start(&database).await?,
    );

    for (index, chunk) in (0..JOBS).collect::<Vec<_>>().chunks(500).enumerate() {
        let target = if index % 2 == 0 { &a } else { &b };
        let jobs = chunk
            .iter()
            .map(|n| spec_with_payload("noop", *n))
            .collect();
        target
            .client
            .queue()
            .enqueue_jobs(EnqueueJobsRequest {
                jobs,
                request_id: String::new(),
            })
            .await?;
    }

    // Every lease of every job, and every accepted completion.
    let leases: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let completions: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let client = if worker % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        let (leases, completions) = (leases.clone(), completions.clone());
        workers.spawn(async move {
            let worker_id = format!("worker-{worker}");
            let mut idle_polls = 0;
            while idle_polls < 3 {
                let leased = client
                    .lease(LeaseJobsRequest {
                        worker_id: worker_id.clone(),
                        max_jobs: 25,
                        wait: Some(duration(Duration::from_millis(500))),
                        lease_duration: Some(duration(Duration::from_secs(60))),
                        ..Default::default()
                    })
                    .await?;
                if leased.is_empty() {
                    idle_polls += 1;
                    continue;
                }
                idle_polls = 0;
                if let Ok(mut leases) = leases.lock() {
                    for job in &leased {
                        *leases.entry(job.id().to_owned()).or_default() += 1;
                    }
                }
                let reports = leased
                    .iter()
                    .map(|job| CompleteJobRequest {
                        lease: Some(job.lease()),
                        result: None,
                    })
                    .collect();
                let results = client
                    .worker()
                    .complete_jobs(CompleteJobsRequest { jobs: reports })
                    .await?
                    .into_inner();
                if let Ok(mut completions) = completions.lock() {
                    for result in results.results.iter().filter(|result| result.accepted()) {
                        *completions.entry(result.job_id.clone()).or_default() += 1;
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    bounded(
        Duration::from_secs(180),
        "eight workers draining 5000 jobs",
        async {
            while let Some(worker) = workers.join_next().await {
                worker??;
            }
            anyhow::Ok(())
        },
    )
    .await??;

    let leases = leases
        .lock()
        .map_err(|_| anyhow::anyhow!("lease ledger poisoned"))?
        .clone();
    let completions = completions
        .lock()
        .map_err(|_| anyhow::anyhow!("completion ledger poisoned"))?
        .clone();
    let twice: Vec<_> = leases.iter().filter(|(_, count)| **count > 1).collect();
    ensure!(
        twice.is_empty(),
        "{} jobs were leased more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    ensure!(
        leases.len() == JOBS,
        "{} of {JOBS} jobs were leased",
        leases.len()
    );
    ensure!(
        completions.len() == JOBS && completions.values().all(|count| *count == 1),
        "completions: {}",
        completions.len()
    );
    ensure!(
        a.client.count_in_state(JobState::Succeeded).await? == JOBS as i64,
        "not every job succeeded"
    );
    a.stop().await?;
    b.stop().await
}

fn spec_with_payload(job_type: &str, n: usize) -> pb::JobSpec {
    pb::JobSpec {
        payload: Some(jobq_tests::json(serde_json::json!({ "n": n }))),
        ..spec(job_type)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_on_one_replica_wakes_a_lease_waiting_on_the_other() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let database = postgres(scratch.path()).await?;
    let (a, b) = (
        Replica::start(&database).await?,
        Replica::start(&database).await?,
    );
    let mut watch = b
        .client
        .queue()
        .watch_jobs(WatchJobsRequest::default())
        .await?
        .into_inner();

    let waiting = b.client.clone();
    let poll = tokio::spawn(async move {
        let leased = waiting
            .lease(LeaseJobsRequest {
                worker_id: "waiting-on-b".into(),
                max_jobs: 1,
                wait: Some(duration(Duration::from_secs(20))),
                ..Default::default()
            })
            .await;
        (leased, Instant::now())
    });
    // Give the long poll time to start waiting, so the wake-up is what returns it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = a.client.enqueue(spec("wake")).await?;
    let enqueued_at = Instant::now();
    let (leased, returned_at) =
        bounded(Duration::from_secs(25), "the long poll on B", poll).await??;
    let leased = leased?;
    ensure!(
        leased.len() == 1 && leased[0].id() == job.id,
        "B's poll did not get the job enqueued on A"
    );
    let latency = returned_at.saturating_duration_since(enqueued_at);
    // Functional bound: far below the 20 s wait, so the notification woke it.
    ensure!(
        latency < Duration::from_secs(10),
        "B's poll returned only after {latency:?}"
    );
    println!("cross-replica wake-up latency: {latency:?}");

    // B's watcher sees the job A created.
    let event = bounded(Duration::from_secs(10), "B's watch stream", watch.message()).await??;
    let event = event
        .and_then(|message| message.event)
        .context("watch stream ended")?;
    ensure!(
        event.job.map(|job| job.id) == Some(job.id.clone()),
        "B's watcher saw another job first"
    );
    a.stop().await?;
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_pushed_through_one_replica_are_followed_through_the_other() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let database = postgres(scratch.path()).await?;
    let (a, b) = (
        Replica::start(&database).await?,
        Replica::start(&database).await?,
    );
    let job = a.client.enqueue(spec("logged")).await?;
    let mut follow = b
        .client
        .queue()
        .stream_job_logs(StreamJobLogsRequest {
            job_id: job.id.clone(),
            follow: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let leased = a.client.lease_one("pusher").await?;
    let entries = (0..50)
        .map(|n| pb::LogEntry {
            stream: pb::LogStream::Stdout.into(),
            message: format!("line {n}"),
            ..Default::default()
        })
        .collect();
    let push = PushJobLogsRequest {
        lease: Some(leased.lease()),
        entries,
        first_sequence: 1,
    };
    a.client
        .worker()
        .push_job_logs(tokio_stream::iter(vec![push]))
        .await?;
    a.client.complete(&leased).await?;

    let lines = bounded(Duration::from_secs(20), "following through B", async {
        let mut lines = Vec::new();
        while let Some(message) = follow.message().await? {
            lines.extend(message.lines);
        }
        anyhow::Ok(lines)
    })
    .await??;
    let positions: Vec<u64> = lines.iter().map(|line| line.position).collect();
    // The enqueue, the lease, the 50 pushed lines, the success: in order, none missing.
    let mut expected = vec![1, (1 << 32) | 1];
    expected.extend((2..=51).map(|line| (1 << 32) | line));
    expected.push((1 << 32) | u64::from(u32::MAX));
    ensure!(positions == expected, "gaps or duplicates: {positions:?}");
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|line| line.stream == pb::LogStream::Stdout as i32)
        .map(|line| line.message.as_str())
        .collect();
    ensure!(
        stdout.len() == 50 && stdout[0] == "line 0" && stdout[49] == "line 49",
        "stdout lines: {stdout:?}"
    );
    a.stop().await?;
    b.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_on_two_replicas_fires_each_tick_once() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let database = postgres(scratch.path()).await?;
    let (a, b) = (
        Replica::start(&database).await?,
        Replica::start(&database).await?,
    );
    a.client
        .queue()
        .put_schedule(pb::PutScheduleRequest {
            schedule: Some(pb::Schedule {
                name: "every-second".into(),
                cron: "* * * * * *".into(),
                job: Some(spec("tick")),
                ..Default::default()
            }),
        })
        .await?;
    let list = ListJobsRequest {
        types: vec!["tick".into()],
        page_size: 100,
        ..Default::default()
    };
    eventually(Duration::from_secs(20), "five ticks", || async {
        let ticks = a.client.list(list.clone()).await?.jobs.len();
        Ok((ticks >= 5).then_some(()))
    })
    .await?;
    b.client
        .queue()
        .set_schedule_paused(pb::SetSchedulePausedRequest {
            name: "every-second".into(),
            paused: true,
        })
        .await?;
    let jobs = a.client.list(list).await?.jobs;
    let mut fired: Vec<i64> = jobs
        .iter()
        .map(|job| {
            job.created_at
                .as_ref()
                .map_or(0, |ts| ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000))
        })
        .collect();
    fired.sort_unstable();
    // Ticks are a second apart; a tick fired twice would show two jobs close together.
    for pair in fired.windows(2) {
        ensure!(
            pair[1] - pair[0] >= 500,
            "two jobs {} ms apart: a tick fired twice",
            pair[1] - pair[0]
        );
    }
    ensure!(
        jobs.iter().all(|job| job.schedule_name == "every-second"),
        "jobs not marked with their schedule"
    );
    a.stop().await?;
    b.stop().await
}

/// Every replica sends the same events: one whose watcher is on replica B
/// sees what happens through replica A as it happened there (a CREATED event
/// carries the job as it was created, even if it has run since), deletions
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_sees_the_other_replicas_events_as_they_happened() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let database = postgres(dir.path()).await?;
    let (a, b) = (
        Replica::start(&database).await?,
        Replica::start(&database).await?,
    );
    let mut watch = b
        .client
        .queue()
        .watch_jobs(WatchJobsRequest {
            queues: vec!["cross".into()],
            ..WatchJobsRequest::default()
        })
        .await?
        .into_inner();
    // B announces its watcher; A sends events from when it has heard it.
    // (A loop, not `eventually`: each probe reads the one watch stream.)
    let announced_by = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let probe = a
            .client
            .enqueue(pb::JobSpec {
                queue: "cross".into(),
                ..spec("probe")
            })
            .await?;
        let seen = bounded(Duration::from_secs(2), "a probe event", async {
            loop {
                let Some(message) = watch.message().await? else {
                    anyhow::bail!("the watch ended");
                };
                if message
                    .event
                    .as_ref()
                    .and_then(|event| event.job.as_ref())
                    .is_some_and(|job| job.id == probe.id)
                {
                    return anyhow::Ok(());
                }
            }
        })
        .await;
        if seen.is_ok() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < announced_by,
            "replica A sent no event to B's watcher within 20 s: {seen:?}"
        );
    }

    let job = a
        .client
        .enqueue(pb::JobSpec {
            queue: "cross".into(),
            ..spec("cross")
        })
        .await?;
    let leased = a
        .client
        .lease(LeaseJobsRequest {
            worker_id: "cross-worker".into(),
            queues: vec!["cross".into()],
            types: vec!["cross".into()],
            max_jobs: 1,
            ..LeaseJobsRequest::default()
        })
        .await?
        .pop()
        .context("the job to lease")?;
    a.client.complete(&leased).await?;
    a.client
        .queue()
        .delete_job(pb::DeleteJobRequest {
            job_id: job.id.clone(),
        })
        .await?;

    let mut seen = Vec::new();
    bounded(
        Duration::from_secs(20),
        "the job's events on replica B",
        async {
            while seen.len() < 4 {
                let Some(message) = watch.message().await? else {
                    anyhow::bail!("the watch ended");
                };
                ensure!(!message.lagged, "the watcher lagged");
                let Some(event) = message.event else { continue };
                let Some(event_job) = &event.job else {
                    continue;
                };
                if event_job.id == job.id {
                    seen.push((event.r#type(), event_job.state()));
                }
            }
            anyhow::Ok(())
        },
    )
    .await??;
    use pb::JobEventType::{Created, Deleted, StateChanged};
    ensure!(
        seen == vec![
            (Created, JobState::Queued),
            (StateChanged, JobState::Running),
            (StateChanged, JobState::Succeeded),
            (Deleted, JobState::Succeeded),
        ],
        "events on B: {seen:?}"
    );
    a.stop().await?;
    b.stop().await
}

/// Concurrent enqueues of one unique_key: every caller gets the one job (one
/// of them created it, the others are told it already existed), none an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_of_one_unique_key_through_two_replicas_get_one_job() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let database = postgres(dir.path()).await?;
    let (a, b) = (
        Replica::start(&database).await?,
        Replica::start(&database).await?,
    );
    for round in 0..5 {
        let mut calls = JoinSet::new();
        for n in 0..16 {
            let client = if n % 2 == 0 {
                a.client.clone()
            } else {
                b.client.clone()
            };
            let key = format!("race-{round}");
            calls.spawn(async move {
                client
                    .try_enqueue(pb::JobSpec {
                        unique_key: key,
                        ..spec("race")
                    })
                    .await
            });
        }
        let mut ids = std::collections::HashSet::new();
        let mut created = 0;
        while let Some(call) = calls.join_next().await {
            let answer =
                call?.map_err(|status| anyhow::anyhow!("an enqueue failed: {status:?}"))?;
            ids.insert(answer.job.context("no job")?.id);
            created += usize::from(!answer.already_exists);
        }
        ensure!(
            ids.len() == 1 && created == 1,
            "round {round}: {} jobs, {created} created",
            ids.len()
        );
    }
    a.stop().await?;
    b.stop().await
}

/// An EnqueueJobs whose jobs share a unique_key, while another writer's
/// insert of that key is not yet committed: the batch's insert waits for
/// that writer, finds the key taken, and every entry of the batch is
/// answered with that writer's job (none with the batch's own job that was
/// never stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sharing_a_unique_key_with_a_concurrent_insert_gets_the_stored_job() -> Result<()> {
    use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};
    let dir = tempfile::tempdir()?;
    let database = postgres(dir.path()).await?;
    let replica = Replica::start(&database).await?;
    let template = replica.client.enqueue(spec("template")).await?;

    // The other writer: a copy of the template row under the contested key,
    // inserted in a transaction left open.
    let db = Database::connect(database.url().context("PostgreSQL has a URL")?).await?;
    let other = db.begin().await?;
    other
        .execute_unprepared(&format!(
            "CREATE TEMP TABLE contested ON COMMIT DROP AS SELECT * FROM jobs WHERE id = '{}';
             UPDATE contested SET id = 'other-writer-job', job_type = 'race', unique_key = 'contested', request_key = NULL;
             INSERT INTO jobs SELECT * FROM contested;",
            template.id
        ))
        .await?;

    let client = replica.client.clone();
    let batch = tokio::spawn(async move {
        client
            .try_enqueue_batch(vec![
                pb::JobSpec {
                    unique_key: "contested".into(),
                    ..spec("race")
                },
                pb::JobSpec {
                    unique_key: "contested".into(),
                    ..spec("race")
                },
            ])
            .await
    });
    // Commit only once the batch's insert waits on the open one.
    eventually(
        Duration::from_secs(60),
        "the batch's insert waiting",
        || async {
            let waiting = db
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT COUNT(*) AS waiting FROM pg_locks WHERE NOT granted",
                ))
                .await?
                .and_then(|row| row.try_get::<i64>("", "waiting").ok())
                .unwrap_or(0);
            Ok((waiting > 0).then_some(()))
        },
    )
    .await?;
    other.commit().await?;

    let results = bounded(Duration::from_secs(60), "the batch", batch).await???;
    ensure!(results.len() == 2, "{} results for 2 jobs", results.len());
    for (index, result) in results.iter().enumerate() {
        let id = result.job.as_ref().map(|job| job.id.as_str());
        ensure!(
            id == Some("other-writer-job") && result.already_exists,
            "entry {index}: job {id:?}, already_exists {}",
            result.already_exists
        );
    }
    replica.stop().await
}
