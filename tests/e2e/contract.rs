//! The v1 contract, clause by clause: what the comments of
//! `proto/jobq/v1/*.proto` promise (lease renewal, optional progress, message
//! sizes, time and name limits, opaque page tokens, error reasons, idempotent
//! enqueues, cancel races, attempt history, dependencies), plus the
//! dashboard's static files and the server's own log, checked through the
//! public surfaces only.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::pb::job_queue_service_client::JobQueueServiceClient;
use jobq_tests::pb::{
    AttemptOutcome, CompleteJobRequest, CompleteJobsRequest, EnqueueJobRequest, EnqueueJobResponse,
    EnqueueJobsRequest, FailJobRequest, HeartbeatRequest, HeartbeatResult, Job, JobSpec, JobState,
    JobView, LeaseJobsRequest, LeaseProgress, LeasedJob, ListJobsRequest, ListJobsResponse,
    RetryPolicy, StopReason,
};
use jobq_tests::{
    Backend, JobqClient, LeasedJobExt, ReportResultExt, ServerCommand, TestDatabase, TestServer,
    attempt_outcomes, bounded, duration, expect_status, json, json_of, lease_request, millis_opt,
    spec, timestamp_from_millis, unix_millis_now,
};
use serde_json::json as j;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::logs::all_lines;
use crate::server_binary;

const MIB: usize = 1024 * 1024;

/// Decode and encode limit of the "big" clients: the server's default message limit.
const BIG_CLIENT_BYTES: usize = 64 * MIB;

/// Bound of every wait for a state the server reaches on its own.
const WAIT: Duration = Duration::from_secs(30);

/// Slack on a lease deadline: the server stamps it somewhere between the
/// test's clock readings before and after the call, maybe cut to seconds.
const DEADLINE_SLACK_MS: i64 = 2_000;

