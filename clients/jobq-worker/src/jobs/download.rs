//! `channel_download` and `playlist_download`: yt-dlp into the media root.
//!
//! Payload:
//! - `url` (required): http(s) URL of the channel, playlist or video.
//! - `format`: yt-dlp format selector (default `bv*+ba/b`).
//! - `output_template`: yt-dlp output template, relative (default
//!   `%(playlist_title,channel,uploader|download)s/%(title).150B [%(id)s].%(ext)s`).
//! - `subdir`: directory under the media root to download into.
//! - `archive` (default true): use the media root's download archive, so
//!   nothing is fetched twice.
//! - `max_entries`: only the first N entries of the playlist.
//! - `fan_out` (default false): list the entries first (`--flat-playlist -J`)
//!   and enqueue one child download per entry instead of downloading here,
//!   plus, with `extract_metadata` (default true), one `metadata_extraction`
//!   job per child that depends on it.
//! - `no_playlist` (default false): download just the video of a URL that is
//!   both a video and a playlist (what fan-out children use).
//! - `channel_concurrency` (default: the worker's `--channel-concurrency`,
//!   1): with `fan_out`, how many of the children run at once across all
//!   workers: each gets the concurrency key `channel:<channel or playlist
//!   id>` with this limit; 0 gives them no key.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use jobq_client::pb::JobSpec;
use jobq_client::{Handler, JobContext, JobError, JobResult, NewJob, ResultExt, async_trait};
use serde::Deserialize;
use serde_json::json;

use super::{Settings, types};
use crate::process::{Stream, ToolCommand};
use crate::progress::{
    FILE_PREFIX, PROGRESS_TEMPLATE, is_already_archived_line, parse_item_line, parse_progress_line,
};
use crate::validate::{check_format, check_output_template, check_relative, check_url};

/// Format selector when the payload has none: best video + best audio, else best single file.
pub const DEFAULT_FORMAT: &str = "bv*+ba/b";
/// Output template when the payload has none.
pub const DEFAULT_OUTPUT_TEMPLATE: &str =
    "%(playlist_title,channel,uploader|download)s/%(title).150B [%(id)s].%(ext)s";
/// Output template of fan-out children (their directory is set by `subdir`).
pub const CHILD_OUTPUT_TEMPLATE: &str = "%(title).150B [%(id)s].%(ext)s";
/// The download archive's file name, in the media root.
pub const ARCHIVE_FILE: &str = ".jobq-archive.txt";
/// Most entries a fan-out enqueues.
const MAX_FAN_OUT: usize = 5000;

/// The payload of a download job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadPayload {
    /// Channel, playlist or video URL.
    pub url: Option<String>,
    /// yt-dlp format selector.
    pub format: Option<String>,
    /// yt-dlp output template (relative).
    pub output_template: Option<String>,
    /// Directory under the media root.
    pub subdir: Option<String>,
    /// Use the download archive.
    pub archive: Option<bool>,
    /// Only the first N entries.
    pub max_entries: Option<u32>,
    /// Enqueue one child job per entry instead of downloading here.
    #[serde(default)]
    pub fan_out: bool,
    /// With `fan_out`: a metadata_extraction job per child.
    pub extract_metadata: Option<bool>,
    /// Only the video of a video-and-playlist URL.
    #[serde(default)]
    pub no_playlist: bool,
    /// With `fan_out`: children of one channel running at once (0: no limit).
    pub channel_concurrency: Option<i32>,
}

/// A checked download: what yt-dlp will be told.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadPlan {
    /// The URL.
    pub url: String,
    /// Format selector.
    pub format: String,
    /// Output template.
    pub output_template: String,
    /// The relative directory under the media root (may be empty).
    pub subdir: PathBuf,
    /// The directory files go to.
    pub dir: PathBuf,
    /// The archive file, if used.
    pub archive: Option<PathBuf>,
    /// Entry limit.
    pub max_entries: Option<u32>,
    /// Fan out instead of downloading.
    pub fan_out: bool,
    /// Metadata jobs for fanned-out children.
    pub extract_metadata: bool,
    /// `--no-playlist`.
    pub no_playlist: bool,
    /// Limit of the fanned-out children's channel key (0: no key).
    pub channel_concurrency: i32,
}

