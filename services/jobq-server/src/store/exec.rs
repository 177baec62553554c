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
    fn index_of(&self, name: &str) -> QueueResult<usize> {
        self.position(name)
            .ok_or_else(|| unreadable(name, "no such column"))
    }

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

    /// The value of `cell`, moved out of it when it has this type (text is
    /// not copied again); `cell` back otherwise.
    fn from_owned_cell(cell: Cell) -> Result<Self, Cell> {
        Self::from_cell(&cell).ok_or(cell)
    }
}

impl Column for String {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Text(text) => Some(text.clone()),
            _ => None,
        }
    }

    fn from_owned_cell(cell: Cell) -> Result<Self, Cell> {
        match cell {
            Cell::Text(text) => Ok(text),
            other => Err(other),
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

    fn from_owned_cell(cell: Cell) -> Result<Self, Cell> {
        match cell {
            Cell::Null => Ok(None),
            other => T::from_owned_cell(other).map(Some),
        }
    }
}

/// A column that could not be read as the type asked for.
fn unreadable(name: &str, detail: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(format!("reading column {name}: {detail}"))
}

/// `cell` is not a `T`.
fn mistyped<T>(name: &str, cell: &Cell) -> QueueError {
    unreadable(
        name,
        format!("{cell:?} is not a {}", std::any::type_name::<T>()),
    )
}

impl Row {
    /// Column `name`, as `T`.
    pub fn get<T: Column>(&self, name: &str) -> QueueResult<T> {
        match self {
            Row::Orm(row) => row
                .try_get::<T>("", name)
                .map_err(|error| unreadable(name, error)),
            Row::Local(row) => {
                let cell = &row.cells[row.index_of(name)?];
                T::from_cell(cell).ok_or_else(|| mistyped::<T>(name, cell))
            }
        }
    }

    /// Column `name`, as `T`, moved out of the row: a second read of it
    /// finds NULL. For decoding a row that is read once, column by column,
    /// without copying its text again.
    pub fn take<T: Column>(&mut self, name: &str) -> QueueResult<T> {
        let Row::Local(row) = self else {
            return self.get(name);
        };
        let index = row.index_of(name)?;
        let cell = std::mem::replace(&mut row.cells[index], Cell::Null);
        T::from_owned_cell(cell).map_err(|cell| mistyped::<T>(name, &cell))
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
            // Text and bytes are lent to SQLite, which copies them as it binds.
            Value::String(Some(text)) => {
                return Ok(ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())));
            }
            Value::String(None) => Owned::Null,
            Value::Char(c) => c.map_or(Owned::Null, |c| Owned::Text(c.to_string())),
            Value::Bytes(Some(bytes)) => return Ok(ToSqlOutput::Borrowed(ValueRef::Blob(bytes))),
            Value::Bytes(None) => Owned::Null,
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn one_row(sql: &str, values: Vec<Value>) -> Row {
        let tx =
            LocalTx::new(rusqlite::Connection::open_in_memory().expect("an in-memory database"));
        let mut rows = tx
            .rows(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                sql,
                values,
            ))
            .await
            .expect("the query runs");
        assert_eq!(rows.len(), 1);
        rows.remove(0)
    }

    #[tokio::test]
    async fn bound_text_and_bytes_reach_sqlite_whole() {
        let row = one_row(
            "SELECT ?1 AS text, length(?1) AS chars, ?2 AS bytes, ?3 AS no_text",
            vec![
                Value::String(Some("añb".into())),
                Value::Bytes(Some(vec![0, 1, 2])),
                Value::String(None),
            ],
        )
        .await;
        assert_eq!(row.get::<String>("text").expect("text"), "añb");
        assert_eq!(row.get::<i64>("chars").expect("chars"), 3);
        let Row::Local(local) = &row else {
            panic!("a row of the writer's connection")
        };
        assert_eq!(local.cells[2], Cell::Blob(vec![0, 1, 2]));
        assert_eq!(row.get::<Option<String>>("no_text").expect("NULL"), None);
    }

    #[tokio::test]
    async fn take_moves_a_column_out_and_names_the_column_it_cannot_read() {
        let mut row = one_row("SELECT 'x' AS id, 7 AS n, NULL AS gone", Vec::new()).await;
        assert_eq!(row.take::<String>("id").expect("id"), "x");
        // Taken: what is left reads as NULL.
        assert_eq!(row.take::<Option<String>>("id").expect("id again"), None);
        let wrong = row.take::<String>("n").expect_err("an integer is not text");
        assert!(wrong.to_string().contains("column n"), "{wrong}");
        let missing = row.take::<i64>("absent").expect_err("no such column");
        assert!(missing.to_string().contains("column absent"), "{missing}");
        assert_eq!(row.take::<Option<i64>>("gone").expect("NULL"), None);
    }
}
