//! The server under test: a `jobq-server` process the bench starts (on a
//! fresh data dir, or a fresh PostgreSQL database), the same server inside
//! the bench process, or one already running elsewhere. The bench reads the
//! server process's CPU time and memory from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use sea_orm::ConnectionTrait;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pid: u32,
    ticks_per_second: f64,
}

impl Probe {
    /// A probe of process `pid`.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            ticks_per_second: clock_ticks(),
        }
    }

    /// CPU seconds (user + system) the process used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name may hold spaces: fields are counted after its ')'.
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let user: f64 = fields.get(11)?.parse().ok()?;
        let system: f64 = fields.get(12)?.parse().ok()?;
        Some((user + system) / self.ticks_per_second)
    }

    fn status_kib(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find(|line| line.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Resident memory now, MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        self.status_kib("VmRSS:").map(|kib| kib as f64 / 1024.0)
    }

    /// Highest resident memory so far, MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.status_kib("VmHWM:").map(|kib| kib as f64 / 1024.0)
    }
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// How to run the server under test.
#[derive(Debug, Clone)]
pub enum ServerSetup {
    /// Start this `jobq-server` binary for every run.
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// `--database-url`; `None`: a SQLite file in the run's data dir.
        database_url: Option<String>,
        /// Extra flags (e.g. `--sqlite-synchronous normal`).
        flags: Vec<String>,
    },
    /// Run the server inside the bench process.
    InProcess {
        /// `--database-url`; `None`: SQLite.
        database_url: Option<String>,
        /// SQLite durability.
        synchronous: jobq_server::config::SqliteDurability,
    },
    /// Use a server already running.
    External {
        /// Its address.
        endpoint: String,
        /// Its process, to measure it.
        pid: Option<u32>,
    },
}

/// A server for one run; stopped when dropped (or by [`RunServer::stop`]).
pub struct RunServer {
    /// The endpoint clients connect to.
    pub endpoint: String,
    /// The server's process, when it can be measured.
    pub probe: Option<Probe>,
    child: Option<Child>,
    in_process: Option<jobq_server::RunningServer>,
    database: Option<FreshDatabase>,
    _data_dir: Option<tempfile::TempDir>,
}

impl RunServer {
    /// Starts (or points at) the server for one run, on fresh storage.
    pub async fn start(setup: &ServerSetup) -> anyhow::Result<Self> {
        match setup {
            ServerSetup::External { endpoint, pid } => Ok(Self {
                endpoint: endpoint.clone(),
                probe: pid.map(Probe::new),
                child: None,
                in_process: None,
                database: None,
                _data_dir: None,
            }),
            ServerSetup::Spawn {
                binary,
                database_url,
                flags,
            } => {
                let data_dir = tempfile::Builder::new().prefix("jobq-bench-").tempdir()?;
                let database = match database_url {
                    Some(url) => Some(FreshDatabase::create(url).await?),
                    None => None,
                };
                let mut command = Command::new(binary);
                command
                    .arg("--listen")
                    .arg("127.0.0.1:0")
                    .arg("--data-dir")
                    .arg(data_dir.path())
                    .args(flags)
                    .env("JOBQ_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true);
                if let Some(database) = &database {
                    command.arg("--database-url").arg(&database.url);
                }
                let mut child = command
                    .spawn()
                    .with_context(|| format!("starting {}", binary.display()))?;
                let addr = read_listen_line(&mut child).await?;
                let pid = child.id().context("the server exited at once")?;
                Ok(Self {
                    endpoint: format!("http://{addr}"),
                    probe: Some(Probe::new(pid)),
                    child: Some(child),
                    in_process: None,
                    database,
                    _data_dir: Some(data_dir),
                })
            }
            ServerSetup::InProcess {
                database_url,
                synchronous,
            } => {
                let data_dir = tempfile::Builder::new().prefix("jobq-bench-").tempdir()?;
                let database = match database_url {
                    Some(url) => Some(FreshDatabase::create(url).await?),
                    None => None,
                };
                let mut config = jobq_server::Config::for_tests(data_dir.path());
                config.sqlite_synchronous = *synchronous;
                config.database_url = database.as_ref().map(|database| database.url.clone());
                let listener = tokio::net::TcpListener::bind(config.listen).await?;
                let running = jobq_server::App::start(config, listener).await?;
                Ok(Self {
                    endpoint: format!("http://{}", running.local_addr()),
                    probe: Some(Probe::new(std::process::id())),
                    child: None,
                    in_process: Some(running),
                    database,
                    _data_dir: Some(data_dir),
                })
            }
        }
    }

    /// Stops the server and drops its storage.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(running) = self.in_process.take() {
            running.shutdown().await?;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        if let Some(database) = self.database.take() {
            database.drop_now().await;
        }
        Ok(())
    }
}

async fn read_listen_line(child: &mut Child) -> anyhow::Result<SocketAddr> {
    let stdout = child.stdout.take().context("no stdout from the server")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("the server did not say where it listens within 60 s")??
        .context("the server exited before it listened")?;
    let addr = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line from the server: {line:?}"))?;
    // Keep reading stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr.parse()
        .with_context(|| format!("the server's address {addr:?}"))
}

/// A PostgreSQL database of one run, dropped afterwards.
struct FreshDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        if !admin_url.starts_with("postgres") {
            bail!("--database-url must be a postgres:// URL (SQLite is the default)");
        }
        let name = format!("jobq_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(admin_url).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await.ok();
        let (server, _) = admin_url
            .rsplit_once('/')
            .context("--database-url is not postgres://host/database")?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: format!("{server}/{name}"),
            name,
        })
    }

    async fn drop_now(self) {
        if let Ok(admin) = sea_orm::Database::connect(self.admin_url.as_str()).await {
            let _ = admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
            admin.close().await.ok();
        }
    }
}

/// The `jobq-server` binary next to the running one (cargo puts every
/// binary of the workspace in one directory).
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
}
