//! Queue controls and concurrency keys from outside: pause, concurrency and
//! rate limits per queue, on one server and on two replicas of one
//! PostgreSQL database, concurrency keys, and cron ticks missed while the
//! server was down. What ran when is read from the server: running counts
//! sampled while workers poll (each sample is one consistent count), and
//! the attempts' own start times.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{self, JobSpec, JobState, LeaseJobsRequest, UpdateQueueRequest};
use jobq_tests::{
    Cluster, JobqClient, LeasedJobExt, bounded, duration, eventually, lease_request, millis,
    millis_opt, spec, unix_millis_now,
};
use tokio::task::JoinSet;

/// Generous bound for anything a loaded machine should finish well within.
const PATIENCE: Duration = Duration::from_secs(60);

async fn update_queue(client: &JobqClient, request: UpdateQueueRequest) -> Result<pb::Queue> {
    client
        .queue()
        .update_queue(request)
        .await
        .context("UpdateQueue")?
        .into_inner()
        .queue
        .context("UpdateQueue answered without the queue")
}

fn in_queue(queue: &str) -> JobSpec {
    JobSpec {
        queue: queue.to_owned(),
        ..spec("limited")
    }
}

fn keyed(queue: &str, key: &str, limit: i32) -> JobSpec {
    JobSpec {
        concurrency_key: key.to_owned(),
        concurrency_limit: limit,
        ..in_queue(queue)
    }
}

/// A LeaseJobs request for `queue` that waits up to `wait` for a job.
fn waiting_lease(worker_id: &str, queue: &str, max_jobs: i32, wait: Duration) -> LeaseJobsRequest {
    LeaseJobsRequest {
        queues: vec![queue.to_owned()],
        wait: Some(duration(wait)),
        ..lease_request(worker_id, max_jobs)
    }
}

async fn running_in(client: &JobqClient, queue: &str) -> Result<i64> {
    let stats = client
        .queue()
        .get_queue_stats(pb::GetQueueStatsRequest {
            queues: vec![queue.to_owned()],
        })
        .await?
        .into_inner();
    Ok(stats
        .queues
        .iter()
        .flat_map(|queue| &queue.counts)
        .filter(|count| count.state() == JobState::Running)
        .map(|count| count.count)
        .sum())
}

