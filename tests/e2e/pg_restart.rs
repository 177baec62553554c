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
            for n in 0..JOBS {
                // An enqueue answered UNAVAILABLE may have been stored: sent
                // again with its request_id it returns that job, never a second.
                let request_id = format!("restart-{n}");
                let job = until_available("EnqueueJob", || {
                    client.try_enqueue_with_request_id(spec("noop"), &request_id)
                })
                .await?;
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
                        result: None,
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
    let stored: i64 = client
        .stats()
        .await?
        .totals
        .iter()
        .map(|count| count.count)
        .sum();
    ensure!(
        stored == JOBS as i64,
        "{stored} jobs stored for {JOBS} enqueues: a retried enqueue made a second job"
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

/// While PostgreSQL is down the server says so at once: calls answer
/// UNAVAILABLE (with a RetryInfo) instead of hanging, a LeaseJobs without a
/// wait answers at once too, and health reports NOT_SERVING until the
/// database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_calls_fail_fast_and_health_says_not_serving() -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let cluster = ThrowawayCluster::start()?;
    let data_dir = tempfile::tempdir()?;
    let mut config = Config::for_tests(data_dir.path());
    settings::apply(&mut config);
    config.database_url = Some(cluster.url());
    let server = App::start(config, TcpListener::bind("127.0.0.1:0").await?).await?;
    let client = JobqClient::connect(server.local_addr()).await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))?
            .connect()
            .await?;
    let mut health = HealthClient::new(channel);
    let status = |response: tonic::Response<tonic_health::pb::HealthCheckResponse>| {
        response.into_inner().status()
    };
    ensure!(status(health.check(HealthCheckRequest::default()).await?) == ServingStatus::Serving);
    client.enqueue(spec("noop")).await?;

    let cluster =
        tokio::task::spawn_blocking(move || cluster.pg_ctl("stop").map(|()| cluster)).await??;
    // Far below the old hang (10 s for a call, 20 s for a LeaseJobs without a
    // wait), and well above the server's 2 s connection wait on a busy machine.
    const FAST: Duration = Duration::from_secs(8);
    let refused = bounded(
        FAST,
        "EnqueueJob with the database down",
        client.try_enqueue(spec("noop")),
    )
    .await?;
    let status_of_enqueue = refused
        .err()
        .context("the enqueue succeeded with the database down")?;
    ensure!(
        status_of_enqueue.code() == Code::Unavailable,
        "{status_of_enqueue:?}"
    );
    let details = tonic_types::StatusExt::get_error_details(&status_of_enqueue);
    ensure!(
        details.retry_info().is_some(),
        "UNAVAILABLE carries a RetryInfo: {status_of_enqueue:?}"
    );
    let lease = bounded(
        FAST,
        "LeaseJobs without a wait with the database down",
        client.try_lease(jobq_tests::lease_request("down", 1)),
    )
    .await?;
    ensure!(
        lease
            .as_ref()
            .is_err_and(|status| status.code() == Code::Unavailable),
        "{lease:?}"
    );
    eventually(Duration::from_secs(20), "health to say NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let answer = health.check(HealthCheckRequest::default()).await?;
            Ok((status(answer) == ServingStatus::NotServing).then_some(()))
        }
    })
    .await?;

    let cluster =
        tokio::task::spawn_blocking(move || cluster.pg_ctl("start").map(|()| cluster)).await??;
    eventually(
        Duration::from_secs(30),
        "health to say SERVING again",
        || {
            let mut health = health.clone();
            async move {
                let answer = health.check(HealthCheckRequest::default()).await?;
                Ok((status(answer) == ServingStatus::Serving).then_some(()))
            }
        },
    )
    .await?;
    until_available("EnqueueJob after the restart", || {
        client.try_enqueue(spec("noop"))
    })
    .await?;
    server.shutdown().await?;
    drop(cluster);
    Ok(())
}

/// A server started while its database cannot be reached keeps trying,
/// saying where and why, and gives up with a clear message after its
/// connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_database_is_away_says_where_and_why_and_gives_up_in_time() -> Result<()> {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let data_dir = tempfile::tempdir()?;
    let url = format!("postgres://jobq:secret@127.0.0.1:{closed_port}/jobq");
    let (status, stderr) = jobq_tests::ServerCommand::new(crate::server_binary())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir.path())
        .arg("--database-url")
        .arg(&url)
        .arg("--database-connect-timeout")
        .arg("3s")
        .run_to_exit(Duration::from_secs(60))
        .await?;
    ensure!(!status.success(), "the server started without its database");
    let address = format!("127.0.0.1:{closed_port}");
    ensure!(
        stderr.matches("cannot reach the database").count() >= 2,
        "it says it retries: {stderr}"
    );
    ensure!(stderr.contains(&address), "the address is named: {stderr}");
    ensure!(
        !stderr.contains("secret"),
        "the password is not printed: {stderr}"
    );
    ensure!(
        stderr.to_lowercase().contains("refused"),
        "the cause is named: {stderr}"
    );
    Ok(())
}
