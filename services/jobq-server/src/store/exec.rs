//! One way to run the statements of a write, whichever connection runs
//! them: a sea-orm transaction (PostgreSQL), or the SQLite writer's own
//! connection on the writer's thread, where a statement is a function call
//! rather than a message to a driver thread and back.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Statement, Value};

use super::rows::storage;
use crate::domain::{QueueError, QueueResult};

/// Runs statements inside a transaction.
#[async_trait]
pub trait Tx: Send + Sync {
    /// The engine, for writing SQL in its dialect.
    fn backend(&self) -> DbBackend;
    /// The rows `statement` yields.
    async fn rows(&self, statement: Statement) -> QueueResult<Vec<Row>>;
    /// Runs `statement`; how many rows it changed.
    async fn execute(&self, statement: Statement) -> QueueResult<u64>;
    /// The first row `statement` yields.
    async fn row(&self, statement: Statement) -> QueueResult<Option<Row>> {
        Ok(self.rows(statement).await?.into_iter().next())
    }
}

#[async_trait]
impl Tx for DatabaseTransaction {
    fn backend(&self) -> DbBackend {
        self.get_database_backend()
    }

    async fn rows(&self, statement: Statement) -> QueueResult<Vec<Row>> {
        let rows = self.query_all_raw(statement).await.map_err(storage)?;
        Ok(rows.into_iter().map(Row::Orm).collect())
    }

    async fn execute(&self, statement: Statement) -> QueueResult<u64> {
        let outcome = self.execute_raw(statement).await.map_err(storage)?;
        Ok(outcome.rows_affected())
    }
}

/// A row read through sea-orm or straight from SQLite.
pub enum Row {
    /// From a sea-orm connection.
    Orm(QueryResult),
    /// From the SQLite writer's connection.
    Local(LocalRow),
}

/// A row of the SQLite writer: its column names (shared by the rows of
/// one statement) and values.
pub struct LocalRow {
    names: Arc<[String]>,
    cells: Vec<Cell>,
    /// Where the last column read was: columns are mostly read in the
    /// order they were selected, so the next one is usually just after.
    last: std::cell::Cell<usize>,
}

impl LocalRow {
    fn position(&self, name: &str) -> Option<usize> {
        let width = self.names.len();
        let start = self.last.get();
        let found = (0..width)
            .map(|offset| (start + offset) % width)
            .find(|&index| self.names[index] == name)?;
        self.last.set(found + 1);
        Some(found)
    }
}

/// One value as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// NULL.
    Null,
    /// INTEGER (booleans too).
    Integer(i64),
    /// REAL.
    Real(f64),
    /// TEXT.
    Text(String),
    /// BLOB.
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for Cell {
    fn from(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(n) => Cell::Integer(n),
            ValueRef::Real(x) => Cell::Real(x),
            ValueRef::Text(bytes) => Cell::Text(String::from_utf8_lossy(bytes).into_owned()),
            ValueRef::Blob(bytes) => Cell::Blob(bytes.to_vec()),
        }
    }
}

/// A Rust type a column can be read as, from either kind of row.
pub trait Column: sea_orm::TryGetable + Sized {
    /// The value of `cell`, if it has this type.
    fn from_cell(cell: &Cell) -> Option<Self>;
}

impl Column for String {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Text(text) => Some(text.clone()),
            _ => None,
        }
    }
}

impl Column for i64 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Integer(n) => Some(*n),
            _ => None,
        }
    }
}

impl Column for i32 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Integer(n) => i32::try_from(*n).ok(),
            _ => None,
        }
    }
}

impl Column for bool {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Integer(n) => Some(*n != 0),
            _ => None,
        }
    }
}

impl Column for f64 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Real(x) => Some(*x),
            Cell::Integer(n) => Some(*n as f64),
            _ => None,
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Null => Some(None),
            other => T::from_cell(other).map(Some),
        }
    }
}

impl Row {
    /// Column `name`, as `T`.
    pub fn get<T: Column>(&self, name: &str) -> QueueResult<T> {
        let unreadable =
            |detail: String| QueueError::Storage(format!("reading column {name}: {detail}"));
        match self {
            Row::Orm(row) => row
                .try_get::<T>("", name)
                .map_err(|error| unreadable(error.to_string())),
            Row::Local(row) => {
                let index = row
                    .position(name)
                    .ok_or_else(|| unreadable("no such column".into()))?;
                let cell = &row.cells[index];
                T::from_cell(cell).ok_or_else(|| {
                    unreadable(format!("{cell:?} is not a {}", std::any::type_name::<T>()))
                })
            }
        }
    }
}

/// The SQLite writer's connection, as a [`Tx`] once a transaction is open
/// on it. (The mutex is never contended: only the writer's thread uses it;
/// it makes the connection shareable across the futures of a write.)
pub struct LocalTx {
    connection: Mutex<rusqlite::Connection>,
}

