//! PostgreSQL restarted under load (issue 5): the server answers UNAVAILABLE
//! meanwhile, recovers by itself, and every acknowledged job completes
//! exactly once. Runs on a throwaway cluster of the test's own (initdb +
//! pg_ctl on a free port), never the shared server other tests use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jobq_server::{App, Config};
use jobq_tests::pb::{CompleteJobRequest, JobState, LeaseJobsRequest};
use jobq_tests::{JobqClient, LeasedJobExt, bounded, duration, eventually, settings, spec};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::Code;

/// A PostgreSQL cluster that lives as long as the test.
struct ThrowawayCluster {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

/// The directory of this machine's PostgreSQL server binaries.
fn postgres_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "{} not found: PostgreSQL server binaries are needed",
                root.display()
            )
        })?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0"))
}

impl ThrowawayCluster {
    /// Runs a PostgreSQL tool, as the postgres user when we are root (initdb refuses root).
    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !output.status.success() {
            bail!(
                "{tool} {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("jobq-pg-").tempdir()?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            ensure!(status.success(), "chown of the cluster dir failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cluster = Self {
            dir,
            port,
            bin: postgres_bin()?,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    fn pg_ctl(&self, action: &str) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-m", "fast", "-w", "-t", "60", action,
            ],
        )
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// Retries a call while the database is away (UNAVAILABLE or INTERNAL).
async fn until_available<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for _ in 0..600 {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Internal) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => bail!("{what}: {status}"),
        }
    }
    bail!("{what}: the database did not come back within a minute")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_load_loses_no_acknowledged_job() -> Result<()> {
    const JOBS: usize = 400;
    let cluster = ThrowawayCluster::start()?;
    let data_dir = tempfile::tempdir()?;
    let mut config = Config::for_tests(data_dir.path());
    settings::apply(&mut config);
    config.database_url = Some(cluster.url());
    let server = App::start(config, TcpListener::bind("127.0.0.1:0").await?).await?;
    let client = JobqClient::connect(server.local_addr()).await?;

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let completions: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));
    let mut tasks = JoinSet::new();
    {
        let (client, acknowledged, producing) =
            (client.clone(), acknowledged.clone(), producing.clone());
        tasks.spawn(async move {
            for _ in 0..JOBS {
                let job =
                    until_available("EnqueueJob", || client.try_enqueue(spec("noop"))).await?;
                if let Some(job) = job.job {
                    acknowledged
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push(job.id);
                }
            }
            producing.store(false, Ordering::SeqCst);
            anyhow::Ok(())
        });
    }
    for worker in 0..4 {
        let (client, completions, producing) =
            (client.clone(), completions.clone(), producing.clone());
        tasks.spawn(async move {
            let request = LeaseJobsRequest {
                worker_id: format!("worker-{worker}"),
                max_jobs: 10,
                wait: Some(duration(Duration::from_millis(300))),
                lease_duration: Some(duration(Duration::from_secs(120))),
                ..Default::default()
            };
            let mut idle = 0;
            while idle < 5 || producing.load(Ordering::SeqCst) {
                let leased =
                    until_available("LeaseJobs", || client.try_lease(request.clone())).await?;
                idle = if leased.is_empty() { idle + 1 } else { 0 };
                for job in leased {
                    let report = CompleteJobRequest {
                        lease: Some(job.lease()),
                        result: String::new(),
                    };
                    // A completion lost with the connection is sent again with the same lease.
                    let accepted = until_available("CompleteJob", || async {
                        match client.worker().complete_job(report.clone()).await {
                            Ok(_) => Ok(true),
                            Err(status) if status.code() == Code::FailedPrecondition => Ok(false),
                            Err(status) => Err(status),
                        }
                    })
                    .await?;
                    if accepted {
                        *completions
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .entry(job.id().to_owned())
                            .or_default() += 1;
                    }
                }
            }
            anyhow::Ok(())
        });
    }

    eventually(
        Duration::from_secs(60),
        "a third of the jobs done",
        || async {
            let done = completions
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .len();
            Ok((done >= JOBS / 3).then_some(()))
        },
    )
    .await?;
    let restart = tokio::task::spawn_blocking(move || cluster.pg_ctl("restart").map(|()| cluster));
    let cluster = restart.await??;

    bounded(Duration::from_secs(180), "producer and workers", async {
        while let Some(task) = tasks.join_next().await {
            task??;
        }
        anyhow::Ok(())
    })
    .await??;
    let acknowledged = acknowledged
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    ensure!(
        acknowledged.len() == JOBS,
        "{} of {JOBS} enqueues acknowledged",
        acknowledged.len()
    );
    for id in &acknowledged {
        let job = client.get(id).await?;
        ensure!(
            job.state() == JobState::Succeeded,
            "job {id} ended {:?}",
            job.state()
        );
    }
    let completions = completions
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    ensure!(
        completions.values().all(|count| *count == 1),
        "a job was completed twice"
    );
    server.shutdown().await?;
    drop(cluster);
    Ok(())
}
