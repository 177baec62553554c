//! `metadata_extraction`: what a URL (yt-dlp `--dump-json`) or a local media
//! file (ffprobe) is. The result JSON becomes the job's result and, for a
//! local file, a `.info.json` file beside it.
//!
//! Payload, exactly one of:
//! - `url`: http(s) URL; yt-dlp's metadata, nothing downloaded.
//! - `path`: a media file under the media root (relative to it, or absolute inside it).
//! - `download_job_id`: a succeeded download job; every file it downloaded.
//!
//! and optionally `write_info_json` (default true).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobq_client::pb::JobState;
use jobq_client::{Handler, JobContext, JobError, JobResult, ResultExt, async_trait};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Settings;
use super::download::common_args;
use crate::process::ToolCommand;
use crate::validate::{check_url, resolve_inside};

/// Keys of yt-dlp's info dict left out of the result: large and rarely useful.
const BULKY_KEYS: [&str; 9] = [
    "formats",
    "thumbnails",
    "automatic_captions",
    "subtitles",
    "requested_formats",
    "requested_downloads",
    "heatmap",
    "http_headers",
    "_format_sort_fields",
];

/// The payload of a metadata job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataPayload {
    /// A URL to ask yt-dlp about.
    pub url: Option<String>,
    /// A local file under the media root.
    pub path: Option<String>,
    /// A download job whose files to probe.
    pub download_job_id: Option<String>,
    /// Write `NAME.info.json` beside each local file (default true).
    pub write_info_json: Option<bool>,
}

/// What to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A URL.
    Url(String),
    /// A local file (checked to be inside the media root).
    File(PathBuf),
    /// The files of a download job.
    Download(String),
}

impl MetadataPayload {
    /// The one source the payload names; fatal if none or several.
    pub fn source(&self, settings: &Settings) -> Result<Source, JobError> {
        let given = [
            self.url.is_some(),
            self.path.is_some(),
            self.download_job_id.is_some(),
        ];
        if given.iter().filter(|given| **given).count() != 1 {
            return Err(JobError::fatal(
                "payload: exactly one of url, path or download_job_id is required",
            ));
        }
        if let Some(url) = &self.url {
            check_url("url", url)?;
            return Ok(Source::Url(url.clone()));
        }
        if let Some(path) = &self.path {
            let (_, path) =
                resolve_inside("path", std::slice::from_ref(&settings.media_root), path)?;
            return Ok(Source::File(path));
        }
        match &self.download_job_id {
            Some(id) if !id.trim().is_empty() => Ok(Source::Download(id.clone())),
            _ => Err(JobError::fatal(
                "payload.download_job_id: must not be empty",
            )),
        }
    }
}

/// The handler.
#[derive(Debug, Clone)]
pub struct MetadataHandler {
    settings: Arc<Settings>,
}

