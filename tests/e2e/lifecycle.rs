//! The happy path and the order of work: enqueue → queued → running →
//! succeeded, defaults, scheduled jobs, priorities and unique keys.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{AttemptOutcome, JobSpec, JobState, RetryPolicy};
use jobq_tests::{
    LeasedJobExt, TestServer, attempt_outcomes, duration, millis, millis_opt, settings, spec,
    timestamp_after, timestamp_from_millis, unix_millis_now,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_goes_from_queued_to_running_to_succeeded() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let payload = json!({"url": "https://example.com/watch?v=1", "format": "mp4"});
    let job = jobq
        .enqueue(JobSpec {
            payload: Some(jobq_tests::json(payload.clone())),
            tags: vec!["media".into()],
            ..spec("channel_download")
        })
        .await?;
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.r#type, "channel_download");
    assert!(
        job.payload.is_none(),
        "EnqueueJob answers the job without its payload"
    );
    assert_eq!(
        jobq_tests::json_of(&jobq.get(&job.id).await?.payload),
        payload,
        "payload must round-trip as the same JSON document"
    );
    assert_eq!(job.tags, vec!["media".to_owned()]);
    let id = uuid::Uuid::parse_str(&job.id)
        .with_context(|| format!("job id {:?} is not a UUID", job.id))?;
    assert_eq!(id.get_version_num(), 7, "job ids are UUIDv7");
    millis_opt(&job.created_at, "created_at")?;

    let leased = jobq.lease_one("worker-a").await?;
    assert_eq!(leased.id(), job.id);
    assert_eq!(
        leased.job().attempt,
        1,
        "the lease counts the first attempt"
    );
    assert_eq!(leased.job().worker_id, "worker-a");
    let lease_expires_at = millis_opt(&leased.lease_expires_at, "LeasedJob.lease_expires_at")?;
    ensure!(
        lease_expires_at > unix_millis_now(),
        "a fresh lease must expire in the future"
    );
    millis_opt(&leased.attempt_deadline, "LeasedJob.attempt_deadline")?;

    let running = jobq.get(&job.id).await?;
    assert_eq!(running.state(), JobState::Running);
    assert_eq!(running.worker_id, "worker-a");
    millis_opt(&running.started_at, "started_at of a running job")?;
    millis_opt(
        &running.lease_expires_at,
        "lease_expires_at of a running job",
    )?;
    assert_eq!(
        running.attempts.len(),
        1,
        "the running attempt is in the history"
    );
    assert_eq!(
        running.attempts[0].outcome(),
        AttemptOutcome::Unspecified,
        "attempt still running"
    );
    assert!(
        jobq.lease_now("worker-b", 1).await?.is_empty(),
        "a running job must not be leased again"
    );

    let result = json!({"files": 3});
    let done = jobq.complete_with(&leased, result.clone()).await?;
    assert_eq!(done.state(), JobState::Succeeded);

    let stored = jobq.get(&job.id).await?;
    assert_eq!(stored.state(), JobState::Succeeded);
    assert_eq!(jobq_tests::json_of(&stored.result), result);
    millis_opt(&stored.finished_at, "finished_at of a succeeded job")?;
    assert!(
        stored.worker_id.is_empty(),
        "worker_id is empty unless running, got {:?}",
        stored.worker_id
    );
    assert!(
        stored.lease_expires_at.is_none(),
        "lease_expires_at is unset unless running"
    );
    assert_eq!(attempt_outcomes(&stored), vec![AttemptOutcome::Succeeded]);
    let attempt = &stored.attempts[0];
    assert_eq!(
        (attempt.number, attempt.worker_id.as_str()),
        (1, "worker-a")
    );
    millis_opt(&attempt.finished_at, "finished_at of the attempt")?;
    assert!(
        jobq.lease_now("worker-b", 1).await?.is_empty(),
        "a succeeded job must not be leased"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_fills_in_server_defaults() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq
        .enqueue(JobSpec {
            payload: None,
            ..spec("noop")
        })
        .await?;
    assert_eq!(job.queue, "default", "empty queue means \"default\"");
    assert_eq!(
        jobq_tests::json_of(&jobq.get(&job.id).await?.payload),
        json!({}),
        "an unset payload means {{}}"
    );
    assert_eq!(
        job.max_attempts,
        settings::DEFAULT_MAX_ATTEMPTS,
        "max_attempts 0 takes the server default"
    );
    assert_eq!(job.priority, 0);
    let policy = job.retry_policy.context("stored job has no retry policy")?;
    assert_eq!(
        policy.base_backoff,
        Some(duration(settings::BACKOFF_BASE)),
        "server default base backoff"
    );
    assert_eq!(
        policy.max_backoff,
        Some(duration(settings::BACKOFF_MAX)),
        "server default max backoff"
    );
    assert!(job.timeout.is_some(), "the effective timeout is filled in");

    let custom = jobq
        .enqueue(JobSpec {
            queue: "media".into(),
            max_attempts: 3,
            timeout: Some(duration(Duration::from_secs(90))),
            retry_policy: Some(RetryPolicy {
                base_backoff: Some(duration(Duration::from_millis(300))),
                max_backoff: None,
            }),
            ..spec("noop")
        })
        .await?;
    assert_eq!(custom.queue, "media");
    assert_eq!(custom.max_attempts, 3);
    assert_eq!(custom.timeout, Some(duration(Duration::from_secs(90))));
    let policy = custom
        .retry_policy
        .context("stored job has no retry policy")?;
    assert_eq!(
        policy.base_backoff,
        Some(duration(Duration::from_millis(300))),
        "per-job base backoff"
    );
    assert_eq!(
        policy.max_backoff,
        Some(duration(settings::BACKOFF_MAX)),
        "unset max takes the server default"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_job_is_scheduled_and_leasable_only_after_run_at() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let delay = Duration::from_secs(2);

    let job = jobq
        .enqueue(JobSpec {
            delay: Some(duration(delay)),
            ..spec("later")
        })
        .await?;
    assert_eq!(job.state(), JobState::Scheduled);
    let run_at = millis_opt(&job.run_at, "run_at")?;
    let created_at = millis_opt(&job.created_at, "created_at")?;
    let wait = run_at - created_at;
    ensure!(
        (2000..=2500).contains(&wait),
        "run_at must be created_at + delay (2000 ms), is {wait} ms after"
    );

    // Asked before run_at: nothing. (Should this call itself come after run_at
    // on a very slow machine, the job may be leased, but never earlier.)
    for early in jobq.lease_now("worker-a", 1).await? {
        let started = millis_opt(&jobq.get(early.id()).await?.started_at, "started_at")?;
        ensure!(
            started >= run_at,
            "job leased at {started}, before its run_at {run_at}"
        );
    }

    let leased = jobq
        .lease_one_eventually("worker-a", Duration::from_secs(10))
        .await?;
    assert_eq!(leased.id(), job.id);
    let stored = jobq.get(&job.id).await?;
    let started = millis_opt(&stored.started_at, "started_at")?;
    ensure!(
        started >= run_at,
        "job leased at {started}, before its run_at {run_at}"
    );
    jobq.complete(&leased).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_future_run_at_is_scheduled_then_queued() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let run_at = timestamp_after(Duration::from_millis(1500));
    let job = jobq
        .enqueue(JobSpec {
            run_at: Some(run_at),
            ..spec("later")
        })
        .await?;
    assert_eq!(job.state(), JobState::Scheduled);
    assert_eq!(
        job.run_at.as_ref().map(millis),
        Some(millis(&run_at)),
        "run_at is kept as given"
    );
    ensure!(
        jobq.lease_now("worker-a", 1).await?.is_empty(),
        "a job was leased 1.5 s before its run_at"
    );

    // scheduled --(run_at reached)--> queued, visible without anyone leasing.
    let queued = jobq
        .wait_for_state(&job.id, JobState::Queued, Duration::from_secs(10))
        .await?;
    ensure!(
        unix_millis_now() >= millis(&run_at),
        "job became queued before its run_at"
    );
    assert_eq!(queued.attempt, 0);
    let leased = jobq.lease_one("worker-a").await?;
    assert_eq!(leased.id(), job.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_is_leased_first() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let low = jobq
        .enqueue(JobSpec {
            priority: -5,
            ..spec("p")
        })
        .await?;
    let high = jobq
        .enqueue(JobSpec {
            priority: 10,
            ..spec("p")
        })
        .await?;
    let mid = jobq
        .enqueue(JobSpec {
            priority: 0,
            ..spec("p")
        })
        .await?;

    // One job per call: each call takes the best one left.
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(jobq.lease_one("worker-a").await?.id().to_owned());
    }
    assert_eq!(
        order,
        vec![high.id.clone(), mid.id.clone(), low.id.clone()],
        "order: high, mid, low"
    );

    // One call for all: the answer is in the same order.
    let low = jobq
        .enqueue(JobSpec {
            priority: -5,
            ..spec("p")
        })
        .await?;
    let high = jobq
        .enqueue(JobSpec {
            priority: 10,
            ..spec("p")
        })
        .await?;
    let mid = jobq
        .enqueue(JobSpec {
            priority: 0,
            ..spec("p")
        })
        .await?;
    let batch: Vec<_> = jobq
        .lease_now("worker-a", 3)
        .await?
        .iter()
        .map(|j| j.id().to_owned())
        .collect();
    assert_eq!(
        batch,
        vec![high.id, mid.id, low.id],
        "one LeaseJobs answer, ordered high, mid, low"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_priority_is_leased_by_run_at_then_id() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    // run_at in the past (already due), whole seconds so equal values stay equal.
    let now_s = unix_millis_now() / 1000 * 1000;
    let later = timestamp_from_millis(now_s - 1000);
    let earlier = timestamp_from_millis(now_s - 3000);
    let x = jobq
        .enqueue(JobSpec {
            run_at: Some(later),
            ..spec("p")
        })
        .await?;
    let y = jobq
        .enqueue(JobSpec {
            run_at: Some(earlier),
            ..spec("p")
        })
        .await?;
    let z = jobq
        .enqueue(JobSpec {
            run_at: Some(earlier),
            ..spec("p")
        })
        .await?;
    for job in [&x, &y, &z] {
        assert_eq!(
            job.state(),
            JobState::Queued,
            "a job whose run_at has passed is queued at once"
        );
    }
    ensure!(y.id < z.id, "ids sort by creation: {} then {}", y.id, z.id);

    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(jobq.lease_one("worker-a").await?.id().to_owned());
    }
    assert_eq!(
        order,
        vec![y.id, z.id, x.id],
        "earlier run_at first; same run_at by id"
    );
    Ok(())
}

/// A batch whose new jobs are stored at once unless a key is in the way:
/// one held key among new ones gets the stored job, the rest are stored
/// once each (none lost, none twice, when the batch has to look first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_held_unique_key_stores_the_rest_once_each() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let keyed = |key: &str| JobSpec {
        unique_key: key.into(),
        ..spec("channel_download")
    };
    let held = jobq.enqueue(keyed("channel:held")).await?;

    let results = jobq
        .try_enqueue_batch(vec![
            keyed("channel:a"),
            keyed("channel:held"),
            spec("metadata"),
            keyed("channel:b"),
        ])
        .await?;
    let exists: Vec<bool> = results.iter().map(|result| result.already_exists).collect();
    assert_eq!(exists, vec![false, true, false, false], "{results:?}");
    let ids = jobq_tests::job_ids(&results);
    assert_eq!(ids[1], held.id, "the held key answers with the stored job");
    for (index, id) in ids.iter().enumerate() {
        let stored = jobq.get(id).await?;
        assert_eq!(
            stored.state(),
            JobState::Queued,
            "result {index}: {stored:?}"
        );
    }
    assert_eq!(
        jobq.count_in_state(JobState::Queued).await?,
        4,
        "the held job and three new ones, each stored once"
    );

    // The same batch again: every key is held now, the plain job is new.
    let again = jobq
        .try_enqueue_batch(vec![
            keyed("channel:a"),
            keyed("channel:b"),
            spec("metadata"),
        ])
        .await?;
    let exists: Vec<bool> = again.iter().map(|result| result.already_exists).collect();
    assert_eq!(exists, vec![true, true, false], "{again:?}");
    assert_eq!(jobq.count_in_state(JobState::Queued).await?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_key_returns_the_existing_job_until_it_is_terminal() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let unique = || JobSpec {
        unique_key: "channel:UC123".into(),
        ..spec("channel_download")
    };

    let first = jobq.try_enqueue(unique()).await.context("first enqueue")?;
    assert!(!first.already_exists, "the first enqueue creates the job");
    let first = first.job.context("no job")?;

    let second = jobq.try_enqueue(unique()).await.context("second enqueue")?;
    assert!(
        second.already_exists,
        "the second enqueue must say the job already exists"
    );
    assert_eq!(
        second.job.context("no job")?.id,
        first.id,
        "the existing job is returned"
    );

    // Still held while running.
    let leased = jobq.lease_one("worker-a").await?;
    let third = jobq.try_enqueue(unique()).await.context("third enqueue")?;
    assert!(third.already_exists);
    assert_eq!(third.job.context("no job")?.id, first.id);

    // Terminal: the key is free again.
    jobq.complete(&leased).await?;
    let fourth = jobq
        .try_enqueue(unique())
        .await
        .context("enqueue after the first finished")?;
    assert!(
        !fourth.already_exists,
        "a terminal job no longer holds its unique key"
    );
    assert_ne!(fourth.job.context("no job")?.id, first.id);
    Ok(())
}