/// A protobuf duration of whole seconds (any value, even out of range).
fn secs(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

/// Checks that nothing at all is stored on the server.
async fn nothing_stored(jobq: &JobqClient) -> Result<()> {
    let jobs = jobq.list_all(ListJobsRequest::default()).await?;
    ensure!(
        jobs.is_empty(),
        "{} job(s) were stored by rejected requests: {:?}",
        jobs.len(),
        jobs.iter().map(|job| &job.r#type).collect::<Vec<_>>()
    );
    Ok(())
}

/// Checks the google.rpc.ErrorInfo of `status`: domain jobq.v1 and `reason`.
fn expect_reason(status: &Status, reason: &str) -> Result<tonic_types::ErrorInfo> {
    let details = status.get_error_details();
    let info = details.error_info().with_context(|| {
        format!(
            "the {:?} status {:?} carries no google.rpc.ErrorInfo (expected reason {reason})",
            status.code(),
            status.message()
        )
    })?;
    ensure!(
        info.reason == reason && info.domain == "jobq.v1",
        "ErrorInfo is {info:?}; expected reason {reason:?} in domain \"jobq.v1\""
    );
    Ok(info.clone())
}

/// A batch item's embedded google.rpc.Status as a tonic status, so its
/// details are read the way a client reads a call's.
fn embedded_status(embedded: &tonic_types::pb::Status) -> Status {
    Status::with_details(
        Code::from(embedded.code),
        embedded.message.clone(),
        prost::Message::encode_to_vec(embedded).into(),
    )
}

/// EnqueueJob with a request_id, raw.
async fn try_enqueue_with_id(
    jobq: &JobqClient,
    job: JobSpec,
    request_id: &str,
) -> Result<EnqueueJobResponse, Status> {
    let request = EnqueueJobRequest {
        job: Some(job),
        request_id: request_id.to_owned(),
    };
    Ok(jobq.queue().enqueue_job(request).await?.into_inner())
}

/// EnqueueJobs with a request_id, raw.
async fn try_enqueue_batch_with_id(
    jobq: &JobqClient,
    jobs: Vec<JobSpec>,
    request_id: &str,
) -> Result<Vec<EnqueueJobResponse>, Status> {
    let request = EnqueueJobsRequest {
        jobs,
        request_id: request_id.to_owned(),
    };
    Ok(jobq
        .queue()
        .enqueue_jobs(request)
        .await?
        .into_inner()
        .results)
}

/// Heartbeat, raw, with an optional new lease length.
async fn try_heartbeat(
    jobq: &JobqClient,
    worker_id: &str,
    leases: Vec<LeaseProgress>,
    lease_duration: Option<Duration>,
) -> Result<Vec<HeartbeatResult>, Status> {
    let request = HeartbeatRequest {
        worker_id: worker_id.to_owned(),
        leases,
        lease_duration: lease_duration.map(duration),
    };
    Ok(jobq.worker().heartbeat(request).await?.into_inner().results)
}

/// Leases exactly the job `id` (it must be the only ready one).
async fn lease_exactly(jobq: &JobqClient, worker_id: &str, id: &str) -> Result<LeasedJob> {
    let leased = jobq.lease_one(worker_id).await?;
    ensure!(
        leased.id() == id,
        "worker {worker_id:?} leased {} instead of {id}",
        leased.id()
    );
    Ok(leased)
}

// ---- 1. lease renewal ------------------------------------------------------

/// Checks that `expires_ms` is `length` after the call that set it, which
/// ran between `before_ms` and `after_ms` by the test's clock.
fn check_deadline(
    expires_ms: i64,
    before_ms: i64,
    after_ms: i64,
    length: Duration,
    what: &str,
) -> Result<()> {
    let length_ms = i64::try_from(length.as_millis())?;
    let earliest = before_ms + length_ms - DEADLINE_SLACK_MS;
    let latest = after_ms + length_ms + DEADLINE_SLACK_MS;
    ensure!(
        (earliest..=latest).contains(&expires_ms),
        "{what}: the lease runs out {:.1} s after the call, expected {:.1} s",
        (expires_ms - before_ms) as f64 / 1000.0,
        length_ms as f64 / 1000.0
    );
    Ok(())
}

/// Heartbeats `leased` (with `lease_duration`, or unset) and checks that the
/// lease now runs out `expected` from now, in the answer and in GetJob.
async fn check_renewal(
    jobq: &JobqClient,
    leased: &LeasedJob,
    lease_duration: Option<Duration>,
    expected: Duration,
    what: &str,
) -> Result<()> {
    let progress = LeaseProgress {
        lease: Some(leased.lease()),
        progress_percent: None,
        progress_message: None,
    };
    let before = unix_millis_now();
    let mut results = try_heartbeat(jobq, "worker-renew", vec![progress], lease_duration)
        .await
        .with_context(|| format!("Heartbeat {what}"))?;
    let after = unix_millis_now();
    let result = results.pop().context("Heartbeat answered no result")?;
    ensure!(!result.stop, "Heartbeat {what} said stop: {result:?}");
    let expires = millis_opt(&result.lease_expires_at, "HeartbeatResult.lease_expires_at")?;
    check_deadline(
        expires,
        before,
        after,
        expected,
        &format!("Heartbeat {what}"),
    )?;
    let stored = jobq.get(leased.id()).await?;
    let stored_expiry = millis_opt(&stored.lease_expires_at, "Job.lease_expires_at")?;
    ensure!(
        (stored_expiry - expires).abs() <= 1000,
        "after Heartbeat {what}, GetJob says the lease runs out at {stored_expiry} ms, \
         the heartbeat said {expires} ms"
    );
    Ok(())
}

/// LeaseJobs.lease_duration: "each Heartbeat renews it for as long again
/// (unless it names another length)"; HeartbeatRequest.lease_duration: "it
/// becomes each lease's length from then on".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_without_a_length_renews_for_as_long_as_the_lease_was_taken() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let ten_minutes = Duration::from_secs(600);
    let two_minutes = Duration::from_secs(120);

    jobq.enqueue(spec("renew")).await?;
    let before = unix_millis_now();
    let leased = jobq
        .lease(LeaseJobsRequest {
            lease_duration: Some(duration(ten_minutes)),
            ..lease_request("worker-renew", 1)
        })
        .await?
        .pop()
        .context("worker-renew leased nothing")?;
    let expires = millis_opt(&leased.lease_expires_at, "LeasedJob.lease_expires_at")?;
    check_deadline(
        expires,
        before,
        unix_millis_now(),
        ten_minutes,
        "LeaseJobs with a 600 s lease",
    )?;

    // The test server's own default lease is 1 s: a renewal by the default would show.
    check_renewal(
        &jobq,
        &leased,
        None,
        ten_minutes,
        "with lease_duration unset",
    )
    .await?;
    check_renewal(
        &jobq,
        &leased,
        Some(two_minutes),
        two_minutes,
        "with lease_duration 120 s",
    )
    .await?;
    check_renewal(
        &jobq,
        &leased,
        None,
        two_minutes,
        "with lease_duration unset after one of 120 s",
    )
    .await?;
    check_renewal(
        &jobq,
        &leased,
        None,
        two_minutes,
        "with lease_duration unset, once more",
    )
    .await?;
    jobq.complete(&leased).await?;
    Ok(())
}

// ---- 2. optional progress -----------------------------------------------------

async fn check_progress(
    jobq: &JobqClient,
    id: &str,
    percent: i32,
    message: &str,
    after: &str,
) -> Result<()> {
    let job = jobq.get(id).await?;
    ensure!(
        job.progress_percent == percent && job.progress_message == message,
        "after {after}: progress is {}% {:?}, expected {percent}% {message:?}",
        job.progress_percent,
        job.progress_message
    );
    Ok(())
}

/// LeaseProgress: "unset leaves the stored progress as it is", "the empty
/// string clears it", percent 0..100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_progress_fields_are_optional() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("progress")).await?;
    let leased = lease_exactly(&jobq, "worker-progress", &job.id).await?;
    let progress = |percent: Option<i32>, message: Option<&str>| LeaseProgress {
        lease: Some(leased.lease()),
        progress_percent: percent,
        progress_message: message.map(str::to_owned),
    };
    let beat = |item: LeaseProgress| {
        let jobq = jobq.clone();
        async move {
            let results = jobq.heartbeat("worker-progress", vec![item]).await?;
            ensure!(
                results.iter().all(|result| !result.stop),
                "the heartbeat said stop: {results:?}"
            );
            anyhow::Ok(())
        }
    };

    beat(progress(Some(40), Some("downloading"))).await?;
    check_progress(
        &jobq,
        &job.id,
        40,
        "downloading",
        "setting 40% \"downloading\"",
    )
    .await?;
    beat(progress(None, None)).await?;
    check_progress(
        &jobq,
        &job.id,
        40,
        "downloading",
        "a heartbeat with both unset",
    )
    .await?;
    beat(progress(Some(55), None)).await?;
    check_progress(
        &jobq,
        &job.id,
        55,
        "downloading",
        "setting only the percent",
    )
    .await?;
    beat(progress(None, Some("unpacking"))).await?;
    check_progress(&jobq, &job.id, 55, "unpacking", "setting only the message").await?;
    beat(progress(None, Some(""))).await?;
    check_progress(&jobq, &job.id, 55, "", "an empty message").await?;

    let mut failures = Vec::new();
    for percent in [-1, 101, i32::MIN, i32::MAX] {
        let refused = try_heartbeat(
            &jobq,
            "worker-progress",
            vec![progress(Some(percent), Some("nope"))],
            None,
        )
        .await;
        if let Err(err) =
            expect_status(refused, Code::InvalidArgument, "leases[0].progress_percent")
        {
            failures.push(format!("progress_percent {percent}: {err:#}"));
        }
    }
    let too_long = "m".repeat(1025);
    let refused = try_heartbeat(
        &jobq,
        "worker-progress",
        vec![progress(None, Some(&too_long))],
        None,
    )
    .await;
    if let Err(err) = expect_status(refused, Code::InvalidArgument, "leases[0].progress_message") {
        failures.push(format!("progress_message of 1,025 bytes: {err:#}"));
    }
    ensure!(
        failures.is_empty(),
        "{} bad progress report(s) not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    check_progress(&jobq, &job.id, 55, "", "refused heartbeats").await?;
    jobq.complete(&leased).await?;
    Ok(())
}

// ---- 3. message sizes ------------------------------------------------------------

/// The payload of big job `n`: an object with `size` bytes of text.
fn big_payload(n: usize, size: usize) -> serde_json::Value {
    j!({ "n": n, "data": "x".repeat(size) })
}

/// Enqueues `count` jobs with payloads of about `size` bytes in one batch
/// (the default client sends any size); returns their ids and payloads.
async fn enqueue_big_jobs(
    jobq: &JobqClient,
    count: usize,
    size: usize,
) -> Result<Vec<(String, serde_json::Value)>> {
    let payloads: Vec<_> = (0..count).map(|n| big_payload(n, size)).collect();
    let specs = payloads
        .iter()
        .map(|payload| JobSpec {
            payload: Some(json(payload.clone())),
            ..spec("big")
        })
        .collect();
    let jobs = jobq.enqueue_batch(specs).await?;
    Ok(jobs.into_iter().map(|job| job.id).zip(payloads).collect())
}

/// A JobQueueService client on `jobq`'s connection that sends and takes
/// messages up to 64 MiB.
fn big_client(jobq: &JobqClient) -> JobQueueServiceClient<Channel> {
    jobq.queue()
        .max_decoding_message_size(BIG_CLIENT_BYTES)
        .max_encoding_message_size(BIG_CLIENT_BYTES)
}

/// Checks that `jobs` carry exactly the payloads of `sent`.
fn check_payloads(jobs: &[Job], sent: &[(String, serde_json::Value)], what: &str) -> Result<()> {
    ensure!(
        jobs.len() == sent.len(),
        "{what}: {} jobs, expected {}",
        jobs.len(),
        sent.len()
    );
    for (id, payload) in sent {
        let job = jobs
            .iter()
            .find(|job| &job.id == id)
            .with_context(|| format!("{what}: job {id} is missing"))?;
        ensure!(
            &json_of(&job.payload) == payload,
            "{what}: job {id} came back with another payload ({} bytes of JSON)",
            json_of(&job.payload).to_string().len()
        );
    }
    Ok(())
}

/// JobView: BASIC (ListJobs' default) is "everything but payload, result and
/// attempts: cheap to list"; FULL carries them, and the server sends up to
/// its message limit, so a client must raise its receive limit for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_basic_view_fits_a_default_client_and_full_needs_a_big_one() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let sent = enqueue_big_jobs(&jobq, 10, 600_000).await?;

    let basic = jobq
        .list(ListJobsRequest::default())
        .await
        .context("ListJobs with the default view through a client with the 4 MiB default limit")?;
    ensure!(basic.jobs.len() == 10, "{} jobs listed", basic.jobs.len());
    let with_payload: Vec<_> = basic
        .jobs
        .iter()
        .filter(|job| job.payload.is_some() || job.result.is_some())
        .map(|job| &job.id)
        .collect();
    ensure!(
        with_payload.is_empty(),
        "the default (BASIC) view carries payloads or results of {with_payload:?}"
    );

    let full = ListJobsRequest {
        view: JobView::Full as i32,
        ..ListJobsRequest::default()
    };
    match jobq.try_list(full.clone()).await {
        Ok(page) => bail!(
            "ListJobs FULL of 10 jobs of 600 KB decoded in a client with a 4 MiB limit: {} jobs, \
             {} with a payload",
            page.jobs.len(),
            page.jobs.iter().filter(|job| job.payload.is_some()).count()
        ),
        Err(status) => ensure!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "ListJobs FULL in a 4 MiB client failed with {:?} {:?}, not the decode limit",
            status.code(),
            status.message()
        ),
    }
    let page: ListJobsResponse = big_client(&jobq)
        .list_jobs(full)
        .await
        .context("ListJobs FULL through a client with a 64 MiB limit")?
        .into_inner();
    check_payloads(&page.jobs, &sent, "ListJobs FULL")?;
    Ok(())
}