impl LocalTx {
    /// Wraps the writer's connection.
    pub fn new(connection: rusqlite::Connection) -> Self {
        Self {
            connection: Mutex::new(connection),
        }
    }

    /// Runs `work` (statements on this connection) in an IMMEDIATE
    /// transaction — the write lock taken at once, not at the first write —
    /// and commits it; rolls back on any error.
    pub async fn in_transaction<T>(
        &self,
        work: impl std::future::Future<Output = QueueResult<T>>,
    ) -> QueueResult<T> {
        self.control("BEGIN IMMEDIATE")?;
        let committed = match work.await {
            Ok(value) => self.control("COMMIT").map(|()| value),
            Err(error) => Err(error),
        };
        if committed.is_err() {
            let _ = self.control("ROLLBACK");
        }
        committed
    }

    /// Runs one statement without parameters or rows (BEGIN, COMMIT...),
    /// prepared once.
    pub fn control(&self, sql: &str) -> QueueResult<()> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .execute_batch(sql)
            .map_err(sqlite_error)
    }
}

/// Binds a sea-orm value as SQLite stores it.
struct Bound<'v>(&'v Value);

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as Owned;
        let integer = |n: Option<i64>| n.map_or(Owned::Null, Owned::Integer);
        Ok(ToSqlOutput::Owned(match self.0 {
            Value::Bool(flag) => integer(flag.map(i64::from)),
            Value::TinyInt(n) => integer(n.map(i64::from)),
            Value::SmallInt(n) => integer(n.map(i64::from)),
            Value::Int(n) => integer(n.map(i64::from)),
            Value::BigInt(n) => integer(*n),
            Value::TinyUnsigned(n) => integer(n.map(i64::from)),
            Value::SmallUnsigned(n) => integer(n.map(i64::from)),
            Value::Unsigned(n) => integer(n.map(i64::from)),
            Value::BigUnsigned(n) => match n.map(i64::try_from).transpose() {
                Ok(n) => integer(n),
                Err(error) => return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(error))),
            },
            Value::Float(x) => x.map_or(Owned::Null, |x| Owned::Real(f64::from(x))),
            Value::Double(x) => x.map_or(Owned::Null, Owned::Real),
            Value::String(text) => text
                .as_ref()
                .map_or(Owned::Null, |text| Owned::Text(text.clone())),
            Value::Char(c) => c.map_or(Owned::Null, |c| Owned::Text(c.to_string())),
            Value::Bytes(bytes) => bytes
                .as_ref()
                .map_or(Owned::Null, |bytes| Owned::Blob(bytes.clone())),
            #[allow(unreachable_patterns)]
            other => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("no SQLite binding for {other:?}").into(),
                ));
            }
        }))
    }
}

fn params(statement: &Statement) -> Vec<Bound<'_>> {
    statement
        .values
        .as_ref()
        .map(|values| values.0.iter().map(Bound).collect())
        .unwrap_or_default()
}

/// SQLite's errors as the store's: a busy or locked database is
/// UNAVAILABLE (try again), a unique key taken a conflict, anything else
/// a storage error.
pub fn sqlite_error(error: rusqlite::Error) -> QueueError {
    use rusqlite::ErrorCode;
    match error.sqlite_error() {
        Some(failure) if failure.code == ErrorCode::DiskFull => {
            QueueError::StorageFull(error.to_string())
        }
        Some(failure) if failure.code == ErrorCode::ReadOnly => {
            QueueError::StorageReadOnly(error.to_string())
        }
        Some(failure)
            if matches!(
                failure.code,
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
            ) =>
        {
            QueueError::Unavailable(error.to_string())
        }
        // SQLITE_CONSTRAINT_UNIQUE and SQLITE_CONSTRAINT_PRIMARYKEY.
        Some(failure) if matches!(failure.extended_code, 2067 | 1555) => {
            QueueError::Conflict(error.to_string())
        }
        _ => QueueError::Storage(error.to_string()),
    }
}

#[async_trait]
impl Tx for LocalTx {
    fn backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn rows(&self, statement: Statement) -> QueueResult<Vec<Row>> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut prepared = connection
            .prepare_cached(&statement.sql)
            .map_err(sqlite_error)?;
        let names: Arc<[String]> = prepared
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let width = names.len();
        let mut rows = prepared
            .query(rusqlite::params_from_iter(params(&statement)))
            .map_err(sqlite_error)?;
        let mut read = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let cells = (0..width)
                .map(|index| row.get_ref(index).map(Cell::from))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sqlite_error)?;
            read.push(Row::Local(LocalRow {
                names: names.clone(),
                cells,
                last: std::cell::Cell::new(0),
            }));
        }
        Ok(read)
    }

    async fn execute(&self, statement: Statement) -> QueueResult<u64> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut prepared = connection
            .prepare_cached(&statement.sql)
            .map_err(sqlite_error)?;
        let changed = prepared
            .execute(rusqlite::params_from_iter(params(&statement)))
            .map_err(sqlite_error)?;
        Ok(changed as u64)
    }
}
