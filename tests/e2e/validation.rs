//! Bad input gets INVALID_ARGUMENT naming the field, and nothing is written;
//! unknown ids get NOT_FOUND; wrong-state operations FAILED_PRECONDITION.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::pb::{
    CompleteJobRequest, FailJobRequest, HeartbeatRequest, JobSpec, LeaseJobsRequest, LeaseProgress,
    ListJobsRequest, RetryPolicy,
};
use jobq_tests::{
    JobqClient, LeasedJobExt, TestServer, duration, expect_status, lease_request, spec,
    timestamp_after,
};
use tonic::Code;
use tonic_types::StatusExt;

/// Checks that nothing at all is stored on the server.
async fn nothing_stored(jobq: &JobqClient) -> Result<()> {
    let jobs = jobq.list_all(ListJobsRequest::default()).await?;
    ensure!(
        jobs.is_empty(),
        "{} job(s) were stored by rejected requests: {:?}",
        jobs.len(),
        jobs.iter().map(|j| &j.r#type).collect::<Vec<_>>()
    );
    Ok(())
}

async fn expect_bad_spec(jobq: &JobqClient, spec: JobSpec, field: &str) -> Result<()> {
    let description = format!("{spec:?}");
    expect_status(jobq.try_enqueue(spec).await, Code::InvalidArgument, field)
        .with_context(|| format!("EnqueueJob of {description}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_type_is_rejected() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    expect_bad_spec(&jobq, spec(""), "job.type").await?;
    nothing_stored(&jobq).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_that_json_cannot_hold_is_rejected() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let not_a_number = prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
    };
    expect_bad_spec(
        &jobq,
        JobSpec {
            payload: Some(not_a_number),
            ..spec("a")
        },
        "job.payload",
    )
    .await?;
    // Nested deeper than the 32 levels allowed (524,288 nested arrays were once taken).
    let nested = |levels: usize| {
        let mut deep = serde_json::json!(1);
        for _ in 0..levels {
            deep = serde_json::json!([deep]);
        }
        jobq_tests::json(deep)
    };
    expect_bad_spec(
        &jobq,
        JobSpec {
            payload: Some(nested(33)),
            ..spec("a")
        },
        "job.payload",
    )
    .await?;
    // Deeper still, the message no longer decodes at all: still the client's error.
    expect_status(
        jobq.try_enqueue(JobSpec {
            payload: Some(nested(1000)),
            ..spec("a")
        })
        .await,
        Code::InvalidArgument,
        "recursion limit",
    )?;
    nothing_stored(&jobq).await?;
    jobq.enqueue(JobSpec {
        payload: Some(nested(32)),
        ..spec("a")
    })
    .await
    .context("32 levels are allowed")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_and_result_over_the_size_limit_are_rejected() -> Result<()> {
    let server = TestServer::start_with(|config| config.max_payload_bytes = 64).await?;
    let jobq = server.client();

    let big = serde_json::json!({ "data": "x".repeat(100) });
    expect_bad_spec(
        &jobq,
        JobSpec {
            payload: Some(jobq_tests::json(big.clone())),
            ..spec("a")
        },
        "job.payload",
    )
    .await?;
    nothing_stored(&jobq).await?;

    let small = serde_json::json!({ "data": "x".repeat(20) });
    jobq.enqueue(JobSpec {
        payload: Some(jobq_tests::json(small)),
        ..spec("a")
    })
    .await
    .context("a payload under the limit")?;
    let leased = jobq.lease_one("worker-a").await?;
    let request = CompleteJobRequest {
        lease: Some(leased.lease()),
        result: Some(jobq_tests::json(big)),
    };
    expect_status(
        jobq.worker()
            .complete_job(request)
            .await
            .map(|r| r.into_inner()),
        Code::InvalidArgument,
        "result",
    )
    .context("CompleteJob with a result over the limit")?;
    jobq.complete(&leased)
        .await
        .context("the lease survives a rejected report")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_max_attempts_is_rejected() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    expect_bad_spec(
        &jobq,
        JobSpec {
            max_attempts: -1,
            ..spec("a")
        },
        "job.max_attempts",
    )
    .await?;
    nothing_stored(&jobq).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_bad_spec_fields_are_rejected_by_name() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let secs = |s: i64| prost_types::Duration {
        seconds: s,
        nanos: 0,
    };

    let cases: Vec<(&str, JobSpec)> = vec![
        ("job.type", spec(&"t".repeat(129))),
        (
            "job.queue",
            JobSpec {
                queue: "no spaces allowed".into(),
                ..spec("a")
            },
        ),
        (
            "job.priority",
            JobSpec {
                priority: 1001,
                ..spec("a")
            },
        ),
        (
            "job.priority",
            JobSpec {
                priority: -1001,
                ..spec("a")
            },
        ),
        (
            "job.delay",
            JobSpec {
                delay: Some(secs(-5)),
                ..spec("a")
            },
        ),
        (
            "job.timeout",
            JobSpec {
                timeout: Some(secs(0)),
                ..spec("a")
            },
        ),
        (
            "job.retry_policy",
            JobSpec {
                retry_policy: Some(RetryPolicy {
                    base_backoff: Some(secs(10)),
                    max_backoff: Some(secs(1)),
                }),
                ..spec("a")
            },
        ),
        (
            "job.tags",
            JobSpec {
                tags: (0..33).map(|n| format!("tag{n}")).collect(),
                ..spec("a")
            },
        ),
    ];
    let mut failures = Vec::new();
    for (field, bad) in cases {
        if let Err(err) = expect_bad_spec(&jobq, bad, field).await {
            failures.push(format!("{field}: {err:#}"));
        }
    }
    // run_at and delay together: either field may be named.
    let both = JobSpec {
        run_at: Some(timestamp_after(Duration::from_secs(5))),
        delay: Some(secs(5)),
        ..spec("a")
    };
    match jobq.try_enqueue(both).await {
        Err(status)
            if status.code() == Code::InvalidArgument
                && (status.message().contains("run_at") || status.message().contains("delay")) => {}
        other => failures.push(format!(
            "run_at + delay: expected INVALID_ARGUMENT naming run_at or delay, got {other:?}"
        )),
    }
    ensure!(
        failures.is_empty(),
        "{} bad spec(s) not rejected as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    nothing_stored(&jobq).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_carries_a_bad_request_detail_with_the_field() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let status = expect_status(
        jobq.try_enqueue(spec("")).await,
        Code::InvalidArgument,
        "job.type",
    )?;
    let details = status
        .get_details_bad_request()
        .context("no google.rpc.BadRequest detail in the status")?;
    let fields: Vec<_> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    ensure!(
        fields.contains(&"job.type"),
        "BadRequest field violations {fields:?} do not name job.type"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_one_bad_spec_stores_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let batch = vec![spec("batch_probe"), spec(""), spec("batch_probe")];
    expect_status(
        jobq.try_enqueue_batch(batch).await,
        Code::InvalidArgument,
        "jobs[1].type",
    )
    .context("EnqueueJobs with a bad second spec")?;
    let batch = vec![
        spec("batch_probe"),
        spec("batch_probe"),
        JobSpec {
            payload: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(f64::INFINITY)),
            }),
            ..spec("batch_probe")
        },
    ];
    expect_status(
        jobq.try_enqueue_batch(batch).await,
        Code::InvalidArgument,
        "jobs[2].payload",
    )
    .context("EnqueueJobs with a bad third payload")?;
    nothing_stored(&jobq).await?;
    ensure!(
        jobq.stats().await?.totals.iter().all(|c| c.count == 0),
        "GetQueueStats counts jobs of rejected batches"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_must_be_1_to_1000() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let too_many = (0..1001).map(|_| spec("bulk")).collect();
    expect_status(
        jobq.try_enqueue_batch(too_many).await,
        Code::InvalidArgument,
        "jobs",
    )
    .context("EnqueueJobs with 1,001 jobs")?;
    expect_status(
        jobq.try_enqueue_batch(Vec::new()).await,
        Code::InvalidArgument,
        "jobs",
    )
    .context("EnqueueJobs with no job")?;
    nothing_stored(&jobq).await?;

    let most = (0..1000).map(|_| spec("bulk")).collect();
    let stored = jobq
        .enqueue_batch(most)
        .await
        .context("EnqueueJobs with exactly 1,000 jobs")?;
    assert_eq!(stored.len(), 1000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_rejects_unknown_states_and_bad_page_tokens() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    expect_status(
        jobq.try_list(ListJobsRequest {
            states: vec![99],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "states",
    )
    .context("ListJobs with state 99")?;
    expect_status(
        jobq.try_list(ListJobsRequest {
            states: vec![0],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "states",
    )
    .context("ListJobs with JOB_STATE_UNSPECIFIED")?;
    expect_status(
        jobq.try_list(ListJobsRequest {
            page_token: "garbage!!".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    )
    .context("ListJobs with a garbage page_token")?;
    expect_status(
        jobq.try_list(ListJobsRequest {
            page_size: 501,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_size",
    )
    .context("ListJobs with page_size 501")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_are_checked_and_unknown_jobs_are_not_found() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    expect_status(
        jobq.try_get("not-a-job-id").await,
        Code::InvalidArgument,
        "id",
    )
    .context("GetJob with a malformed id")?;
    expect_status(jobq.try_get("").await, Code::InvalidArgument, "id")
        .context("GetJob with an empty id")?;
    let unknown = uuid::Uuid::now_v7().to_string();
    expect_status(jobq.try_get(&unknown).await, Code::NotFound, "")
        .context("GetJob of an unknown id")?;
    expect_status(jobq.try_cancel(&unknown, "").await, Code::NotFound, "")
        .context("CancelJob of an unknown id")?;
    expect_status(jobq.try_retry(&unknown).await, Code::NotFound, "")
        .context("RetryJob of an unknown id")?;
    expect_status(jobq.try_delete("nope").await, Code::InvalidArgument, "id")
        .context("DeleteJob with a malformed id")?;

    let queued = jobq.enqueue(spec("a")).await?;
    expect_status(
        jobq.try_retry(&queued.id).await,
        Code::FailedPrecondition,
        "",
    )
    .context("RetryJob of a queued job")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_requests_are_validated() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();

    let cases: Vec<(&str, LeaseJobsRequest)> = vec![
        ("worker_id", lease_request("", 1)),
        ("max_jobs", lease_request("w", 101)),
        (
            "wait",
            LeaseJobsRequest {
                wait: Some(duration(Duration::from_secs(61))),
                ..lease_request("w", 1)
            },
        ),
        (
            "lease_duration",
            LeaseJobsRequest {
                lease_duration: Some(duration(Duration::from_millis(500))),
                ..lease_request("w", 1)
            },
        ),
    ];
    let mut failures = Vec::new();
    for (field, request) in cases {
        if let Err(err) = expect_status(jobq.try_lease(request).await, Code::InvalidArgument, field)
        {
            failures.push(format!("LeaseJobs {field}: {err:#}"));
        }
    }

    jobq.enqueue(spec("a")).await?;
    let leased = jobq.lease_one("w").await?;
    let negative = FailJobRequest {
        lease: Some(leased.lease()),
        error: "x".into(),
        retryable: true,
        retry_after: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
    };
    if let Err(err) = expect_status(
        jobq.try_fail(negative).await,
        Code::InvalidArgument,
        "retry_after",
    ) {
        failures.push(format!("FailJob retry_after: {err:#}"));
    }
    let progress = HeartbeatRequest {
        worker_id: "w".into(),
        leases: vec![LeaseProgress {
            lease: Some(leased.lease()),
            progress_percent: Some(101),
            progress_message: None,
        }],
        lease_duration: None,
    };
    if let Err(err) = expect_status(
        jobq.worker()
            .heartbeat(progress)
            .await
            .map(|r| r.into_inner()),
        Code::InvalidArgument,
        "progress_percent",
    ) {
        failures.push(format!("Heartbeat progress_percent 101: {err:#}"));
    }
    ensure!(
        failures.is_empty(),
        "{} worker request(s) not rejected as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    jobq.complete(&leased)
        .await
        .context("rejected requests leave the lease intact")?;
    Ok(())
}
