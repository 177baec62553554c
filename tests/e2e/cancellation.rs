//! CancelJob (queued, running, finished) and DeleteJob.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{AttemptOutcome, FailJobRequest, JobState, StopReason};
use jobq_tests::{LeasedJobExt, TestServer, attempt_outcomes, expect_status, millis_opt, spec};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_queued_job_is_immediate() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq.enqueue(spec("download")).await?;
    let cancelled = jobq.cancel(&job.id, "not needed any more").await?;
    assert_eq!(
        cancelled.state(),
        JobState::Cancelled,
        "a queued job is cancelled at once"
    );

    let stored = jobq.get(&job.id).await?;
    assert_eq!(stored.state(), JobState::Cancelled);
    assert_eq!(
        stored.last_error, "not needed any more",
        "the reason is kept as last_error"
    );
    millis_opt(&stored.finished_at, "finished_at of a cancelled job")?;
    assert!(
        jobq.lease_now("worker-a", 1).await?.is_empty(),
        "a cancelled job must not be leased"
    );

    let scheduled = jobq
        .enqueue(jobq_tests::pb::JobSpec {
            delay: Some(jobq_tests::duration(Duration::from_secs(60))),
            ..spec("later")
        })
        .await?;
    assert_eq!(
        jobq.cancel(&scheduled.id, "").await?.state(),
        JobState::Cancelled,
        "a scheduled job too"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_running_job_reaches_the_worker_through_heartbeat() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq.enqueue(spec("transcode")).await?;
    let leased = jobq.lease_one("worker-a").await?;
    let beat = jobq.heartbeat_one("worker-a", &leased).await?;
    assert!(!beat.stop, "nothing asked the worker to stop yet: {beat:?}");

    let flagged = jobq.cancel(&job.id, "user pressed stop").await?;
    assert_eq!(
        flagged.state(),
        JobState::Running,
        "a running job stays running until its worker stops"
    );
    assert!(flagged.cancel_requested, "cancel_requested must be set");
    assert!(jobq.get(&job.id).await?.cancel_requested);

    let beat = jobq.heartbeat_one("worker-a", &leased).await?;
    assert_eq!(beat.job_id, job.id);
    assert!(
        beat.stop,
        "the heartbeat after a cancel must say stop: {beat:?}"
    );
    assert_eq!(beat.reason(), StopReason::Cancelled);

    let request = FailJobRequest {
        lease: Some(leased.lease()),
        error: "stopped on request".into(),
        retryable: true,
        retry_after: None,
    };
    let cancelled = jobq
        .try_fail(request)
        .await
        .context("FailJob after the cancel")?;
    assert_eq!(
        cancelled.state(),
        JobState::Cancelled,
        "FailJob of a cancel-requested job ends it cancelled"
    );

    let stored = jobq.get(&job.id).await?;
    assert_eq!(stored.state(), JobState::Cancelled);
    assert_eq!(attempt_outcomes(&stored), vec![AttemptOutcome::Cancelled]);
    assert!(
        jobq.lease_now("worker-b", 1).await?.is_empty(),
        "a cancelled job must not be retried"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_finished_job_is_refused_and_retry_brings_a_cancelled_job_back() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let done = jobq.enqueue(spec("a")).await?;
    let leased = jobq.lease_one("worker-a").await?;
    jobq.complete(&leased).await?;
    expect_status(
        jobq.try_cancel(&done.id, "too late").await,
        Code::FailedPrecondition,
        "",
    )
    .context("CancelJob of a succeeded job")?;
    assert_eq!(
        jobq.get(&done.id).await?.state(),
        JobState::Succeeded,
        "the refused cancel changed nothing"
    );

    let cancelled = jobq.enqueue(spec("b")).await?;
    jobq.cancel(&cancelled.id, "first").await?;
    expect_status(
        jobq.try_cancel(&cancelled.id, "second").await,
        Code::FailedPrecondition,
        "",
    )
    .context("CancelJob of a cancelled job")?;

    let requeued = jobq.retry(&cancelled.id).await?;
    assert_eq!(
        (requeued.state(), requeued.attempt),
        (JobState::Queued, 0),
        "cancelled → queued by RetryJob"
    );
    let leased = jobq.lease_one("worker-a").await?;
    assert_eq!(leased.id(), cancelled.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_a_running_job_and_removes_others() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let queued = jobq.enqueue(spec("a")).await?;
    jobq.try_delete(&queued.id)
        .await
        .context("DeleteJob of a queued job")?;
    expect_status(jobq.try_get(&queued.id).await, Code::NotFound, "")
        .context("GetJob after DeleteJob")?;
    expect_status(jobq.try_delete(&queued.id).await, Code::NotFound, "")
        .context("DeleteJob twice")?;

    let running = jobq.enqueue(spec("b")).await?;
    let leased = jobq.lease_one("worker-a").await?;
    expect_status(
        jobq.try_delete(&running.id).await,
        Code::FailedPrecondition,
        "",
    )
    .context("DeleteJob of a running job")?;
    assert_eq!(
        jobq.get(&running.id).await?.state(),
        JobState::Running,
        "the refused delete changed nothing"
    );

    // Cancel first, as the error says; the worker stops, then the delete works.
    jobq.cancel(&running.id, "clean-up").await?;
    let beat = jobq.heartbeat_one("worker-a", &leased).await?;
    ensure!(beat.stop, "the worker must be told to stop: {beat:?}");
    jobq.fail(&leased, "stopped", true).await?;
    jobq.try_delete(&running.id)
        .await
        .context("DeleteJob of the cancelled job")?;
    expect_status(jobq.try_get(&running.id).await, Code::NotFound, "")
        .context("GetJob after DeleteJob")?;
    Ok(())
}