/// JobSpec.payload: "at most the server's payload limit": raised to 5 MiB, a
/// payload of exactly 5 MiB of JSON goes in and comes out whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_at_a_raised_limit_goes_in_and_comes_back() -> Result<()> {
    let server = TestServer::start_with(|config| {
        config.max_payload_bytes = 5 * MIB;
        config.max_message_bytes = 64 * MIB;
    })
    .await?;
    let jobq = server.client();
    // A JSON string: its text is the characters plus two quotes, 5 MiB exactly.
    let payload = serde_json::Value::String("p".repeat(5 * MIB - 2));
    let request = EnqueueJobRequest {
        job: Some(JobSpec {
            payload: Some(json(payload.clone())),
            ..spec("five-mib")
        }),
        request_id: String::new(),
    };
    let job = big_client(&jobq)
        .enqueue_job(request)
        .await
        .context("EnqueueJob of a 5 MiB payload with max_payload_bytes = 5 MiB")?
        .into_inner()
        .job
        .context("EnqueueJob answered without a job")?;
    let stored = big_client(&jobq)
        .get_job(jobq_tests::pb::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .context("GetJob of the 5 MiB job through a 64 MiB client")?
        .into_inner()
        .job
        .context("GetJob answered without a job")?;
    ensure!(
        json_of(&stored.payload) == payload,
        "the 5 MiB payload came back as {} bytes of JSON",
        json_of(&stored.payload).to_string().len()
    );
    Ok(())
}

/// EnqueueJobs: up to 1,000 jobs in one request, which may be as large as
/// the server's message limit (64 MiB by default): 20 payloads of exactly the
/// default payload limit (1 MiB) go in as one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_twenty_one_mib_payloads_is_accepted() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let payloads: Vec<serde_json::Value> = (0..20)
        .map(|n| {
            // "NN" + filler: JSON text of exactly 1 MiB with the quotes.
            serde_json::Value::String(format!("{n:02}{}", "y".repeat(MIB - 4)))
        })
        .collect();
    let specs = payloads
        .iter()
        .map(|payload| JobSpec {
            payload: Some(json(payload.clone())),
            ..spec("one-mib")
        })
        .collect();
    let jobs = jobq
        .enqueue_batch(specs)
        .await
        .context("EnqueueJobs of 20 jobs with 1 MiB payloads")?;
    ensure!(jobs.len() == 20, "{} jobs stored", jobs.len());
    for index in [0, 19] {
        let stored = jobq.get(&jobs[index].id).await?;
        ensure!(
            json_of(&stored.payload) == payloads[index],
            "job {index} of the batch came back with another payload"
        );
    }
    let listed = jobq.list_all(ListJobsRequest::default()).await?;
    ensure!(listed.len() == 20, "{} jobs listed", listed.len());
    Ok(())
}

/// LeaseJobs.max_response_bytes: "jobs are added while they fit"; a job that
/// is not handed out must not be taken either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_jobs_hands_out_only_what_fits_and_leaves_the_rest_queued() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let sent = enqueue_big_jobs(&jobq, 10, 600_000).await?;

    // The default client: a 4 MiB receive limit, as the request says.
    let leased = jobq
        .lease(LeaseJobsRequest {
            max_response_bytes: 4 * MIB as u64,
            ..lease_request("worker-small", 10)
        })
        .await
        .context(
            "LeaseJobs of up to 10 jobs of 600 KB with max_response_bytes 4 MiB, in a 4 MiB client",
        )?;
    ensure!(
        (1..=6).contains(&leased.len()),
        "LeaseJobs with max_response_bytes 4 MiB handed out {} jobs of 600 KB (at most 6 fit, \
         and at least one does)",
        leased.len()
    );
    let leased_ids: HashSet<&str> = leased.iter().map(|job| job.id()).collect();
    let leased_sent: Vec<_> = sent
        .iter()
        .filter(|(id, _)| leased_ids.contains(id.as_str()))
        .cloned()
        .collect();
    let leased_jobs: Vec<Job> = leased.iter().map(|job| job.job().clone()).collect();
    check_payloads(&leased_jobs, &leased_sent, "the leased jobs")?;

    let all = jobq.list_all(ListJobsRequest::default()).await?;
    let mut wrong = Vec::new();
    for job in &all {
        let expected = if leased_ids.contains(job.id.as_str()) {
            JobState::Running
        } else {
            JobState::Queued
        };
        if job.state() != expected {
            wrong.push(format!(
                "{} is {}, expected {}",
                job.id,
                job.state().as_str_name(),
                expected.as_str_name()
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} leased, but the states do not match:\n{}",
        leased.len(),
        wrong.join("\n")
    );
    Ok(())
}

/// "RESOURCE_EXHAUSTED for a request larger than the server's message limit
/// (the limit is named)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_is_resource_exhausted_naming_the_limit() -> Result<()> {
    let server = TestServer::start_with(|config| {
        config.max_payload_bytes = MIB;
        config.max_message_bytes = 2 * MIB;
    })
    .await?;
    let jobq = server.client();
    let batch = |count: usize| {
        (0..count)
            .map(|n| JobSpec {
                payload: Some(json(big_payload(n, 900_000))),
                ..spec("over")
            })
            .collect::<Vec<_>>()
    };
    let status = expect_status(
        jobq.try_enqueue_batch(batch(3)).await,
        Code::ResourceExhausted,
        "--max-message-bytes",
    )
    .context("EnqueueJobs of 2.7 MB with max_message_bytes = 2 MiB")?;
    ensure!(
        status.message().contains(&(2 * MIB).to_string()),
        "the RESOURCE_EXHAUSTED message does not name the limit of {} bytes: {:?}",
        2 * MIB,
        status.message()
    );
    nothing_stored(&jobq).await?;
    let stored = jobq
        .enqueue_batch(batch(2))
        .await
        .context("EnqueueJobs of 1.8 MB, under the 2 MiB limit")?;
    ensure!(stored.len() == 2, "{} jobs stored", stored.len());
    Ok(())
}

// ---- 4. times past 9999 ------------------------------------------------------------

