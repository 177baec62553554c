//! Failed attempts: exponential backoff, retry_after, dead-lettering and
//! RetryJob back out of the dead-letter queue.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{AttemptOutcome, FailJobRequest, JobSpec, JobState, RetryPolicy};
use jobq_tests::{
    JobqClient, LeasedJobExt, TestServer, attempt_outcomes, duration, millis_opt, settings, spec,
};
use tonic::Code;

/// Leeway on top of the promised maximum (the server keeps milliseconds).
const SLACK_MS: i64 = 50;

/// How long the job waits after the failure just reported: run_at minus the
/// end of the last attempt, both by the server's clock.
async fn backoff_after_last_failure(jobq: &JobqClient, id: &str) -> Result<i64> {
    let job = jobq.get(id).await?;
    let failed = job.attempts.last().context("no attempt in the history")?;
    let finished = millis_opt(&failed.finished_at, "finished_at of the failed attempt")?;
    Ok(millis_opt(&job.run_at, "run_at")? - finished)
}

/// Checks one backoff against min(max, base * 2^(attempt-1)) plus up to 20% jitter.
fn check_backoff(attempt: i32, observed_ms: i64, base_ms: i64, max_ms: i64) -> Result<()> {
    let nominal = (base_ms << (attempt - 1)).min(max_ms);
    let upper = nominal + nominal / 5 + SLACK_MS;
    ensure!(
        (nominal..=upper).contains(&observed_ms),
        "backoff after attempt {attempt} is {observed_ms} ms; expected {nominal}..={upper} ms"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_back_off_exponentially_then_dead_letter_then_requeue() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let base = settings::BACKOFF_BASE.as_millis() as i64;
    let max = settings::BACKOFF_MAX.as_millis() as i64;

    let job = jobq
        .enqueue(JobSpec {
            max_attempts: 4,
            ..spec("flaky")
        })
        .await?;
    let mut previous_backoff = 0;
    for attempt in 1..=3 {
        let leased = jobq
            .lease_one_eventually("worker-a", Duration::from_secs(10))
            .await?;
        assert_eq!(leased.id(), job.id);
        assert_eq!(leased.job().attempt, attempt);

        let error = format!("boom {attempt}");
        let failed = jobq.fail(&leased, &error, true).await?;
        assert_eq!(
            failed.state(),
            JobState::Retrying,
            "attempt {attempt} of 4 failed: retrying"
        );
        assert_eq!(jobq.get(&job.id).await?.last_error, error);

        let backoff = backoff_after_last_failure(&jobq, &job.id).await?;
        check_backoff(attempt, backoff, base, max)?;
        ensure!(
            backoff > previous_backoff,
            "backoff {backoff} ms is not longer than the previous {previous_backoff} ms"
        );
        previous_backoff = backoff;
    }

    let leased = jobq
        .lease_one_eventually("worker-a", Duration::from_secs(10))
        .await?;
    assert_eq!(leased.job().attempt, 4);
    let dead = jobq.fail(&leased, "boom 4", true).await?;
    assert_eq!(
        dead.state(),
        JobState::Dead,
        "the last allowed attempt failed: dead-lettered"
    );

    let stored = jobq.get(&job.id).await?;
    assert_eq!(stored.attempt, 4);
    assert_eq!(attempt_outcomes(&stored), vec![AttemptOutcome::Failed; 4]);
    let errors: Vec<_> = stored.attempts.iter().map(|a| a.error.as_str()).collect();
    assert_eq!(errors, vec!["boom 1", "boom 2", "boom 3", "boom 4"]);
    millis_opt(&stored.finished_at, "finished_at of a dead job")?;
    assert!(
        jobq.lease_now("worker-a", 1).await?.is_empty(),
        "a dead job must not be leased"
    );

    // Out of the dead-letter queue: attempts reset, and this time it works.
    let requeued = jobq.retry(&job.id).await?;
    assert_eq!(requeued.state(), JobState::Queued);
    assert_eq!(requeued.attempt, 0, "RetryJob resets the attempt count");
    let leased = jobq.lease_one("worker-a").await?;
    assert_eq!((leased.id(), leased.job().attempt), (job.id.as_str(), 1));
    let done = jobq.complete(&leased).await?;
    assert_eq!(done.state(), JobState::Succeeded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_job_retry_policy_is_used_and_capped_at_max_backoff() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let (base, max) = (100, 250);

    let policy = RetryPolicy {
        base_backoff: Some(duration(Duration::from_millis(base as u64))),
        max_backoff: Some(duration(Duration::from_millis(max as u64))),
    };
    let job = jobq
        .enqueue(JobSpec {
            max_attempts: 5,
            retry_policy: Some(policy),
            ..spec("flaky")
        })
        .await?;
    for attempt in 1..=4 {
        let leased = jobq
            .lease_one_eventually("worker-a", Duration::from_secs(10))
            .await?;
        assert_eq!(leased.job().attempt, attempt);
        jobq.fail(&leased, "boom", true).await?;
        let backoff = backoff_after_last_failure(&jobq, &job.id).await?;
        // 100, 200, then capped: 250, 250.
        check_backoff(attempt, backoff, base, max)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_replaces_the_backoff() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let retry_after_ms = 1500;

    let job = jobq
        .enqueue(JobSpec {
            max_attempts: 3,
            ..spec("rate_limited")
        })
        .await?;
    let leased = jobq.lease_one("worker-a").await?;
    let request = FailJobRequest {
        lease: Some(leased.lease()),
        error: "429 Too Many Requests".into(),
        retryable: true,
        retry_after: Some(duration(Duration::from_millis(retry_after_ms as u64))),
    };
    let failed = jobq
        .try_fail(request)
        .await
        .context("FailJob with retry_after")?;
    assert_eq!(failed.state(), JobState::Retrying);

    let wait = backoff_after_last_failure(&jobq, &job.id).await?;
    let upper = retry_after_ms + retry_after_ms / 5 + SLACK_MS;
    ensure!(
        (retry_after_ms..=upper).contains(&wait),
        "run_at is {wait} ms after the failure; retry_after asked for {retry_after_ms} ms (default backoff would be {} ms)",
        settings::BACKOFF_BASE.as_millis()
    );
    let run_at = millis_opt(&jobq.get(&job.id).await?.run_at, "run_at")?;

    let leased = jobq
        .lease_one_eventually("worker-a", Duration::from_secs(10))
        .await?;
    assert_eq!((leased.id(), leased.job().attempt), (job.id.as_str(), 2));
    let stored = jobq.get(&job.id).await?;
    let started = millis_opt(&stored.attempts[1].started_at, "started_at of attempt 2")?;
    ensure!(
        started >= run_at,
        "attempt 2 started at {started}, before retry_after ran out at {run_at}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_job_becomes_queued_when_its_backoff_is_over() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq
        .enqueue(JobSpec {
            max_attempts: 3,
            ..spec("flaky")
        })
        .await?;
    let leased = jobq.lease_one("worker-a").await?;
    let failed = jobq.fail(&leased, "boom", true).await?;
    assert_eq!(failed.state(), JobState::Retrying);
    // retrying --(backoff over)--> queued, seen through GetJob, nobody leasing.
    let queued = jobq
        .wait_for_state(&job.id, JobState::Queued, Duration::from_secs(10))
        .await?;
    assert_eq!(queued.attempt, 1, "the failed attempt still counts");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_failure_dead_letters_at_once() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq
        .enqueue(JobSpec {
            max_attempts: 5,
            ..spec("parse")
        })
        .await?;
    let leased = jobq.lease_one("worker-a").await?;
    let dead = jobq
        .fail(&leased, "payload names no channel", false)
        .await?;
    assert_eq!(
        dead.state(),
        JobState::Dead,
        "non-retryable: dead with 4 attempts left"
    );

    let stored = jobq.get(&job.id).await?;
    assert_eq!(stored.state(), JobState::Dead);
    assert_eq!(stored.attempt, 1);
    assert_eq!(stored.last_error, "payload names no channel");
    assert_eq!(attempt_outcomes(&stored), vec![AttemptOutcome::Failed]);
    millis_opt(&stored.finished_at, "finished_at")?;
    assert!(
        jobq.lease_now("worker-a", 1).await?.is_empty(),
        "a dead job must not be leased"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_job_requeues_succeeded_and_refuses_unfinished_jobs() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq.enqueue(spec("report")).await?;
    jobq_tests::expect_status(jobq.try_retry(&job.id).await, Code::FailedPrecondition, "")
        .context("RetryJob of a queued job")?;
    let leased = jobq.lease_one("worker-a").await?;
    jobq_tests::expect_status(jobq.try_retry(&job.id).await, Code::FailedPrecondition, "")
        .context("RetryJob of a running job")?;
    jobq.complete(&leased).await?;

    let again = jobq.retry(&job.id).await?;
    assert_eq!(
        (again.state(), again.attempt),
        (JobState::Queued, 0),
        "succeeded → queued, attempts reset"
    );
    let leased = jobq.lease_one("worker-a").await?;
    assert_eq!((leased.id(), leased.job().attempt), (job.id.as_str(), 1));
    Ok(())
}
