//! What differs between SQLite and PostgreSQL, side by side: how to connect
//! and tune the connection, whether writes are grouped, and how replicas
//! share the count of a limited queue's running jobs.

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, Statement};

use super::exec::Tx;
use crate::config::SqliteDurability;
use crate::domain::QueueResult;

/// The engines jobq runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// Embedded, one server process.
    Sqlite,
    /// Shared by several server replicas.
    Postgres,
}

/// How long a call waits for a free connection before it answers
/// UNAVAILABLE: short, so that a database that went away shows at once
/// instead of as a hung call.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The database engine in use and its quirks.
pub struct Dialect {
    backend: DbBackend,
    /// SQLite: the database file and its durability, for the writer's connection.
    sqlite: Option<(PathBuf, SqliteDurability)>,
    /// PostgreSQL: the group committers' own connections (see
    /// [`Dialect::committers`]).
    committers: Option<DatabaseConnection>,
    /// Where the durations of write statements go, once metrics are on.
    pub(super) statement_timer:
        std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

/// Group committers on PostgreSQL, each with its own connection: while one
/// waits for its statements and its commit, the others run the next
/// groups. One alone drained 2,000 jobs/s in the benchmark, 2 about 3,300,
/// 4 and 8 about 4,100.
pub const POSTGRES_COMMITTERS: u32 = 4;

/// Settings of every SQLite connection besides journal mode, sync, busy
/// timeout and foreign keys: reads by mmap; 8 MiB of page cache per
/// connection (enough for the pages a large group dirties; a larger cache
/// costs every commit more, as SQLite walks it at the end of each
/// transaction, and a reader's is dropped whenever the writer commits);
/// temporary tables in memory; and a checkpoint every ~16 MiB of WAL instead
/// of 4 MiB (fewer, larger checkpoints under a write burst).
const SQLITE_PRAGMAS: [(&str, &str); 4] = [
    ("cache_size", "-8192"),
    ("mmap_size", "268435456"),
    ("temp_store", "memory"),
    ("wal_autocheckpoint", "4000"),
];

/// Only this process writes, through one writer: a wait on the lock can
/// only be a checkpoint, briefly.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

impl Dialect {
    /// Connects to `url` with the settings each engine needs: the pool for
    /// reads (and, on PostgreSQL, writes), and the dialect.
    pub async fn connect(
        url: &str,
        durability: SqliteDurability,
    ) -> Result<(DatabaseConnection, Dialect), DbErr> {
        let synchronous = match durability {
            SqliteDurability::Full => SqliteSynchronous::Full,
            SqliteDurability::Normal => SqliteSynchronous::Normal,
        };
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .sqlx_logging(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_timeout(ACQUIRE_TIMEOUT);
        let cores = std::thread::available_parallelism().map_or(2, usize::from) as u32;
        let sqlite = if url.starts_with("sqlite:") {
            let path = sqlite_path(url).map_err(DbErr::Custom)?;
            options
                // Readers: GetJob, ListJobs, stats, log followers.
                .max_connections(8)
                .map_sqlx_sqlite_opts(move |sqlite| {
                    SQLITE_PRAGMAS.iter().fold(
                        sqlite
                            .journal_mode(SqliteJournalMode::Wal)
                            .synchronous(synchronous)
                            .busy_timeout(SQLITE_BUSY_TIMEOUT)
                            .foreign_keys(true)
                            .statement_cache_capacity(256),
                        |sqlite, (name, value)| sqlite.pragma(*name, *value),
                    )
                });
            Some((path, durability))
        } else {
            // Enough for every core's share of concurrent calls, and the
            // LISTEN connection and the log writer beside them.
            options
                .max_connections((4 * cores).max(8))
                .min_connections(2)
                // Every hot query has an index that serves it. A plan made
                // while a table was still small (a new database, the first
                // minute of a burst, before any ANALYZE) would scan the
                // whole table, and PostgreSQL keeps a prepared statement's
                // generic plan: without this, every enqueue scanned all jobs
                // for its request_id until autovacuum's first ANALYZE.
                .map_sqlx_postgres_opts(|postgres| postgres.options([("enable_seqscan", "off")]));
            None
        };
        let db = match Database::connect(options).await {
            Ok(db) => db,
            // The pool only says it timed out: one direct connection says why.
            Err(error) if sqlite.is_none() => {
                return Err(match postgres_unreachable_because(url).await {
                    Some(cause) => DbErr::Custom(format!("{error} ({cause})")),
                    None => error,
                });
            }
            Err(error) => return Err(error),
        };
        let committers = if sqlite.is_none() {
            Some(Self::connect_committers(url).await?)
        } else {
            None
        };
        let backend = db.get_database_backend();
        Ok((
            db,
            Dialect {
                backend,
                sqlite,
                committers,
                statement_timer: std::sync::OnceLock::new(),
            },
        ))
    }

    /// The SQLite database file, on SQLite.
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite.as_ref().map(|(file, _)| file.as_path())
    }

