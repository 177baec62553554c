//! The built-in job types with the real tools: yt-dlp downloads from a
//! loopback HTTP server, metadata with ffprobe and yt-dlp, cleanup, and
//! cancellation killing yt-dlp's whole process group.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use jobq_client::Worker;
use jobq_tests::media::{
    MediaServer, make_media_file, processes_in_group, processes_with, require_media_tools,
};
use jobq_tests::pb::{JobSpec, JobState, ListJobsRequest};
use jobq_tests::{JobqClient, TestServer, eventually, spec};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::worker::{RunningWorker, sdk_client, test_worker_config};

/// A server, a loopback media site with three one-second videos and a page
/// listing them, and a worker with the built-in types writing under its own
/// media root.
struct MediaSetup {
    server: TestServer,
    site: MediaServer,
    media_root: PathBuf,
    cleanup_root: PathBuf,
    worker: RunningWorker,
    _dirs: TempDir,
}

impl MediaSetup {
    async fn start() -> Result<Self> {
        require_media_tools()?;
        let dirs = tempfile::Builder::new()
            .prefix("jobq-e2e-media-")
            .tempdir()?;
        let base = dirs.path().canonicalize()?;
        let fixture = make_media_file(&base.join("fixture.mp4"))?;
        let site = MediaServer::start().await?;
        for name in ["a", "b", "c"] {
            site.add(&format!("/videos/{name}.mp4"), "video/mp4", fixture.clone());
        }
        site.add_playlist_page(
            "/channel.html",
            "Test Channel",
            &["/videos/a.mp4", "/videos/b.mp4", "/videos/c.mp4"],
        );
        // 50 MB at 16 KiB per 100 ms: a download that outlasts any test.
        site.add_trickle(
            "/slow.mp4",
            "video/mp4",
            50_000_000,
            16 * 1024,
            Duration::from_millis(100),
        );

        let media_root = base.join("media");
        let cleanup_root = base.join("cleanup");
        std::fs::create_dir_all(&cleanup_root)?;
        let server = TestServer::start().await?;
        let settings = jobq_worker::jobs::Settings::prepare(
            &media_root,
            std::slice::from_ref(&cleanup_root),
            "yt-dlp".into(),
            "ffprobe".into(),
        )?;
        let worker = jobq_worker::jobs::register(
            Worker::new(sdk_client(&server)?, test_worker_config(4)?),
            settings,
            &[],
        );
        Ok(Self {
            server,
            site,
            media_root,
            cleanup_root,
            worker: RunningWorker::start(worker),
            _dirs: dirs,
        })
    }

    fn jobq(&self) -> JobqClient {
        self.server.client()
    }

    async fn run(
        &self,
        job_type: &str,
        payload: Value,
        state: JobState,
    ) -> Result<jobq_tests::pb::Job> {
        let job = self
            .jobq()
            .enqueue(JobSpec {
                payload: Some(jobq_tests::json(payload)),
                max_attempts: 2,
                ..spec(job_type)
            })
            .await?;
        self.jobq()
            .wait_for_state(&job.id, state, Duration::from_secs(60))
            .await
    }
}

fn result_of(job: &jobq_tests::pb::Job) -> Result<Value> {
    ensure!(job.result.is_some(), "job {} has no result", job.id);
    Ok(jobq_tests::json_of(&job.result))
}

