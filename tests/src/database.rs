//! Which storage engine a test server runs on, and the database each test gets.
//!
//! SQLite: a file in the test's own data dir. PostgreSQL: a fresh database
//! per test on the server at `JOBQ_TEST_POSTGRES_URL` (default: this
//! machine's, 127.0.0.1:5432), dropped when the [`TestDatabase`] is dropped.
//! An unreachable PostgreSQL fails the test; it is never skipped.

use std::path::Path;

use anyhow::{Context, bail};
use sea_orm::ConnectionTrait;

/// Environment variable that picks the backend of the whole suite.
pub const BACKEND_ENV: &str = "JOBQ_TEST_BACKEND";
/// Environment variable with the PostgreSQL server tests create their databases on.
pub const POSTGRES_URL_ENV: &str = "JOBQ_TEST_POSTGRES_URL";
/// The PostgreSQL server when the variable is not set.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A storage engine the server can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: one SQLite file in the server's data dir.
    Sqlite,
    /// A database of its own on a shared PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend named by `JOBQ_TEST_BACKEND` (`sqlite`, the default when unset).
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(BACKEND_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Backend::Sqlite),
            Ok(name) if name.is_empty() || name.eq_ignore_ascii_case("sqlite") => {
                Ok(Backend::Sqlite)
            }
            Ok(name) if name.eq_ignore_ascii_case("postgres") => Ok(Backend::Postgres),
            Ok(name) => bail!("{BACKEND_ENV}={name:?}: use \"sqlite\" or \"postgres\""),
            Err(err) => bail!("{BACKEND_ENV} is not readable: {err}"),
        }
    }
}

/// The database one test's server(s) use. Keep it alive as long as any server
/// of the test runs: a restarted server must find the same data.
#[derive(Debug)]
pub struct TestDatabase {
    backend: Backend,
    url: Option<String>,
    /// PostgreSQL: the server URL and the database to drop at the end.
    owned: Option<(String, String)>,
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (server, _) = url
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://"))
        .ok_or_else(|| {
            anyhow::anyhow!("{POSTGRES_URL_ENV}={url:?} is not postgres://host/database")
        })?;
    Ok(format!("{server}/{database}"))
}

fn postgres_server_url() -> String {
    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

impl TestDatabase {
    /// Prepares a fresh, empty database for one test whose servers use `data_dir`.
    pub async fn provision(backend: Backend, data_dir: &Path) -> anyhow::Result<Self> {
        // SQLite: no URL, so the server takes its default, a file inside the
        // data dir; that also tests the default. The data dir is the test's
        // own temp dir, so the file is fresh and goes away with it.
        let _ = data_dir;
        match backend {
            Backend::Sqlite => Ok(Self {
                backend,
                url: None,
                owned: None,
            }),
            Backend::Postgres => {
                let admin_url = postgres_server_url();
                let name = format!("jobq_test_{}", uuid::Uuid::new_v4().simple());
                let admin = sea_orm::Database::connect(admin_url.as_str())
                    .await
                    .with_context(|| {
                        format!(
                            "PostgreSQL at {admin_url} is not reachable (set {POSTGRES_URL_ENV})"
                        )
                    })?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .with_context(|| format!("creating database {name}"))?;
                admin.close().await.ok();
                Ok(Self {
                    backend,
                    url: Some(with_database(&admin_url, &name)?),
                    owned: Some((admin_url, name)),
                })
            }
        }
    }

    /// The backend this database lives on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The `--database-url` to give the server; `None` means its default.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.owned.take() else {
            return;
        };
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = sea_orm::Database::connect(admin_url.as_str()).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                admin.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: a test database could not be dropped");
        }
    }
}
