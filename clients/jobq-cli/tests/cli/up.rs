//! `jobq up`: with `--auth-token`, its worker signs in with a token of the set.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::support::{Running, TempDir, run};

const WORKER_TOKEN: &str = "worker-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_auth_tokens_runs_jobs() -> Result<()> {
    let dir = TempDir::new("up-auth")?;
    let data_dir = dir.path().join("data").display().to_string();
    let mut up = Running::spawn(&[
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--auth-token",
        &format!("worker:{WORKER_TOKEN}"),
        "--auth-token",
        &format!("admin:{ADMIN_TOKEN}"),
        "--types",
        "noop",
        "--grace-period",
        "2s",
    ])?;
    let line = up
        .line_matching(Duration::from_secs(60), |line| {
            line.starts_with("listening on ")
        })
        .await?;
    let addr = line.trim_start_matches("listening on ").trim();
    let server = format!("http://{addr}");

    // Before, the worker went in without a token, was refused, and `up` quit.
    let done = run(
        &[
            "enqueue",
            "noop",
            r#"{"result": {"ok": true}}"#,
            "--wait",
            "--wait-timeout",
            "60s",
            "--json",
            "--server",
            &server,
            "--token",
            ADMIN_TOKEN,
        ],
        Duration::from_secs(90),
    )
    .await?;
    assert_eq!(done.code, 0, "{done:?}");
    let jobs: serde_json::Value = serde_json::from_str(&done.stdout).context("wait --json")?;
    assert_eq!(jobs[0]["result"], serde_json::json!({ "ok": true }));

    up.terminate().await?;
    let stopped = up.finish(Duration::from_secs(60)).await?;
    assert_eq!(stopped.code, 0, "{stopped:?}");
    Ok(())
}

#[tokio::test]
async fn up_refuses_a_token_set_its_worker_cannot_use() -> Result<()> {
    let dir = TempDir::new("up-producer")?;
    let data_dir = dir.path().join("data").display().to_string();
    let output = run(
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--auth-token",
            "producer:producer-0123456789abcdef",
        ],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(output.code, 2, "{output:?}");
    assert!(
        output.stderr.contains("no worker or admin token") && output.stderr.contains("--no-worker"),
        "{output:?}"
    );
    Ok(())
}