fn files_under(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlist_download_fetches_every_entry_from_a_loopback_page_once() -> Result<()> {
    let setup = MediaSetup::start().await?;
    let url = setup.site.url("/channel.html");
    let done = setup
        .run(
            "playlist_download",
            json!({ "url": url, "subdir": "lists" }),
            JobState::Succeeded,
        )
        .await?;
    let listed = result_of(&done)?;
    assert_eq!(listed["downloaded"], json!(3), "{listed}");
    let videos = files_under(&setup.media_root.join("lists"), ".mp4");
    assert_eq!(videos.len(), 3, "three videos on disk: {videos:?}");
    assert_eq!(done.progress_percent, 100);
    let archive = std::fs::read_to_string(setup.media_root.join(".jobq-archive.txt"))?;
    assert_eq!(archive.lines().count(), 3, "archive: {archive}");

    // Again: the archive says everything is here, so no video is fetched twice.
    let hits_before: u32 = ["a", "b", "c"]
        .iter()
        .map(|name| setup.site.hits(&format!("/videos/{name}.mp4")))
        .sum();
    let again = setup
        .run(
            "playlist_download",
            json!({ "url": url, "subdir": "lists" }),
            JobState::Succeeded,
        )
        .await?;
    let again = result_of(&again)?;
    assert_eq!(
        (
            again["downloaded"].clone(),
            again["already_archived"].clone()
        ),
        (json!(0), json!(3)),
        "{again}"
    );
    let hits_after: u32 = ["a", "b", "c"]
        .iter()
        .map(|name| setup.site.hits(&format!("/videos/{name}.mp4")))
        .sum();
    assert_eq!(hits_before, hits_after, "no video requested again");

    // The job's log has yt-dlp's output, line by line.
    let logs = setup
        .jobq()
        .queue()
        .get_job_logs(jobq_tests::pb::GetJobLogsRequest {
            job_id: done.id.clone(),
            page_size: 5000,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        logs.lines
            .iter()
            .any(|line| line.message.contains("[download] Downloading item 2 of 3")),
        "yt-dlp output missing from the log"
    );
    setup.worker.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_fan_out_enqueues_downloads_and_metadata_with_duration_and_format() -> Result<()> {
    let setup = MediaSetup::start().await?;
    let url = setup.site.url("/channel.html");
    let parent = setup
        .run(
            "channel_download",
            json!({ "url": url, "fan_out": true, "subdir": "channels" }),
            JobState::Succeeded,
        )
        .await?;
    let listing = result_of(&parent)?;
    assert_eq!(listing["entries"], json!(3), "{listing}");
    let jobq = setup.jobq();
    let children = eventually(Duration::from_secs(90), "6 children to succeed", || async {
        let request = ListJobsRequest {
            parent_id: parent.id.clone(),
            page_size: 100,
            ..Default::default()
        };
        let jobs = jobq.list(request).await?.jobs;
        let dead: Vec<_> = jobs
            .iter()
            .filter(|job| job.state() == JobState::Dead)
            .collect();
        ensure!(dead.is_empty(), "a child died: {dead:?}");
        Ok(
            (jobs.len() == 6 && jobs.iter().all(|job| job.state() == JobState::Succeeded))
                .then_some(jobs),
        )
    })
    .await?;
    let metadata: Vec<_> = children
        .iter()
        .filter(|job| job.r#type == "metadata_extraction")
        .collect();
    assert_eq!(metadata.len(), 3);
    // The downloads of one channel share its concurrency key, limit 1 (the
    // worker's default): they run one at a time across all workers.
    let keys: std::collections::BTreeSet<(String, i32)> = children
        .iter()
        .filter(|job| job.r#type == "channel_download")
        .map(|job| (job.concurrency_key.clone(), job.concurrency_limit))
        .collect();
    ensure!(
        keys.len() == 1
            && keys
                .iter()
                .all(|(key, limit)| key.starts_with("channel:") && *limit == 1),
        "download children's concurrency keys: {keys:?}"
    );
    for job in metadata {
        let job = jobq.get(&job.id).await?;
        assert_eq!(
            job.depends_on.len(),
            1,
            "each metadata job depends on its download"
        );
        let found = result_of(&job)?;
        let duration = found["duration"].as_f64().context("duration")?;
        ensure!(
            (0.9..1.2).contains(&duration),
            "duration {duration} of {found}"
        );
        ensure!(
            found["format"]
                .as_str()
                .is_some_and(|format| format.contains("mp4")),
            "format of {found}"
        );
        let info_json = found["items"][0]["info_json"]
            .as_str()
            .context("info_json path")?;
        ensure!(
            Path::new(info_json).exists(),
            "{info_json} must exist beside the media"
        );
    }
    assert_eq!(
        files_under(&setup.media_root.join("channels"), ".mp4").len(),
        3
    );
    setup.worker.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_extraction_of_a_url_and_of_a_local_file() -> Result<()> {
    let setup = MediaSetup::start().await?;
    let of_url = setup
        .run(
            "metadata_extraction",
            json!({ "url": setup.site.url("/videos/a.mp4") }),
            JobState::Succeeded,
        )
        .await?;
    let of_url = result_of(&of_url)?;
    assert_eq!(of_url["source"], json!("url"));
    assert_eq!(of_url["ext"], json!("mp4"), "{of_url}");
    ensure!(
        of_url["format"]
            .as_str()
            .is_some_and(|format| format.contains("mp4")),
        "{of_url}"
    );

    let local = setup.media_root.join("local").join("clip.mp4");
    std::fs::create_dir_all(local.parent().context("parent")?)?;
    make_media_file(&local)?;
    let of_file = setup
        .run(
            "metadata_extraction",
            json!({ "path": "local/clip.mp4" }),
            JobState::Succeeded,
        )
        .await?;
    let of_file = result_of(&of_file)?;
    let duration = of_file["duration"].as_f64().context("duration")?;
    ensure!((0.9..1.2).contains(&duration), "duration {duration}");
    ensure!(
        of_file["format"]
            .as_str()
            .is_some_and(|format| format.contains("mp4")),
        "{of_file}"
    );
    let info: Value = serde_json::from_str(&std::fs::read_to_string(
        setup.media_root.join("local/clip.info.json"),
    )?)?;
    // The same number (JSON does not tell 1 from 1.0; the API's Value may not either).
    assert_eq!(
        info["duration"].as_f64(),
        Some(duration),
        "the .info.json holds the same result: {info}"
    );
    setup.worker.stop().await
}

fn age(path: &Path, days: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_modified(SystemTime::now() - Duration::from_secs(days * 86_400))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_only_old_files_inside_its_root() -> Result<()> {
    let setup = MediaSetup::start().await?;
    let root = &setup.cleanup_root;
    let outside = root.parent().context("parent")?.join("outside");
    std::fs::create_dir_all(root.join("sub"))?;
    std::fs::create_dir_all(&outside)?;
    for (path, days) in [
        (root.join("old.mp4"), 40),
        (root.join("sub/old.info.json"), 40),
        (root.join("new.mp4"), 1),
        (outside.join("old-outside.mp4"), 40),
    ] {
        std::fs::write(&path, b"data")?;
        age(&path, days)?;
    }
    std::os::unix::fs::symlink(&outside, root.join("link-to-outside"))?;

    // A dry run reports and deletes nothing.
    let dry = setup
        .run(
            "cleanup",
            json!({ "older_than_days": 30, "dry_run": true }),
            JobState::Succeeded,
        )
        .await?;
    assert_eq!(result_of(&dry)?["removed_count"], json!(2));
    assert!(root.join("old.mp4").exists(), "a dry run deletes nothing");

    let done = setup
        .run(
            "cleanup",
            json!({ "older_than_days": 30 }),
            JobState::Succeeded,
        )
        .await?;
    let report = result_of(&done)?;
    assert_eq!(report["removed_count"], json!(2), "{report}");
    assert!(!root.join("old.mp4").exists() && !root.join("sub/old.info.json").exists());
    assert!(root.join("new.mp4").exists(), "new files stay");
    assert!(
        outside.join("old-outside.mp4").exists(),
        "nothing behind a symlink is touched"
    );
    assert!(
        root.join("link-to-outside").exists(),
        "the symlink itself stays"
    );

    // Paths outside the roots, or through the symlink, are refused without a retry.
    for path in [
        outside.display().to_string(),
        "link-to-outside".to_owned(),
        "../outside".to_owned(),
    ] {
        let refused = setup
            .run(
                "cleanup",
                json!({ "older_than_days": 1, "path": path }),
                JobState::Dead,
            )
            .await?;
        assert_eq!(
            refused.attempt, 1,
            "refused at once: {}",
            refused.last_error
        );
    }
    assert!(outside.join("old-outside.mp4").exists());
    setup.worker.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payloads_are_dead_at_once_with_a_clear_error() -> Result<()> {
    let setup = MediaSetup::start().await?;
    for (job_type, payload, mentions) in [
        (
            "channel_download",
            json!({ "url": "file:///etc/passwd" }),
            "scheme",
        ),
        ("playlist_download", json!({}), "payload.url is required"),
        (
            "playlist_download",
            json!({ "url": "http://127.0.0.1/x", "subdir": "../.." }),
            "'..'",
        ),
        (
            "metadata_extraction",
            json!({ "path": "/etc/passwd" }),
            "outside",
        ),
        ("cleanup", json!({ "path": "x" }), "older_than_days"),
    ] {
        let dead = setup.run(job_type, payload.clone(), JobState::Dead).await?;
        assert_eq!(dead.attempt, 1, "{job_type} {payload}: no retry");
        ensure!(
            dead.last_error.contains(mentions),
            "{job_type} {payload}: error {:?} should mention {mentions:?}",
            dead.last_error
        );
    }
    setup.worker.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_download_kills_the_whole_yt_dlp_process_group() -> Result<()> {
    let setup = MediaSetup::start().await?;
    let marker = setup.media_root.display().to_string();
    let job = setup
        .jobq()
        .enqueue(JobSpec {
            payload: Some(jobq_tests::json(
                json!({ "url": setup.site.url("/slow.mp4") }),
            )),
            ..spec("playlist_download")
        })
        .await?;
    // yt-dlp is running (its command line names our media root) and downloading.
    let group = eventually(
        Duration::from_secs(30),
        "yt-dlp to be downloading",
        || async {
            let running = processes_with(&marker);
            Ok((setup.site.hits("/slow.mp4") >= 2 && !running.is_empty()).then(|| running[0].pgid))
        },
    )
    .await?;
    ensure!(!processes_in_group(group).is_empty());

    setup.jobq().cancel(&job.id, "no longer wanted").await?;
    let cancelled = setup
        .jobq()
        .wait_for_state(&job.id, JobState::Cancelled, Duration::from_secs(30))
        .await?;
    assert_eq!(cancelled.state(), JobState::Cancelled);
    eventually(
        Duration::from_secs(10),
        "no process left in yt-dlp's group",
        || async {
            Ok(
                (processes_in_group(group).is_empty() && processes_with(&marker).is_empty())
                    .then_some(()),
            )
        },
    )
    .await?;
    setup.worker.stop().await
}
