//! The built-in job types and the settings they share.

pub mod cleanup;
pub mod download;
pub mod metadata;
pub mod noop;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobq_client::{Handler, Worker};

use crate::metrics::WorkerMetrics;

/// Job type names, as producers enqueue them.
pub mod types {
    /// Download a channel with yt-dlp (optionally one child job per video).
    pub const CHANNEL_DOWNLOAD: &str = "channel_download";
    /// Download a playlist with yt-dlp.
    pub const PLAYLIST_DOWNLOAD: &str = "playlist_download";
    /// Metadata of a URL (yt-dlp) or a local file (ffprobe).
    pub const METADATA_EXTRACTION: &str = "metadata_extraction";
    /// Delete old files under a configured root.
    pub const CLEANUP: &str = "cleanup";
    /// Does nothing (optionally sleeps or fails): smoke tests and benchmarks.
    pub const NOOP: &str = "noop";

    /// Every built-in type.
    pub const ALL: [&str; 5] = [
        CHANNEL_DOWNLOAD,
        PLAYLIST_DOWNLOAD,
        METADATA_EXTRACTION,
        CLEANUP,
        NOOP,
    ];
}

/// What the built-in job types need to know about this machine.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where downloads go: an absolute path with no symlink in it. It may
    /// not exist yet: the jobs that write there create it.
    pub media_root: PathBuf,
    /// Roots cleanup may delete under (canonical paths); the media root by default.
    pub cleanup_roots: Vec<PathBuf>,
    /// The yt-dlp executable.
    pub yt_dlp: PathBuf,
    /// The ffprobe executable.
    pub ffprobe: PathBuf,
    /// How long a tool gets to exit after SIGTERM before SIGKILL.
    pub kill_grace: Duration,
    /// How many fanned-out downloads of one channel run at once (their
    /// concurrency key's limit), unless the payload says; 0: no key.
    pub channel_concurrency: i32,
    /// Where handlers and tools are measured (`--metrics-listen`); `None`:
    /// nowhere, and the handlers run unwrapped.
    pub metrics: Option<Arc<WorkerMetrics>>,
}

/// Fanned-out downloads of one channel run one at a time unless configured.
pub const DEFAULT_CHANNEL_CONCURRENCY: i32 = 1;

impl Settings {
    /// Settings with the media root made absolute and free of symlinks
    /// (but not created: a worker that never downloads leaves no directory
    /// behind), and the cleanup roots canonicalized (they must exist; empty
    /// means the media root).
    pub fn prepare(
        media_root: &Path,
        cleanup_roots: &[PathBuf],
        yt_dlp: PathBuf,
        ffprobe: PathBuf,
    ) -> std::io::Result<Self> {
        let media_root = canonical_maybe_missing(media_root)?;
        let cleanup_roots = if cleanup_roots.is_empty() {
            vec![media_root.clone()]
        } else {
            cleanup_roots
                .iter()
                .map(|root| {
                    root.canonicalize().map_err(|error| {
                        std::io::Error::new(
                            error.kind(),
                            format!("cleanup root {}: {error}", root.display()),
                        )
                    })
                })
                .collect::<std::io::Result<_>>()?
        };
        Ok(Self {
            media_root,
            cleanup_roots,
            yt_dlp,
            ffprobe,
            kill_grace: Duration::from_secs(5),
            channel_concurrency: DEFAULT_CHANNEL_CONCURRENCY,
            metrics: None,
        })
    }
}

/// The canonical form of `path`, which need not exist: its longest existing
/// ancestor canonicalized (symlinks resolved), with the missing rest
/// appended (which, not existing, holds no symlink).
pub fn canonical_maybe_missing(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        match existing.canonicalize() {
            Ok(mut canonical) => {
                canonical.extend(missing.iter().rev());
                return Ok(canonical);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // A `..` after a missing directory cannot be resolved.
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "{} does not exist and cannot be resolved (a `..` after a missing directory?)",
                            path.display()
                        ),
                    ));
                };
                missing.push(name);
                existing = parent;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Registers the built-in handlers of `job_types` (all of them when empty)
/// on `worker`, measured when `settings.metrics` is set.
pub fn register(mut worker: Worker, settings: Settings, job_types: &[String]) -> Worker {
    let settings = Arc::new(settings);
    let metrics = settings.metrics.clone();
    let metrics = metrics.as_ref();
    let wanted = |name: &str| job_types.is_empty() || job_types.iter().any(|wanted| wanted == name);
    if wanted(types::CHANNEL_DOWNLOAD) {
        worker = add(
            worker,
            metrics,
            types::CHANNEL_DOWNLOAD,
            download::DownloadHandler::channel(settings.clone()),
        );
    }
    if wanted(types::PLAYLIST_DOWNLOAD) {
        worker = add(
            worker,
            metrics,
            types::PLAYLIST_DOWNLOAD,
            download::DownloadHandler::playlist(settings.clone()),
        );
    }
    if wanted(types::METADATA_EXTRACTION) {
        worker = add(
            worker,
            metrics,
            types::METADATA_EXTRACTION,
            metadata::MetadataHandler::new(settings.clone()),
        );
    }
    if wanted(types::CLEANUP) {
        worker = add(
            worker,
            metrics,
            types::CLEANUP,
            cleanup::CleanupHandler::new(settings.clone()),
        );
    }
    if wanted(types::NOOP) {
        worker = add(worker, metrics, types::NOOP, noop::NoopHandler);
    }
    worker
}

/// Registers `handler`, wrapped in a measurement when there are metrics.
fn add(
    worker: Worker,
    metrics: Option<&Arc<WorkerMetrics>>,
    job_type: &str,
    handler: impl Handler,
) -> Worker {
    match metrics {
        Some(metrics) => worker.handler(job_type, metrics.measure(job_type, handler)),
        None => worker.handler(job_type, handler),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_media_root_is_not_created_up_front() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().canonicalize()?;
        let media_root = root.join("media").join("nested");
        let settings = Settings::prepare(&media_root, &[], "yt-dlp".into(), "ffprobe".into())?;
        assert_eq!(settings.media_root, media_root);
        assert_eq!(settings.cleanup_roots, vec![media_root.clone()]);
        assert!(!root.join("media").exists());
        Ok(())
    }

    #[test]
    fn missing_paths_are_resolved_through_their_existing_ancestors()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().canonicalize()?;
        std::fs::create_dir_all(root.join("real"))?;
        std::os::unix::fs::symlink(root.join("real"), root.join("link"))?;
        // The symlink on the way is resolved; the missing rest is kept as is.
        assert_eq!(
            canonical_maybe_missing(&root.join("link/./new/deeper"))?,
            root.join("real/new/deeper")
        );
        assert_eq!(
            canonical_maybe_missing(&root.join("real"))?,
            root.join("real")
        );
        assert!(canonical_maybe_missing(&root.join("missing/..")).is_err());
        // A file in the way is an error, not a directory to be.
        std::fs::write(root.join("file"), "x")?;
        assert!(canonical_maybe_missing(&root.join("file/media")).is_err());
        Ok(())
    }

    #[test]
    fn relative_media_roots_are_made_absolute() -> Result<(), Box<dyn std::error::Error>> {
        let resolved = canonical_maybe_missing(Path::new("jobq-media-that-does-not-exist"))?;
        assert!(resolved.is_absolute());
        assert!(resolved.ends_with("jobq-media-that-does-not-exist"));
        assert!(!resolved.exists());
        Ok(())
    }
}