    /// The PostgreSQL group committers' connections. Every query of a
    /// write group has an index that yields its rows in the order it wants
    /// (the lease walks the lease index, a load by ids the primary key), so
    /// these connections plan without sorts as well as without sequential
    /// scans. A table that grew faster than autovacuum analyses it looks
    /// nearly empty to the planner, which then read every queued job of the
    /// queue through another index and sorted them on each lease (20 ms at
    /// 14,000 queued jobs in the drain benchmark). Set per connection, not
    /// per transaction: that cost two round trips per lease.
    async fn connect_committers(url: &str) -> Result<DatabaseConnection, DbErr> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .sqlx_logging(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_timeout(ACQUIRE_TIMEOUT)
            .max_connections(POSTGRES_COMMITTERS)
            .min_connections(1)
            .map_sqlx_postgres_opts(|postgres| {
                postgres.options([("enable_seqscan", "off"), ("enable_sort", "off")])
            });
        Database::connect(options).await
    }

    /// The connections the writer commits through: the committers' own
    /// on PostgreSQL, else `pool`.
    pub fn committers(&self, pool: &DatabaseConnection) -> DatabaseConnection {
        self.committers.clone().unwrap_or_else(|| pool.clone())
    }

    /// The SQLite writer's own connection (not pooled: one thread owns it),
    /// with the same settings as the pool's.
    pub fn open_sqlite_writer(&self) -> Result<rusqlite::Connection, String> {
        let Some((path, durability)) = &self.sqlite else {
            return Err("not a SQLite database".into());
        };
        let connection = rusqlite::Connection::open(path)
            .map_err(|error| format!("opening {} for writing: {error}", path.display()))?;
        connection
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .map_err(|error| error.to_string())?;
        let synchronous = match durability {
            SqliteDurability::Full => "FULL",
            SqliteDurability::Normal => "NORMAL",
        };
        let mut pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
        );
        for (name, value) in SQLITE_PRAGMAS {
            pragmas.push_str(&format!(" PRAGMA {name} = {value};"));
        }
        connection
            .execute_batch(&pragmas)
            .map_err(|error| format!("setting up {}: {error}", path.display()))?;
        connection.set_prepared_statement_cache_capacity(256);
        Ok(connection)
    }

    /// Which engine.
    pub fn kind(&self) -> DatabaseKind {
        if self.backend == DbBackend::Postgres {
            DatabaseKind::Postgres
        } else {
            DatabaseKind::Sqlite
        }
    }

    /// Whether writes go through the SQLite writer thread and its own
    /// connection (one writer at a time), rather than committers over the
    /// pool (PostgreSQL).
    pub fn groups_writes(&self) -> bool {
        self.backend != DbBackend::Postgres
    }

    /// Takes, until the transaction ends, the locks every replica takes
    /// before it counts and leases under a gate (`namespace` "queue:" or
    /// "key:", and each name), all in one statement; says per name whether
    /// it got it (false: another transaction held it all along). It never
    /// waits on a lock itself, so transactions that take several cannot
    /// deadlock; it tries the missing ones again for a few milliseconds (the
    /// holder's lease commits within them), so concurrent leases take turns
    /// instead of coming back empty (PostgreSQL; on SQLite the one writer
    /// already serialises them).
    pub async fn try_lock_all(
        &self,
        tx: &dyn Tx,
        namespace: &str,
        names: &[&str],
    ) -> QueueResult<Vec<bool>> {
        let mut locked = vec![true; names.len()];
        if self.backend != DbBackend::Postgres || names.is_empty() {
            return Ok(locked);
        }
        let namespace = format!("jobq-{namespace}");
        let mut missing: Vec<usize> = (0..names.len()).collect();
        for attempt in 0..GATE_LOCK_TRIES {
            if attempt > 0 {
                tokio::time::sleep(GATE_LOCK_PAUSE).await;
            }
            let keys: Vec<i64> = missing
                .iter()
                .map(|&index| advisory_key(&namespace, names[index]))
                .collect();
            let keys = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into());
            let rows = tx
                .rows(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_try_advisory_xact_lock(CAST(key AS BIGINT)) AS locked \
                     FROM jsonb_array_elements_text($1::jsonb) WITH ORDINALITY AS k(key, n) \
                     ORDER BY n",
                    [keys.into()],
                ))
                .await?;
            let got: Vec<bool> = rows
                .iter()
                .map(|row| row.get::<bool>("locked").unwrap_or(false))
                .collect();
            let mut still = Vec::new();
            for (position, &index) in missing.iter().enumerate() {
                if got.get(position).copied() != Some(true) {
                    still.push(index);
                }
            }
            missing = still;
            if missing.is_empty() {
                return Ok(locked);
            }
        }
        for index in missing {
            locked[index] = false;
        }
        Ok(locked)
    }
}

/// How often a gate's lock is tried, [`GATE_LOCK_PAUSE`] apart, before the
/// lease leaves that gate for its next look.
const GATE_LOCK_TRIES: u32 = 20;
/// Pause between tries of a gate's lock.
const GATE_LOCK_PAUSE: Duration = Duration::from_millis(1);

