//! `cleanup`: deletes old files under a configured root.
//!
//! Payload:
//! - `path`: where to clean: relative to the first cleanup root, or absolute
//!   inside one of them (default: the first root). Anything outside the
//!   roots, or reached through a symlink, is refused (fatal).
//! - `older_than_days`: delete files last modified longer ago than this.
//! - `max_total_bytes`: then delete the oldest files until the rest fits.
//! - `dry_run` (default false): report what would go, delete nothing.
//! - `include_hidden` (default false): also consider dot files and dot
//!   directories (the download archive is one).
//!
//! At least one of `older_than_days` and `max_total_bytes` is required.
//! Symlinks are never followed nor deleted: a link inside the root cannot
//! lead the cleanup out of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jobq_client::{Handler, JobContext, JobError, JobResult, async_trait};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Settings;
use crate::validate::resolve_inside;

/// Most removed files listed one by one in the result (all are counted).
const MAX_LISTED: usize = 1000;

/// The payload of a cleanup job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupPayload {
    /// Where to clean.
    pub path: Option<String>,
    /// Age limit in days (fractions allowed).
    pub older_than_days: Option<f64>,
    /// Size budget in bytes.
    pub max_total_bytes: Option<u64>,
    /// Report only.
    #[serde(default)]
    pub dry_run: bool,
    /// Consider dot files too.
    #[serde(default)]
    pub include_hidden: bool,
}

/// A checked cleanup.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupPlan {
    /// The directory cleaned (inside a root).
    pub dir: PathBuf,
    /// Files older than this go.
    pub older_than: Option<Duration>,
    /// Then the oldest go until the rest fits.
    pub max_total_bytes: Option<u64>,
    /// Report only.
    pub dry_run: bool,
    /// Consider dot files.
    pub include_hidden: bool,
}

impl CleanupPlan {
    /// Checks a payload against the configured roots.
    pub fn new(payload: CleanupPayload, roots: &[PathBuf]) -> Result<Self, JobError> {
        if payload.older_than_days.is_none() && payload.max_total_bytes.is_none() {
            return Err(JobError::fatal(
                "payload: older_than_days or max_total_bytes is required",
            ));
        }
        let older_than = match payload.older_than_days {
            Some(days) if days.is_finite() && (0.0..=36_500.0).contains(&days) => {
                Some(Duration::from_secs_f64(days * 86_400.0))
            }
            Some(_) => {
                return Err(JobError::fatal(
                    "payload.older_than_days: must be between 0 and 36500",
                ));
            }
            None => None,
        };
        let requested = payload.path.unwrap_or_default();
        let (_, dir) = if requested.is_empty() {
            let root = roots
                .first()
                .ok_or_else(|| JobError::fatal("no cleanup root is configured"))?;
            (root.clone(), root.clone())
        } else {
            resolve_inside("path", roots, &requested)?
        };
        Ok(Self {
            dir,
            older_than,
            max_total_bytes: payload.max_total_bytes,
            dry_run: payload.dry_run,
            include_hidden: payload.include_hidden,
        })
    }
}

/// One file found by the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Last modification.
    #[serde(skip)]
    pub modified: SystemTime,
}

/// What the walk saw.
#[derive(Debug, Default)]
pub struct Walk {
    /// Regular files.
    pub files: Vec<FoundFile>,
    /// Symlinks met (not followed).
    pub symlinks: Vec<PathBuf>,
    /// Entries that could not be read.
    pub errors: Vec<String>,
}

/// Lists the regular files under `dir`, never following a symlink.
pub fn walk(dir: &Path, include_hidden: bool) -> Walk {
    let mut walk = Walk::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(error) => {
                walk.errors.push(format!("{}: {error}", current.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    walk.errors.push(format!("{}: {error}", current.display()));
                    continue;
                }
            };
            let path = entry.path();
            if !include_hidden && entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            // symlink_metadata: the link itself, never what it points at.
            let metadata = match std::fs::symlink_metadata(&path) {
                Ok(metadata) => metadata,
                Err(error) => {
                    walk.errors.push(format!("{}: {error}", path.display()));
                    continue;
                }
            };
            let file_type = metadata.file_type();
            if file_type.is_symlink() {
                walk.symlinks.push(path);
            } else if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file() {
                let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                walk.files.push(FoundFile {
                    path,
                    bytes: metadata.len(),
                    modified,
                });
            }
        }
    }
    walk
}