/// JobSpec: "Times must lie before the year 10000"; durations have their
/// ranges. Far-off times are the client's error, by name, and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_past_the_year_9999_are_refused_by_name() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let huge = 1_i64 << 62;
    // 10000-01-01T00:00:00Z.
    let year_10000 = 253_402_300_800_i64;

    let cases: Vec<(&str, JobSpec)> = vec![
        (
            "job.delay",
            JobSpec {
                delay: Some(secs(100_000_000_000)),
                ..spec("far")
            },
        ),
        (
            "job.delay",
            JobSpec {
                delay: Some(secs(1_000_000_000_000)),
                ..spec("far")
            },
        ),
        (
            "job.run_at",
            JobSpec {
                run_at: Some(prost_types::Timestamp {
                    seconds: year_10000,
                    nanos: 0,
                }),
                ..spec("far")
            },
        ),
        (
            "job.run_at",
            JobSpec {
                run_at: Some(prost_types::Timestamp {
                    seconds: huge,
                    nanos: 0,
                }),
                ..spec("far")
            },
        ),
        (
            "job.timeout",
            JobSpec {
                timeout: Some(secs(huge)),
                ..spec("far")
            },
        ),
        (
            "job.retry_policy.base_backoff",
            JobSpec {
                retry_policy: Some(RetryPolicy {
                    base_backoff: Some(secs(huge)),
                    max_backoff: None,
                }),
                ..spec("far")
            },
        ),
        (
            "job.retry_policy.max_backoff",
            JobSpec {
                retry_policy: Some(RetryPolicy {
                    base_backoff: Some(secs(1)),
                    max_backoff: Some(secs(huge)),
                }),
                ..spec("far")
            },
        ),
    ];
    let mut failures = Vec::new();
    for (field, bad) in cases {
        let description = format!("{bad:?}");
        if let Err(err) = expect_status(jobq.try_enqueue(bad).await, Code::InvalidArgument, field) {
            failures.push(format!("EnqueueJob {field} ({description}): {err:#}"));
        }
    }
    let batch = vec![
        spec("far"),
        JobSpec {
            timeout: Some(secs(huge)),
            ..spec("far")
        },
    ];
    if let Err(err) = expect_status(
        jobq.try_enqueue_batch(batch).await,
        Code::InvalidArgument,
        "jobs[1].timeout",
    ) {
        failures.push(format!("EnqueueJobs jobs[1].timeout: {err:#}"));
    }
    ensure!(
        failures.is_empty(),
        "{} far-off time(s) not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    nothing_stored(&jobq).await?;

    let job = jobq.enqueue(spec("far-report")).await?;
    let leased = lease_exactly(&jobq, "worker-far", &job.id).await?;
    let refused = jobq
        .try_fail(FailJobRequest {
            lease: Some(leased.lease()),
            error: "later, much later".into(),
            retryable: true,
            retry_after: Some(secs(huge)),
        })
        .await;
    expect_status(refused, Code::InvalidArgument, "retry_after")
        .context("FailJob with retry_after 2^62 s")?;
    let untouched = jobq.get(&job.id).await?;
    ensure!(
        untouched.state() == JobState::Running
            && attempt_outcomes(&untouched) == [AttemptOutcome::Unspecified],
        "the refused FailJob changed the job: {} with attempts {:?}",
        untouched.state().as_str_name(),
        attempt_outcomes(&untouched)
    );
    jobq.complete(&leased)
        .await
        .context("the lease survives the refused FailJob")?;

    // The last day before the year 10000 is still a time.
    let last_day_ms = 253_402_214_400_000_i64; // 9999-12-31T00:00:00Z
    let scheduled = jobq
        .enqueue(JobSpec {
            run_at: Some(timestamp_from_millis(last_day_ms)),
            ..spec("far")
        })
        .await
        .context("EnqueueJob with run_at 9999-12-31")?;
    let stored = jobq.get(&scheduled.id).await?;
    ensure!(
        stored.state() == JobState::Scheduled
            && millis_opt(&stored.run_at, "run_at")? == last_day_ms,
        "a job to run on 9999-12-31 is {} with run_at {:?}",
        stored.state().as_str_name(),
        stored.run_at
    );
    Ok(())
}

// ---- 5. a bad id is echoed short ----------------------------------------------------

/// "inputs are echoed at most 64 characters long": a 1 MB id gives a small
/// error, message and BadRequest detail alike, which a default client takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_job_id_is_echoed_short() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    // ASCII, and multi-byte characters (the cut must not split one). The
    // client is a default one: an answer over its header limits (16 KiB)
    // would come back as an h2 protocol error, not INVALID_ARGUMENT.
    for (name, huge_id) in [
        ("ASCII", "7".repeat(1_000_000)),
        ("two-byte UTF-8", "é".repeat(500_000)),
    ] {
        let status = expect_status(
            jobq.try_get(&huge_id).await,
            Code::InvalidArgument,
            "job_id",
        )
        .with_context(|| format!("GetJob with a 1 MB {name} job_id"))?;
        ensure!(
            status.message().len() < 1024,
            "GetJob with a 1 MB {name} job_id: the message is {} bytes",
            status.message().len()
        );
        let bad_request = status.get_details_bad_request().with_context(|| {
            format!("GetJob with a 1 MB {name} job_id: no google.rpc.BadRequest detail")
        })?;
        let detail_bytes: usize = bad_request
            .field_violations
            .iter()
            .map(|violation| violation.field.len() + violation.description.len())
            .sum();
        ensure!(
            detail_bytes < 1024,
            "GetJob with a 1 MB {name} job_id: the BadRequest detail holds {detail_bytes} bytes"
        );
        ensure!(
            status.details().len() < 2048,
            "GetJob with a 1 MB {name} job_id: grpc-status-details-bin is {} bytes",
            status.details().len()
        );
    }
    Ok(())
}

// ---- 6. invalid UTF-8 ------------------------------------------------------------------

/// GetJobRequest with `job_id` (tag 1) as bytes, so it can carry invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawGetJobRequest {
    #[prost(bytes = "vec", tag = "1")]
    job_id: Vec<u8>,
}

/// JobSpec with `type` (tag 1) as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawJobSpec {
    #[prost(bytes = "vec", tag = "1")]
    job_type: Vec<u8>,
}

/// EnqueueJobRequest with its `job` (tag 1) a [`RawJobSpec`].
#[derive(Clone, PartialEq, prost::Message)]
struct RawEnqueueJobRequest {
    #[prost(message, optional, tag = "1")]
    job: Option<RawJobSpec>,
}

/// Sends `message` to the unary RPC at `path` as it is; the answer's content
/// is ignored.
async fn raw_unary<M>(
    addr: SocketAddr,
    path: &'static str,
    message: M,
) -> Result<Result<(), Status>>
where
    M: prost::Message + Send + Sync + 'static,
{
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .context("endpoint URI")?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(45))
        .connect()
        .await
        .context("connecting for a raw call")?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("the raw channel is not ready")?;
    let codec = tonic_prost::ProstCodec::<M, ()>::default();
    let answer = grpc
        .unary(
            tonic::Request::new(message),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await;
    Ok(answer.map(|_| ()))
}