impl DownloadPlan {
    /// Checks a payload; every problem is a fatal error naming the field.
    pub fn new(payload: DownloadPayload, settings: &Settings) -> Result<Self, JobError> {
        let url = payload
            .url
            .ok_or_else(|| JobError::fatal("payload.url is required"))?;
        check_url("url", &url)?;
        let format = payload.format.unwrap_or_else(|| DEFAULT_FORMAT.to_owned());
        check_format(&format)?;
        let output_template = payload
            .output_template
            .unwrap_or_else(|| DEFAULT_OUTPUT_TEMPLATE.to_owned());
        check_output_template(&output_template)?;
        let subdir = match &payload.subdir {
            Some(subdir) => check_relative("subdir", subdir)?,
            None => PathBuf::new(),
        };
        let channel_concurrency = payload
            .channel_concurrency
            .unwrap_or(settings.channel_concurrency);
        if !(0..=10_000).contains(&channel_concurrency) {
            return Err(JobError::fatal(
                "payload.channel_concurrency: must be within 0..=10000",
            ));
        }
        if payload.max_entries == Some(0) {
            return Err(JobError::fatal("payload.max_entries: must be at least 1"));
        }
        let dir = settings.media_root.join(&subdir);
        // The subdir must not lead out through a symlink.
        let dir_text = dir.to_string_lossy().into_owned();
        crate::validate::resolve_inside(
            "subdir",
            std::slice::from_ref(&settings.media_root),
            &dir_text,
        )?;
        Ok(Self {
            url,
            format,
            output_template,
            subdir,
            dir,
            archive: payload
                .archive
                .unwrap_or(true)
                .then(|| settings.media_root.join(ARCHIVE_FILE)),
            max_entries: payload.max_entries,
            fan_out: payload.fan_out,
            extract_metadata: payload.extract_metadata.unwrap_or(true),
            no_playlist: payload.no_playlist,
            channel_concurrency,
        })
    }

    /// yt-dlp's arguments for the download.
    pub fn download_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = common_args().into_iter().map(OsString::from).collect();
        for arg in [
            "--newline",
            "--no-colors",
            "--no-quiet",
            "--progress",
            "--progress-template",
            PROGRESS_TEMPLATE,
            "--print",
        ] {
            args.push(arg.into());
        }
        args.push(format!("after_move:{FILE_PREFIX}%(filepath)s").into());
        args.push("-f".into());
        args.push(self.format.clone().into());
        args.push("-P".into());
        args.push(self.dir.clone().into());
        args.push("-o".into());
        args.push(self.output_template.clone().into());
        if let Some(archive) = &self.archive {
            args.push("--download-archive".into());
            args.push(archive.clone().into());
        }
        if let Some(max) = self.max_entries {
            args.push("--playlist-end".into());
            args.push(max.to_string().into());
        }
        if self.no_playlist {
            args.push("--no-playlist".into());
        }
        args.push("--".into());
        args.push(self.url.clone().into());
        args
    }

    /// yt-dlp's arguments to list the entries (fan-out).
    pub fn list_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = common_args().into_iter().map(OsString::from).collect();
        args.push("--flat-playlist".into());
        args.push("--dump-single-json".into());
        if let Some(max) = self.max_entries {
            args.push("--playlist-end".into());
            args.push(max.to_string().into());
        }
        args.push("--".into());
        args.push(self.url.clone().into());
        args
    }
}

/// Flags every yt-dlp run gets: no user config, no update check, no cache,
/// bounded network waits.
pub fn common_args() -> Vec<&'static str> {
    vec![
        "--ignore-config",
        "--no-update",
        "--no-cache-dir",
        "--socket-timeout",
        "30",
    ]
}

/// Errors from yt-dlp that no retry fixes.
fn is_permanent(error: &str) -> bool {
    const PERMANENT: [&str; 9] = [
        "Unsupported URL",
        "HTTP Error 404",
        "HTTP Error 410",
        "Video unavailable",
        "Private video",
        "is not a valid URL",
        "Requested format is not available",
        "This video is not available",
        "account associated with this video has been terminated",
    ];
    PERMANENT.iter().any(|pattern| error.contains(pattern))
}

/// The handler of both download types.
#[derive(Debug, Clone)]
pub struct DownloadHandler {
    settings: Arc<Settings>,
    job_type: &'static str,
}

impl DownloadHandler {
    /// `channel_download`.
    pub fn channel(settings: Arc<Settings>) -> Self {
        Self {
            settings,
            job_type: types::CHANNEL_DOWNLOAD,
        }
    }