/// The files to delete: older than the age limit, then the oldest of the
/// rest until they fit the budget. Oldest first.
pub fn select(
    files: &[FoundFile],
    now: SystemTime,
    older_than: Option<Duration>,
    max_total_bytes: Option<u64>,
) -> Vec<FoundFile> {
    let mut sorted: Vec<FoundFile> = files.to_vec();
    sorted.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.path.cmp(&b.path))
    });
    let mut chosen = Vec::new();
    let mut kept = Vec::new();
    for file in sorted {
        let age = now.duration_since(file.modified).unwrap_or_default();
        match older_than {
            Some(limit) if age > limit => chosen.push(file),
            _ => kept.push(file),
        }
    }
    if let Some(budget) = max_total_bytes {
        let mut total: u64 = kept.iter().map(|file| file.bytes).sum();
        let mut kept = kept.into_iter();
        while total > budget {
            let Some(file) = kept.next() else { break };
            total = total.saturating_sub(file.bytes);
            chosen.push(file);
        }
    }
    chosen
}

/// The handler.
#[derive(Debug, Clone)]
pub struct CleanupHandler {
    settings: Arc<Settings>,
}

impl CleanupHandler {
    /// A handler using `settings`.
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }
}

#[async_trait]
impl Handler for CleanupHandler {
    async fn run(&self, ctx: JobContext) -> JobResult {
        let payload: CleanupPayload = ctx.payload()?;
        let plan = CleanupPlan::new(payload, &self.settings.cleanup_roots)?;
        let blocking_ctx = ctx.clone();
        tokio::task::spawn_blocking(move || clean(&blocking_ctx, &plan))
            .await
            .map_err(|error| JobError::retryable(format!("the cleanup task failed: {error}")))?
    }
}

