//! Payload checks that run before any tool does: URLs, yt-dlp options, and
//! paths that must stay inside the configured roots. Every failure here is a
//! fatal job error (no retry can fix a bad payload).

use std::path::{Component, Path, PathBuf};

use jobq_client::JobError;

/// Longest URL accepted.
const MAX_URL_BYTES: usize = 4096;

/// Checks that `url` is an `http` or `https` URL with a host and nothing that
/// could be read as a command-line option. `field` names it in the error.
pub fn check_url(field: &str, url: &str) -> Result<(), JobError> {
    let fatal = |why: &str| Err(JobError::fatal(format!("payload.{field}: {why}")));
    if url.is_empty() {
        return fatal("is required");
    }
    if url.len() > MAX_URL_BYTES {
        return fatal("is longer than 4096 bytes");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fatal("must not contain spaces or control characters");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return fatal("is not a URL (expected http://... or https://...)");
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(JobError::fatal(format!(
            "payload.{field}: scheme {scheme:?} is not allowed; only http and https URLs are"
        )));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host.strip_prefix('[').map_or_else(
        || host.split(':').next().unwrap_or_default(),
        |bracketed| bracketed.split(']').next().unwrap_or_default(),
    );
    if host.is_empty() {
        return fatal("has no host");
    }
    Ok(())
}

/// Checks a yt-dlp format selector (e.g. `bv*+ba/b`).
pub fn check_format(format: &str) -> Result<(), JobError> {
    if format.is_empty() || format.len() > 256 {
        return Err(JobError::fatal("payload.format: must be 1..256 bytes"));
    }
    if format.starts_with('-') || format.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(JobError::fatal(
            "payload.format: must not start with '-' or contain spaces",
        ));
    }
    Ok(())
}

/// Checks a yt-dlp output template: relative, no `..`, so files land under the media dir.
pub fn check_output_template(template: &str) -> Result<(), JobError> {
    let fatal = |why: &str| Err(JobError::fatal(format!("payload.output_template: {why}")));
    if template.is_empty() || template.len() > 1024 {
        return fatal("must be 1..1024 bytes");
    }
    if template.starts_with('-') || template.starts_with('/') || template.starts_with('~') {
        return fatal("must be a relative path (it is placed under the media root)");
    }
    if template.chars().any(char::is_control) {
        return fatal("must not contain control characters");
    }
    if template.split(['/', '\\']).any(|part| part == "..") {
        return fatal("must not contain '..'");
    }
    Ok(())
}

/// A relative path from a payload, lexically clean: not absolute, no `..`.
pub fn check_relative(field: &str, path: &str) -> Result<PathBuf, JobError> {
    if path.contains('\0') {
        return Err(JobError::fatal(format!(
            "payload.{field}: must not contain NUL"
        )));
    }
    let mut clean = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(JobError::fatal(format!(
                    "payload.{field}: {path:?} must not contain '..'"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(JobError::fatal(format!(
                    "payload.{field}: {path:?} must be a relative path"
                )));
            }
        }
    }
    Ok(clean)
}

