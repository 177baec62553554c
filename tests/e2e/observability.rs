//! Observability from outside: the Prometheus endpoint after a known
//! workload, and one trace per job across the server and a real worker
//! process, received by a test OTLP collector.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_tests::otlp::{CollectedSpan, TestCollector};
use jobq_tests::pb::{EnqueueJobRequest, JobSpec, JobState};
use jobq_tests::scrape::{parse, scrape, value};
use jobq_tests::worker_process::WorkerProcess;
use jobq_tests::{
    Backend, LeasedJobExt, ServerCommand, TestDatabase, TestServer, eventually, json, spec,
};
use serde_json::json;

use crate::server_binary;

fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobq-test-worker"))
}

const LONG: Duration = Duration::from_secs(60);

fn obs(max_attempts: i32) -> JobSpec {
    JobSpec {
        max_attempts,
        ..spec("obs")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_exactly() -> Result<()> {
    let server = TestServer::start_with(|config| {
        config.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await?;
    let metrics = server.metrics_addr().context("no metrics address")?;
    let jobq = server.client();

    // 3 succeed at once.
    for _ in 0..3 {
        jobq.enqueue(obs(3)).await?;
        let leased = jobq.lease_one("metrics-worker").await?;
        jobq.complete(&leased).await?;
    }
    // 1 fails once, then succeeds.
    jobq.enqueue(obs(3)).await?;
    let leased = jobq.lease_one("metrics-worker").await?;
    jobq.fail(&leased, "flaky", true).await?;
    let again = jobq.lease_one_eventually("metrics-worker", LONG).await?;
    ensure!(again.id() == leased.id(), "the retry leased another job");
    jobq.complete(&again).await?;
    // 2 die: one out of attempts, one with a fatal error.
    for (max_attempts, retryable) in [(1, true), (3, false)] {
        jobq.enqueue(obs(max_attempts)).await?;
        let leased = jobq.lease_one("metrics-worker").await?;
        jobq.fail(&leased, "broken", retryable).await?;
    }
    // A refused call is counted under its code.
    let refused = jobq.try_enqueue(spec("")).await;
    ensure!(refused.is_err(), "an empty type was accepted");

    let text = scrape(metrics).await?;
    let exposition = parse(&text).with_context(|| text.clone())?;
    let job = [("queue", "default"), ("type", "obs")];
    let expect = |name: &str, labels: &[(&str, &str)], expected: f64| -> Result<()> {
        let got = value(&exposition, name, labels);
        ensure!(
            got == expected,
            "{name}{labels:?} = {got}, expected {expected}\n{text}"
        );
        Ok(())
    };
    expect("jobq_jobs_enqueued_total", &job, 6.0)?;
    expect("jobq_jobs_started_total", &job, 7.0)?;
    expect("jobq_jobs_succeeded_total", &job, 4.0)?;
    expect("jobq_jobs_failed_total", &job, 3.0)?;
    expect("jobq_jobs_retried_total", &job, 1.0)?;
    expect("jobq_jobs_dead_total", &job, 2.0)?;
    expect("jobq_jobs_cancelled_total", &job, 0.0)?;
    expect("jobq_job_wait_seconds_count", &job, 7.0)?;
    expect("jobq_job_run_seconds_count", &job, 7.0)?;
    expect(
        "jobq_jobs",
        &[("queue", "default"), ("state", "succeeded")],
        4.0,
    )?;
    expect("jobq_jobs", &[("queue", "default"), ("state", "dead")], 2.0)?;
    expect(
        "jobq_jobs",
        &[("queue", "default"), ("state", "running")],
        0.0,
    )?;
    expect("jobq_workers_connected", &[], 1.0)?;
    expect(
        "jobq_rpc_calls_total",
        &[
            ("method", "/jobq.v1.JobQueueService/EnqueueJob"),
            ("code", "OK"),
        ],
        6.0,
    )?;
    expect(
        "jobq_rpc_calls_total",
        &[
            ("method", "/jobq.v1.JobQueueService/EnqueueJob"),
            ("code", "INVALID_ARGUMENT"),
        ],
        1.0,
    )?;
    expect(
        "jobq_rpc_calls_total",
        &[("method", "/jobq.v1.WorkerService/FailJob"), ("code", "OK")],
        3.0,
    )?;
    ensure!(
        value(&exposition, "jobq_db_statement_seconds_count", &[]) > 0.0,
        "no write statement timed\n{text}"
    );

    // An open stream is counted while it is open, and no longer once the client leaves.
    let watch = [("method", "/jobq.v1.JobQueueService/WatchJobs")];
    let stream = jobq
        .queue()
        .watch_jobs(jobq_tests::pb::WatchJobsRequest::default())
        .await?;
    eventually(LONG, "the open stream to be counted", || async {
        let exposition = parse(&scrape(metrics).await?)?;
        Ok((value(&exposition, "jobq_streams_open", &watch) == 1.0).then_some(()))
    })
    .await?;
    drop(stream);
    eventually(LONG, "the closed stream to be uncounted", || async {
        let exposition = parse(&scrape(metrics).await?)?;
        Ok((value(&exposition, "jobq_streams_open", &watch) == 0.0).then_some(()))
    })
    .await?;
    server.shutdown().await
}

/// The span of `name` sent by `service` whose attribute `key` is `value`.
fn find<'a>(
    spans: &'a [CollectedSpan],
    service: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Option<&'a CollectedSpan> {
    spans
        .iter()
        .find(|span| span.service == service && span.name == name && span.attribute(key) == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_enqueue_through_every_attempt_in_a_real_worker() -> Result<()> {
    let collector = TestCollector::start().await?;
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .arg("--otlp-endpoint")
        .arg(collector.endpoint())
        .arg("--log-format")
        .arg("json")
        .env("JOBQ_LOG", "info,jobq_server=debug")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn()
        .await?;
    let jobq = server.client().await?;
    let media = tempfile::tempdir()?;
    let media_path = media.path().display().to_string();
    let collector_endpoint = collector.endpoint();
    let worker = WorkerProcess::spawn(
        worker_binary(),
        server.addr(),
        &[
            "--worker-id",
            "traced",
            "--types",
            "noop",
            "--media-root",
            &media_path,
            "--poll-wait",
            "2s",
            "--otlp-endpoint",
            &collector_endpoint,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;

    // The caller's own trace: the server must continue it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(EnqueueJobRequest {
        job: Some(JobSpec {
            payload: Some(json(json!({ "sleep_ms": 50 }))),
            ..spec("noop")
        }),
        request_id: String::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01").parse()?,
    );
    let response = jobq.queue().enqueue_job(request).await?;
    // The answer carries the server's span context back, in the caller's trace.
    let answered = response
        .metadata()
        .get("traceparent")
        .with_context(|| format!("no traceparent in the response: {:?}", response.metadata()))?
        .to_str()?
        .to_owned();
    ensure!(answered.contains(caller_trace), "answered {answered}");
    let good = response.into_inner().job.context("no job")?;
    let flaky = jobq
        .enqueue(JobSpec {
            payload: Some(json(json!({ "fail": "retryable" }))),
            max_attempts: 2,
            ..spec("noop")
        })
        .await?;
    jobq.wait_for_state(&good.id, JobState::Succeeded, LONG)
        .await
        .with_context(|| worker.stderr_tail())?;
    jobq.wait_for_state(&flaky.id, JobState::Dead, LONG)
        .await
        .with_context(|| worker.stderr_tail())?;

    let spans = eventually(LONG, "the spans of both jobs at the collector", || async {
        let spans = collector.spans();
        let complete = find(&spans, "jobq-server", "job.enqueue", "job_id", &good.id).is_some()
            && find(&spans, "jobq-server", "job.enqueue", "job_id", &flaky.id).is_some()
            && spans
                .iter()
                .filter(|span| span.name == "job.attempt" && span.attribute("job_id") == flaky.id)
                .count()
                == 2
            && find(&spans, "jobq-worker", "job.attempt", "job_id", &good.id).is_some()
            && find(&spans, "jobq-worker", "noop", "job_id", &good.id).is_some()
            && find(
                &spans,
                "jobq-server",
                "job.dead_lettered",
                "job_id",
                &flaky.id,
            )
            .is_some();
        Ok(complete.then_some(spans))
    })
    .await
    .with_context(|| {
        let seen: std::collections::BTreeSet<String> = collector
            .spans()
            .iter()
            .map(|span| {
                format!(
                    "{}/{} job_id={:?} attempt={:?}",
                    span.service,
                    span.name,
                    span.attribute("job_id"),
                    span.attribute("attempt")
                )
            })
            .collect();
        format!("spans seen: {seen:#?}\nworker: {}", worker.stderr_tail())
    })?;

    // The enqueue continues the caller's trace, through the server's RPC span.
    let enqueue =
        find(&spans, "jobq-server", "job.enqueue", "job_id", &good.id).context("enqueue")?;
    ensure!(
        enqueue.trace_id == caller_trace,
        "enqueue in trace {}",
        enqueue.trace_id
    );
    let rpc = spans
        .iter()
        .find(|span| span.span_id == enqueue.parent_span_id)
        .context("the enqueue's parent span")?;
    ensure!(
        rpc.name == "jobq.v1.JobQueueService/EnqueueJob",
        "parent {}",
        rpc.name
    );
    ensure!(
        rpc.parent_span_id == "00f067aa0ba902b7",
        "rpc parent {}",
        rpc.parent_span_id
    );

    // Attempt 1 is the enqueue's child, in another process; the handler's span nests under it.
    let attempt =
        find(&spans, "jobq-worker", "job.attempt", "job_id", &good.id).context("attempt")?;
    ensure!(
        attempt.trace_id == enqueue.trace_id,
        "attempt in trace {}",
        attempt.trace_id
    );
    ensure!(
        attempt.parent_span_id == enqueue.span_id,
        "attempt's parent {}",
        attempt.parent_span_id
    );
    ensure!(attempt.attribute("attempt") == "1");
    let handler = find(&spans, "jobq-worker", "noop", "job_id", &good.id).context("handler")?;
    ensure!(
        handler.parent_span_id == attempt.span_id,
        "handler's parent {}",
        handler.parent_span_id
    );
    ensure!(handler.trace_id == enqueue.trace_id);

    // The retry is in the same trace and linked to the enqueue.
    let flaky_enqueue =
        find(&spans, "jobq-server", "job.enqueue", "job_id", &flaky.id).context("flaky enqueue")?;
    let second = find(&spans, "jobq-worker", "job.attempt", "attempt", "2")
        .filter(|span| span.attribute("job_id") == flaky.id)
        .context("attempt 2")?;
    ensure!(
        second.trace_id == flaky_enqueue.trace_id,
        "attempt 2 in trace {}",
        second.trace_id
    );
    ensure!(
        second.links.contains(&(
            flaky_enqueue.trace_id.clone(),
            flaky_enqueue.span_id.clone()
        )),
        "attempt 2 links {:?}",
        second.links
    );
    let dead = find(
        &spans,
        "jobq-server",
        "job.dead_lettered",
        "job_id",
        &flaky.id,
    )
    .context("dead")?;
    ensure!(dead.trace_id == flaky_enqueue.trace_id);

    // The worker's calls carry its context: the server's LeaseJobs spans continue its lease spans.
    let worker_leases: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|span| span.service == "jobq-worker" && span.name == "jobq.lease")
        .collect();
    ensure!(
        spans
            .iter()
            .any(|span| span.name == "jobq.v1.WorkerService/LeaseJobs"
                && worker_leases
                    .iter()
                    .any(|lease| lease.span_id == span.parent_span_id)),
        "no LeaseJobs span under a worker's lease span"
    );

    // JSON log lines about a job carry its id and trace id.
    let log = server.stderr_all();
    let about_good: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["span"]["job_id"] == good.id.as_str())
        .collect();
    ensure!(
        !about_good.is_empty(),
        "no JSON line about {}\n{log}",
        good.id
    );
    for line in &about_good {
        ensure!(line["span"]["trace_id"] == caller_trace, "line {line}");
        ensure!(
            line["span"]["job_type"] == "noop" && line["span"]["queue"] == "default",
            "line {line}"
        );
    }
    // The worker counts what it exported.
    let worker_metrics = worker.metrics_addr(LONG).await?;
    let exported = eventually(LONG, "the worker to count its exported spans", || async {
        let exposition = parse(&scrape(worker_metrics).await?)?;
        let exported = value(&exposition, "jobq_worker_spans_exported_total", &[]);
        Ok((exported > 0.0).then_some(exported))
    })
    .await?;
    ensure!(exported > 0.0);
    let unparsed = log
        .lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_err())
        .count();
    ensure!(unparsed == 0, "{unparsed} log lines are not JSON\n{log}");
    drop(worker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_only_dropped_spans() -> Result<()> {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let data_dir = tempfile::Builder::new().prefix("jobq-e2e-").tempdir()?;
    let database = TestDatabase::provision(Backend::from_env()?, data_dir.path()).await?;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let server = ServerCommand::fast(server_binary(), data_dir.path(), &database)
        .arg("--otlp-endpoint")
        .arg(format!("http://{closed}"))
        .arg("--metrics-listen")
        .arg(metrics_port.to_string())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn()
        .await?;
    let jobq = server.client().await?;
    const JOBS: usize = 200;
    let specs = (0..JOBS).map(|_| spec("obs")).collect();
    let ids: Vec<String> = jobq
        .enqueue_batch(specs)
        .await?
        .into_iter()
        .map(|job| job.id)
        .collect();
    let mut done = 0;
    while done < JOBS {
        let leased = jobq.lease_now("dead-collector", 50).await?;
        ensure!(
            !leased.is_empty(),
            "nothing to lease after {done} of {JOBS}"
        );
        for job in &leased {
            jobq.complete(job).await?;
        }
        done += leased.len();
    }
    for id in &ids {
        ensure!(jobq.get(id).await?.state == JobState::Succeeded as i32);
    }
    let dropped = eventually(LONG, "the dropped spans to be counted", || async {
        let exposition = parse(&scrape(metrics_port).await?)?;
        let dropped = value(&exposition, "jobq_trace_spans_dropped_total", &[]);
        Ok((dropped >= JOBS as f64).then_some(dropped))
    })
    .await
    .with_context(|| server.stderr_tail())?;
    ensure!(dropped >= JOBS as f64);
    Ok(())
}
