//! The `jobq` CLI as a process against a real server: enqueue, get, list
//! --json, logs -f, watch, wait, dead-letter, `up`, and its exit codes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jobq_client::{JobContext, JobResult, Worker, handler_fn};
use jobq_tests::pb::JobState;
use jobq_tests::worker_process::Cli;
use jobq_tests::{TestServer, eventually};
use serde_json::json;

use crate::worker::{RunningWorker, sdk_client, test_worker_config};

const WITHIN: Duration = Duration::from_secs(30);

fn cli_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jobq-test-cli"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_enqueue_get_list_json_and_exit_codes() -> Result<()> {
    let server = TestServer::start().await?;
    let cli = Cli::new(cli_binary(), server.addr());

    let enqueued = cli
        .run(
            &[
                "enqueue",
                "email",
                r#"{"to":"a@example.com"}"#,
                "--queue",
                "mail",
                "--priority",
                "7",
            ],
            WITHIN,
        )
        .await?;
    enqueued.expect_code(0)?;
    let id = enqueued.stdout.trim().to_owned();
    ensure!(
        !id.is_empty() && !id.contains(' '),
        "enqueue prints the id alone: {:?}",
        enqueued.stdout
    );
    let job = server.client().get(&id).await?;
    assert_eq!(
        (job.r#type.as_str(), job.queue.as_str(), job.priority),
        ("email", "mail", 7)
    );

    let got = cli.run(&["--json", "get", &id], WITHIN).await?;
    let got = got.expect_code(0)?.json()?;
    assert_eq!(got["payload"], json!({ "to": "a@example.com" }));
    assert_eq!(got["state"], json!("queued"));

    let listed = cli
        .run(
            &["list", "--json", "--state", "queued", "--queue", "mail"],
            WITHIN,
        )
        .await?;
    let listed = listed.expect_code(0)?.json()?;
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .filter_map(|job| job["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let table = cli.run(&["list"], WITHIN).await?;
    ensure!(
        table.expect_code(0)?.stdout.starts_with("ID ") && table.stdout.contains(&id),
        "{}",
        table.stdout
    );

    // Exit codes scripts can trust.
    cli.run(&["get", "01a22365-0000-7000-8000-000000000000"], WITHIN)
        .await?
        .expect_code(3)?;
    cli.run(&["enqueue", "email", "{not json"], WITHIN)
        .await?
        .expect_code(2)?;
    cli.run(&["list", "--state", "sleeping"], WITHIN)
        .await?
        .expect_code(2)?;
    cli.run(&["cancel", &id], WITHIN).await?.expect_code(0)?;
    cli.run(&["cancel", &id], WITHIN).await?.expect_code(4)?;
    cli.run(&["enqueue", "x", "--priority", "5000"], WITHIN)
        .await?
        .expect_code(2)?;
    let unreachable = Cli::new(cli_binary(), "127.0.0.1:9".parse()?);
    unreachable.run(&["list"], WITHIN).await?.expect_code(5)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sets_queue_limits_concurrency_keys_and_missed_tick_policies() -> Result<()> {
    let server = TestServer::start().await?;
    let cli = Cli::new(cli_binary(), server.addr());

    let set = cli
        .run(
            &[
                "queues",
                "--json",
                "set",
                "downloads",
                "--concurrency",
                "3",
                "--rate",
                "2",
                "--burst",
                "6",
                "--pause",
            ],
            WITHIN,
        )
        .await?;
    let set = set.expect_code(0)?.json()?;
    assert_eq!(
        set[0],
        json!({ "name": "downloads", "paused": true, "concurrency_limit": 3,
                "rate_limit_per_second": 2.0, "rate_burst": 6.0 })
    );
    let table = cli.run(&["queues", "list"], WITHIN).await?;
    let table = table.expect_code(0)?.stdout.clone();
    ensure!(
        table.contains("BURST")
            && table.lines().any(|line| line.starts_with("downloads")
                && line.contains("paused")
                && line.split_whitespace().last() == Some("6")),
        "{table}"
    );
    cli.run(&["queues", "set", "downloads"], WITHIN)
        .await?
        .expect_code(2)?;

    let enqueued = cli
        .run(
            &[
                "enqueue",
                "channel_download",
                "{}",
                "--concurrency-key",
                "channel:UCxyz",
            ],
            WITHIN,
        )
        .await?;
    let id = enqueued.expect_code(0)?.stdout.trim().to_owned();
    let got = cli.run(&["--json", "get", &id], WITHIN).await?;
    let got = got.expect_code(0)?.json()?;
    assert_eq!(
        (
            &got["concurrency_key"],
            &got["concurrency_limit"],
            &got["concurrency_key_running"]
        ),
        (&json!("channel:UCxyz"), &json!(1), &json!(0))
    );
    let shown = cli.run(&["get", &id], WITHIN).await?;
    ensure!(
        shown
            .expect_code(0)?
            .stdout
            .contains("channel:UCxyz (0 of 1 running)"),
        "{}",
        shown.stdout
    );
    cli.run(&["enqueue", "x", "--concurrency-limit", "2"], WITHIN)
        .await?
        .expect_code(2)?;

    let put = cli
        .run(
            &[
                "schedules",
                "--json",
                "put",
                "nightly",
                "0 0 3 * * *",
                "cleanup",
                "--missed-ticks",
                "skip",
            ],
            WITHIN,
        )
        .await?;
    let put = put.expect_code(0)?.json()?;
    assert_eq!(put[0]["missed_ticks"], json!("skip"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_logs_follow_watch_and_wait_track_a_running_job() -> Result<()> {
    let server = TestServer::start().await?;
    let client = sdk_client(&server)?;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate_in = gate.clone();
    let worker = Worker::new(client, test_worker_config(1)?).handler(
        "chatty",
        handler_fn(move |ctx: JobContext| {
            let gate = gate_in.clone();
            async move {
                ctx.log().stdout("first line");
                ctx.progress(50, "half");
                gate.notified().await;
                ctx.log().stdout("last line");
                JobResult::Ok(json!({ "ok": true }))
            }
        }),
    );
    let running = RunningWorker::start(worker);
    let cli = Cli::new(cli_binary(), server.addr());
    let id = cli
        .run(&["enqueue", "chatty"], WITHIN)
        .await?
        .expect_code(0)?
        .stdout
        .trim()
        .to_owned();
    server
        .client()
        .wait_for_state(&id, JobState::Running, WITHIN)
        .await?;

    let mut logs = cli.spawn_streaming(&["logs", "-f", "--raw", &id])?;
    let mut watch = cli.spawn_streaming(&["--json", "watch", "--job", &id, "--until-done"])?;
    let waiter = tokio::spawn({
        let cli = cli.clone();
        let id = id.clone();
        async move {
            cli.run(&["wait", &id, "--timeout", "60s"], Duration::from_secs(90))
                .await
        }
    });
    logs.line_matching(WITHIN, |line| line == "first line")
        .await?;

    // Let the job finish once the followers are attached.
    eventually(WITHIN, "the job to succeed", || async {
        gate.notify_one();
        Ok((server.client().get(&id).await?.state() == JobState::Succeeded).then_some(()))
    })
    .await?;
    logs.line_matching(WITHIN, |line| line == "last line")
        .await?;
    let (code, _) = logs.finish(WITHIN).await?;
    assert_eq!(code, 0, "logs -f ends when the job is finished");

    let event = watch
        .line_matching(WITHIN, |line| {
            line.contains("\"state_changed\"") && line.contains("\"succeeded\"")
        })
        .await?;
    let event: serde_json::Value = serde_json::from_str(&event)?;
    assert_eq!(event["job"]["id"], json!(id));
    assert_eq!(event["previous_state"], json!("running"));
    let (code, _) = watch.finish(WITHIN).await?;
    assert_eq!(code, 0, "watch --until-done exits once the job is finished");

    waiter.await??.expect_code(0)?;
    running.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dead_letter_list_requeue_and_purge() -> Result<()> {
    let server = TestServer::start().await?;
    let jobq = server.client();
    let cli = Cli::new(cli_binary(), server.addr());
    let mut dead = Vec::new();
    for _ in 0..3 {
        let id = cli
            .run(&["enqueue", "doomed", "--max-attempts", "1"], WITHIN)
            .await?
            .expect_code(0)?
            .stdout
            .trim()
            .to_owned();
        let leased = jobq.lease_one("w").await?;
        jobq.fail(&leased, "no way", false).await?;
        dead.push(id);
    }
    let listed = cli
        .run(&["--json", "dead-letter", "list"], WITHIN)
        .await?
        .expect_code(0)?
        .json()?;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(3));

    let requeued = cli
        .run(&["--json", "dead-letter", "requeue", &dead[0]], WITHIN)
        .await?
        .expect_code(0)?
        .json()?;
    assert_eq!(requeued["requeued"], json!([dead[0]]));
    assert_eq!(jobq.get(&dead[0]).await?.state(), JobState::Queued);

    cli.run(&["dead-letter", "purge"], WITHIN)
        .await?
        .expect_code(2)?;
    let purged = cli
        .run(&["--json", "dead-letter", "purge", "--all"], WITHIN)
        .await?
        .expect_code(0)?
        .json()?;
    assert_eq!(purged["deleted"].as_array().map(Vec::len), Some(2));
    cli.run(&["get", &dead[1]], WITHIN).await?.expect_code(3)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_up_runs_a_server_and_a_worker_in_one_process() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("jobq-e2e-up-").tempdir()?;
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.display().to_string();
    let placeholder = Cli::new(cli_binary(), "127.0.0.1:9".parse()?);
    let mut up = placeholder.spawn_streaming(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--types",
        "noop",
        "--metrics-listen",
        "127.0.0.1:0",
    ])?;
    let line = up
        .line_matching(Duration::from_secs(60), |line| {
            line.starts_with("listening on ")
        })
        .await?;
    let addr: std::net::SocketAddr = line.trim_start_matches("listening on ").trim().parse()?;
    let line = up
        .line_matching(Duration::from_secs(10), |line| {
            line.starts_with("metrics on ")
        })
        .await?;
    let metrics: std::net::SocketAddr = line.trim_start_matches("metrics on ").trim().parse()?;
    let cli = Cli::new(cli_binary(), addr);
    let done = cli
        .run(
            &[
                "--json",
                "enqueue",
                "noop",
                r#"{"result":{"hello":"world"}}"#,
                "--wait",
            ],
            Duration::from_secs(60),
        )
        .await?;
    let done = done.expect_code(0)?.json()?;
    assert_eq!(done[0]["state"], json!("succeeded"));
    assert_eq!(done[0]["result"], json!({ "hello": "world" }));
    let failed = cli
        .run(
            &["enqueue", "noop", r#"{"fail":"fatal"}"#, "--wait"],
            Duration::from_secs(60),
        )
        .await?;
    failed.expect_code(7)?;
    // The server's metrics count what the local worker did.
    let exposition = jobq_tests::scrape::parse(&jobq_tests::scrape::scrape(metrics).await?)?;
    let noop = [("queue", "default"), ("type", "noop")];
    assert_eq!(
        jobq_tests::scrape::value(&exposition, "jobq_jobs_succeeded_total", &noop),
        1.0
    );
    assert_eq!(
        jobq_tests::scrape::value(&exposition, "jobq_jobs_dead_total", &noop),
        1.0
    );
    up.sigterm().await?;
    let (code, _) = up.finish(Duration::from_secs(30)).await?;
    assert_eq!(code, 0, "jobq up stops cleanly on SIGTERM");
    Ok(())
}
