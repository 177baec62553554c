//! Batched reports: each entry of CompleteJobs / FailJobs succeeds or fails on
//! its own, and a stale lease token is refused with FAILED_PRECONDITION.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{
    CompleteJobRequest, CompleteJobsRequest, FailJobRequest, FailJobsRequest, JobSpec, JobState,
    LeaseJobsRequest, LeasedJob, ReportResult,
};
use jobq_tests::{
    JobqClient, LeasedJobExt, ReportResultExt, TestServer, duration, expect_status, lease_request,
    spec,
};
use tonic::Code;

/// Leases three jobs, the middle one with a 1 s lease that is left to run
/// out, so that another worker leases it again and its first token goes
/// stale. Returns the three original leases, in that order, and the middle
/// job's current lease.
async fn three_leases_one_stale(
    jobq: &JobqClient,
    job_type: &str,
) -> Result<(Vec<LeasedJob>, LeasedJob)> {
    for _ in 0..3 {
        jobq.enqueue(JobSpec {
            max_attempts: 5,
            ..spec(job_type)
        })
        .await?;
    }
    let short = LeaseJobsRequest {
        lease_duration: Some(duration(Duration::from_secs(1))),
        ..lease_request("worker-1", 1)
    };
    let stale = jobq
        .lease(short)
        .await?
        .pop()
        .context("worker-1 leased nothing")?;
    let fresh = jobq.lease_now("worker-1", 2).await?;
    ensure!(
        fresh.len() == 2,
        "leased {} of the 2 other jobs",
        fresh.len()
    );
    let current = jobq
        .lease_one_eventually("worker-2", Duration::from_secs(15))
        .await?;
    ensure!(
        current.id() == stale.id(),
        "worker-2 leased {} instead of the expired job",
        current.id()
    );
    ensure!(
        current.lease_token != stale.lease_token,
        "the new lease kept the old token"
    );
    let [first, second] =
        <[LeasedJob; 2]>::try_from(fresh).map_err(|_| anyhow::anyhow!("two jobs"))?;
    Ok((vec![first, stale, second], current))
}

fn check_accepted(result: &ReportResult, job_id: &str) -> Result<()> {
    ensure!(
        result.job_id == job_id,
        "result for {:?}, expected {job_id:?}",
        result.job_id
    );
    ensure!(
        result.accepted() && result.code() == 0,
        "report of {job_id} refused: {result:?}"
    );
    Ok(())
}

fn check_refused_as_stale(result: &ReportResult, job_id: &str) -> Result<()> {
    ensure!(
        result.job_id == job_id,
        "result for {:?}, expected {job_id:?}",
        result.job_id
    );
    ensure!(
        !result.accepted(),
        "the stale report of {job_id} was accepted: {result:?}"
    );
    ensure!(
        result.code() == Code::FailedPrecondition as i32,
        "stale report code {}, expected 9: {result:?}",
        result.code()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_jobs_refuses_only_the_stale_entry() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let (held, current) = three_leases_one_stale(&jobq, "batch-complete").await?;

    let request = CompleteJobsRequest {
        jobs: held
            .iter()
            .map(|j| CompleteJobRequest {
                lease: Some(j.lease()),
                result: Some(jobq_tests::json(serde_json::json!({"ok": true}))),
            })
            .collect(),
    };
    let results = jobq
        .worker()
        .complete_jobs(request)
        .await
        .context("CompleteJobs")?
        .into_inner()
        .results;
    ensure!(
        results.len() == 3,
        "{} results for 3 reports",
        results.len()
    );
    check_accepted(&results[0], held[0].id())?;
    check_refused_as_stale(&results[1], held[1].id())?;
    check_accepted(&results[2], held[2].id())?;

    assert_eq!(jobq.get(held[0].id()).await?.state(), JobState::Succeeded);
    assert_eq!(jobq.get(held[2].id()).await?.state(), JobState::Succeeded);
    let untouched = jobq.get(held[1].id()).await?;
    assert_eq!(
        (untouched.state(), untouched.worker_id.as_str()),
        (JobState::Running, "worker-2"),
        "the stale report changed nothing"
    );
    jobq.complete(&current)
        .await
        .context("the current lease still completes")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_jobs_refuses_only_the_stale_entry() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let (held, current) = three_leases_one_stale(&jobq, "batch-fail").await?;

    let report = |leased: &LeasedJob, retryable: bool| FailJobRequest {
        lease: Some(leased.lease()),
        error: "disk full".into(),
        retryable,
        retry_after: None,
    };
    let request = FailJobsRequest {
        jobs: vec![
            report(&held[0], true),
            report(&held[1], true),
            report(&held[2], false),
        ],
    };
    let results = jobq
        .worker()
        .fail_jobs(request)
        .await
        .context("FailJobs")?
        .into_inner()
        .results;
    ensure!(
        results.len() == 3,
        "{} results for 3 reports",
        results.len()
    );
    check_accepted(&results[0], held[0].id())?;
    check_refused_as_stale(&results[1], held[1].id())?;
    check_accepted(&results[2], held[2].id())?;

    assert_eq!(
        jobq.get(held[0].id()).await?.state(),
        JobState::Retrying,
        "retryable failure"
    );
    assert_eq!(
        jobq.get(held[2].id()).await?.state(),
        JobState::Dead,
        "non-retryable failure"
    );
    let untouched = jobq.get(held[1].id()).await?;
    assert_eq!(
        (untouched.state(), untouched.worker_id.as_str()),
        (JobState::Running, "worker-2"),
        "the stale report changed nothing"
    );
    jobq.complete(&current)
        .await
        .context("the current lease still completes")?;
    Ok(())
}

/// A report sent again because its answer was lost is answered as the first
/// one was; a different report on the ended lease is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_report_is_answered_like_the_first_and_a_different_one_is_refused() -> Result<()>
{
    let server = TestServer::start().await?;
    let jobq = server.client();
    let done = jobq.enqueue(spec("repeat")).await?;
    let leased = jobq.lease_one("worker-repeat").await?;
    ensure!(leased.id() == done.id);
    let first = jobq.complete(&leased).await?;
    let again = jobq
        .complete(&leased)
        .await
        .context("the same CompleteJob again")?;
    ensure!(first == again, "{first:?} then {again:?}");
    let other = jobq
        .try_fail(FailJobRequest {
            lease: Some(leased.lease()),
            error: "changed my mind".into(),
            retryable: true,
            retry_after: None,
        })
        .await;
    expect_status(other, Code::FailedPrecondition, "stale")?;

    let failing = jobq.enqueue(spec("repeat")).await?;
    let leased = jobq.lease_one("worker-repeat").await?;
    ensure!(leased.id() == failing.id);
    let failed = jobq.fail(&leased, "boom", true).await?;
    let failed_again = jobq.fail(&leased, "boom", true).await?;
    ensure!(
        failed.state() == failed_again.state(),
        "{failed:?} then {failed_again:?}"
    );
    let late_success = jobq.try_complete(leased.lease(), None).await;
    expect_status(late_success, Code::FailedPrecondition, "stale")?;
    let job = jobq.get(&failing.id).await?;
    ensure!(
        job.attempts.len() == 1,
        "one attempt recorded: {:?}",
        job.attempts
    );
    Ok(())
}
