//! The built-in job types and the settings they share.

pub mod cleanup;
pub mod download;
pub mod metadata;
pub mod noop;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobq_client::Worker;

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
    /// Where downloads go (canonical path).
    pub media_root: PathBuf,
    /// Roots cleanup may delete under (canonical paths); the media root by default.
    pub cleanup_roots: Vec<PathBuf>,
    /// The yt-dlp executable.
    pub yt_dlp: PathBuf,
    /// The ffprobe executable.
    pub ffprobe: PathBuf,
    /// How long a tool gets to exit after SIGTERM before SIGKILL.
    pub kill_grace: Duration,
}

impl Settings {
    /// Settings with the media root created and canonicalized, and the
    /// cleanup roots canonicalized (they must exist; empty means the media root).
    pub fn prepare(
        media_root: &Path,
        cleanup_roots: &[PathBuf],
        yt_dlp: PathBuf,
        ffprobe: PathBuf,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(media_root)?;
        let media_root = media_root.canonicalize()?;
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
        })
    }
}

/// Registers the built-in handlers of `job_types` (all of them when empty) on `worker`.
pub fn register(mut worker: Worker, settings: Settings, job_types: &[String]) -> Worker {
    let settings = Arc::new(settings);
    let wanted = |name: &str| job_types.is_empty() || job_types.iter().any(|wanted| wanted == name);
    if wanted(types::CHANNEL_DOWNLOAD) {
        worker = worker.handler(
            types::CHANNEL_DOWNLOAD,
            download::DownloadHandler::channel(settings.clone()),
        );
    }
    if wanted(types::PLAYLIST_DOWNLOAD) {
        worker = worker.handler(
            types::PLAYLIST_DOWNLOAD,
            download::DownloadHandler::playlist(settings.clone()),
        );
    }
    if wanted(types::METADATA_EXTRACTION) {
        worker = worker.handler(
            types::METADATA_EXTRACTION,
            metadata::MetadataHandler::new(settings.clone()),
        );
    }
    if wanted(types::CLEANUP) {
        worker = worker.handler(
            types::CLEANUP,
            cleanup::CleanupHandler::new(settings.clone()),
        );
    }
    if wanted(types::NOOP) {
        worker = worker.handler(types::NOOP, noop::NoopHandler);
    }
    worker
}