/// Workers spread over the cluster's servers, each leasing one job at a
/// time from `queue`, holding it for `hold` and completing it, until `jobs`
/// jobs are done; returns the ids done.
async fn work_through(
    cluster: &Cluster,
    workers: usize,
    queue: &str,
    hold: Duration,
    jobs: usize,
) -> Result<Vec<String>> {
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let client = cluster.client(worker % cluster.len());
        let done = done.clone();
        let queue = queue.to_owned();
        tasks.spawn(async move {
            let worker_id = format!("worker-{worker}");
            let mut ids = Vec::new();
            while done.load(Ordering::SeqCst) < jobs {
                let request = waiting_lease(&worker_id, &queue, 1, Duration::from_millis(500));
                for leased in client.lease(request).await? {
                    tokio::time::sleep(hold).await;
                    client.complete(&leased).await?;
                    ids.push(leased.id().to_owned());
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ids.extend(joined??);
    }
    Ok(ids)
}

/// Samples `probe` until `stop` is set; returns the highest value seen.
fn sample_max<F, Fut>(stop: Arc<AtomicBool>, mut probe: F) -> tokio::task::JoinHandle<Result<i64>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<i64>> + Send,
{
    tokio::spawn(async move {
        let mut highest = 0;
        while !stop.load(Ordering::SeqCst) {
            highest = highest.max(probe().await?);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(highest)
    })
}

async fn concurrency_limit_holds(replicas: usize) -> Result<()> {
    const JOBS: usize = 30;
    let cluster = Cluster::start(replicas).await?;
    let client = cluster.client(0);
    update_queue(
        &client,
        UpdateQueueRequest {
            name: "two".into(),
            concurrency_limit: Some(2),
            ..UpdateQueueRequest::default()
        },
    )
    .await?;
    client
        .enqueue_batch((0..JOBS).map(|_| in_queue("two")).collect())
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let client = client.clone();
        sample_max(stop.clone(), move || {
            let client = client.clone();
            async move { running_in(&client, "two").await }
        })
    };
    let done = bounded(
        PATIENCE,
        "10 workers working through 30 jobs two at a time",
        work_through(&cluster, 10, "two", Duration::from_millis(40), JOBS),
    )
    .await??;
    stop.store(true, Ordering::SeqCst);
    let highest = sampler.await??;
    println!("{replicas} replica(s): at most {highest} of the queue's jobs ran at once (limit 2)");
    ensure!(done.len() == JOBS, "{} jobs done, not {JOBS}", done.len());
    ensure!(
        highest <= 2,
        "{highest} jobs ran at once under a limit of 2"
    );
    ensure!(
        highest == 2,
        "the limit was never used in full (at most {highest})"
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limited_to_two_never_runs_more_than_two_while_ten_workers_poll() -> Result<()> {
    concurrency_limit_holds(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_two_replicas() -> Result<()> {
    concurrency_limit_holds(2).await
}

async fn rate_limit_holds(replicas: usize) -> Result<()> {
    const RATE: f64 = 5.0;
    let cluster = Cluster::start(replicas).await?;
    let client = cluster.client(0);
    update_queue(
        &client,
        UpdateQueueRequest {
            name: "paced".into(),
            rate_limit_per_second: Some(RATE),
            ..UpdateQueueRequest::default()
        },
    )
    .await?;
    let ids: Vec<String> = client
        .enqueue_batch((0..100).map(|_| in_queue("paced")).collect())
        .await?
        .into_iter()
        .map(|job| job.id)
        .collect();
    // Four workers take whatever the limit lets through for 12 s; the
    // bucket (burst 5) lets a worker that woke late catch up.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for worker in 0..4 {
        let client = cluster.client(worker % cluster.len());
        let stop = stop.clone();
        workers.spawn(async move {
            let worker_id = format!("paced-{worker}");
            while !stop.load(Ordering::SeqCst) {
                let request = waiting_lease(&worker_id, "paced", 10, Duration::from_millis(500));
                for leased in client.lease(request).await? {
                    client.complete(&leased).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    let mut starts = Vec::new();
    for id in &ids {
        let job = client.get(id).await?;
        if let Some(attempt) = job.attempts.first() {
            starts.push(millis_opt(&attempt.started_at, "attempt.started_at")?);
        }
    }
    let first = starts.iter().copied().min().context("no job started")?;
    // After the first second (the burst) the flow is the rate itself.
    let window = (first + 1_000)..(first + 11_000);
    let in_window = starts.iter().filter(|at| window.contains(at)).count();
    let in_first_second = starts.iter().filter(|at| **at < first + 1_000).count();
    println!(
        "{replicas} replica(s), 5 jobs/s: {in_first_second} started in the first second (burst 5 \
         + 5/s), {in_window} in the 10 s after it (expected 50 ± 5), {} in all",
        starts.len()
    );
    ensure!(
        (45..=55).contains(&in_window),
        "{in_window} jobs started in 10 s under a limit of 5/s"
    );
    ensure!(
        in_first_second <= 10,
        "{in_first_second} jobs started in the first second (burst 5 plus 5/s)"
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_five_per_second_starts_fifty_jobs_in_ten_seconds() -> Result<()> {
    rate_limit_holds(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_two_replicas() -> Result<()> {
    rate_limit_holds(2).await
}

async fn waiting_call_gets_the_refilled_token(replicas: usize) -> Result<()> {
    let cluster = Cluster::start(replicas).await?;
    let first_client = cluster.client(0);
    let waiting_client = cluster.client(replicas - 1);
    update_queue(
        &first_client,
        UpdateQueueRequest {
            name: "slow".into(),
            rate_limit_per_second: Some(1.0),
            rate_burst: Some(1.0),
            ..UpdateQueueRequest::default()
        },
    )
    .await?;
    first_client
        .enqueue_batch(vec![in_queue("slow"), in_queue("slow")])
        .await?;
    let first = first_client
        .lease(waiting_lease("first", "slow", 1, Duration::ZERO))
        .await?;
    ensure!(
        first.len() == 1,
        "the bucket's one token gave {} jobs",
        first.len()
    );
    let asked = Instant::now();
    let second = bounded(
        PATIENCE,
        "a LeaseJobs waiting on the rate limit",
        waiting_client.lease(waiting_lease("second", "slow", 1, Duration::from_secs(10))),
    )
    .await??;
    let waited = asked.elapsed();
    let second = second
        .first()
        .context("the waiting call got no job in 10 s")?;
    let started = |job: &pb::Job| {
        job.attempts
            .first()
            .and_then(|attempt| attempt.started_at.as_ref())
            .map(millis)
            .context("no attempt start")
    };
    let first_start = started(&first_client.get(first[0].id()).await?)?;
    let second_start = started(&first_client.get(second.id()).await?)?;
    let after_refill = second_start - (first_start + 1_000);
    println!(
        "{replicas} replica(s): the waiting call got its job {after_refill} ms after the token \
         refilled (waited {} ms in all)",
        waited.as_millis()
    );
    ensure!(
        after_refill >= 0,
        "started {after_refill} ms before the token"
    );
    ensure!(
        after_refill < 1_000,
        "started {after_refill} ms after the token refilled"
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_a_rate_limit_gets_the_job_as_the_token_refills() -> Result<()> {
    waiting_call_gets_the_refilled_token(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_another_replicas_rate_limit_gets_the_job_as_the_token_refills()
-> Result<()> {
    waiting_call_gets_the_refilled_token(2).await
}

#[tokio::test]
async fn one_lease_over_a_limited_and_an_open_queue_keeps_the_limited_one_to_its_allowance()
-> Result<()> {
    let cluster = Cluster::start(1).await?;
    let client = cluster.client(0);
    update_queue(
        &client,
        UpdateQueueRequest {
            name: "slow".into(),
            rate_limit_per_second: Some(1.0),
            rate_burst: Some(1.0),
            ..UpdateQueueRequest::default()
        },
    )
    .await?;
    let mut specs: Vec<JobSpec> = (0..5).map(|_| in_queue("slow")).collect();
    specs.extend((0..5).map(|_| in_queue("open")));
    client.enqueue_batch(specs).await?;
    let leased = client
        .lease(LeaseJobsRequest {
            queues: vec!["slow".into(), "open".into()],
            ..lease_request("both", 10)
        })
        .await?;
    let from = |queue: &str| leased.iter().filter(|job| job.job().queue == queue).count();
    ensure!(
        (from("slow"), from("open")) == (1, 5),
        "took {} from the limited queue (allowance 1) and {} from the open one (5 ready)",
        from("slow"),
        from("open")
    );
    cluster.shutdown().await
}

async fn pause_holds_until_resume_wakes_the_call(replicas: usize) -> Result<()> {
    let cluster = Cluster::start(replicas).await?;
    let admin = cluster.client(0);
    let worker = cluster.client(replicas - 1);
    let paused = update_queue(
        &admin,
        UpdateQueueRequest {
            name: "held".into(),
            paused: Some(true),
            ..UpdateQueueRequest::default()
        },
    )
    .await?;
    ensure!(paused.paused, "UpdateQueue did not say paused");
    admin.enqueue(in_queue("held")).await?;
    let leased = worker
        .lease(waiting_lease("w", "held", 5, Duration::ZERO))
        .await?;
    ensure!(
        leased.is_empty(),
        "a paused queue handed out {} jobs",
        leased.len()
    );
    let waiting = {
        let worker = worker.clone();
        tokio::spawn(async move {
            worker
                .lease(waiting_lease("w", "held", 5, Duration::from_secs(30)))
                .await
        })
    };
    // Let the call get to its wait (a paused queue answers nothing at once).
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !waiting.is_finished(),
        "the call on a paused queue returned"
    );
    let resumed_at = Instant::now();
    update_queue(
        &admin,
        UpdateQueueRequest {
            name: "held".into(),
            paused: Some(false),
            ..UpdateQueueRequest::default()
        },
    )
    .await?;
    let leased = bounded(PATIENCE, "the waiting call after the resume", waiting).await???;
    let woke_after = resumed_at.elapsed();
    println!(
        "{replicas} replica(s): the waiting call got the job {} ms after the resume",
        woke_after.as_millis()
    );
    ensure!(
        leased.len() == 1,
        "the resumed queue gave {} jobs",
        leased.len()
    );
    ensure!(
        woke_after < Duration::from_secs(15),
        "the resume did not wake the call (it returned after {woke_after:?} of its 30 s)"
    );
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_leases_nothing_until_a_resume_wakes_the_waiting_call() -> Result<()> {
    pause_holds_until_resume_wakes_the_call(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_through_one_replica_wakes_a_call_waiting_on_the_other() -> Result<()> {
    pause_holds_until_resume_wakes_the_call(2).await
}

#[tokio::test]
async fn a_job_waiting_on_its_key_holds_back_no_other_and_shows_the_count() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let client = cluster.client(0);
    let jobs = client
        .enqueue_batch(vec![
            keyed("media", "channel:UCxyz", 0),
            keyed("media", "channel:UCxyz", 0),
            in_queue("media"),
            in_queue("media"),
        ])
        .await?;
    let waiting_id = jobs[1].id.clone();
    ensure!(
        jobs[0].concurrency_limit == 1,
        "a key without a limit gets limit 1, not {}",
        jobs[0].concurrency_limit
    );
    let leased = client
        .lease(LeaseJobsRequest {
            queues: vec!["media".into()],
            ..lease_request("w", 10)
        })
        .await?;
    let keyed_leased: Vec<_> = leased
        .iter()
        .filter(|job| !job.job().concurrency_key.is_empty())
        .collect();
    ensure!(
        (keyed_leased.len(), leased.len()) == (1, 3),
        "leased {} jobs of the key and {} in all; expected 1 and 3",
        keyed_leased.len(),
        leased.len()
    );
    let waiting = client.get(&waiting_id).await?;
    ensure!(
        waiting.state() == JobState::Queued && waiting.attempt == 0,
        "the job over its key's limit is {:?} after {} attempts",
        waiting.state(),
        waiting.attempt
    );
    ensure!(
        (
            waiting.concurrency_key.as_str(),
            waiting.concurrency_limit,
            waiting.concurrency_key_running
        ) == ("channel:UCxyz", 1, 1),
        "GetJob shows key {:?} limit {} running {}",
        waiting.concurrency_key,
        waiting.concurrency_limit,
        waiting.concurrency_key_running
    );
    client.complete(keyed_leased[0]).await?;
    let next = eventually(PATIENCE, "the next job of the key", || async {
        let leased = client
            .lease(LeaseJobsRequest {
                queues: vec!["media".into()],
                ..lease_request("w", 10)
            })
            .await?;
        Ok((!leased.is_empty()).then_some(leased))
    })
    .await?;
    ensure!(
        next.len() == 1 && next[0].id() == waiting_id,
        "after the key's job ended, leased {:?}",
        next.iter().map(LeasedJobExt::id).collect::<Vec<_>>()
    );
    cluster.shutdown().await
}

async fn keys_run_one_at_a_time(replicas: usize) -> Result<()> {
    const PER_KEY: usize = 6;
    const OPEN: usize = 12;
    let cluster = Cluster::start(replicas).await?;
    let client = cluster.client(0);
    let mut specs = Vec::new();
    for _ in 0..PER_KEY {
        specs.push(keyed("media", "channel:a", 1));
        specs.push(keyed("media", "channel:b", 1));
    }
    specs.extend((0..OPEN).map(|_| in_queue("media")));
    let jobs = client.enqueue_batch(specs).await?;
    let total = jobs.len();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler_of = |id: String| {
        let client = client.clone();
        sample_max(stop.clone(), move || {
            let client = client.clone();
            let id = id.clone();
            async move { Ok(i64::from(client.get(&id).await?.concurrency_key_running)) }
        })
    };
    let key_a = sampler_of(jobs[0].id.clone());
    let key_b = sampler_of(jobs[1].id.clone());
    let all = {
        let client = client.clone();
        sample_max(stop.clone(), move || {
            let client = client.clone();
            async move { running_in(&client, "media").await }
        })
    };
    let done = bounded(
        PATIENCE,
        "8 workers working through keyed and open jobs",
        work_through(&cluster, 8, "media", Duration::from_millis(60), total),
    )
    .await??;
    stop.store(true, Ordering::SeqCst);
    let (most_a, most_b, most_all) = (key_a.await??, key_b.await??, all.await??);
    println!(
        "{replicas} replica(s): at most {most_a} of channel:a and {most_b} of channel:b ran at \
         once (limit 1 each), {most_all} jobs of the queue at once"
    );
    ensure!(done.len() == total, "{} jobs done, not {total}", done.len());
    ensure!(
        most_a <= 1 && most_b <= 1,
        "a key limited to 1 ran {most_a}/{most_b} at once"
    );
    ensure!(
        most_all >= 3,
        "other jobs did not proceed beside the keys (at most {most_all})"
    );
    for job in &jobs {
        let job = client.get(&job.id).await?;
        ensure!(
            job.state() == JobState::Succeeded && job.attempts.len() == 1,
            "job {} ({:?}) is {:?} after {} attempts",
            job.id,
            job.concurrency_key,
            job.state(),
            job.attempts.len()
        );
    }
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_limited_to_one_runs_its_jobs_one_at_a_time() -> Result<()> {
    keys_run_one_at_a_time(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_holds_across_two_replicas() -> Result<()> {
    keys_run_one_at_a_time(2).await
}

#[tokio::test]
async fn bad_limits_are_refused_naming_the_field() -> Result<()> {
    let cluster = Cluster::start(1).await?;
    let client = cluster.client(0);
    for (request, field) in [
        (
            UpdateQueueRequest {
                name: "q".into(),
                rate_limit_per_second: Some(-1.0),
                ..UpdateQueueRequest::default()
            },
            "rate_limit_per_second",
        ),
        (
            UpdateQueueRequest {
                name: "q".into(),
                rate_burst: Some(f64::NAN),
                ..UpdateQueueRequest::default()
            },
            "rate_burst",
        ),
    ] {
        let status = client
            .queue()
            .update_queue(request)
            .await
            .expect_err("a bad limit is refused");
        ensure!(
            status.code() == tonic::Code::InvalidArgument && status.message().contains(field),
            "{field}: {status:?}"
        );
    }
    for (spec, field) in [
        (
            JobSpec {
                concurrency_limit: 2,
                ..in_queue("q")
            },
            "concurrency_limit",
        ),
        (keyed("q", "k", 10_001), "concurrency_limit"),
        (keyed("q", "k\u{0}", 1), "concurrency_key"),
    ] {
        let status = client.try_enqueue(spec).await.expect_err("refused");
        ensure!(
            status.code() == tonic::Code::InvalidArgument && status.message().contains(field),
            "{field}: {status:?}"
        );
    }
    cluster.shutdown().await
}

/// The second-of-minute of a time in ms.
fn second_of_minute(ms: i64) -> i64 {
    (ms / 1000).rem_euclid(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_follow_their_missed_tick_policy_after_a_server_stop() -> Result<()> {
    let mut cluster = Cluster::start(1).await?;
    let client = cluster.client(0);
    // Two ticks, 3 s and 5 s from now (next whole seconds), that come while
    // the server is stopped; the next after them is a minute later.
    let first_tick = (unix_millis_now() / 1000 + 4) * 1000;
    let second_tick = first_tick + 2_000;
    let cron = format!(
        "{},{} * * * * *",
        second_of_minute(first_tick),
        second_of_minute(second_tick)
    );
    for (name, policy) in [
        ("once", pb::MissedTicks::RunOnce),
        ("skip", pb::MissedTicks::Skip),
    ] {
        client
            .queue()
            .put_schedule(pb::PutScheduleRequest {
                schedule: Some(pb::Schedule {
                    name: name.into(),
                    cron: cron.clone(),
                    job: Some(in_queue("cron")),
                    missed_ticks: policy.into(),
                    ..pb::Schedule::default()
                }),
            })
            .await
            .with_context(|| format!("PutSchedule {name}"))?;
    }
    cluster.stop(0).await?;
    // Both ticks pass, the last more than 2 s before the server starts again.
    let quiet_until = second_tick + 2_500;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(quiet_until - unix_millis_now()).unwrap_or(0),
    ))
    .await;
    cluster.restart(0).await?;
    let client = cluster.client(0);
    let schedules = eventually(PATIENCE, "both schedules past the missed ticks", || async {
        let schedules = client
            .queue()
            .list_schedules(pb::ListSchedulesRequest {})
            .await?
            .into_inner()
            .schedules;
        let past = schedules.iter().all(|schedule| {
            schedule
                .next_run_at
                .as_ref()
                .is_some_and(|next| millis(next) > second_tick)
        });
        Ok(past.then_some(schedules))
    })
    .await?;
    let jobs = client
        .list_all(pb::ListJobsRequest {
            queues: vec!["cron".into()],
            ..pb::ListJobsRequest::default()
        })
        .await?;
    let of = |name: &str| jobs.iter().filter(|job| job.schedule_name == name).count();
    println!(
        "after two missed ticks: run-once enqueued {}, skip enqueued {}",
        of("once"),
        of("skip")
    );
    ensure!(
        of("once") == 1,
        "run-once enqueued {} jobs for two missed ticks",
        of("once")
    );
    ensure!(
        of("skip") == 0,
        "skip enqueued {} jobs for missed ticks",
        of("skip")
    );
    let skip = schedules
        .iter()
        .find(|schedule| schedule.name == "skip")
        .context("the skip schedule")?;
    ensure!(
        skip.missed_ticks() == pb::MissedTicks::Skip && skip.last_job_id.is_empty(),
        "skip schedule: {skip:?}"
    );
    cluster.shutdown().await
}
