//! The disk under the data dir fills up: writes are refused with a clear
//! status, reads keep working, nothing is corrupted, and the server
//! recovers by itself when space returns. A read-only data dir is refused
//! at start with a clear message. The data dir is a small tmpfs the test mounts (the suite runs as
//! root; a machine where it cannot mount fails the test).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jobq_tests::pb::{JobSpec, JobState, LogStream};
use jobq_tests::{Backend, LeasedJobExt, ServerCommand, TestDatabase, eventually, json, spec};
use serde_json::json as json_value;
use tonic::Code;

use crate::logs::{entry, try_push};
use crate::server_binary;

const LONG: Duration = Duration::from_secs(90);

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self> {
        let parent = tempfile::Builder::new()
            .prefix("jobq-e2e-disk-")
            .tempdir()?;
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir))
        .context("mounting a tmpfs (the disk tests need root)")?;
        Ok(Self {
            dir,
            _parent: parent,
        })
    }

    fn remount(&self, options: &str) -> Result<()> {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir))
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

fn big(n: usize) -> JobSpec {
    JobSpec {
        payload: Some(json(json_value!({ "n": n, "filler": "x".repeat(200_000) }))),
        ..spec("disk")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_and_a_read_only_one_is_named()
-> Result<()> {
    let disk = Tmpfs::mount("8m")?;
    let database = TestDatabase::provision(Backend::Sqlite, disk.path()).await?;
    let mut server = ServerCommand::fast(server_binary(), disk.path(), &database)
        .spawn()
        .await?;
    let jobq = server.client().await?;

    // A running job, to push log lines for while the disk is full.
    let running = jobq.enqueue(spec("logger")).await?;
    let leased = jobq.lease_one("disk-worker").await?;
    ensure!(leased.id() == running.id);

    // Fill the disk.
    let mut acked = Vec::new();
    let full = loop {
        match jobq.try_enqueue(big(acked.len())).await {
            Ok(answer) => acked.push(answer.job.context("no job")?.id),
            Err(status) => break status,
        }
        if acked.len() > 200 {
            bail!("8 MiB never filled up");
        }
    };
    ensure!(
        full.code() == Code::ResourceExhausted && full.message().contains("disk is full"),
        "a write on a full disk answered {full:?}\n{}",
        server.stderr_tail()
    );
    ensure!(!acked.is_empty(), "nothing fitted at all");
    // Reads keep working.
    for id in &acked {
        ensure!(jobq.get(id).await?.state == JobState::Queued as i32);
    }
    ensure!(jobq.count_in_state(JobState::Queued).await? >= acked.len() as i64);
    // Log lines are refused the same way.
    let lines: Vec<_> = (0..200)
        .map(|n| entry(LogStream::Stdout, format!("{n} {}", "y".repeat(4000))))
        .collect();
    let pushed = try_push(&jobq, &leased.lease(), vec![lines.clone()]).await;
    ensure!(
        matches!(&pushed, Err(status) if status.code() == Code::ResourceExhausted),
        "a log push on a full disk answered {pushed:?}"
    );

    // Room again: the server takes writes by itself, no restart.
    disk.remount("rw,size=64m")?;
    let after = eventually(LONG, "an enqueue once the disk has room", || async {
        Ok(jobq.try_enqueue(big(999)).await.ok())
    })
    .await?;
    ensure!(after.job.is_some());
    try_push(&jobq, &leased.lease(), vec![lines]).await?;
    jobq.complete(&leased).await?;

    // Nothing corrupted: every acknowledged job is there after a restart.
    server.sigterm().await?;
    server.wait_exit(LONG).await?;
    let restarted = ServerCommand::fast(server_binary(), disk.path(), &database)
        .spawn()
        .await?;
    let jobq = restarted.client().await?;
    for id in &acked {
        ensure!(
            jobq.get(id).await?.state == JobState::Queued as i32,
            "job {id}"
        );
    }
    ensure!(jobq.get(&running.id).await?.state == JobState::Succeeded as i32);
    drop(jobq);
    restarted.sigterm().await?;

    // A read-only data dir (it cannot turn read-only under open files): the
    // server says so at start, and starts once it is writable again.
    let mut restarted = restarted;
    restarted.wait_exit(LONG).await?;
    disk.remount("ro")?;
    let (status, stderr) = ServerCommand::fast(server_binary(), disk.path(), &database)
        .run_to_exit(LONG)
        .await?;
    ensure!(!status.success(), "started on a read-only data dir");
    ensure!(
        stderr.contains("read-only") || stderr.contains("readonly"),
        "{stderr}"
    );
    disk.remount("rw")?;
    let again = ServerCommand::fast(server_binary(), disk.path(), &database)
        .spawn()
        .await?;
    ensure!(again.client().await?.get(&acked[0]).await?.id == acked[0]);
    Ok(())
}