fn clean(ctx: &JobContext, plan: &CleanupPlan) -> JobResult {
    if !plan.dir.exists() {
        ctx.log().system(format!(
            "{} does not exist; nothing to clean",
            plan.dir.display()
        ));
        return Ok(
            json!({ "path": plan.dir, "dry_run": plan.dry_run, "removed_count": 0, "removed_bytes": 0, "removed": [] }),
        );
    }
    ctx.progress(0, format!("scanning {}", plan.dir.display()));
    let found = walk(&plan.dir, plan.include_hidden);
    let chosen = select(
        &found.files,
        SystemTime::now(),
        plan.older_than,
        plan.max_total_bytes,
    );
    for link in &found.symlinks {
        ctx.log().system(format!(
            "skipped symlink {} (links are never followed)",
            link.display()
        ));
    }
    let verb = if plan.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut removed = Vec::new();
    let mut removed_bytes = 0u64;
    let mut errors = found.errors.clone();
    for (index, file) in chosen.iter().enumerate() {
        if ctx.is_cancelled() {
            return Err(ctx.stopped_error());
        }
        // Look again right before deleting: it must still be a plain file.
        match std::fs::symlink_metadata(&file.path) {
            Ok(metadata) if metadata.file_type().is_file() => {}
            Ok(_) => {
                errors.push(format!(
                    "{}: changed type during the cleanup; left alone",
                    file.path.display()
                ));
                continue;
            }
            Err(error) => {
                errors.push(format!("{}: {error}", file.path.display()));
                continue;
            }
        }
        if !plan.dry_run
            && let Err(error) = std::fs::remove_file(&file.path)
        {
            errors.push(format!("{}: {error}", file.path.display()));
            continue;
        }
        ctx.log().stdout(format!(
            "{verb} {} ({} bytes)",
            file.path.display(),
            file.bytes
        ));
        removed_bytes += file.bytes;
        removed.push(file.clone());
        let done = i32::try_from((index + 1) * 100 / chosen.len().max(1)).unwrap_or(100);
        ctx.progress(
            done,
            format!("{verb} {} of {} files", index + 1, chosen.len()),
        );
    }
    for error in &errors {
        ctx.log().stderr(error.clone());
    }
    let total_bytes: u64 = found.files.iter().map(|file| file.bytes).sum();
    ctx.progress(
        100,
        format!("{verb} {} files, {removed_bytes} bytes", removed.len()),
    );
    Ok(json!({
        "path": plan.dir,
        "dry_run": plan.dry_run,
        "removed_count": removed.len(),
        "removed_bytes": removed_bytes,
        "removed": removed.iter().take(MAX_LISTED).collect::<Vec<_>>(),
        "kept_count": found.files.len() - removed.len(),
        "kept_bytes": total_bytes.saturating_sub(removed_bytes),
        "skipped_symlinks": found.symlinks,
        "errors": errors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: u64, age_days: u64, now: SystemTime) -> FoundFile {
        FoundFile {
            path: PathBuf::from(name),
            bytes,
            modified: now - Duration::from_secs(age_days * 86_400),
        }
    }

    #[test]
    fn old_files_go_then_the_oldest_until_the_budget_fits() {
        let now = SystemTime::now();
        let files = vec![
            file("new", 10, 0, now),
            file("old", 10, 40, now),
            file("mid", 10, 5, now),
            file("older", 10, 50, now),
        ];
        let names = |chosen: Vec<FoundFile>| {
            chosen
                .into_iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(select(
                &files,
                now,
                Some(Duration::from_secs(30 * 86_400)),
                None
            )),
            ["older", "old"]
        );
        assert_eq!(
            names(select(&files, now, None, Some(15))),
            ["older", "old", "mid"]
        );
        assert_eq!(
            names(select(
                &files,
                now,
                Some(Duration::from_secs(45 * 86_400)),
                Some(20)
            )),
            ["older", "old"]
        );
        assert!(select(&files, now, None, Some(1000)).is_empty());
    }

    #[test]
    fn the_walk_never_follows_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub"))?;
        std::fs::create_dir_all(&outside)?;
        std::fs::write(root.join("sub/a.mp4"), b"a")?;
        std::fs::write(root.join(".hidden"), b"h")?;
        std::fs::write(outside.join("victim"), b"v")?;
        std::os::unix::fs::symlink(&outside, root.join("link-dir"))?;
        std::os::unix::fs::symlink(outside.join("victim"), root.join("link-file"))?;

        let found = walk(&root, false);
        let files: Vec<PathBuf> = found.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(files, vec![root.join("sub/a.mp4")]);
        assert_eq!(found.symlinks.len(), 2);
        assert_eq!(
            walk(&root, true).files.len(),
            2,
            "include_hidden finds the dot file"
        );
        Ok(())
    }

    #[test]
    fn plans_need_a_rule_and_a_path_inside_the_roots() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().canonicalize()?;
        let roots = vec![root.clone()];
        let plan = |payload: serde_json::Value| -> Result<CleanupPlan, JobError> {
            CleanupPlan::new(
                serde_json::from_value(payload).map_err(JobError::fatal)?,
                &roots,
            )
        };
        assert_eq!(
            plan(json!({ "older_than_days": 1 })).map(|p| p.dir).ok(),
            Some(root.clone())
        );
        assert_eq!(
            plan(json!({ "older_than_days": 1, "path": "x" }))
                .map(|p| p.dir)
                .ok(),
            Some(root.join("x"))
        );
        for bad in [
            json!({}),
            json!({ "older_than_days": -1 }),
            json!({ "older_than_days": 1, "path": "/etc" }),
            json!({ "older_than_days": 1, "path": "../" }),
        ] {
            assert!(
                matches!(plan(bad.clone()), Err(error) if !error.is_retryable()),
                "{bad}"
            );
        }
        Ok(())
    }
}
