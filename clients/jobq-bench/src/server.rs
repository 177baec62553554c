//! The server under test: a `jobq-server` process the bench starts (on a
//! fresh data dir, or a fresh PostgreSQL database), the same server inside
//! the bench process, or one already running elsewhere. The bench reads the
//! server process's CPU time and memory from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// Resident memory of the process's own (anonymous) pages now, MiB:
    /// without the database file pages SQLite maps, which the kernel
    /// counts in the resident set but can drop at any time.
    pub fn anon_rss_mib(&self) -> Option<f64> {
        self.status_kib("RssAnon:").map(|kib| kib as f64 / 1024.0)
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
        /// Finished jobs to write into the database first.
        prefill_finished: u64,
        /// Server processes on the one database.
        replicas: usize,
    },
    /// Run the server inside the bench process.
    InProcess {
        /// `--database-url`; `None`: SQLite.
        database_url: Option<String>,
        /// SQLite durability.
        synchronous: jobq_server::config::SqliteDurability,
        /// Finished jobs to write into the database first.
        prefill_finished: u64,
        /// Servers on the one database.
        replicas: usize,
    },
    /// Use a server already running.
    External {
        /// Its address.
        endpoint: String,
        /// Its process, to measure it.
        pid: Option<u32>,
    },
}

/// A fresh data directory and, for PostgreSQL, a fresh database, holding
/// `prefill_finished` finished jobs.
async fn fresh_storage(
    database_url: Option<&str>,
    prefill_finished: u64,
) -> anyhow::Result<(tempfile::TempDir, Option<FreshDatabase>)> {
    let data_dir = tempfile::Builder::new().prefix("jobq-bench-").tempdir()?;
    let database = match database_url {
        Some(url) => Some(FreshDatabase::create(url).await?),
        None => None,
    };
    prefill(&storage_url(&data_dir, database.as_ref()), prefill_finished).await?;
    Ok((data_dir, database))
}

/// The first replica's command line, to start it again (the soak's restart).
#[derive(Debug, Clone)]
struct Respawn {
    binary: PathBuf,
    /// Every argument after `--listen ADDR`.
    args: Vec<std::ffi::OsString>,
    metrics: bool,
}

/// A server for one run; stopped when dropped (or by [`RunServer::stop`]).
pub struct RunServer {
    /// The endpoint clients connect to (the first replica's).
    pub endpoint: String,
    /// Every replica's endpoint, the first one first.
    pub endpoints: Vec<String>,
    /// Where the first replica serves metrics (with `--metrics`).
    pub metrics: Option<SocketAddr>,
    /// The server's process, when it can be measured (the first replica's).
    pub probe: Option<Probe>,
    /// Every replica's process that can be measured.
    pub probes: Vec<Probe>,
    children: Vec<Child>,
    /// How to start the first replica again on the same storage (spawned servers).
    respawn: Option<Respawn>,
    in_process: Vec<jobq_server::RunningServer>,
    database: Option<FreshDatabase>,
    _data_dir: Option<tempfile::TempDir>,
}