    /// `playlist_download`.
    pub fn playlist(settings: Arc<Settings>) -> Self {
        Self {
            settings,
            job_type: types::PLAYLIST_DOWNLOAD,
        }
    }

    async fn download(&self, ctx: &JobContext, plan: &DownloadPlan) -> JobResult {
        tokio::fs::create_dir_all(&plan.dir)
            .await
            .retryable_context(format!("creating {}", plan.dir.display()))?;
        let mut files: Vec<String> = Vec::new();
        let mut already_archived = 0u32;
        let mut last_percent = -1;
        let mut item: Option<(u32, u32)> = None;
        let output = ToolCommand::new(&self.settings.yt_dlp)
            .args(plan.download_args())
            .kill_grace(self.settings.kill_grace)
            .measured_by(self.settings.metrics.clone())
            .run(ctx, |stream, line| {
                if stream == Stream::Stderr {
                    return true;
                }
                if let Some(progress) = parse_progress_line(line) {
                    if let Some(percent) = progress.percent() {
                        last_percent = percent;
                    }
                    ctx.progress(last_percent.max(0), progress.message());
                    return false;
                }
                if let Some(file) = line.strip_prefix(FILE_PREFIX) {
                    files.push(file.to_owned());
                } else if let Some(found) = parse_item_line(line) {
                    item = Some(found);
                } else if is_already_archived_line(line) {
                    already_archived += 1;
                    if let Some((index, count)) = item {
                        ctx.progress(
                            percent_of(index, count),
                            format!("item {index}/{count}: already downloaded"),
                        );
                    }
                }
                true
            })
            .await?;
        if !output.status.success() {
            let summary = output.error_summary();
            let message = format!("yt-dlp failed ({}): {summary}", output.status);
            return Err(if is_permanent(&summary) {
                JobError::fatal(message)
            } else {
                JobError::retryable(message)
            });
        }
        ctx.progress(
            100,
            format!(
                "{} downloaded, {already_archived} already in the archive",
                files.len()
            ),
        );
        Ok(json!({
            "url": plan.url,
            "dir": plan.dir,
            "files": files,
            "downloaded": files.len(),
            "already_archived": already_archived,
        }))
    }

    async fn fan_out(&self, ctx: &JobContext, plan: &DownloadPlan) -> JobResult {
        ctx.progress(0, "listing entries");
        let output = ToolCommand::new(&self.settings.yt_dlp)
            .args(plan.list_args())
            .capture_stdout()
            .kill_grace(self.settings.kill_grace)
            .measured_by(self.settings.metrics.clone())
            .run(ctx, |_, _| true)
            .await?;
        if !output.status.success() {
            let summary = output.error_summary();
            let message = format!("yt-dlp could not list {}: {summary}", plan.url);
            return Err(if is_permanent(&summary) {
                JobError::fatal(message)
            } else {
                JobError::retryable(message)
            });
        }
        let listing: serde_json::Value = serde_json::from_str(output.stdout.trim())
            .retryable_context("yt-dlp printed invalid JSON")?;
        let title = ["title", "playlist_title", "id"]
            .iter()
            .find_map(|key| listing.get(*key).and_then(|value| value.as_str()))
            .unwrap_or("download")
            .to_owned();
        let urls = entry_urls(&listing);
        ctx.log()
            .system(format!("{} entries listed in {title:?}", urls.len()));
        let child_subdir = plan.subdir.join(safe_dir_name(&title));
        let channel_key = (plan.channel_concurrency > 0).then(|| channel_key(&listing, &plan.url));

        let downloads: Vec<JobSpec> = urls
            .iter()
            .map(|url| {
                let job = NewJob::new(
                    self.job_type,
                    json!({
                        "url": url,
                        "format": plan.format,
                        "output_template": CHILD_OUTPUT_TEMPLATE,
                        "subdir": child_subdir,
                        "archive": plan.archive.is_some(),
                        "no_playlist": true,
                    }),
                )
                .queue(ctx.job().queue.clone())
                .priority(ctx.job().priority)
                .parent(ctx.id())
                .unique_key(format!("download:{url}"));
                match &channel_key {
                    Some(key) => job.concurrency_key(key.clone(), plan.channel_concurrency),
                    None => job,
                }
                .into_spec()
            })
            .collect();
        let mut children = Vec::new();
        for chunk in downloads.chunks(1000) {
            let enqueued = ctx
                .client()
                .enqueue_many(chunk.to_vec())
                .await
                .retryable_context("enqueueing downloads")?;
            children.extend(enqueued);
        }
        let mut metadata_ids: Vec<Option<String>> = vec![None; children.len()];
        if plan.extract_metadata && !children.is_empty() {
            let specs: Vec<JobSpec> = children
                .iter()
                .map(|child| {
                    NewJob::new(
                        types::METADATA_EXTRACTION,
                        json!({ "download_job_id": child.job.id }),
                    )
                    .queue(ctx.job().queue.clone())
                    .parent(ctx.id())
                    .depends_on(child.job.id.clone())
                    .unique_key(format!("metadata:{}", child.job.id))
                    .into_spec()
                })
                .collect();
            let mut index = 0;
            for chunk in specs.chunks(1000) {
                let enqueued = ctx
                    .client()
                    .enqueue_many(chunk.to_vec())
                    .await
                    .retryable_context("enqueueing metadata jobs")?;
                for job in enqueued {
                    if let Some(slot) = metadata_ids.get_mut(index) {
                        *slot = Some(job.job.id);
                    }
                    index += 1;
                }
            }
        }
        let listed: Vec<serde_json::Value> = urls
            .iter()
            .zip(&children)
            .zip(&metadata_ids)
            .map(|((url, child), metadata)| {
                json!({ "url": url, "download_job_id": child.job.id, "metadata_job_id": metadata })
            })
            .collect();
        ctx.progress(100, format!("enqueued {} downloads", children.len()));
        Ok(json!({
            "url": plan.url,
            "title": title,
            "entries": urls.len(),
            "children": listed,
        }))
    }
}

