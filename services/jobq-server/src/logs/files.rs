//! The record of pushed lines on SQLite: files under
//! `{data_dir}/logs/jobs/{job_id}/`, written by one dedicated thread so no
//! file I/O blocks the async runtime. `events.jsonl` is the record (every
//! line, one JSON object each, with its position); `stdout.log`,
//! `stderr.log` and `progress.log` are the readable copies (time, attempt,
//! text; newlines inside a line shown as `\n`). A job's directory is created
//! with its first line, so a job that pushes nothing touches no file.
//!
//! Durability: lines are written to the files (not fsynced) before a push
//! is answered, so they survive a crash of the server process; a power loss
//! may lose the last seconds of output. The job's state and history, which
//! its lifecycle lines are told from, are in the database with its durability.
//!
//! On PostgreSQL the table is the record; the same writer keeps this
//! replica's readable copy of the lines pushed through it ([`LogMirror`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{
    FIRST_PUSHED_LINE, LeaseCheck, LogLine, LogRecord, LogStream, NewLine, entry_of, lock, position,
};
use crate::domain::{JobId, LeaseToken, Millis, QueueError, QueueResult};

/// Most requests the writer thread takes at once before it flushes and answers.
const MAX_BATCH: usize = 1024;
/// Jobs whose files the writer keeps open (the ones writing now).
const OPEN_JOBS: usize = 64;
/// Jobs whose last position the writer remembers.
const KNOWN_JOBS: usize = 8192;
/// Read positions remembered, so a reader going through a long log resumes
/// where it stopped instead of scanning from the top.
const READ_HINTS: usize = 1024;

enum Request {
    Append {
        job: JobId,
        entry: i32,
        lines: Vec<NewLine>,
        reply: oneshot::Sender<io::Result<Vec<LogLine>>>,
    },
    /// Lines numbered elsewhere (the PostgreSQL table), written as they are.
    Mirror {
        job: JobId,
        lines: Vec<LogLine>,
        reply: oneshot::Sender<io::Result<Vec<LogLine>>>,
    },
    Delete {
        jobs: Vec<JobId>,
        reply: oneshot::Sender<()>,
    },
}

/// The log writer thread and its inbox: writes job log files for the
/// record on SQLite and the readable copy on PostgreSQL.
pub struct LogFiles {
    root: PathBuf,
    requests: Mutex<mpsc::Sender<Request>>,
}

impl LogFiles {
    /// Files under `data_dir/logs/jobs`; starts the writer thread (it ends
    /// when this is dropped).
    pub fn start(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("logs").join("jobs");
        fs::create_dir_all(&root)?;
        let (sender, receiver) = mpsc::channel();
        let writer_root = root.clone();
        std::thread::Builder::new()
            .name("jobq-log-writer".into())
            .spawn(move || Writer::new(writer_root).run(receiver))?;
        Ok(Self {
            root,
            requests: Mutex::new(sender),
        })
    }

    fn send(&self, request: Request) -> QueueResult<()> {
        lock(&self.requests)
            .send(request)
            .map_err(|_| QueueError::ShuttingDown)
    }

    /// Writes lines already numbered; returns once they are in the files.
    pub async fn mirror(&self, job: &JobId, lines: Vec<LogLine>) -> QueueResult<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Mirror {
            job: job.clone(),
            lines,
            reply,
        })?;
        answer
            .await
            .map_err(|_| QueueError::ShuttingDown)?
            .map_err(io_error)
            .map(drop)
    }

    /// Deletes the files of `jobs`.
    pub async fn delete(&self, jobs: &[JobId]) {
        let (reply, done) = oneshot::channel();
        if self
            .send(Request::Delete {
                jobs: jobs.to_vec(),
                reply,
            })
            .is_ok()
        {
            let _ = done.await;
        }
    }
}

/// Pushed lines in files, written by a thread of their own.
pub struct FileRecord {
    files: LogFiles,
    checker: Arc<dyn LeaseCheck>,
    read_hints: Mutex<lru::LruCache<JobId, (u64, u64)>>,
}

