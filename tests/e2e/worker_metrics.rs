//! The `jobq-worker` process observed from outside: its Prometheus endpoint
//! after a known workload, and its JSON log lines.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jobq_tests::pb::{JobSpec, JobState};
use jobq_tests::scrape::{parse, sample, scrape};
use jobq_tests::worker_process::WorkerProcess;
use jobq_tests::{TestServer, bounded, eventually, spec};
use serde_json::{Value, json};

/// Generous: the suite must pass on a busy two-core machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobq-test-worker"))
}

fn noop(payload: Value) -> JobSpec {
    JobSpec {
        payload: Some(jobq_tests::json(payload)),
        ..spec("noop")
    }
}

/// A noop-only worker with its own media dir, and `extra` flags.
fn spawn_worker(server: &TestServer, media: &Path, extra: &[&str]) -> Result<WorkerProcess> {
    let media = media.display().to_string();
    let mut args = vec![
        "--types",
        "noop",
        "--media-root",
        &media,
        "--poll-wait",
        "2s",
    ];
    args.extend_from_slice(extra);
    WorkerProcess::spawn(worker_binary(), server.addr(), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_a_known_workload() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let media = tempfile::tempdir()?;
    let worker = spawn_worker(
        &server,
        media.path(),
        &["--worker-id", "measured", "--metrics-listen", "127.0.0.1:0"],
    )?;
    let metrics = worker.metrics_addr(DEADLINE).await?;

    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push((jobq.enqueue(noop(json!({}))).await?, JobState::Succeeded));
    }
    for _ in 0..2 {
        let fatal = noop(json!({ "fail": "fatal" }));
        jobs.push((jobq.enqueue(fatal).await?, JobState::Dead));
    }
    for (job, state) in &jobs {
        jobq.wait_for_state(&job.id, *state, DEADLINE)
            .await
            .with_context(|| worker.stderr_tail())?;
    }

    // A handler's end is counted before the SDK reports it, so a job the
    // server calls terminal is already counted.
    let text = bounded(DEADLINE, "scraping the worker", scrape(metrics)).await??;
    let scrape = parse(&text)?;
    let jobs_total = |outcome| {
        sample(
            &scrape,
            "jobq_worker_jobs_total",
            &[("type", "noop"), ("outcome", outcome)],
        )
    };
    assert_eq!(jobs_total("succeeded"), Some(3.0), "{text}");
    assert_eq!(jobs_total("failed_fatal"), Some(2.0), "{text}");
    let outcomes: f64 = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "jobq_worker_jobs_total")
        .filter_map(|sample| match sample.value {
            prometheus_parse::Value::Untyped(value) | prometheus_parse::Value::Counter(value) => {
                Some(value)
            }
            _ => None,
        })
        .sum();
    assert_eq!(outcomes, 5.0, "no other outcome, no other type:\n{text}");
    assert_eq!(
        sample(&scrape, "jobq_worker_jobs_running", &[("type", "noop")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &scrape,
            "jobq_worker_handler_duration_seconds_count",
            &[("type", "noop")]
        ),
        Some(5.0),
        "{text}"
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == "jobq_worker_handler_duration_seconds"
                && sample.labels.get("type") == Some("noop")
        })
        .with_context(|| format!("no duration histogram:\n{text}"))?;
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        bail!("the duration is not a histogram: {histogram:?}");
    };
    let all = buckets
        .iter()
        .find(|bucket| bucket.less_than == f64::INFINITY)
        .map(|bucket| bucket.count);
    assert_eq!(all, Some(5.0), "{text}");
    // Nothing is exported without an OTLP endpoint; the counters are there.
    assert_eq!(
        sample(&scrape, "jobq_worker_spans_exported_total", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&scrape, "jobq_worker_spans_dropped_total", &[]),
        Some(0.0),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_json_log_lines_carry_the_job_they_were_logged_in() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let media = tempfile::tempdir()?;
    // The harness runs workers with JOBQ_LOG=info,jobq_client=debug: the SDK's
    // "job started" line is logged inside the job's span.
    let worker = spawn_worker(
        &server,
        media.path(),
        &["--worker-id", "json-logger", "--log-format", "json"],
    )?;
    let job = jobq.enqueue(noop(json!({}))).await?;
    jobq.wait_for_state(&job.id, JobState::Succeeded, DEADLINE)
        .await
        .with_context(|| worker.stderr_tail())?;

    let in_job = eventually(DEADLINE, "a log line inside the job's span", || async {
        let log = worker.stderr()?;
        let mut found = None;
        // Only whole lines: the last one may still be being written.
        let whole = log.rsplit_once('\n').map_or("", |(whole, _)| whole);
        for line in whole.lines().filter(|line| !line.trim().is_empty()) {
            let object: serde_json::Map<String, Value> = serde_json::from_str(line)
                .with_context(|| format!("a log line that is no JSON object: {line}"))?;
            let job_id = object
                .get("span")
                .and_then(|span| span.get("job_id"))
                .and_then(Value::as_str);
            if job_id == Some(job.id.as_str()) {
                found = Some(Value::Object(object));
            }
        }
        Ok(found)
    })
    .await
    .with_context(|| worker.stderr_tail())?;
    let span = &in_job["span"];
    assert_eq!(span["name"], "job", "{in_job:?}");
    assert_eq!(span["job_type"], "noop", "{in_job:?}");
    assert_eq!(span["attempt"], 1, "{in_job:?}");
    assert!(in_job["timestamp"].is_string(), "{in_job:?}");
    assert!(in_job["level"].is_string(), "{in_job:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_tool_exits_by_code_and_signal() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let server = TestServer::start().await?;
    let jobq = server.client();
    let media = tempfile::tempdir()?;
    let tools = tempfile::tempdir()?;
    // A stand-in for ffprobe: killed by SIGKILL for `signal.mp4`, else exit 3.
    let fake = tools.path().join("fake-ffprobe");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \"$*\" in *signal.mp4*) kill -KILL $$ ;; esac\nexit 3\n",
    )?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    for name in ["exit.mp4", "signal.mp4"] {
        std::fs::write(media.path().join(name), b"not media")?;
    }
    let fake = fake.display().to_string();
    let worker = WorkerProcess::spawn(
        worker_binary(),
        server.addr(),
        &[
            "--worker-id",
            "tools",
            "--types",
            "metadata_extraction",
            "--media-root",
            &media.path().display().to_string(),
            "--ffprobe",
            &fake,
            "--poll-wait",
            "2s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;
    let metrics = worker.metrics_addr(DEADLINE).await?;
    for name in ["exit.mp4", "signal.mp4"] {
        let job = jobq
            .enqueue(JobSpec {
                payload: Some(jobq_tests::json(json!({ "path": name }))),
                ..spec("metadata_extraction")
            })
            .await?;
        // A tool that cannot read the file is fatal: one attempt.
        jobq.wait_for_state(&job.id, JobState::Dead, DEADLINE)
            .await
            .with_context(|| worker.stderr_tail())?;
    }

    let text = bounded(DEADLINE, "scraping the worker", scrape(metrics)).await??;
    let scrape = parse(&text)?;
    let exits = |code, signal| {
        sample(
            &scrape,
            "jobq_worker_subprocess_exits_total",
            &[
                ("program", "fake-ffprobe"),
                ("code", code),
                ("signal", signal),
            ],
        )
    };
    assert_eq!(exits("3", ""), Some(1.0), "{text}");
    assert_eq!(exits("", "9"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &scrape,
            "jobq_worker_jobs_total",
            &[("type", "metadata_extraction"), ("outcome", "failed_fatal")]
        ),
        Some(2.0),
        "{text}"
    );
    Ok(())
}
