//! Media fixtures for the worker's built-in job types: a loopback HTTP server
//! that serves media files and pages listing them (yt-dlp only ever talks to
//! it), tiny media files made with ffmpeg, and checks that the tools exist.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What one path serves.
#[derive(Clone, Debug)]
enum Body {
    /// The whole body at once.
    Bytes {
        content_type: String,
        data: Arc<Vec<u8>>,
    },
    /// `size` zero bytes, `chunk` bytes every `tick`: a download that takes a while.
    Trickle {
        content_type: String,
        size: usize,
        chunk: usize,
        tick: Duration,
    },
}

type Routes = Arc<Mutex<HashMap<String, Body>>>;
type Hits = Arc<Mutex<HashMap<String, u32>>>;

/// An HTTP/1.1 server on 127.0.0.1 (one request per connection). Stops when dropped.
#[derive(Debug)]
pub struct MediaServer {
    addr: SocketAddr,
    routes: Routes,
    hits: Hits,
    task: JoinHandle<()>,
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MediaServer {
    /// Starts a server with no routes on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the media server")?;
        let addr = listener.local_addr()?;
        let routes: Routes = Arc::default();
        let hits: Hits = Arc::default();
        let (task_routes, task_hits) = (routes.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, task_routes.clone(), task_hits.clone()));
            }
        });
        Ok(Self {
            addr,
            routes,
            hits,
            task,
        })
    }

    /// Serves `data` at `path` (e.g. `/a.mp4`).
    pub fn add(&self, path: &str, content_type: &str, data: Vec<u8>) {
        let body = Body::Bytes {
            content_type: content_type.to_owned(),
            data: Arc::new(data),
        };
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.to_owned(), body);
    }

    /// Serves `size` bytes at `path`, `chunk` bytes every `tick`.
    pub fn add_trickle(
        &self,
        path: &str,
        content_type: &str,
        size: usize,
        chunk: usize,
        tick: Duration,
    ) {
        let body = Body::Trickle {
            content_type: content_type.to_owned(),
            size,
            chunk,
            tick,
        };
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.to_owned(), body);
    }

    /// Serves an HTML page with a `<video>` tag per entry of `media_paths`:
    /// yt-dlp's generic extractor reads it as a playlist titled `title`.
    pub fn add_playlist_page(&self, path: &str, title: &str, media_paths: &[&str]) {
        let videos: String = media_paths
            .iter()
            .map(|media| format!("<video src=\"{media}\"></video>\n"))
            .collect();
        let page = format!(
            "<!DOCTYPE html><html><head><title>{title}</title></head><body>\n{videos}</body></html>\n"
        );
        self.add(path, "text/html; charset=utf-8", page.into_bytes());
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests `path` got (GET and HEAD).
    pub fn hits(&self, path: &str) -> u32 {
        self.hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

async fn serve(mut stream: TcpStream, routes: Routes, hits: Hits) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buf[..read]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    *hits
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(path.clone())
        .or_default() += 1;
    let body = routes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&path)
        .cloned();
    let Some(body) = body else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    let (content_type, length) = match &body {
        Body::Bytes { content_type, data } => (content_type.clone(), data.len()),
        Body::Trickle {
            content_type, size, ..
        } => (content_type.clone(), *size),
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nAccept-Ranges: none\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(header.as_bytes()).await.is_err() || method == "HEAD" {
        return;
    }
    match body {
        Body::Bytes { data, .. } => {
            let _ = stream.write_all(&data).await;
        }
        Body::Trickle {
            size, chunk, tick, ..
        } => {
            let zeros = vec![0u8; chunk.max(1)];
            let mut sent = 0;
            while sent < size {
                let part = chunk.min(size - sent);
                if stream.write_all(&zeros[..part]).await.is_err() {
                    return;
                }
                sent += part;
                tokio::time::sleep(tick).await;
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// Fails with a clear message unless yt-dlp, ffmpeg and ffprobe run
/// (`bash .ci/test` installs them).
pub fn require_media_tools() -> anyhow::Result<()> {
    for (tool, flag) in [
        ("yt-dlp", "--version"),
        ("ffmpeg", "-version"),
        ("ffprobe", "-version"),
    ] {
        let works = std::process::Command::new(tool)
            .arg(flag)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        ensure!(
            works,
            "{tool} is not installed or does not run; `bash .ci/test` installs it (pip yt-dlp, apt ffmpeg)"
        );
    }
    Ok(())
}

/// Makes a one-second 64x64 MP4 (black video, 440 Hz tone) with ffmpeg.
pub fn make_media_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let output = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=1"])
        .args(["-f", "lavfi", "-i", "color=c=black:s=64x64:d=1"])
        .args(["-shortest", "-pix_fmt", "yuv420p"])
        .arg(path)
        .output()
        .context("running ffmpeg")?;
    if !output.status.success() {
        bail!("ffmpeg failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Process group id.
    pub pgid: u32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

/// Every live process whose command line contains `marker` (zombies excluded).
pub fn processes_with(marker: &str) -> Vec<ProcessInfo> {
    all_processes()
        .into_iter()
        .filter(|process| process.cmdline.contains(marker))
        .collect()
}

/// Every live process in process group `pgid` (zombies excluded).
pub fn processes_in_group(pgid: u32) -> Vec<ProcessInfo> {
    all_processes()
        .into_iter()
        .filter(|process| process.pgid == pgid)
        .collect()
}

fn all_processes() -> Vec<ProcessInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let dir: PathBuf = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ')'.
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let Some(pgid) = fields.get(2).and_then(|pgid| pgid.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|raw| {
                String::from_utf8_lossy(&raw)
                    .replace('\0', " ")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        found.push(ProcessInfo { pid, pgid, cmdline });
    }
    found
}