fn io_error(error: io::Error) -> QueueError {
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            QueueError::StorageFull(format!("job log: {error}"))
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            QueueError::StorageReadOnly(format!("job log: {error}"))
        }
        _ => QueueError::Storage(format!("job log: {error}")),
    }
}

fn size(n: usize) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN)
}

impl FileRecord {
    /// Logs under `data_dir/logs/jobs`, leases checked by `checker`; starts the writer thread.
    pub fn start(data_dir: &Path, checker: Arc<dyn LeaseCheck>) -> io::Result<Self> {
        Ok(Self {
            files: LogFiles::start(data_dir)?,
            checker,
            read_hints: Mutex::new(lru::LruCache::new(size(READ_HINTS))),
        })
    }

    fn events_path(&self, job: &JobId) -> PathBuf {
        self.files.root.join(job.as_str()).join("events.jsonl")
    }
}

#[async_trait]
impl LogRecord for FileRecord {
    async fn append(
        &self,
        job: &JobId,
        lease: &LeaseToken,
        lines: Vec<NewLine>,
    ) -> QueueResult<(i32, Vec<LogLine>)> {
        let entry = self.checker.current_entry(job, lease).await?;
        if lines.is_empty() {
            return Ok((entry, Vec::new()));
        }
        let (reply, answer) = oneshot::channel();
        self.files.send(Request::Append {
            job: job.clone(),
            entry,
            lines,
            reply,
        })?;
        let stored = answer
            .await
            .map_err(|_| QueueError::ShuttingDown)?
            .map_err(io_error)?;
        Ok((entry, stored))
    }

    async fn read(&self, job: &JobId, after: u64, limit: usize) -> QueueResult<Vec<LogLine>> {
        let path = self.events_path(job);
        let hint = lock(&self.read_hints)
            .get(job)
            .copied()
            .filter(|(position, _)| *position == after)
            .map(|(_, offset)| offset);
        let read = tokio::task::spawn_blocking(move || read_after(&path, after, limit, hint))
            .await
            .map_err(|error| QueueError::Storage(format!("job log reader: {error}")))?
            .map_err(io_error)?;
        let (lines, offset) = read;
        if let (Some(last), Some(offset)) = (lines.last(), offset) {
            lock(&self.read_hints).put(job.clone(), (last.position, offset));
        }
        Ok(lines)
    }

    async fn stored_bytes(&self, job: &JobId) -> QueueResult<u64> {
        let path = self.events_path(job);
        tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(error) => return Err(error),
            };
            let mut bytes = 0;
            for raw in BufReader::new(file).lines() {
                if let Ok(line) = serde_json::from_str::<LogLine>(&raw?) {
                    bytes += line.message.len() as u64;
                }
            }
            Ok(bytes)
        })
        .await
        .map_err(|error| QueueError::Storage(format!("job log reader: {error}")))?
        .map_err(io_error)
    }

    async fn delete(&self, jobs: &[JobId]) {
        {
            let mut hints = lock(&self.read_hints);
            for job in jobs {
                hints.pop(job);
            }
        }
        self.files.delete(jobs).await;
    }
}

/// The position in the line's text, read without parsing the JSON (lines
/// start with `{"pos":N,`), so skipping lines is cheap.
fn quick_position(raw: &[u8]) -> Option<u64> {
    let digits = raw.strip_prefix(b"{\"pos\":")?;
    let end = digits.iter().position(|byte| !byte.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Up to `limit` lines after position `after`, and the byte offset just past
/// the last one; starts at `hint` (an offset where that position ended) if given.
fn read_after(
    path: &Path,
    after: u64,
    limit: usize,
    hint: Option<u64>,
) -> io::Result<(Vec<LogLine>, Option<u64>)> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(error) => return Err(error),
    };
    let mut offset = 0;
    if let Some(hint) = hint {
        file.seek(SeekFrom::Start(hint))?;
        offset = hint;
    }
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut raw = Vec::new();
    let mut end = None;
    while lines.len() < limit {
        raw.clear();
        let read = reader.read_until(b'\n', &mut raw)?;
        // A line the writer has not finished yet ends the read there.
        if read == 0 || raw.last() != Some(&b'\n') {
            break;
        }
        offset += read as u64;
        if quick_position(&raw).is_some_and(|position| position <= after) {
            continue;
        }
        let Ok(line) = serde_json::from_slice::<LogLine>(&raw) else {
            break;
        };
        if line.position <= after {
            continue;
        }
        end = Some(offset);
        lines.push(line);
    }
    Ok((lines, end))
}

