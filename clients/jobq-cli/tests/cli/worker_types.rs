//! The built-in job types of jobq-worker against a real server: what a
//! cancelled job's attempt says, and where the media root appears.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use jobq_client::{Client, NewJob, Shutdown, pb};
use serde_json::json;

use crate::support::{TempDir, client, eventually, finished_job, start_server};

fn options(media_root: &Path, yt_dlp: &Path) -> jobq_worker::WorkerOptions {
    jobq_worker::WorkerOptions {
        worker_id: None,
        queues: vec!["default".into()],
        types: Vec::new(),
        concurrency: 2,
        media_root: Some(media_root.to_path_buf()),
        cleanup_roots: Vec::new(),
        grace_period: Duration::from_secs(2),
        cancel_grace: Duration::from_secs(5),
        // Heartbeats every third of the lease: a cancel is seen within a second.
        lease: Duration::from_secs(3),
        poll_wait: Duration::from_secs(5),
        yt_dlp: yt_dlp.to_path_buf(),
        ffprobe: PathBuf::from("true"),
        channel_concurrency: 1,
    }
}

/// A server and a jobq-worker with every built-in type, its media root at
/// `media_root`, running `yt_dlp` for downloads.
async fn start(
    dir: &TempDir,
    media_root: &Path,
    yt_dlp: &Path,
) -> Result<(
    jobq_server::RunningServer,
    Client,
    Shutdown,
    tokio::task::JoinHandle<()>,
)> {
    let server = start_server(&dir.path().join("data"), "127.0.0.1:0".parse()?).await?;
    let client = client(server.local_addr(), None)?;
    let worker =
        jobq_worker::build_worker(client.clone(), &options(media_root, yt_dlp), PathBuf::new())?;
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let worker = tokio::spawn(async move {
        let _ = worker.run(stop).await;
    });
    Ok((server, client, shutdown, worker))
}

/// Cancels `job` once it runs; returns it finished.
async fn cancel_running(client: &Client, job: NewJob) -> Result<pb::Job> {
    let job = client.enqueue(job).await?.job;
    eventually(Duration::from_secs(30), "the job to run", || async {
        Ok((client.get_job(&job.id).await?.state() == pb::JobState::Running).then_some(()))
    })
    .await?;
    client.cancel_job(&job.id, "").await?;
    finished_job(client, &job.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_says_cancelled_once() -> Result<()> {
    let dir = TempDir::new("cancel")?;
    // A "yt-dlp" that answers the worker's --version check, then runs until killed.
    let slow_tool = dir.path().join("slow-yt-dlp");
    std::fs::write(
        &slow_tool,
        "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nexec sleep 600\n",
    )?;
    std::fs::set_permissions(
        &slow_tool,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let (server, client, shutdown, worker) =
        start(&dir, &dir.path().join("media"), &slow_tool).await?;

    // A handler that sees the cancel itself, and one whose tool is killed.
    for job in [
        NewJob::new("noop", json!({ "sleep_ms": 600_000 })),
        NewJob::new(
            "playlist_download",
            json!({ "url": "https://example.com/list" }),
        ),
    ] {
        let job = cancel_running(&client, job).await?;
        assert_eq!(job.state(), pb::JobState::Cancelled, "{job:?}");
        let errors: Vec<&str> = job
            .attempts
            .iter()
            .map(|attempt| attempt.error.as_str())
            .collect();
        assert_eq!(errors, ["cancelled"], "{} {job:?}", job.r#type);
        assert!(!job.last_error.contains("cancelled: cancelled"), "{job:?}");
    }

    shutdown.request_graceful();
    worker.await?;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_media_root_appears_with_the_first_download() -> Result<()> {
    let dir = TempDir::new("media-root")?;
    let media_root = dir.path().join("media");
    // `true` exits 0 whatever it is asked: a download that downloads nothing.
    let (server, client, shutdown, worker) = start(&dir, &media_root, Path::new("true")).await?;
    // Jobs that need no media directory leave none behind.
    let noop = client.enqueue(NewJob::new("noop", json!({}))).await?.job;
    assert_eq!(
        finished_job(&client, &noop.id).await?.state(),
        pb::JobState::Succeeded
    );
    assert!(
        !media_root.exists(),
        "the worker created {}",
        media_root.display()
    );

    let download = NewJob::new(
        "playlist_download",
        json!({ "url": "https://example.com/list", "subdir": "lists" }),
    );
    let download = client.enqueue(download).await?.job;
    let download = finished_job(&client, &download.id).await?;
    assert_eq!(download.state(), pb::JobState::Succeeded, "{download:?}");
    assert!(media_root.join("lists").is_dir());

    shutdown.request_graceful();
    worker.await?;
    server.shutdown().await?;
    Ok(())
}
