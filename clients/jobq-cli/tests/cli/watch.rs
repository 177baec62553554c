//! `jobq watch` across a server restart: the stream ends with UNAVAILABLE,
//! the CLI says so, reconnects, and goes on with the new events.

use std::time::Duration;

use anyhow::Result;
use jobq_client::NewJob;

use crate::support::{Running, TempDir, client, start_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reconnects_after_a_server_restart() -> Result<()> {
    let dir = TempDir::new("watch-restart")?;
    let data_dir = dir.path().join("data");
    let first = start_server(&data_dir, "127.0.0.1:0".parse()?).await?;
    let addr = first.local_addr();
    let client = client(addr, None)?;
    let server = format!("http://{addr}");
    let mut watch = Running::spawn(&["watch", "--json", "--server", &server])?;

    // Enqueue until the watch shows one: it may not be subscribed yet.
    let mut enqueued = Vec::new();
    let before = NewJob::new("before_restart", serde_json::json!({}));
    loop {
        enqueued.push(client.enqueue(before.clone()).await?.job.id);
        let seen = watch
            .line_matching(Duration::from_millis(500), |line| {
                line.contains("before_restart")
            })
            .await;
        if seen.is_ok() {
            break;
        }
        anyhow::ensure!(enqueued.len() < 60, "the watch shows no event");
    }

    first.shutdown().await?;
    let second = start_server(&data_dir, addr).await?;
    let after = NewJob::new("after_restart", serde_json::json!({}));
    let mut shown = None;
    for _ in 0..60 {
        let id = client.enqueue(after.clone()).await?.job.id;
        let line = watch
            .line_matching(Duration::from_millis(500), |line| line.contains(&id))
            .await;
        if let Ok(line) = line {
            shown = Some(line);
            break;
        }
    }
    let shown = shown.ok_or_else(|| anyhow::anyhow!("no event after the restart"))?;
    let event: serde_json::Value = serde_json::from_str(&shown)?;
    assert_eq!(event["event"], serde_json::json!("created"));
    assert_eq!(event["job"]["type"], serde_json::json!("after_restart"));

    watch.child.start_kill()?;
    let output = watch.finish(Duration::from_secs(10)).await?;
    assert!(
        output.stderr.contains("lost the watch") && output.stderr.contains("watching again"),
        "{output:?}"
    );
    second.shutdown().await?;
    Ok(())
}