/// The last complete line of a file, if any.
fn last_line(path: &Path) -> io::Result<Option<LogLine>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    // Lines are at most the line limit plus JSON escaping: a generous tail suffices.
    let tail = length.min(256 * 1024);
    file.seek(SeekFrom::Start(length - tail))?;
    let mut text = Vec::with_capacity(tail as usize);
    file.read_to_end(&mut text)?;
    Ok(text
        .split(|byte| *byte == b'\n')
        .rev()
        .find_map(|raw| serde_json::from_slice::<LogLine>(raw).ok()))
}

/// Where a job's pushed lines go next: the entry written last, its next line
/// number, and the last sequence number the worker gave in it.
#[derive(Debug, Clone, Copy)]
struct NextLine {
    entry: i32,
    line: u32,
    last_cseq: Option<u64>,
}

/// The files of one job, open for appending.
struct OpenFiles {
    events: BufWriter<File>,
    readable: HashMap<LogStream, BufWriter<File>>,
}

/// The writer thread's state.
struct Writer {
    root: PathBuf,
    next: lru::LruCache<JobId, NextLine>,
    open: lru::LruCache<JobId, OpenFiles>,
}

fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A line of a readable file: one physical line, whatever the message holds.
fn readable(line: &LogLine) -> String {
    let mut text = String::with_capacity(line.message.len() + 40);
    text.push_str(&rfc3339(line.time));
    text.push_str(" #");
    text.push_str(&line.attempt.to_string());
    text.push(' ');
    if line.stream == LogStream::Progress
        && let Some(percent) = line
            .fields
            .as_ref()
            .and_then(|fields| fields.get("percent"))
    {
        text.push_str(&format!("{percent}% "));
    }
    for character in line.message.chars() {
        match character {
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            other => text.push(other),
        }
    }
    text.push('\n');
    text
}

fn append_file(path: &Path) -> io::Result<BufWriter<File>> {
    Ok(BufWriter::new(
        OpenOptions::new().create(true).append(true).open(path)?,
    ))
}

impl Writer {
    fn new(root: PathBuf) -> Self {
        Self {
            root,
            next: lru::LruCache::new(size(KNOWN_JOBS)),
            open: lru::LruCache::new(size(OPEN_JOBS)),
        }
    }

    fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.handle(batch);
        }
    }

    /// Writes a batch, flushes every file it touched, then answers.
    fn handle(&mut self, batch: Vec<Request>) {
        let mut answers = Vec::new();
        let mut touched: Vec<JobId> = Vec::new();
        for request in batch {
            match request {
                Request::Append {
                    job,
                    entry,
                    lines,
                    reply,
                } => {
                    let stored = self.append(&job, entry, lines);
                    if stored.as_ref().is_ok_and(|stored| !stored.is_empty())
                        && !touched.contains(&job)
                    {
                        touched.push(job.clone());
                    }
                    answers.push((job, reply, stored));
                }
                Request::Mirror { job, lines, reply } => {
                    let written = self.write(&job, &lines).map(|()| lines);
                    if written.as_ref().is_ok_and(|lines| !lines.is_empty())
                        && !touched.contains(&job)
                    {
                        touched.push(job.clone());
                    }
                    answers.push((job, reply, written));
                }
                Request::Delete { jobs, reply } => {
                    for job in &jobs {
                        self.open.pop(job);
                        self.next.pop(job);
                        touched.retain(|touched| touched != job);
                        let dir = self.root.join(job.as_str());
                        if let Err(error) = fs::remove_dir_all(&dir)
                            && error.kind() != io::ErrorKind::NotFound
                        {
                            tracing::warn!(%error, path = %dir.display(), "could not delete a job's logs");
                        }
                    }
                    let _ = reply.send(());
                }
            }
        }
        let mut failed: HashMap<JobId, io::ErrorKind> = HashMap::new();
        for job in touched {
            if let Some(files) = self.open.get_mut(&job) {
                let flushed = files
                    .events
                    .flush()
                    .and_then(|()| files.readable.values_mut().try_for_each(Write::flush));
                if let Err(error) = flushed {
                    tracing::warn!(%error, %job, "could not write a job's log");
                    failed.insert(job.clone(), error.kind());
                    // Start over from what the file holds.
                    self.open.pop(&job);
                    self.next.pop(&job);
                }
            }
        }
        for (job, reply, stored) in answers {
            let stored = match failed.get(&job) {
                Some(kind) => Err(io::Error::new(*kind, "writing the job's log failed")),
                None => stored,
            };
            let _ = reply.send(stored);
        }
    }

    fn next_line(&mut self, job: &JobId, entry: i32) -> io::Result<NextLine> {
        let known = match self.next.get(job) {
            Some(next) => *next,
            None => {
                let path = self.root.join(job.as_str()).join("events.jsonl");
                match last_line(&path)? {
                    Some(last) => NextLine {
                        entry: entry_of(last.position),
                        line: (last.position as u32).saturating_add(1),
                        last_cseq: last.cseq,
                    },
                    None => NextLine {
                        entry,
                        line: FIRST_PUSHED_LINE,
                        last_cseq: None,
                    },
                }
            }
        };
        Ok(if known.entry == entry {
            known
        } else {
            // The first line of a new attempt.
            NextLine {
                entry,
                line: FIRST_PUSHED_LINE,
                last_cseq: None,
            }
        })
    }

    fn files(&mut self, job: &JobId) -> io::Result<&mut OpenFiles> {
        if !self.open.contains(job) {
            let dir = self.root.join(job.as_str());
            fs::create_dir_all(&dir)?;
            let files = OpenFiles {
                events: append_file(&dir.join("events.jsonl"))?,
                readable: HashMap::new(),
            };
            // A job's files are flushed after every batch, so closing them here loses nothing.
            self.open.put(job.clone(), files);
        }
        self.open
            .get_mut(job)
            .ok_or_else(|| io::Error::other("open files vanished"))
    }

    fn append(&mut self, job: &JobId, entry: i32, lines: Vec<NewLine>) -> io::Result<Vec<LogLine>> {
        let mut next = self.next_line(job, entry)?;
        let mut stored = Vec::with_capacity(lines.len());
        for line in lines {
            if let (Some(cseq), Some(last)) = (line.cseq, next.last_cseq)
                && cseq <= last
            {
                continue;
            }
            if line.cseq.is_some() {
                next.last_cseq = line.cseq;
            }
            stored.push(LogLine {
                position: position(entry, next.line),
                time: line.time,
                attempt: entry,
                stream: line.stream,
                message: line.message,
                fields: line.fields,
                cseq: line.cseq,
            });
            next.line = next.line.saturating_add(1);
        }
        self.write(job, &stored)?;
        self.next.put(job.clone(), next);
        Ok(stored)
    }

    /// Writes numbered lines to the job's files (the record and the readable copies).
    fn write(&mut self, job: &JobId, stored: &[LogLine]) -> io::Result<()> {
        if stored.is_empty() {
            return Ok(());
        }
        let dir = self.root.join(job.as_str());
        let files = self.files(job)?;
        for line in stored {
            let mut json = serde_json::to_vec(line).map_err(io::Error::other)?;
            json.push(b'\n');
            files.events.write_all(&json)?;
            let stream_files: &[LogStream] = match line.stream {
                LogStream::Stdout => &[LogStream::Stdout],
                LogStream::Stderr => &[LogStream::Stderr],
                LogStream::Progress => &[LogStream::Progress],
                // A cut in the output is marked where the output is read.
                LogStream::System if line.fields == super::limit_notice_fields() => {
                    &[LogStream::Stdout, LogStream::Stderr]
                }
                LogStream::System => &[],
            };
            for stream in stream_files {
                let file = match files.readable.entry(*stream) {
                    std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(append_file(&dir.join(format!("{}.log", stream.as_str())))?)
                    }
                };
                file.write_all(readable(line).as_bytes())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AnyLease;

    #[async_trait]
    impl LeaseCheck for AnyLease {
        async fn current_entry(&self, _: &JobId, lease: &LeaseToken) -> QueueResult<i32> {
            lease.as_str().parse().map_err(|_| QueueError::StaleLease {
                job_id: String::new(),
            })
        }
    }

    fn line(stream: LogStream, message: &str, cseq: Option<u64>) -> NewLine {
        NewLine {
            stream,
            time: 1_700_000_000_000,
            message: message.to_owned(),
            fields: None,
            cseq,
        }
    }

    fn lease(entry: i32) -> LeaseToken {
        LeaseToken::from_string(entry.to_string())
    }

    #[tokio::test]
    async fn lines_are_numbered_per_attempt_and_land_in_their_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = FileRecord::start(dir.path(), Arc::new(AnyLease)).expect("record");
        let id = JobId::generate();
        let (_, stored) = record
            .append(
                &id,
                &lease(1),
                vec![
                    line(LogStream::Stdout, "out 1\nsecond line", None),
                    line(LogStream::Stderr, "err 1", None),
                ],
            )
            .await
            .expect("append");
        assert_eq!(
            stored.iter().map(|l| l.position).collect::<Vec<_>>(),
            vec![position(1, 2), position(1, 3)]
        );
        let (_, stored) = record
            .append(&id, &lease(3), vec![line(LogStream::Stdout, "out 3", None)])
            .await
            .expect("append");
        assert_eq!(stored[0].position, position(3, 2));
        let all = record.read(&id, 0, 10).await.expect("read");
        assert_eq!(all.len(), 3);
        let after_first = record.read(&id, position(1, 2), 10).await.expect("read");
        assert_eq!(after_first[0].message, "err 1");
        let stdout = fs::read_to_string(
            dir.path()
                .join("logs/jobs")
                .join(id.as_str())
                .join("stdout.log"),
        )
        .expect("stdout");
        assert_eq!(stdout.lines().count(), 2, "{stdout}");
        assert!(stdout.contains("#1 out 1\\nsecond line"), "{stdout}");
    }

    #[tokio::test]
    async fn a_batch_sent_again_is_not_stored_twice() {
        let dir = tempfile::tempdir().expect("temp dir");
        let record = FileRecord::start(dir.path(), Arc::new(AnyLease)).expect("record");
        let id = JobId::generate();
        let batch = || {
            vec![
                line(LogStream::Stdout, "a", Some(1)),
                line(LogStream::Stdout, "b", Some(2)),
            ]
        };
        record
            .append(&id, &lease(1), batch())
            .await
            .expect("append");
        let (_, again) = record
            .append(&id, &lease(1), batch())
            .await
            .expect("append");
        assert!(again.is_empty());
        // A restarted server finds the numbering in the file.
        let reopened = FileRecord::start(dir.path(), Arc::new(AnyLease)).expect("record");
        let (_, more) = reopened
            .append(
                &id,
                &lease(1),
                vec![
                    line(LogStream::Stdout, "b", Some(2)),
                    line(LogStream::Stdout, "c", Some(3)),
                ],
            )
            .await
            .expect("append");
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].position, position(1, 4));
    }
}