/// A string field that is not UTF-8 is a malformed request: the client's
/// error, INVALID_ARGUMENT, not the server's INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_string_field_is_invalid_argument() -> Result<()> {
    const GET_JOB: &str = "/jobq.v1.JobQueueService/GetJob";
    const ENQUEUE_JOB: &str = "/jobq.v1.JobQueueService/EnqueueJob";
    let server = TestServer::start().await?;
    let jobq = server.client();
    let addr = server.addr();

    // The raw path itself works: valid bytes reach the handlers.
    let unknown = uuid::Uuid::now_v7().to_string();
    let valid = raw_unary(
        addr,
        GET_JOB,
        RawGetJobRequest {
            job_id: unknown.into_bytes(),
        },
    )
    .await?;
    expect_status(valid, Code::NotFound, "").context("raw GetJob of an unknown, valid id")?;

    let mut failures = Vec::new();
    for bad in [b"\xff\xfe\xfd".to_vec(), b"0190abcd-\xc3\x28".to_vec()] {
        let answer = raw_unary(
            addr,
            GET_JOB,
            RawGetJobRequest {
                job_id: bad.clone(),
            },
        )
        .await?;
        if let Err(err) = expect_status(answer, Code::InvalidArgument, "") {
            failures.push(format!("GetJob with job_id bytes {bad:?}: {err:#}"));
        }
    }
    let bad_type = RawEnqueueJobRequest {
        job: Some(RawJobSpec {
            job_type: b"bad\xffname".to_vec(),
        }),
    };
    let answer = raw_unary(addr, ENQUEUE_JOB, bad_type).await?;
    if let Err(err) = expect_status(answer, Code::InvalidArgument, "") {
        failures.push(format!(
            "EnqueueJob with type bytes b\"bad\\xffname\": {err:#}"
        ));
    }
    ensure!(
        failures.is_empty(),
        "{} request(s) with invalid UTF-8 not refused as INVALID_ARGUMENT:\n{}",
        failures.len(),
        failures.join("\n")
    );
    nothing_stored(&jobq).await?;

    let good_type = RawEnqueueJobRequest {
        job: Some(RawJobSpec {
            job_type: b"raw-ok".to_vec(),
        }),
    };
    raw_unary(addr, ENQUEUE_JOB, good_type)
        .await?
        .context("raw EnqueueJob with a valid type")?;
    let stored = jobq.list_all(ListJobsRequest::default()).await?;
    ensure!(
        stored.len() == 1 && stored[0].r#type == "raw-ok",
        "after the raw EnqueueJob: {stored:?}"
    );
    Ok(())
}

// ---- 7. names --------------------------------------------------------------------------

/// JobSpec: names "may not be blank or contain control, zero-width or
/// bidirectional-override characters".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_blank_invisible_or_control_characters_are_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let blank = [" ", "   ", "\u{3000}"];
    let hidden = [
        "pay\u{202E}gpj.exe",
        "a\u{202D}b",
        "zero\u{200B}width",
        "nul\u{0}byte",
        "bell\u{7}",
        "esc\u{1b}[31m",
        "new\nline",
        "tab\there",
        "del\u{7f}",
        "next\u{85}line",
    ];
    // Empty is blank for type and tags; for queue and unique_key it means
    // "default" and "none", so it is allowed there.
    let mut failures = Vec::new();
    let mut check = async |field: &str, name: &str, bad: JobSpec| {
        if let Err(err) = expect_status(jobq.try_enqueue(bad).await, Code::InvalidArgument, field) {
            failures.push(format!("{field} = {name:?}: {err:#}"));
        }
    };
    for name in std::iter::once("").chain(blank).chain(hidden) {
        check("job.type", name, spec(name)).await;
        check(
            "job.tags[0]",
            name,
            JobSpec {
                tags: vec![name.to_owned(), "fine".to_owned()],
                ..spec("names")
            },
        )
        .await;
    }
    for name in blank.into_iter().chain(hidden) {
        check(
            "job.queue",
            name,
            JobSpec {
                queue: name.to_owned(),
                ..spec("names")
            },
        )
        .await;
        check(
            "job.unique_key",
            name,
            JobSpec {
                unique_key: name.to_owned(),
                ..spec("names")
            },
        )
        .await;
    }
    ensure!(
        failures.is_empty(),
        "{} name(s) not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    nothing_stored(&jobq).await?;

    // Ordinary non-ASCII names are fine.
    jobq.enqueue(JobSpec {
        tags: vec!["café".into(), "日本".into()],
        unique_key: "clé-1".into(),
        ..spec("résumé")
    })
    .await
    .context("names with ordinary non-ASCII letters")?;
    Ok(())
}

// ---- 8. page tokens --------------------------------------------------------------------