/// Where `path` (absolute, or relative to the first root) lands, checked to be
/// inside one of `roots` (which must be canonical) with no symlink on the way
/// from the root to it: a symlink could lead out of the root. Parts that do
/// not exist yet are allowed. Returns the root and the full path.
pub fn resolve_inside(
    field: &str,
    roots: &[PathBuf],
    path: &str,
) -> Result<(PathBuf, PathBuf), JobError> {
    let outside = || {
        JobError::fatal(format!(
            "payload.{field}: {path:?} is outside the allowed roots {roots:?}"
        ))
    };
    if path.contains('\0') {
        return Err(JobError::fatal(format!(
            "payload.{field}: must not contain NUL"
        )));
    }
    let candidate = Path::new(path);
    let absolute = if candidate.is_absolute() {
        candidate.to_path_buf()
    } else {
        roots.first().ok_or_else(outside)?.join(candidate)
    };
    // Lexical clean-up first: `..` could climb out after the prefix check.
    let mut clean = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                return Err(JobError::fatal(format!(
                    "payload.{field}: {path:?} must not contain '..'"
                )));
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    let root = roots
        .iter()
        .find(|root| clean.starts_with(root))
        .ok_or_else(outside)?;
    let relative = clean.strip_prefix(root).map_err(|_| outside())?;
    let mut walked = root.clone();
    for part in relative.components() {
        walked.push(part);
        match std::fs::symlink_metadata(&walked) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(JobError::fatal(format!(
                    "payload.{field}: {} is a symbolic link; links are not followed",
                    walked.display()
                )));
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
            Err(error) => {
                return Err(JobError::retryable(format!(
                    "checking {}: {error}",
                    walked.display()
                )));
            }
        }
    }
    Ok((root.clone(), clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_fatal(result: Result<impl std::fmt::Debug, JobError>) -> bool {
        matches!(result, Err(error) if !error.is_retryable())
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(check_url("url", "https://www.youtube.com/@channel/videos").is_ok());
        assert!(check_url("url", "http://127.0.0.1:8080/list.html").is_ok());
        assert!(check_url("url", "http://[::1]:80/x").is_ok());
        assert!(check_url("url", "HTTPS://example.com").is_ok());
        for bad in [
            "",
            "file:///etc/passwd",
            "ftp://x/y",
            "https://",
            "http:///path",
            "--exec=rm",
            "https://a b",
            "javascript:alert(1)",
        ] {
            assert!(is_fatal(check_url("url", bad)), "{bad:?} must be refused");
        }
    }

    #[test]
    fn templates_and_formats_stay_harmless() {
        assert!(check_output_template("%(uploader)s/%(title)s [%(id)s].%(ext)s").is_ok());
        assert!(is_fatal(check_output_template("/etc/%(id)s")));
        assert!(is_fatal(check_output_template("../%(id)s")));
        assert!(is_fatal(check_output_template("a/../../b")));
        assert!(check_format("bv*+ba/b").is_ok());
        assert!(is_fatal(check_format("--exec")));
        assert!(is_fatal(check_format("best video")));
    }

    #[test]
    fn relative_paths_cannot_climb() {
        assert_eq!(
            check_relative("subdir", "./a/b").ok(),
            Some(PathBuf::from("a/b"))
        );
        assert!(is_fatal(check_relative("subdir", "a/../../b")));
        assert!(is_fatal(check_relative("subdir", "/abs")));
    }

    #[test]
    fn resolve_inside_refuses_outside_and_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().canonicalize()?.join("root");
        let outside = dir.path().canonicalize()?.join("outside");
        std::fs::create_dir_all(root.join("media"))?;
        std::fs::create_dir_all(&outside)?;
        std::os::unix::fs::symlink(&outside, root.join("escape"))?;
        let roots = vec![root.clone()];

        let (found_root, path) =
            resolve_inside("path", &roots, "media/new/file.mp4").map_err(|e| e.to_string())?;
        assert_eq!(
            (found_root, path),
            (root.clone(), root.join("media/new/file.mp4"))
        );
        let absolute = root.join("media").display().to_string();
        assert!(resolve_inside("path", &roots, &absolute).is_ok());

        assert!(is_fatal(resolve_inside(
            "path",
            &roots,
            &outside.display().to_string()
        )));
        assert!(is_fatal(resolve_inside("path", &roots, "../outside")));
        assert!(is_fatal(resolve_inside("path", &roots, "escape/file")));
        assert!(is_fatal(resolve_inside("path", &roots, "/etc/passwd")));
        // A sibling whose name merely starts with the root's name is outside too.
        let sibling = format!("{}-evil/x", root.display());
        assert!(is_fatal(resolve_inside("path", &roots, &sibling)));
        Ok(())
    }
}
