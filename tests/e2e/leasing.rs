//! The worker protocol around leases: expiry and fencing, heartbeats and
//! progress, attempt timeouts, release, long polls, and what a lease takes.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{
    AttemptOutcome, JobSpec, JobState, LeaseJobsRequest, LeaseProgress, StopReason,
};
use jobq_tests::{
    LeasedJobExt, ReportResultExt, TestServer, attempt_outcomes, bounded, duration, eventually,
    expect_status, lease_request, millis, millis_opt, spec,
};
use tokio::time::Instant;
use tonic::Code;

/// A lease request with a 1 s lease, the shortest the API allows.
fn short_lease(worker_id: &str) -> LeaseJobsRequest {
    LeaseJobsRequest {
        lease_duration: Some(duration(Duration::from_secs(1))),
        ..lease_request(worker_id, 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_goes_to_another_worker_and_the_old_token_is_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq.enqueue(spec("slow")).await?;
    let first = jobq
        .lease(short_lease("worker-1"))
        .await?
        .pop()
        .context("worker-1 leased nothing")?;
    let started = millis_opt(
        &jobq.get(&job.id).await?.attempts[0].started_at,
        "started_at",
    )?;
    let expires = millis_opt(&first.lease_expires_at, "lease_expires_at")?;
    ensure!(
        (950..=1100).contains(&(expires - started)),
        "a 1 s lease expires {} ms after it started",
        expires - started
    );

    // worker-1 goes silent; the reaper takes the job back and worker-2 gets it.
    let second = jobq
        .lease_one_eventually("worker-2", Duration::from_secs(15))
        .await?;
    assert_eq!(second.id(), job.id, "the same job is leased again");
    assert_ne!(
        second.lease_token, first.lease_token,
        "a new lease gets a new token"
    );
    assert_eq!(
        second.job().attempt,
        2,
        "the expired lease counted as an attempt"
    );

    expect_status(
        jobq.try_complete(first.lease(), None).await,
        Code::FailedPrecondition,
        "",
    )
    .context("CompleteJob with the expired lease's token")?;
    let beat = jobq.heartbeat_one("worker-1", &first).await?;
    assert!(
        beat.stop,
        "a heartbeat with the lost lease must say stop: {beat:?}"
    );
    assert_eq!(beat.reason(), StopReason::LeaseLost);

    let done = jobq
        .complete(&second)
        .await
        .context("CompleteJob with the current token")?;
    assert_eq!(done.state(), JobState::Succeeded);
    let stored = jobq.get(&job.id).await?;
    assert_eq!(
        attempt_outcomes(&stored),
        vec![AttemptOutcome::LeaseExpired, AttemptOutcome::Succeeded]
    );
    let workers: Vec<_> = stored
        .attempts
        .iter()
        .map(|a| a.worker_id.as_str())
        .collect();
    assert_eq!(workers, vec!["worker-1", "worker-2"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_lease_alive_and_record_progress() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq.enqueue(spec("long")).await?;
    let leased = jobq
        .lease(short_lease("worker-1"))
        .await?
        .pop()
        .context("worker-1 leased nothing")?;

    // A rival polls all along; it must never get the job.
    let (stop_rival, mut rival_stopped) = tokio::sync::watch::channel(false);
    let rival_client = server.connect().await?;
    let rival = tokio::spawn(async move {
        let mut stolen = Vec::new();
        while !*rival_stopped.borrow_and_update() {
            stolen.extend(
                rival_client
                    .lease_now("worker-2", 1)
                    .await?
                    .into_iter()
                    .map(|j| j.id().to_owned()),
            );
            tokio::select! {
                _ = rival_stopped.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        anyhow::Ok(stolen)
    });

    // Heartbeat every 300 ms for 2.5 s: more than twice the 1 s lease.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut ticks = tokio::time::interval(Duration::from_millis(300));
    let mut previous_expiry = millis_opt(&leased.lease_expires_at, "lease_expires_at")?;
    let mut beats = 0;
    while Instant::now() < until {
        ticks.tick().await;
        beats += 1;
        let progress = LeaseProgress {
            lease: Some(leased.lease()),
            progress_percent: Some(beats * 10),
            progress_message: Some(format!("step {beats}")),
        };
        let result = jobq.heartbeat("worker-1", vec![progress]).await?.remove(0);
        ensure!(
            !result.stop,
            "heartbeat {beats} told the worker to stop: {result:?}"
        );
        let expiry = millis_opt(&result.lease_expires_at, "HeartbeatResult.lease_expires_at")?;
        ensure!(
            expiry >= previous_expiry,
            "heartbeat {beats} moved the lease deadline back"
        );
        previous_expiry = expiry;
    }
    stop_rival.send(true).ok();
    let stolen = bounded(Duration::from_secs(10), "the rival poller", rival).await???;
    ensure!(
        stolen.is_empty(),
        "worker-2 leased {stolen:?} while worker-1 kept heartbeating"
    );

    let running = jobq.get(&job.id).await?;
    assert_eq!(running.state(), JobState::Running);
    assert_eq!(running.worker_id, "worker-1");
    assert_eq!(
        running.progress_percent,
        beats * 10,
        "progress of the last heartbeat"
    );
    assert_eq!(running.progress_message, format!("step {beats}"));

    // -1 and an empty message leave the progress as it was.
    jobq.heartbeat_one("worker-1", &leased).await?;
    let unchanged = jobq.get(&job.id).await?;
    assert_eq!(
        (
            unchanged.progress_percent,
            unchanged.progress_message.as_str()
        ),
        (beats * 10, running.progress_message.as_str())
    );

    jobq.complete(&leased)
        .await
        .context("the kept-alive lease is still valid")?;
    let stored = jobq.get(&job.id).await?;
    assert_eq!(
        attempt_outcomes(&stored),
        vec![AttemptOutcome::Succeeded],
        "one attempt, never expired"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_past_its_timeout_is_ended_as_timed_out() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq
        .enqueue(JobSpec {
            timeout: Some(duration(Duration::from_secs(1))),
            max_attempts: 3,
            ..spec("hangs")
        })
        .await?;
    // A long lease, kept alive: only the attempt timeout can end this attempt.
    let leased = jobq.lease_one("worker-1").await?;
    let started = millis_opt(
        &jobq.get(&job.id).await?.attempts[0].started_at,
        "started_at",
    )?;
    let deadline = millis_opt(&leased.attempt_deadline, "attempt_deadline")?;
    ensure!(
        (950..=1100).contains(&(deadline - started)),
        "attempt_deadline is {} ms after the start, timeout 1 s",
        deadline - started
    );

    let beat = eventually(
        Duration::from_secs(10),
        "a heartbeat telling the worker to stop",
        || async {
            let beat = jobq.heartbeat_one("worker-1", &leased).await?;
            Ok(beat.stop.then_some(beat))
        },
    )
    .await?;
    ensure!(
        matches!(beat.reason(), StopReason::TimedOut | StopReason::LeaseLost),
        "stop reason {:?}, expected TIMED_OUT or LEASE_LOST",
        beat.reason()
    );

    let stored = eventually(
        Duration::from_secs(10),
        "the attempt to be closed as timed out",
        || async {
            let job = jobq.get(&job.id).await?;
            Ok(
                (job.attempts.first().map(|a| a.outcome()) != Some(AttemptOutcome::Unspecified))
                    .then_some(job),
            )
        },
    )
    .await?;
    assert_eq!(attempt_outcomes(&stored)[0], AttemptOutcome::TimedOut);
    ensure!(
        matches!(stored.state(), JobState::Retrying | JobState::Queued),
        "a timed-out attempt with attempts left is retried, job is {:?}",
        stored.state()
    );
    expect_status(
        jobq.try_complete(leased.lease(), None).await,
        Code::FailedPrecondition,
        "",
    )
    .context("CompleteJob after the attempt timed out")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_jobs_are_queued_again_without_using_an_attempt() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let a = jobq
        .enqueue(JobSpec {
            max_attempts: 2,
            ..spec("r")
        })
        .await?;
    let b = jobq
        .enqueue(JobSpec {
            max_attempts: 2,
            ..spec("r")
        })
        .await?;
    let held = jobq.lease_now("worker-1", 2).await?;
    assert_eq!(held.len(), 2);

    let results = jobq
        .release("worker-1", held.iter().map(|j| j.lease()).collect())
        .await?;
    for result in &results {
        ensure!(
            result.accepted() && result.code() == 0,
            "release refused: {result:?}"
        );
    }
    for id in [&a.id, &b.id] {
        let job = jobq.get(id).await?;
        assert_eq!(
            job.state(),
            JobState::Queued,
            "a released job is queued at once"
        );
        assert_eq!(job.attempt, 0, "the released attempt does not count");
        assert!(job.worker_id.is_empty());
    }

    let again = jobq.lease_now("worker-2", 2).await?;
    let ids: HashSet<_> = again.iter().map(|j| j.id().to_owned()).collect();
    assert_eq!(
        ids,
        HashSet::from([a.id.clone(), b.id.clone()]),
        "another worker leases both at once"
    );
    for leased in &again {
        assert_eq!(leased.job().attempt, 1, "still the first counted attempt");
    }
    // With max_attempts 2, one real failure leaves one attempt: retrying, not dead.
    let failed = jobq.fail(&again[0], "boom", true).await?;
    assert_eq!(
        failed.state(),
        JobState::Retrying,
        "the release must not have used up an attempt"
    );

    // The old tokens are stale now.
    let stale = jobq.release("worker-1", vec![held[1].lease()]).await?;
    ensure!(
        !stale[0].accepted() && stale[0].code() == Code::FailedPrecondition as i32,
        "stale release: {:?}",
        stale[0]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_lease_returns_as_soon_as_a_job_is_enqueued() -> Result<()> {
    let server = TestServer::start().await?;
    let producer = server.connect().await?;
    let worker = server.connect().await?;
    let wait = Duration::from_secs(10);

    let started = Instant::now();
    let poll = tokio::spawn(async move {
        worker
            .lease(LeaseJobsRequest {
                wait: Some(duration(wait)),
                ..lease_request("waiter", 1)
            })
            .await
    });
    // Give the poll time to reach the server and park; this sets the scene, it
    // does not wait for a result.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !poll.is_finished(),
        "LeaseJobs with a 10 s wait returned although no job existed"
    );

    let job = producer.enqueue(spec("wake-up")).await?;
    let leased = bounded(Duration::from_secs(15), "the waiting LeaseJobs", poll).await???;
    let waited = started.elapsed();
    assert_eq!(
        leased.len(),
        1,
        "the waiting poll must return with the new job"
    );
    assert_eq!(leased[0].id(), job.id);
    ensure!(
        waited < wait,
        "LeaseJobs returned only after its whole {wait:?} wait ({waited:?}), not when the job came"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_lease_returns_empty_when_its_wait_ends() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let wait = Duration::from_secs(1);

    let started = Instant::now();
    let leased = jobq
        .lease(LeaseJobsRequest {
            wait: Some(duration(wait)),
            ..lease_request("waiter", 1)
        })
        .await?;
    assert!(leased.is_empty());
    ensure!(
        started.elapsed() >= Duration::from_millis(900),
        "LeaseJobs with a 1 s wait returned after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_takes_at_most_max_jobs_and_only_matching_queues_and_types() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let mut ids = HashSet::new();
    for _ in 0..5 {
        ids.insert(jobq.enqueue(spec("txt")).await?.id);
    }
    let image = jobq
        .enqueue(JobSpec {
            queue: "media".into(),
            ..spec("img")
        })
        .await?;
    let video = jobq
        .enqueue(JobSpec {
            queue: "media".into(),
            ..spec("video")
        })
        .await?;

    let first = jobq.lease_now("worker-1", 3).await?;
    let second = jobq.lease_now("worker-1", 3).await?;
    assert_eq!(
        (first.len(), second.len()),
        (3, 2),
        "max_jobs 3 over 5 default-queue jobs"
    );
    let leased: HashSet<_> = first
        .iter()
        .chain(&second)
        .map(|j| j.id().to_owned())
        .collect();
    assert_eq!(leased, ids, "no queue given means the default queue only");
    assert!(jobq.lease_now("worker-1", 3).await?.is_empty());

    let only_images = LeaseJobsRequest {
        queues: vec!["media".into()],
        types: vec!["img".into()],
        ..lease_request("worker-2", 10)
    };
    let images = jobq.lease(only_images).await?;
    let image_ids: Vec<_> = images.iter().map(|j| j.id().to_owned()).collect();
    assert_eq!(image_ids, vec![image.id], "types filter: only img");
    let any_media = LeaseJobsRequest {
        queues: vec!["media".into()],
        ..lease_request("worker-2", 10)
    };
    let rest: Vec<_> = jobq
        .lease(any_media)
        .await?
        .iter()
        .map(|j| j.id().to_owned())
        .collect();
    assert_eq!(rest, vec![video.id], "no types given means any type");

    let leased_at = first
        .iter()
        .filter_map(|j| j.lease_expires_at.as_ref())
        .map(millis)
        .count();
    assert_eq!(leased_at, 3, "every leased job carries its lease deadline");
    Ok(())
}