impl RunServer {
    /// Starts (or points at) the server for one run, on fresh storage.
    pub async fn start(setup: &ServerSetup) -> anyhow::Result<Self> {
        match setup {
            ServerSetup::External { endpoint, pid } => Ok(Self {
                endpoint: endpoint.clone(),
                endpoints: vec![endpoint.clone()],
                metrics: None,
                probe: pid.map(Probe::new),
                probes: pid.map(Probe::new).into_iter().collect(),
                children: Vec::new(),
                respawn: None,
                in_process: Vec::new(),
                database: None,
                _data_dir: None,
            }),
            ServerSetup::Spawn {
                binary,
                database_url,
                flags,
                prefill_finished,
                replicas,
            } => {
                let (data_dir, database) =
                    fresh_storage(database_url.as_deref(), *prefill_finished).await?;
                let mut children = Vec::new();
                let mut metrics = None;
                let mut endpoints = Vec::new();
                let mut probes = Vec::new();
                let mut respawn = None;
                for replica in 0..(*replicas).max(1) {
                    // Replicas share the database; each has its own data dir
                    // (SQLite allows one server, so only PostgreSQL gets here
                    // with more than one).
                    let own_dir = data_dir.path().join(format!("replica-{replica}"));
                    std::fs::create_dir_all(&own_dir)?;
                    let mut args: Vec<std::ffi::OsString> = vec![
                        "--data-dir".into(),
                        if replica == 0 {
                            data_dir.path().into()
                        } else {
                            own_dir.clone().into()
                        },
                    ];
                    args.extend(flags.iter().map(Into::into));
                    if let Some(database) = &database {
                        args.extend(["--database-url".into(), database.url.clone().into()]);
                    }
                    let with_metrics = flags.iter().any(|flag| flag == "--metrics-listen");
                    if replica == 0 {
                        respawn = Some(Respawn {
                            binary: binary.clone(),
                            args: args.clone(),
                            metrics: with_metrics,
                        });
                    }
                    let mut child = spawn_server(binary, "127.0.0.1:0", &args)?;
                    let (addr, metrics_addr) = read_listen_line(&mut child, with_metrics).await?;
                    metrics.get_or_insert(metrics_addr);
                    let pid = child.id().context("the server exited at once")?;
                    endpoints.push(format!("http://{addr}"));
                    probes.push(Probe::new(pid));
                    children.push(child);
                }
                Ok(Self {
                    endpoint: endpoints[0].clone(),
                    endpoints,
                    metrics: metrics.flatten(),
                    probe: probes.first().copied(),
                    probes,
                    children,
                    respawn,
                    in_process: Vec::new(),
                    database,
                    _data_dir: Some(data_dir),
                })
            }
            ServerSetup::InProcess {
                database_url,
                synchronous,
                prefill_finished,
                replicas,
            } => {
                let (data_dir, database) =
                    fresh_storage(database_url.as_deref(), *prefill_finished).await?;
                let mut in_process = Vec::new();
                for replica in 0..(*replicas).max(1) {
                    let own_dir = data_dir.path().join(format!("replica-{replica}"));
                    let mut config = jobq_server::Config::for_tests(if replica == 0 {
                        data_dir.path()
                    } else {
                        &own_dir
                    });
                    config.sqlite_synchronous = *synchronous;
                    config.database_url = database.as_ref().map(|database| database.url.clone());
                    let listener = tokio::net::TcpListener::bind(config.listen).await?;
                    in_process.push(jobq_server::App::start(config, listener).await?);
                }
                let endpoints: Vec<String> = in_process
                    .iter()
                    .map(|running| format!("http://{}", running.local_addr()))
                    .collect();
                // One process: its CPU counted once.
                let probe = Probe::new(std::process::id());
                Ok(Self {
                    endpoint: endpoints[0].clone(),
                    endpoints,
                    metrics: None,
                    probe: Some(probe),
                    probes: vec![probe],
                    children: Vec::new(),
                    respawn: None,
                    in_process,
                    database,
                    _data_dir: Some(data_dir),
                })
            }
        }
    }

    /// Kills the first replica with SIGKILL and starts it again on the same
    /// storage and the same address, so clients reconnect to it by
    /// themselves. Only for servers the bench spawned.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        let respawn = self
            .respawn
            .clone()
            .context("only a server the bench starts itself can be restarted")?;
        let listen = self
            .endpoint
            .strip_prefix("http://")
            .context("the server's endpoint is not http://")?
            .to_owned();
        if let Some(child) = self.children.first_mut() {
            child.start_kill()?;
            tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .context("the killed server did not exit within 30 s")??;
        }
        // The port may be held for a moment after the kill: try again.
        let mut tries = 0;
        let child = loop {
            tries += 1;
            let mut child = spawn_server(&respawn.binary, &listen, &respawn.args)?;
            match read_listen_line(&mut child, respawn.metrics).await {
                Ok(_) => break child,
                Err(error) if tries < 50 => {
                    tracing::warn!("restarting the server on {listen}: {error:#}; again");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    return Err(error.context(format!("restarting the server on {listen}")));
                }
            }
        };
        let pid = child.id().context("the restarted server exited at once")?;
        match self.children.first_mut() {
            Some(first) => *first = child,
            None => self.children.push(child),
        }
        if let Some(first) = self.probes.first_mut() {
            *first = Probe::new(pid);
        }
        self.probe = self.probes.first().copied();
        Ok(())
    }

    /// Stops the server and drops its storage.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for running in std::mem::take(&mut self.in_process) {
            running.shutdown().await?;
        }
        for mut child in std::mem::take(&mut self.children) {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        if let Some(database) = self.database.take() {
            database.drop_now().await;
        }
        Ok(())
    }
}