/// A stable 64-bit key for a PostgreSQL advisory lock on `name` within
/// `namespace`: FNV-1a, so every replica computes the same key.
pub fn advisory_key(namespace: &str, name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// `url` with its password hidden, for messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => url.split('?').next().unwrap_or(url).to_owned(),
    }
}

/// `url` with `sslmode=disable` added when it names a PostgreSQL on this
/// machine (a loopback address or `localhost`) and says nothing of TLS
/// itself (no `sslmode` in the URL, no `PGSSLMODE`). sqlx's default is to
/// prefer TLS, which on loopback protects nothing and cost half the
/// throughput here: the driver sets no TCP_NODELAY, TLS splits its writes,
/// and a split write waits out the peer's delayed acknowledgement (p99 of a
/// single enqueue 56 ms with TLS, 12 ms without). A URL that asks for TLS
/// keeps it.
pub fn without_loopback_tls(url: &str) -> String {
    loopback_url_without_tls(url, std::env::var_os("PGSSLMODE").is_some())
}

fn loopback_url_without_tls(url: &str, tls_set_by_environment: bool) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if !matches!(parsed.scheme(), "postgres" | "postgresql")
        || tls_set_by_environment
        || parsed
            .query_pairs()
            .any(|(key, _)| key == "sslmode" || key == "ssl-mode")
    {
        return url.to_owned();
    }
    // A postgres: URL's host is opaque to the url crate: an address comes
    // back as text.
    let on_this_machine = match parsed.host() {
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|address| address.is_loopback())
        }
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    };
    if !on_this_machine {
        return url.to_owned();
    }
    parsed.query_pairs_mut().append_pair("sslmode", "disable");
    parsed.to_string()
}

/// Why one connection to the PostgreSQL at `url` fails, if it does.
async fn postgres_unreachable_because(url: &str) -> Option<String> {
    use sea_orm::sqlx::Connection;
    match tokio::time::timeout(ACQUIRE_TIMEOUT, sea_orm::sqlx::PgConnection::connect(url)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            None
        }
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {ACQUIRE_TIMEOUT:?}")),
    }
}

/// The file of a `sqlite:` URL as sqlx reads it (`sqlite://path`,
/// `sqlite:path`, optional `?query`, percent-escapes decoded).
fn sqlite_path(url: &str) -> Result<PathBuf, String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| format!("{url} is not a sqlite: URL"))?;
    let path = rest.split('?').next().unwrap_or_default();
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|error| format!("{url}: {error}"))?;
    if path.is_empty() || path == ":memory:" {
        return Err(format!(
            "{url}: jobq keeps its SQLite database in a file; give its path (sqlite://PATH)"
        ));
    }
    Ok(PathBuf::from(path.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::{loopback_url_without_tls, sqlite_path};
    use std::path::PathBuf;

    #[test]
    fn a_postgres_on_this_machine_is_reached_without_tls_unless_the_url_asks_for_it() {
        for (url, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
            ),
            (
                "postgresql://u:p@localhost/jobq?application_name=jobq",
                "postgresql://u:p@localhost/jobq?application_name=jobq&sslmode=disable",
            ),
            (
                "postgres://[::1]:5433/jobq",
                "postgres://[::1]:5433/jobq?sslmode=disable",
            ),
            // Asked for explicitly: kept as given.
            (
                "postgres://127.0.0.1/jobq?sslmode=require",
                "postgres://127.0.0.1/jobq?sslmode=require",
            ),
            (
                "postgres://127.0.0.1/jobq?ssl-mode=verify-full",
                "postgres://127.0.0.1/jobq?ssl-mode=verify-full",
            ),
            // Another machine: TLS as the driver prefers it.
            (
                "postgres://db.example.org/jobq",
                "postgres://db.example.org/jobq",
            ),
            ("postgres://10.0.0.5/jobq", "postgres://10.0.0.5/jobq"),
            (
                "sqlite://data/jobq.db?mode=rwc",
                "sqlite://data/jobq.db?mode=rwc",
            ),
        ] {
            assert_eq!(loopback_url_without_tls(url, false), expected, "{url}");
        }
        assert_eq!(
            loopback_url_without_tls("postgres://127.0.0.1/jobq", true),
            "postgres://127.0.0.1/jobq",
            "PGSSLMODE decides"
        );
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        for (url, path) in [
            ("sqlite://data/jobq.db?mode=rwc", "data/jobq.db"),
            ("sqlite:///tmp/a b.db", "/tmp/a b.db"),
            ("sqlite:jobq.db", "jobq.db"),
            ("sqlite:///tmp/x%20y.db?mode=rwc", "/tmp/x y.db"),
        ] {
            assert_eq!(sqlite_path(url), Ok(PathBuf::from(path)), "{url}");
        }
        assert!(sqlite_path("sqlite::memory:").is_err());
        assert!(sqlite_path("sqlite://").is_err());
    }
}
