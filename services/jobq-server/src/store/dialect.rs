//! What differs between SQLite and PostgreSQL, side by side: how to connect,
//! how writers are serialised, and how the lease query locks rows.

use std::time::Duration;

use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, QuerySelect, Select, Statement,
};
use tokio::sync::{Mutex, MutexGuard};

use crate::config::SqliteDurability;

/// The engines jobq runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// Embedded, one server process.
    Sqlite,
    /// Shared by several server replicas.
    Postgres,
}

/// The database engine in use and its quirks.
pub struct Dialect {
    backend: DbBackend,
    /// SQLite allows one writer at a time and fails a transaction that tries
    /// to upgrade a read lock, so this process serialises its own writers.
    /// PostgreSQL locks rows instead and needs none.
    sqlite_writer: Option<Mutex<()>>,
}

impl Dialect {
    /// Connects to `url` with the settings each engine needs.
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
            .acquire_timeout(Duration::from_secs(10));
        let is_sqlite = url.starts_with("sqlite:");
        if is_sqlite {
            options
                .max_connections(8)
                .map_sqlx_sqlite_opts(move |sqlite| {
                    sqlite
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(synchronous)
                        .busy_timeout(Duration::from_secs(10))
                        .foreign_keys(true)
                });
        } else {
            options.max_connections(16);
        }
        let db = Database::connect(options).await?;
        let backend = db.get_database_backend();
        let sqlite_writer = (backend == DbBackend::Sqlite).then(|| Mutex::new(()));
        Ok((
            db,
            Dialect {
                backend,
                sqlite_writer,
            },
        ))
    }

    /// Which engine.
    pub fn kind(&self) -> DatabaseKind {
        if self.backend == DbBackend::Postgres {
            DatabaseKind::Postgres
        } else {
            DatabaseKind::Sqlite
        }
    }

    /// Held for the length of a write transaction (SQLite only).
    pub async fn writer(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(writer) => Some(writer.lock().await),
            None => None,
        }
    }

    /// Serialises, across replicas, the transactions that count and lease
    /// the running jobs of one concurrency-limited queue (PostgreSQL; on
    /// SQLite the writer lock already does).
    pub async fn lock_queue(&self, tx: &DatabaseTransaction, queue: &str) -> Result<(), DbErr> {
        if self.backend != DbBackend::Postgres {
            return Ok(());
        }
        let key = advisory_key("jobq-queue:", queue);
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [key.into()],
        ))
        .await?;
        Ok(())
    }

    /// Locks the selected rows against change until the transaction ends
    /// (PostgreSQL `FOR SHARE`), so a dependency cannot finish unseen while a
    /// dependent is being inserted.
    pub fn lock_for_share<E: sea_orm::EntityTrait>(&self, select: Select<E>) -> Select<E> {
        match self.backend {
            DbBackend::Postgres => select.lock(LockType::Share),
            _ => select,
        }
    }

    /// Locks the selected rows for update; on PostgreSQL `skip_locked` skips
    /// rows another transaction holds (the lease query). SQLite has no row
    /// locks: the writer lock already excludes every other writer.
    pub fn lock_for_update<E: sea_orm::EntityTrait>(
        &self,
        select: Select<E>,
        skip_locked: bool,
    ) -> Select<E> {
        match self.backend {
            DbBackend::Postgres if skip_locked => {
                select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            }
            DbBackend::Postgres => select.lock(LockType::Update),
            _ => select,
        }
    }
}

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