#[async_trait]
impl Handler for DownloadHandler {
    async fn run(&self, ctx: JobContext) -> JobResult {
        let payload: DownloadPayload = ctx.payload()?;
        let plan = DownloadPlan::new(payload, &self.settings)?;
        if plan.fan_out {
            self.fan_out(&ctx, &plan).await
        } else {
            self.download(&ctx, &plan).await
        }
    }
}

fn percent_of(index: u32, count: u32) -> i32 {
    if count == 0 {
        0
    } else {
        i32::try_from(u64::from(index) * 100 / u64::from(count)).unwrap_or(100)
    }
}

/// The concurrency key of a listing's downloads: its channel, else its
/// uploader, else the playlist itself, else the URL listed; at most 128 bytes.
pub fn channel_key(listing: &serde_json::Value, url: &str) -> String {
    let id = ["channel_id", "uploader_id", "id"]
        .iter()
        .find_map(|key| listing.get(*key).and_then(|value| value.as_str()))
        .filter(|id| !id.trim().is_empty())
        .unwrap_or(url);
    let mut key = format!("channel:{id}");
    let mut end = key.len().min(128);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key.truncate(end);
    key
}

/// The http(s) URLs of a flat playlist's entries, in order, without duplicates.
pub fn entry_urls(listing: &serde_json::Value) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    let entries = listing
        .get("entries")
        .and_then(|entries| entries.as_array());
    for entry in entries.into_iter().flatten() {
        let url = ["url", "webpage_url", "original_url"]
            .iter()
            .find_map(|key| entry.get(*key).and_then(|value| value.as_str()));
        if let Some(url) = url
            && check_url("url", url).is_ok()
            && !urls.iter().any(|known| known == url)
        {
            urls.push(url.to_owned());
        }
        if urls.len() >= MAX_FAN_OUT {
            break;
        }
    }
    urls
}