/// Starts a `jobq-server` listening on `listen` with `args` after it.
fn spawn_server(binary: &Path, listen: &str, args: &[std::ffi::OsString]) -> anyhow::Result<Child> {
    Command::new(binary)
        .arg("--listen")
        .arg(listen)
        .args(args)
        // Quiet unless the caller asks for the server's log.
        .env(
            "JOBQ_LOG",
            std::env::var("JOBQ_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The database URL the run's server will use (its default SQLite file).
fn storage_url(data_dir: &tempfile::TempDir, database: Option<&FreshDatabase>) -> String {
    match database {
        Some(database) => database.url.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            data_dir.path().join("jobq.db").display()
        ),
    }
}

/// Writes `count` succeeded jobs (each with its one attempt) of the bench's
/// queue straight into the database at `url`, after creating the schema.
/// Their ids sort before any new job's, as older jobs' do.
async fn prefill(url: &str, count: u64) -> anyhow::Result<()> {
    use jobq_migration::MigratorTrait;
    if count == 0 {
        return Ok(());
    }
    // Each slice takes seconds by design: no slow-statement warnings.
    let mut options = sea_orm::ConnectOptions::new(url);
    options.sqlx_logging(false);
    let db = sea_orm::Database::connect(options).await?;
    jobq_migration::Migrator::up(&db, None).await?;
    let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
    let id = if postgres {
        "'00000000-0000-7000-8000-' || lpad(i::text, 12, '0')"
    } else {
        "printf('00000000-0000-7000-8000-%012d', i)"
    };
    // An hour ago: inside any retention period, so the server keeps these
    // jobs instead of spending the run purging them.
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_millis()
        .saturating_sub(3_600_000);
    let started = Instant::now();
    // In slices, so neither engine holds one huge transaction.
    const SLICE: u64 = 500_000;
    let mut done = 0;
    while done < count {
        let (from, to) = (done + 1, (done + SLICE).min(count));
        db.execute_unprepared(&format!(
            "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to}) \
             INSERT INTO jobs (id, job_type, queue, payload, payload_bytes, priority, run_at, \
             max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms, tags, state, attempt, \
             history_seq, progress_percent, progress_message, cancel_requested, created_at, \
             started_at, finished_at, updated_at, has_dependents) \
             SELECT {id}, 'bench', 'bench', '{{}}', 2, 0, {at}, 5, 3600000, 1000, 3600000, '[]', \
             'succeeded', 1, 1, 0, '', FALSE, {at}, {at}, {at}, {at}, FALSE FROM n"
        ))
        .await?;
        db.execute_unprepared(&format!(
            "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to}) \
             INSERT INTO job_attempts (job_id, number, worker_id, lease_token, started_at, \
             finished_at, outcome, seq, kind, cancel_requested) \
             SELECT {id}, 1, 'prefill', 'prefill', {at}, {at}, 'succeeded', 1, 'attempt', FALSE FROM n"
        ))
        .await?;
        done = to;
    }
    if postgres {
        db.execute_unprepared("ANALYZE").await?;
    }
    db.close().await.ok();
    eprintln!(
        "# prefilled {count} finished jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The server's gRPC address, and its metrics address when it serves them.
async fn read_listen_line(
    child: &mut Child,
    metrics: bool,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    let stdout = child.stdout.take().context("no stdout from the server")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next = async |prefix: &str| -> anyhow::Result<SocketAddr> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the server did not say where it listens within 60 s")??
            .context("the server exited before it listened")?;
        let addr = line
            .strip_prefix(prefix)
            .with_context(|| format!("expected {prefix:?} from the server: {line:?}"))?;
        addr.parse()
            .with_context(|| format!("the server's address {addr:?}"))
    };
    let addr = next("listening on ").await?;
    let metrics = match metrics {
        true => Some(next("metrics on ").await?),
        false => None,
    };
    // Keep reading stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((addr, metrics))
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
        // The run's database in place of the given one; options such as
        // `?sslmode=disable` stay.
        let (address, options) = match admin_url.split_once('?') {
            Some((address, options)) => (address, format!("?{options}")),
            None => (admin_url, String::new()),
        };
        let (server, _) = address
            .rsplit_once('/')
            .context("--database-url is not postgres://host/database")?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: format!("{server}/{name}{options}"),
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