impl MetadataHandler {
    /// A handler using `settings`.
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }

    async fn of_url(&self, ctx: &JobContext, url: &str) -> JobResult {
        let output = ToolCommand::new(&self.settings.yt_dlp)
            .args(common_args())
            .args(["--dump-json", "--no-playlist", "--", url])
            .capture_stdout()
            .kill_grace(self.settings.kill_grace)
            .measured_by(self.settings.metrics.clone())
            .run(ctx, |_, _| true)
            .await?;
        if !output.status.success() {
            let summary = output.error_summary();
            let message = format!("yt-dlp --dump-json failed ({}): {summary}", output.status);
            let fatal = summary.contains("Unsupported URL") || summary.contains("HTTP Error 404");
            return Err(if fatal {
                JobError::fatal(message)
            } else {
                JobError::retryable(message)
            });
        }
        let first_line = output
            .stdout
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or_default();
        let mut info: Value =
            serde_json::from_str(first_line).retryable_context("yt-dlp printed invalid JSON")?;
        Ok(url_summary(url, &mut info))
    }

    async fn of_file(&self, ctx: &JobContext, path: &Path, write_info_json: bool) -> JobResult {
        if !tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Err(JobError::fatal(format!(
                "payload.path: {} does not exist",
                path.display()
            )));
        }
        let output = ToolCommand::new(&self.settings.ffprobe)
            .args([
                "-v",
                "error",
                "-print_format",
                "json",
                "-show_format",
                "-show_streams",
            ])
            .arg(path)
            .capture_stdout()
            .kill_grace(self.settings.kill_grace)
            .measured_by(self.settings.metrics.clone())
            .run(ctx, |_, _| true)
            .await?;
        if !output.status.success() {
            return Err(JobError::fatal(format!(
                "ffprobe cannot read {} ({}): {}",
                path.display(),
                output.status,
                output.error_summary()
            )));
        }
        let probe: Value = serde_json::from_str(&output.stdout)
            .retryable_context("ffprobe printed invalid JSON")?;
        let mut summary = file_summary(path, probe);
        if write_info_json && let Some(info_path) = info_json_path(path) {
            summary["info_json"] = json!(info_path);
            write_json(&info_path, &summary).await?;
            ctx.log().system(format!("wrote {}", info_path.display()));
        }
        Ok(summary)
    }

    async fn of_download(
        &self,
        ctx: &JobContext,
        download_id: &str,
        write_info_json: bool,
    ) -> JobResult {
        let download = match ctx.client().get_job(download_id).await {
            Ok(job) => job,
            Err(error) if error.is_not_found() => {
                return Err(JobError::fatal(format!(
                    "payload.download_job_id: no job {download_id}"
                )));
            }
            Err(error) => {
                return Err(JobError::retryable(format!(
                    "reading download job {download_id}: {error}"
                )));
            }
        };
        match download.state() {
            JobState::Succeeded => {}
            JobState::Dead | JobState::Cancelled => {
                return Err(JobError::fatal(format!(
                    "download job {download_id} ended {}; nothing to probe",
                    download.state().as_str_name()
                )));
            }
            other => {
                return Err(JobError::retryable(format!(
                    "download job {download_id} is {}, not finished yet",
                    other.as_str_name()
                ))
                .retry_after(Duration::from_secs(10)));
            }
        }
        let result: Value = download
            .result
            .as_ref()
            .map_or_else(|| serde_json::json!({}), jobq_client::json_value);
        let files: Vec<String> = result
            .get("files")
            .and_then(Value::as_array)
            .map(|files| {
                files
                    .iter()
                    .filter_map(|file| file.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut items = Vec::new();
        for file in &files {
            let (_, path) = resolve_inside(
                "download_job_id",
                std::slice::from_ref(&self.settings.media_root),
                file,
            )?;
            items.push(self.of_file(ctx, &path, write_info_json).await?);
        }
        if files.is_empty() {
            ctx.log().system(format!(
                "download job {download_id} downloaded no new file; nothing to probe"
            ));
        }
        let first = items.first().cloned().unwrap_or(Value::Null);
        Ok(json!({
            "source": "download",
            "download_job_id": download_id,
            "duration": first.get("duration").cloned().unwrap_or(Value::Null),
            "format": first.get("format").cloned().unwrap_or(Value::Null),
            "items": items,
        }))
    }
}

#[async_trait]
impl Handler for MetadataHandler {
    async fn run(&self, ctx: JobContext) -> JobResult {
        let payload: MetadataPayload = ctx.payload()?;
        let write_info_json = payload.write_info_json.unwrap_or(true);
        match payload.source(&self.settings)? {
            Source::Url(url) => self.of_url(&ctx, &url).await,
            Source::File(path) => self.of_file(&ctx, &path, write_info_json).await,
            Source::Download(id) => self.of_download(&ctx, &id, write_info_json).await,
        }
    }
}

/// The result for a URL: the main fields on top, yt-dlp's info (without the bulky parts) below.
pub fn url_summary(url: &str, info: &mut Value) -> Value {
    if let Some(object) = info.as_object_mut() {
        let formats = object
            .get("formats")
            .and_then(Value::as_array)
            .map(Vec::len);
        for key in BULKY_KEYS {
            object.remove(key);
        }
        if let Some(formats) = formats {
            object.insert("format_count".into(), json!(formats));
        }
    }
    let field = |key: &str| info.get(key).cloned().unwrap_or(Value::Null);
    json!({
        "source": "url",
        "url": url,
        "id": field("id"),
        "title": field("title"),
        "duration": field("duration"),
        "format": field("format"),
        "ext": field("ext"),
        "width": field("width"),
        "height": field("height"),
        "uploader": field("uploader"),
        "upload_date": field("upload_date"),
        "webpage_url": field("webpage_url"),
        "info": info,
    })
}

/// The result for a local file from ffprobe's JSON: duration in seconds and
/// the container format on top, a short list of streams, the full probe below.
pub fn file_summary(path: &Path, probe: Value) -> Value {
    let format = probe.get("format");
    let text = |key: &str| {
        format
            .and_then(|format| format.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let duration = text("duration").and_then(|duration| duration.parse::<f64>().ok());
    let size = text("size").and_then(|size| size.parse::<u64>().ok());
    let streams: Vec<Value> = probe
        .get("streams")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|stream| {
            let pick = |key: &str| stream.get(key).cloned().unwrap_or(Value::Null);
            json!({
                "index": pick("index"),
                "codec_type": pick("codec_type"),
                "codec_name": pick("codec_name"),
                "width": pick("width"),
                "height": pick("height"),
                "sample_rate": pick("sample_rate"),
                "channels": pick("channels"),
            })
        })
        .collect();
    json!({
        "source": "file",
        "path": path,
        "duration": duration,
        "format": text("format_name"),
        "format_long_name": text("format_long_name"),
        "size_bytes": size,
        "streams": streams,
        "probe": probe,
    })
}

/// `dir/name.mp4` → `dir/name.info.json` (`None` for a file that already is one).
pub fn info_json_path(media: &Path) -> Option<PathBuf> {
    let name = media.file_name()?.to_string_lossy();
    if name.ends_with(".info.json") {
        return None;
    }
    Some(media.with_extension("info.json"))
}

/// Writes `value` to `path` through a temp file and a rename, so readers never see half a file.
async fn write_json(path: &Path, value: &Value) -> Result<(), JobError> {
    let text = serde_json::to_string_pretty(value).retryable()?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.tmp"));
    tokio::fs::write(&temp, text)
        .await
        .retryable_context(format!("writing {}", temp.display()))?;
    tokio::fs::rename(&temp, path)
        .await
        .retryable_context(format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            media_root: PathBuf::from("/media-root"),
            cleanup_roots: vec![],
            yt_dlp: "yt-dlp".into(),
            ffprobe: "ffprobe".into(),
            kill_grace: Duration::from_secs(1),
            channel_concurrency: 1,
            metrics: None,
        }
    }

    fn source(payload: Value) -> Result<Source, JobError> {
        let payload: MetadataPayload = serde_json::from_value(payload).map_err(JobError::fatal)?;
        payload.source(&settings())
    }

    #[test]
    fn exactly_one_source() {
        assert_eq!(
            source(json!({ "url": "https://x.y/v" })).ok(),
            Some(Source::Url("https://x.y/v".into()))
        );
        assert_eq!(
            source(json!({ "path": "a/b.mp4" })).ok(),
            Some(Source::File("/media-root/a/b.mp4".into()))
        );
        assert_eq!(
            source(json!({ "download_job_id": "j1" })).ok(),
            Some(Source::Download("j1".into()))
        );
        for bad in [
            json!({}),
            json!({ "url": "https://x.y", "path": "a" }),
            json!({ "url": "gopher://x" }),
            json!({ "path": "/etc/passwd" }),
            json!({ "path": "../x" }),
            json!({ "download_job_id": " " }),
        ] {
            assert!(
                matches!(source(bad.clone()), Err(error) if !error.is_retryable()),
                "{bad}"
            );
        }
    }

    #[test]
    fn ffprobe_output_is_summarised() {
        let probe = json!({
            "format": { "format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "1.024000", "size": "12330" },
            "streams": [{ "index": 0, "codec_type": "video", "codec_name": "h264", "width": 64, "height": 64 }],
        });
        let summary = file_summary(Path::new("/m/a.mp4"), probe);
        assert_eq!(summary["duration"], json!(1.024));
        assert_eq!(summary["format"], json!("mov,mp4,m4a,3gp,3g2,mj2"));
        assert_eq!(summary["size_bytes"], json!(12330));
        assert_eq!(summary["streams"][0]["codec_name"], json!("h264"));
    }

    #[test]
    fn yt_dlp_info_loses_its_bulk() {
        let mut info = json!({ "id": "a", "duration": 3.5, "format": "mp4 - unknown", "formats": [{}, {}], "thumbnails": [] });
        let summary = url_summary("http://x/a.mp4", &mut info);
        assert_eq!(summary["duration"], json!(3.5));
        assert_eq!(summary["info"]["format_count"], json!(2));
        assert!(summary["info"].get("formats").is_none());
    }

    #[test]
    fn info_json_sits_beside_the_media() {
        assert_eq!(
            info_json_path(Path::new("/m/x [a].mp4")),
            Some(PathBuf::from("/m/x [a].info.json"))
        );
        assert_eq!(info_json_path(Path::new("/m/x.info.json")), None);
    }
}