/// A directory name made from a title: letters, digits, ` -_.()[]`, at most
/// 100 bytes, never `.`/`..` or empty.
pub fn safe_dir_name(title: &str) -> String {
    let mut name: String = title
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " -_.()[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while name.len() > 100 {
        name.pop();
    }
    let name = name.trim().trim_start_matches('.').to_owned();
    if name.is_empty() {
        "download".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            media_root: PathBuf::from("/nonexistent-media-root"),
            cleanup_roots: vec![],
            yt_dlp: "yt-dlp".into(),
            ffprobe: "ffprobe".into(),
            kill_grace: std::time::Duration::from_secs(1),
            channel_concurrency: 1,
            metrics: None,
        }
    }

    fn plan(payload: serde_json::Value) -> Result<DownloadPlan, JobError> {
        let payload: DownloadPayload = serde_json::from_value(payload).map_err(JobError::fatal)?;
        DownloadPlan::new(payload, &settings())
    }

    #[test]
    fn defaults_are_filled_in() -> Result<(), JobError> {
        let plan = plan(json!({ "url": "https://example.com/playlist?list=1", "subdir": "a/b" }))?;
        assert_eq!(plan.format, DEFAULT_FORMAT);
        assert_eq!(plan.dir, PathBuf::from("/nonexistent-media-root/a/b"));
        assert_eq!(
            plan.archive,
            Some(PathBuf::from("/nonexistent-media-root").join(ARCHIVE_FILE))
        );
        let args: Vec<String> = plan
            .download_args()
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--ignore-config".to_owned()));
        assert!(args.contains(&"--download-archive".to_owned()));
        assert_eq!(
            args[args.len() - 2..],
            [
                "--".to_owned(),
                "https://example.com/playlist?list=1".to_owned()
            ]
        );
        Ok(())
    }

    #[test]
    fn bad_payloads_are_fatal() {
        for payload in [
            json!({}),
            json!({ "url": "file:///etc/passwd" }),
            json!({ "url": "https://x.y", "subdir": "../up" }),
            json!({ "url": "https://x.y", "output_template": "/abs/%(id)s" }),
            json!({ "url": "https://x.y", "format": "--exec x" }),
            json!({ "url": "https://x.y", "max_entries": 0 }),
        ] {
            let result = plan(payload.clone());
            assert!(
                matches!(&result, Err(error) if !error.is_retryable()),
                "{payload} gave {result:?}"
            );
        }
    }

    #[test]
    fn entries_become_unique_http_urls() {
        let listing = json!({ "entries": [
            { "url": "http://127.0.0.1/a.mp4" },
            { "webpage_url": "https://example.com/watch?v=2" },
            { "url": "http://127.0.0.1/a.mp4" },
            { "url": "file:///etc/passwd" },
            { "id": "no-url" },
        ]});
        assert_eq!(
            entry_urls(&listing),
            vec!["http://127.0.0.1/a.mp4", "https://example.com/watch?v=2"]
        );
    }

    #[test]
    fn a_listing_keys_its_downloads_by_channel_then_uploader_then_itself() {
        let url = "http://127.0.0.1:1/channel";
        assert_eq!(
            channel_key(
                &json!({ "channel_id": "UCxyz", "uploader_id": "@a", "id": "p" }),
                url
            ),
            "channel:UCxyz"
        );
        assert_eq!(
            channel_key(&json!({ "uploader_id": "@a", "id": "p" }), url),
            "channel:@a"
        );
        assert_eq!(channel_key(&json!({ "id": "PL1" }), url), "channel:PL1");
        assert_eq!(
            channel_key(&json!({ "id": " " }), url),
            format!("channel:{url}")
        );
        let long = "é".repeat(100);
        let key = channel_key(&json!({ "id": long }), url);
        assert!(key.len() <= 128 && key.starts_with("channel:é"), "{key}");
    }

    #[test]
    fn the_channel_limit_comes_from_the_payload_or_the_worker() -> Result<(), JobError> {
        let url = "http://127.0.0.1:1/channel";
        assert_eq!(plan(json!({ "url": url }))?.channel_concurrency, 1);
        assert_eq!(
            plan(json!({ "url": url, "channel_concurrency": 0 }))?.channel_concurrency,
            0
        );
        assert!(plan(json!({ "url": url, "channel_concurrency": -1 })).is_err());
        Ok(())
    }

    #[test]
    fn titles_become_safe_directory_names() {
        assert_eq!(safe_dir_name("My Channel"), "My Channel");
        assert_eq!(safe_dir_name("../../etc"), "_.._etc");
        assert_eq!(safe_dir_name("a/b\\c"), "a_b_c");
        assert_eq!(safe_dir_name(".."), "download");
        assert_eq!(safe_dir_name(""), "download");
    }

    #[test]
    fn permanent_errors_are_recognised() {
        assert!(is_permanent("ERROR: Unsupported URL: http://x"));
        assert!(is_permanent(
            "ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found"
        ));
        assert!(!is_permanent(
            "ERROR: unable to download video data: timed out"
        ));
    }
}