/// ListJobsRequest.page_token: "opaque and bound to the filter: reused with
/// any other filter field changed, it is refused with INVALID_ARGUMENT
/// (PAGE_TOKEN_MISMATCH)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_are_opaque_and_bound_to_the_filter() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(jobq.enqueue(spec("paged")).await?.id);
    }

    let filter = ListJobsRequest {
        states: vec![JobState::Queued as i32],
        queues: vec!["default".into()],
        page_size: 2,
        ..ListJobsRequest::default()
    };
    let first = jobq.list(filter.clone()).await?;
    ensure!(
        first.jobs.len() == 2 && !first.next_page_token.is_empty(),
        "page 1: {} jobs, next_page_token {:?}",
        first.jobs.len(),
        first.next_page_token
    );
    let token = first.next_page_token.clone();

    let changed: Vec<(&str, ListJobsRequest)> = vec![
        (
            "states [QUEUED, RUNNING]",
            ListJobsRequest {
                states: vec![JobState::Queued as i32, JobState::Running as i32],
                ..filter.clone()
            },
        ),
        (
            "queues [other]",
            ListJobsRequest {
                queues: vec!["other".into()],
                ..filter.clone()
            },
        ),
        (
            "types [paged]",
            ListJobsRequest {
                types: vec!["paged".into()],
                ..filter.clone()
            },
        ),
        (
            "search \"paged\"",
            ListJobsRequest {
                search: "paged".into(),
                ..filter.clone()
            },
        ),
    ];
    let mut failures = Vec::new();
    for (what, request) in changed {
        let request = ListJobsRequest {
            page_token: token.clone(),
            ..request
        };
        match expect_status(
            jobq.try_list(request).await,
            Code::InvalidArgument,
            "page_token",
        ) {
            Ok(status) if !status.message().contains("PAGE_TOKEN_MISMATCH") => {
                failures.push(format!(
                    "{what}: the message does not say PAGE_TOKEN_MISMATCH: {:?}",
                    status.message()
                ))
            }
            Ok(_) => {}
            Err(err) => failures.push(format!("{what}: {err:#}")),
        }
    }
    for forged in [
        format!("before:{}", ids[2]),
        format!("before:{}", uuid::Uuid::now_v7()),
    ] {
        let request = ListJobsRequest {
            page_token: forged.clone(),
            ..filter.clone()
        };
        if let Err(err) = expect_status(
            jobq.try_list(request).await,
            Code::InvalidArgument,
            "page_token",
        ) {
            failures.push(format!("forged token {forged:?}: {err:#}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} page token(s) not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // With the same filter the token works, and works again.
    let next = ListJobsRequest {
        page_token: token,
        ..filter.clone()
    };
    let second = jobq
        .list(next.clone())
        .await
        .context("page 2 with the same filter")?;
    let again = jobq.list(next).await.context("page 2 again")?;
    let page_ids = |page: &ListJobsResponse| {
        page.jobs
            .iter()
            .map(|job| job.id.clone())
            .collect::<Vec<_>>()
    };
    ensure!(
        page_ids(&second) == page_ids(&again),
        "the same token gave {:?} then {:?}",
        page_ids(&second),
        page_ids(&again)
    );
    let third = jobq
        .list(ListJobsRequest {
            page_token: second.next_page_token.clone(),
            ..filter
        })
        .await
        .context("page 3")?;
    ensure!(
        third.next_page_token.is_empty(),
        "page 3 of 5 jobs by 2 is the last"
    );
    let seen: Vec<String> = [&first, &second, &third]
        .into_iter()
        .flat_map(page_ids)
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    ensure!(
        seen == newest_first,
        "the pages gave {seen:?}, expected newest first {newest_first:?}"
    );
    Ok(())
}

// ---- 9. ErrorInfo reasons ----------------------------------------------------------------

/// "refusals carry a google.rpc.ErrorInfo (domain "jobq.v1") with a stable
/// reason", in single calls and in the embedded statuses of a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_error_info_with_stable_reasons() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    // JOB_FINISHED: cancel of a succeeded job.
    let done = jobq.enqueue(spec("reasons")).await?;
    let leased = lease_exactly(&jobq, "worker-reasons", &done.id).await?;
    jobq.complete(&leased).await?;
    let status = expect_status(
        jobq.try_cancel(&done.id, "").await,
        Code::FailedPrecondition,
        "",
    )
    .context("CancelJob of a succeeded job")?;
    expect_reason(&status, "JOB_FINISHED").context("CancelJob of a succeeded job")?;

    // JOB_NOT_FINISHED: retry of a queued job.
    let queued = jobq.enqueue(spec("reasons")).await?;
    let status = expect_status(
        jobq.try_retry(&queued.id).await,
        Code::FailedPrecondition,
        "",
    )
    .context("RetryJob of a queued job")?;
    expect_reason(&status, "JOB_NOT_FINISHED").context("RetryJob of a queued job")?;

    // JOB_RUNNING: delete of a running job.
    let running = lease_exactly(&jobq, "worker-reasons", &queued.id).await?;
    let status = expect_status(
        jobq.try_delete(&queued.id).await,
        Code::FailedPrecondition,
        "",
    )
    .context("DeleteJob of a running job")?;
    expect_reason(&status, "JOB_RUNNING").context("DeleteJob of a running job")?;

    // LEASE_STALE: the lease was handed back and the job leased again.
    let released = jobq
        .release("worker-reasons", vec![running.lease()])
        .await?;
    ensure!(
        released[0].accepted(),
        "ReleaseJobs refused: {:?}",
        released[0]
    );
    let current = lease_exactly(&jobq, "worker-reasons", &queued.id).await?;
    let status = expect_status(
        jobq.try_complete(running.lease(), None).await,
        Code::FailedPrecondition,
        "",
    )
    .context("CompleteJob with the released lease's token")?;
    let info = expect_reason(&status, "LEASE_STALE").context("CompleteJob with a stale token")?;
    ensure!(
        info.metadata.get("job_id") == Some(&queued.id),
        "the LEASE_STALE ErrorInfo does not name job_id {}: {info:?}",
        queued.id
    );
    jobq.complete(&current).await?;

    // JOB_NOT_FOUND.
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = expect_status(jobq.try_get(&unknown).await, Code::NotFound, "")
        .context("GetJob of an unknown id")?;
    expect_reason(&status, "JOB_NOT_FOUND").context("GetJob of an unknown id")?;

    // REQUEST_ID_REUSED: same request_id, another type.
    let request_id = uuid::Uuid::new_v4().to_string();
    try_enqueue_with_id(&jobq, spec("reasons"), &request_id)
        .await
        .context("EnqueueJob with a new request_id")?;
    let status = expect_status(
        try_enqueue_with_id(&jobq, spec("another-type"), &request_id).await,
        Code::FailedPrecondition,
        "",
    )
    .context("EnqueueJob reusing a request_id for another type")?;
    expect_reason(&status, "REQUEST_ID_REUSED").context("EnqueueJob reusing a request_id")?;

    // A batch: only the stale item is refused, with its own ErrorInfo.
    for _ in 0..3 {
        jobq.enqueue(spec("reasons-batch")).await?;
    }
    let batch_lease = LeaseJobsRequest {
        types: vec!["reasons-batch".into()],
        ..lease_request("worker-batch", 3)
    };
    let held = jobq.lease(batch_lease.clone()).await?;
    ensure!(held.len() == 3, "leased {} of 3 jobs", held.len());
    let released = jobq.release("worker-batch", vec![held[1].lease()]).await?;
    ensure!(
        released[0].accepted(),
        "ReleaseJobs refused: {:?}",
        released[0]
    );
    let again = jobq
        .lease(LeaseJobsRequest {
            max_jobs: 1,
            ..batch_lease
        })
        .await?
        .pop()
        .context("the released job was not leased again")?;
    ensure!(again.id() == held[1].id(), "leased {} again", again.id());
    let request = CompleteJobsRequest {
        jobs: held
            .iter()
            .map(|leased| CompleteJobRequest {
                lease: Some(leased.lease()),
                result: None,
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
    for index in [0, 2] {
        ensure!(
            results[index].accepted() && results[index].job_id == held[index].id(),
            "CompleteJobs item {index} was refused: {:?}",
            results[index]
        );
    }
    let stale = &results[1];
    ensure!(
        stale.job_id == held[1].id() && stale.code() == Code::FailedPrecondition as i32,
        "CompleteJobs item 1 (stale) answered {stale:?}"
    );
    let embedded = stale
        .status
        .as_ref()
        .context("the stale item has no status")?;
    let info = expect_reason(&embedded_status(embedded), "LEASE_STALE")
        .context("the stale item of CompleteJobs")?;
    ensure!(
        info.metadata.get("job_id").map(String::as_str) == Some(held[1].id()),
        "the stale item's ErrorInfo does not name job_id {}: {info:?}",
        held[1].id()
    );
    jobq.complete(&again).await?;
    Ok(())
}

// ---- 10. request_id -----------------------------------------------------------------------

/// EnqueueJobRequest.request_id: a repeated call "returns the job the first
/// call created, with already_exists set, for as long as that job exists ...
/// even after it finished"; for a batch, "the jobs the first call created,
/// in the same order".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_returns_the_first_calls_jobs() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let request_id = uuid::Uuid::new_v4().to_string();

    let first = try_enqueue_with_id(&jobq, spec("idempotent"), &request_id)
        .await
        .context("EnqueueJob with a new request_id")?;
    let job = first.job.context("EnqueueJob answered without a job")?;
    ensure!(
        !first.already_exists,
        "a new request_id said already_exists"
    );
    let second = try_enqueue_with_id(&jobq, spec("idempotent"), &request_id)
        .await
        .context("EnqueueJob with the same request_id")?;
    ensure!(
        second.already_exists && second.job.as_ref().map(|j| &j.id) == Some(&job.id),
        "the repeated EnqueueJob answered {second:?}, expected job {} with already_exists",
        job.id
    );

    let leased = lease_exactly(&jobq, "worker-idempotent", &job.id).await?;
    jobq.complete(&leased).await?;
    let after_finish = try_enqueue_with_id(&jobq, spec("idempotent"), &request_id)
        .await
        .context("EnqueueJob with the same request_id after the job succeeded")?;
    ensure!(
        after_finish.already_exists && after_finish.job.as_ref().map(|j| &j.id) == Some(&job.id),
        "after the job finished, the repeated EnqueueJob answered {after_finish:?}, expected \
         job {} with already_exists",
        job.id
    );

    let batch_id = uuid::Uuid::new_v4().to_string();
    let specs = || vec![spec("batch-a"), spec("batch-b"), spec("batch-c")];
    let first_batch = try_enqueue_batch_with_id(&jobq, specs(), &batch_id)
        .await
        .context("EnqueueJobs with a new request_id")?;
    let again = try_enqueue_batch_with_id(&jobq, specs(), &batch_id)
        .await
        .context("EnqueueJobs with the same request_id")?;
    ensure!(
        first_batch.len() == 3 && first_batch.iter().all(|result| !result.already_exists),
        "the first EnqueueJobs answered {first_batch:?}"
    );
    ensure!(
        jobq_tests::job_ids(&first_batch) == jobq_tests::job_ids(&again),
        "the repeated EnqueueJobs gave ids {:?}, the first {:?}",
        jobq_tests::job_ids(&again),
        jobq_tests::job_ids(&first_batch)
    );
    ensure!(
        again.iter().all(|result| result.already_exists),
        "the repeated EnqueueJobs did not set already_exists on every result: {:?}",
        again
            .iter()
            .map(|result| result.already_exists)
            .collect::<Vec<_>>()
    );
    let stored = jobq.list_all(ListJobsRequest::default()).await?;
    ensure!(
        stored.len() == 4,
        "{} jobs stored, expected 1 + 3: {:?}",
        stored.len(),
        stored.iter().map(|job| &job.r#type).collect::<Vec<_>>()
    );
    Ok(())
}

// ---- 11. cancel, then success ------------------------------------------------------------

/// CancelJob: "if the worker completes it anyway, the success stands and the
/// attempt says a cancel was requested"; a failure after the cancel ends it
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_that_completes_anyway_succeeds() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let job = jobq.enqueue(spec("race")).await?;
    let leased = lease_exactly(&jobq, "worker-race", &job.id).await?;
    let flagged = jobq.cancel(&job.id, "operator pressed stop").await?;
    ensure!(
        flagged.state() == JobState::Running && flagged.cancel_requested,
        "CancelJob of a running job answered {} with cancel_requested {}",
        flagged.state().as_str_name(),
        flagged.cancel_requested
    );
    let beat = jobq.heartbeat_one("worker-race", &leased).await?;
    ensure!(
        beat.stop && beat.reason() == StopReason::Cancelled && beat.lease_expires_at.is_some(),
        "the heartbeat after the cancel answered {beat:?}"
    );
    let outcome = jobq
        .complete(&leased)
        .await
        .context("CompleteJob after the cancel")?;
    ensure!(
        outcome.state() == JobState::Succeeded,
        "CompleteJob after the cancel left the job {}",
        outcome.state().as_str_name()
    );
    let stored = jobq.get(&job.id).await?;
    ensure!(
        stored.state() == JobState::Succeeded && !stored.cancel_requested,
        "the job is {} with cancel_requested {}",
        stored.state().as_str_name(),
        stored.cancel_requested
    );
    let attempt = stored.attempts.last().context("no attempt recorded")?;
    ensure!(
        stored.attempts.len() == 1
            && attempt.cancel_requested
            && attempt.outcome() == AttemptOutcome::Succeeded,
        "attempts: {:?}",
        stored.attempts
    );
    ensure!(
        stored.last_error.to_lowercase().contains("cancel"),
        "last_error of the job does not mention the cancel: {:?}",
        stored.last_error
    );

    let failing = jobq.enqueue(spec("race")).await?;
    let leased = lease_exactly(&jobq, "worker-race", &failing.id).await?;
    jobq.cancel(&failing.id, "stop this one too").await?;
    let outcome = jobq
        .fail(&leased, "stopped", true)
        .await
        .context("FailJob after the cancel")?;
    ensure!(
        outcome.state() == JobState::Cancelled,
        "FailJob after the cancel left the job {}",
        outcome.state().as_str_name()
    );
    let stored = jobq.get(&failing.id).await?;
    let attempt = stored.attempts.last().context("no attempt recorded")?;
    ensure!(
        stored.state() == JobState::Cancelled
            && attempt.cancel_requested
            && attempt.outcome() == AttemptOutcome::Cancelled,
        "the job is {} with attempts {:?}",
        stored.state().as_str_name(),
        stored.attempts
    );
    Ok(())
}

// ---- 12. attempt seq -----------------------------------------------------------------------

/// Attempt.seq "never repeats within a job, across releases and RetryJob;
/// also the first half of the log positions"; Attempt.number does not count
/// a release and starts again at 1 after RetryJob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_seqs_never_repeat_while_numbers_restart() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let job = jobq.enqueue(spec("seq")).await?;

    let first = lease_exactly(&jobq, "worker-seq", &job.id).await?;
    let released = jobq.release("worker-seq", vec![first.lease()]).await?;
    ensure!(
        released[0].accepted(),
        "ReleaseJobs refused: {:?}",
        released[0]
    );
    let second = lease_exactly(&jobq, "worker-seq", &job.id).await?;
    jobq.complete(&second).await?;
    let retried = jobq.retry(&job.id).await?;
    ensure!(
        retried.state() == JobState::Queued,
        "RetryJob left the job {}",
        retried.state().as_str_name()
    );
    let third = lease_exactly(&jobq, "worker-seq", &job.id).await?;
    jobq.complete(&third).await?;

    let stored = jobq.get(&job.id).await?;
    let seqs: Vec<i32> = stored.attempts.iter().map(|attempt| attempt.seq).collect();
    let numbers: Vec<i32> = stored
        .attempts
        .iter()
        .map(|attempt| attempt.number)
        .collect();
    let leased_seqs = vec![first.attempt_seq, second.attempt_seq, third.attempt_seq];
    ensure!(
        seqs.len() == 3 && seqs.windows(2).all(|pair| pair[0] < pair[1]) && seqs[0] >= 1,
        "attempt seqs {seqs:?} are not three distinct, strictly increasing numbers"
    );
    ensure!(
        seqs == leased_seqs,
        "GetJob's seqs {seqs:?} differ from the leases' attempt_seq {leased_seqs:?}"
    );
    ensure!(
        numbers == [1, 1, 1],
        "attempt numbers {numbers:?}, expected [1, 1, 1] (release not counted, retry resets)"
    );
    ensure!(
        attempt_outcomes(&stored)
            == [
                AttemptOutcome::Released,
                AttemptOutcome::Succeeded,
                AttemptOutcome::Succeeded
            ],
        "outcomes {:?}",
        attempt_outcomes(&stored)
    );

    let lines = all_lines(&jobq, &job.id).await?;
    for seq in &seqs {
        let of_attempt: Vec<_> = lines
            .iter()
            .filter(|line| (line.position >> 32) as i64 == i64::from(*seq))
            .collect();
        ensure!(
            !of_attempt.is_empty(),
            "no log line has position >> 32 == {seq}; positions: {:?}",
            lines
                .iter()
                .map(|line| (line.position >> 32, line.position & 0xffff_ffff))
                .collect::<Vec<_>>()
        );
        ensure!(
            of_attempt.iter().all(|line| line.attempt == *seq),
            "lines of entry {seq} name other attempts: {:?}",
            of_attempt
                .iter()
                .map(|line| (line.attempt, &line.message))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

// ---- 13. dependencies -----------------------------------------------------------------------

/// Runs `job_id` (which must be the only ready job) to a non-retryable failure.
async fn kill_job(jobq: &JobqClient, job_id: &str) -> Result<()> {
    let leased = lease_exactly(jobq, "worker-deps", job_id).await?;
    let outcome = jobq.fail(&leased, "broken for good", false).await?;
    ensure!(
        outcome.state() == JobState::Dead,
        "a non-retryable failure left {job_id} {}",
        outcome.state().as_str_name()
    );
    Ok(())
}

/// JobSpec.depends_on: a dependency already dead or cancelled refuses the
/// enqueue (DEPENDENCY_FAILED); one that dies later cancels the dependent,
/// "and stays so if that dependency is retried; retry this job too";
/// RetryJob puts a job whose dependencies have not succeeded in BLOCKED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_that_fail_cancel_dependents_until_they_are_retried() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    // Refused at enqueue, naming the failed dependency.
    let dead = jobq.enqueue(spec("dep-dead")).await?;
    kill_job(&jobq, &dead.id).await?;
    let ok = jobq.enqueue(spec("dep-ok")).await?;
    let cancelled = jobq.enqueue(spec("dep-cancelled")).await?;
    jobq.cancel(&cancelled.id, "not needed").await?;
    let stored_before = jobq.list_all(ListJobsRequest::default()).await?.len();
    for (depends_on, field) in [
        (vec![dead.id.clone()], "job.depends_on[0]"),
        (
            vec![ok.id.clone(), cancelled.id.clone()],
            "job.depends_on[1]",
        ),
    ] {
        let refused = jobq
            .try_enqueue(JobSpec {
                depends_on: depends_on.clone(),
                ..spec("dep-child")
            })
            .await;
        let status = expect_status(refused, Code::FailedPrecondition, field)
            .with_context(|| format!("EnqueueJob depending on {depends_on:?}"))?;
        expect_reason(&status, "DEPENDENCY_FAILED")
            .with_context(|| format!("EnqueueJob depending on {depends_on:?}"))?;
    }
    let stored_after = jobq.list_all(ListJobsRequest::default()).await?.len();
    ensure!(
        stored_after == stored_before,
        "refused enqueues stored {} job(s)",
        stored_after - stored_before
    );
    // Clear the ready queue for the leases below.
    jobq.cancel(&ok.id, "out of the way").await?;

    // A dependency that dies cancels its dependents.
    let parent = jobq.enqueue(spec("dep-parent")).await?;
    let left_alone = jobq
        .enqueue(JobSpec {
            depends_on: vec![parent.id.clone()],
            ..spec("dep-left-alone")
        })
        .await?;
    let retried_too = jobq
        .enqueue(JobSpec {
            depends_on: vec![parent.id.clone()],
            ..spec("dep-retried-too")
        })
        .await?;
    for dependent in [&left_alone, &retried_too] {
        ensure!(
            dependent.state() == JobState::Blocked,
            "a job depending on a queued job is {}",
            dependent.state().as_str_name()
        );
    }
    kill_job(&jobq, &parent.id).await?;
    for dependent in [&left_alone, &retried_too] {
        jobq.wait_for_state(&dependent.id, JobState::Cancelled, WAIT)
            .await
            .context("a dependent of a dead job")?;
    }

    // The dependency is retried; one dependent is retried too, while the
    // dependency is still queued: it waits as BLOCKED.
    let requeued = jobq.retry(&parent.id).await?;
    ensure!(
        requeued.state() == JobState::Queued,
        "RetryJob left the dependency {}",
        requeued.state().as_str_name()
    );
    let blocked = jobq.retry(&retried_too.id).await?;
    ensure!(
        blocked.state() == JobState::Blocked,
        "RetryJob of a dependent whose dependency is queued answered {}",
        blocked.state().as_str_name()
    );
    ensure!(
        jobq.get(&retried_too.id).await?.state() == JobState::Blocked,
        "the retried dependent is not stored as BLOCKED"
    );

    let leased = lease_exactly(&jobq, "worker-deps", &parent.id).await?;
    jobq.complete(&leased).await?;
    // Once the retried dependent is queued, the dependency's success has
    // been handed on: the other one must still be cancelled.
    jobq.wait_for_state(&retried_too.id, JobState::Queued, WAIT)
        .await
        .context("the retried dependent once its dependency succeeded")?;
    let still = jobq.get(&left_alone.id).await?;
    ensure!(
        still.state() == JobState::Cancelled,
        "a dependent cancelled by its dead dependency is {} after the dependency was retried \
         and succeeded",
        still.state().as_str_name()
    );
    Ok(())
}

// ---- 14. dashboard static files ---------------------------------------------------------------

/// One plain HTTP/1.1 GET: status code, headers (lower-cased names) and body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let mut stream = bounded(
        Duration::from_secs(10),
        "connecting over TCP",
        tokio::net::TcpStream::connect(addr),
    )
    .await??;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    bounded(
        Duration::from_secs(30),
        &format!("reading the answer to GET {path}"),
        stream.read_to_end(&mut raw),
    )
    .await?
    .with_context(|| format!("reading the answer to GET {path}"))?;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .with_context(|| {
            format!(
                "GET {path}: no end of headers in {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(300)])
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path}: status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok((code, headers, body))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map_or("", |(_, value)| value.as_str())
}

/// The dashboard: the page at `/`; a missing asset is a 404, never the page
/// (an old page asking for a script of another build must not get HTML).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_serves_the_page_and_404s_missing_assets() -> Result<()> {
    let server = TestServer::start().await?;

    let (code, headers, index) = http_get(server.addr(), "/").await?;
    ensure!(code == 200, "GET / answered {code}");
    ensure!(
        header(&headers, "content-type").starts_with("text/html"),
        "GET / has content-type {:?}",
        header(&headers, "content-type")
    );

    let (code, headers, body) = http_get(server.addr(), "/assets/does-not-exist.js").await?;
    let text = String::from_utf8_lossy(&body).to_lowercase();
    ensure!(
        code == 404,
        "GET /assets/does-not-exist.js answered {code} ({:?}), not 404",
        header(&headers, "content-type")
    );
    ensure!(
        !header(&headers, "content-type").starts_with("text/html")
            && !text.contains("<html")
            && !text.contains("<!doctype")
            && body != index,
        "the 404 of a missing asset is the HTML page: content-type {:?}, body {:?}",
        header(&headers, "content-type"),
        &text[..text.len().min(200)]
    );
    Ok(())
}

// ---- 15. no colour codes in a log file ---------------------------------------------------------

/// The server's log on stderr has no ANSI escapes when stderr is a file,
/// even where the environment says the terminal could show colours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_log_to_a_file_has_no_colour_codes() -> Result<()> {
    let data_dir = tempfile::Builder::new()
        .prefix("jobq-e2e-")
        .tempdir()
        .context("creating a temp data dir")?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let mut server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .env("TERM", "xterm-256color")
        .env("COLORTERM", "truecolor")
        .spawn()
        .await?;
    let jobq = server.client().await?;
    jobq.enqueue(spec("log-colours")).await?;
    // Something to log besides start-up: a graceful shutdown.
    server.sigterm().await?;
    let status = server.wait_exit(Duration::from_secs(60)).await?;
    ensure!(
        status.success(),
        "the server exited with {status} after SIGTERM"
    );

    let log = server.stderr_tail();
    ensure!(
        !log.trim().is_empty(),
        "the server wrote nothing on stderr, so there is nothing to check"
    );
    let coloured: Vec<&str> = log.lines().filter(|line| line.contains('\x1b')).collect();
    ensure!(
        coloured.is_empty(),
        "{} line(s) of the server's stderr (a file) have ANSI escape codes, e.g. {:?}",
        coloured.len(),
        coloured[0]
    );
    Ok(())
}
