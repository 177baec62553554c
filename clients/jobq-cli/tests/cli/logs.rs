//! `jobq logs -f` across a server restart: the stream ends with UNAVAILABLE,
//! the CLI reconnects and goes on after the last position it printed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use jobq_client::{JobContext, JobResult, NewJob, Shutdown, Worker, WorkerConfig, handler_fn, pb};
use tokio::sync::Notify;

use crate::support::{Running, TempDir, client, eventually, start_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_resumes_after_a_server_restart() -> Result<()> {
    let dir = TempDir::new("logs-restart")?;
    let data_dir = dir.path().join("data");
    let first = start_server(&data_dir, "127.0.0.1:0".parse()?).await?;
    let addr = first.local_addr();
    let client = client(addr, None)?;

    // A job that writes a line, waits for the gate, writes another.
    let gate = Arc::new(Notify::new());
    let handler_gate = gate.clone();
    let worker = Worker::new(client.clone(), WorkerConfig::builder().build()?).handler(
        "gated",
        handler_fn(move |ctx: JobContext| {
            let gate = handler_gate.clone();
            async move {
                ctx.log().stdout("before the restart");
                gate.notified().await;
                ctx.log().stdout("after the restart");
                JobResult::Ok(serde_json::Value::Null)
            }
        }),
    );
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(worker.run(shutdown.clone()));
    let job = client
        .enqueue(NewJob::new("gated", serde_json::json!({})))
        .await?
        .job;

    let server = format!("http://{addr}");
    let mut logs = Running::spawn(&["logs", "-f", &job.id, "--json", "--server", &server])?;
    logs.line_matching(Duration::from_secs(30), |line| {
        line.contains("before the restart")
    })
    .await?;

    first.shutdown().await?;
    let second = start_server(&data_dir, addr).await?;
    gate.notify_one();

    let output = logs.finish(Duration::from_secs(60)).await?;
    assert_eq!(output.code, 0, "{output:?}");
    assert!(output.stderr.contains("reconnecting"), "{output:?}");
    let lines: Vec<serde_json::Value> = output
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("logs --json prints JSON lines")?;
    let positions: Vec<u64> = lines
        .iter()
        .filter_map(|line| line["position"].as_u64())
        .collect();
    assert_eq!(positions.len(), lines.len());
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "positions go up, with no line twice: {positions:?}"
    );
    let count = |text: &str| {
        lines
            .iter()
            .filter(|line| line["message"].as_str() == Some(text))
            .count()
    };
    assert_eq!(count("before the restart"), 1, "{lines:?}");
    assert_eq!(count("after the restart"), 1, "{lines:?}");

    let job = eventually(Duration::from_secs(30), "the job to succeed", || async {
        let job = client.get_job(&job.id).await?;
        Ok((job.state() == pb::JobState::Succeeded).then_some(job))
    })
    .await?;
    assert_eq!(job.state(), pb::JobState::Succeeded);

    shutdown.request_graceful();
    worker.await??;
    second.shutdown().await?;
    Ok(())
}
