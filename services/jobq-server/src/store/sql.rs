//! Raw SQL for the hot paths, written once for both engines. A statement's
//! text does not depend on how many rows it carries, or only through a few
//! chunk sizes, so it is prepared once per connection and reused: lists of
//! keys travel as one JSON parameter (`json_each` on SQLite,
//! `jsonb_array_elements_text` on PostgreSQL); rows to write travel as one
//! JSON parameter on PostgreSQL (one round trip per batch) and as bound
//! `VALUES` in power-of-two chunks on SQLite (in-process, where binding is
//! cheap and parsing JSON is not).

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{DbBackend, Statement, Value};

/// A statement being written: text with placeholders in the engine's style.
pub struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

/// SQL types of the columns of a JSON record parameter.
#[derive(Debug, Clone, Copy)]
pub enum Type {
    /// Text.
    Text,
    /// 32-bit integer.
    Int,
    /// 64-bit integer.
    BigInt,
    /// Boolean.
    Bool,
}

impl Type {
    fn postgres(self) -> &'static str {
        match self {
            Type::Text => "text",
            Type::Int => "integer",
            Type::BigInt => "bigint",
            Type::Bool => "boolean",
        }
    }
}

impl Sql {
    /// An empty statement for `backend`.
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    /// Appends SQL text.
    pub fn push(mut self, text: &str) -> Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind(mut self, value: impl Into<Value>) -> Self {
        self.values.push(value.into());
        if self.backend == DbBackend::Postgres {
            self.text.push('$');
            self.text.push_str(&self.values.len().to_string());
        } else {
            self.text.push('?');
        }
        self
    }

    /// Appends ` IN <the strings of items>` for the expression just written:
    /// on SQLite a `json_each` of one JSON parameter; on PostgreSQL
    /// `= ANY(array)` of one parameter, which the planner always serves
    /// by the column's index (an `IN (subquery)` it may turn into a join
    /// that reads the whole index).
    pub fn in_list<S: AsRef<str>>(self, items: &[S]) -> Self {
        let json = serde_json::Value::from(
            items
                .iter()
                .map(|item| item.as_ref().to_owned())
                .collect::<Vec<_>>(),
        )
        .to_string();
        match self.backend {
            DbBackend::Postgres => self
                .push(" = ANY(ARRAY(SELECT jsonb_array_elements_text(")
                .bind(json)
                .push("::jsonb)))"),
            _ => self
                .push(" IN (SELECT value FROM json_each(")
                .bind(json)
                .push("))"),
        }
    }

    /// Appends a table expression named `alias` whose rows are the JSON
    /// objects of `rows` (a JSON array), with the given columns.
    pub fn records(self, rows: String, alias: &str, columns: &[(&str, Type)]) -> Self {
        match self.backend {
            DbBackend::Postgres => {
                let definition = columns
                    .iter()
                    .map(|(name, kind)| format!("{name} {}", kind.postgres()))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.push("jsonb_to_recordset(")
                    .bind(rows)
                    .push(&format!("::jsonb) AS {alias}({definition})"))
            }
            _ => {
                let fields = columns
                    .iter()
                    .map(|(name, _)| format!("value ->> '{name}' AS {name}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                // jsonb_each hands each row over as a binary JSON object, so
                // the `->>` of every column is a lookup, not another parse.
                self.push(&format!("(SELECT {fields} FROM jsonb_each("))
                    .bind(rows)
                    .push(&format!(")) AS {alias}"))
            }
        }
    }

    /// The text of `rows` rows as a SQLite table expression named `alias`:
    /// `VALUES` with a placeholder for every value (its columns are
    /// `column1`, `column2`... in SQLite, renamed here).
    fn sqlite_values_text(rows: usize, alias: &str, columns: &[(&str, Type)]) -> String {
        let renamed = columns
            .iter()
            .enumerate()
            .map(|(index, (name, _))| format!("column{} AS {name}", index + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let row = format!("({})", vec!["?"; columns.len()].join(", "));
        format!(
            "(SELECT {renamed} FROM (VALUES {})) AS {alias}",
            vec![row.as_str(); rows].join(", ")
        )
    }

    /// `FOR UPDATE` on PostgreSQL (SQLite has one writer and no row locks).
    pub fn for_update(self) -> Self {
        match self.backend {
            DbBackend::Postgres => self.push(" FOR UPDATE"),
            _ => self,
        }
    }

    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL: rows another transaction is
    /// leasing are passed over instead of waited for.
    pub fn for_update_skip_locked(self) -> Self {
        match self.backend {
            DbBackend::Postgres => self.push(" FOR UPDATE SKIP LOCKED"),
            _ => self,
        }
    }

    /// `FOR NO KEY UPDATE` on PostgreSQL: as [`Self::for_update`] for rows
    /// whose key the transaction does not change, without waiting for the
    /// key-share locks of foreign key checks (a job's attempt row, its
    /// search entry being indexed).
    pub fn for_no_key_update(self) -> Self {
        match self.backend {
            DbBackend::Postgres => self.push(" FOR NO KEY UPDATE"),
            _ => self,
        }
    }

    /// `FOR NO KEY UPDATE SKIP LOCKED` on PostgreSQL: rows another
    /// transaction is leasing or changing are passed over; rows merely
    /// referenced by a foreign key check (a key-share lock) are not.
    pub fn for_no_key_update_skip_locked(self) -> Self {
        match self.backend {
            DbBackend::Postgres => self.push(" FOR NO KEY UPDATE SKIP LOCKED"),
            _ => self,
        }
    }

    /// `FOR SHARE` on PostgreSQL: the rows cannot change until the
    /// transaction ends (a dependency cannot finish unseen).
    pub fn for_share(self) -> Self {
        match self.backend {
            DbBackend::Postgres => self.push(" FOR SHARE"),
            _ => self,
        }
    }

    /// The statement.
    pub fn build(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

/// Most rows one SQLite statement carries (its bound values stay far
/// below SQLite's limit of 32,766 for every table here).
const MAX_SQLITE_CHUNK: usize = 512;
/// Most statement texts kept by [`sqlite_text`].
const MAX_SQLITE_TEXTS: usize = 256;

/// Statements `before` + (a table expression of `rows`, named `alias`, with
/// `columns`) + `after`. PostgreSQL gets one statement, the rows in one
/// JSON parameter (one round trip). SQLite gets the rows bound as `VALUES`,
/// in chunks of powers of two: each chunk size is its own statement text,
/// prepared once and kept, and SQLite binds values without parsing them
/// (a JSON parameter costs it a parse per column of every row).
pub fn with_records<T: serde::Serialize>(
    backend: DbBackend,
    before: &str,
    rows: &[T],
    alias: &str,
    columns: &[(&str, Type)],
    after: &str,
) -> Result<Vec<Statement>, String> {
    let rows: Vec<Vec<Value>> = rows
        .iter()
        .map(|row| super::bind::row_values(row, columns))
        .collect::<Result<_, _>>()?;
    Ok(with_values(backend, before, rows, alias, columns, after))
}

thread_local! {
    /// SQLite statement texts by shape: a batch's text is tens of
    /// kilobytes of placeholders, the same for every batch of its size.
    static SQLITE_TEXTS: std::cell::RefCell<HashMap<(String, String, usize), Arc<str>>> =
        std::cell::RefCell::new(HashMap::new());
}

/// `before` + a VALUES table of `rows` rows + `after`, made once per shape
/// (on the thread that asks: the SQLite writer's).
fn sqlite_text(
    before: &str,
    rows: usize,
    alias: &str,
    columns: &[(&str, Type)],
    after: &str,
) -> Arc<str> {
    // `before` holds the statement's column list, so with `after` and the
    // row count it tells the shape.
    let key = (format!("{before}\u{0}{alias}"), after.to_owned(), rows);
    SQLITE_TEXTS.with(|texts| {
        let mut texts = texts.borrow_mut();
        // A few shapes are in use; the bound only keeps a surprise small.
        if texts.len() >= MAX_SQLITE_TEXTS {
            texts.clear();
        }
        texts
            .entry(key)
            .or_insert_with(|| {
                format!(
                    "{before}{}{after}",
                    Sql::sqlite_values_text(rows, alias, columns)
                )
                .into()
            })
            .clone()
    })
}

/// [`with_records`] of rows already bound, each in the order of `columns`.
pub fn with_values(
    backend: DbBackend,
    before: &str,
    rows: Vec<Vec<Value>>,
    alias: &str,
    columns: &[(&str, Type)],
    after: &str,
) -> Vec<Statement> {
    if rows.is_empty() {
        return Vec::new();
    }
    if backend == DbBackend::Postgres {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                serde_json::Value::Object(
                    columns
                        .iter()
                        .zip(row)
                        .map(|((name, _), value)| ((*name).to_owned(), json_of(value)))
                        .collect(),
                )
            })
            .collect();
        return vec![
            Sql::new(backend)
                .push(before)
                .records(serde_json::Value::Array(json).to_string(), alias, columns)
                .push(after)
                .build(),
        ];
    }
    let mut statements = Vec::new();
    let mut rest = rows.into_iter().peekable();
    let mut left = rest.len();
    while left > 0 {
        let size = if left >= MAX_SQLITE_CHUNK {
            MAX_SQLITE_CHUNK
        } else {
            // The largest power of two that fits.
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        let values: Vec<Value> = rest.by_ref().take(size).flatten().collect();
        let text = sqlite_text(before, size, alias, columns, after);
        statements.push(Statement::from_sql_and_values(backend, &*text, values));
        left -= size;
    }
    statements
}

/// A bound value as JSON (for PostgreSQL's record parameter).
fn json_of(value: &Value) -> serde_json::Value {
    match value {
        Value::String(Some(text)) => serde_json::Value::String(text.clone()),
        Value::Int(Some(n)) => serde_json::Value::from(*n),
        Value::BigInt(Some(n)) => serde_json::Value::from(*n),
        Value::Bool(Some(flag)) => serde_json::Value::Bool(*flag),
        _ => serde_json::Value::Null,
    }
}

/// Every column of `jobs` but the payload and the result.
pub const CORE_COLUMNS: &str = "id, job_type, queue, payload_bytes, priority, run_at, \
    max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms, unique_key, request_key, tags, \
    summary, parent_id, traceparent, state, attempt, history_seq, progress_percent, progress_message, \
    last_error, cancel_requested, lease_token, worker_id, lease_expires_at, lease_ms, \
    attempt_deadline, attempt_started_at, created_at, started_at, finished_at, updated_at, \
    schedule_name, has_dependents, concurrency_key, concurrency_limit";

/// The columns a state change may write, with their types: the rest of a
/// job's row is written once, at enqueue.
pub const CHANGED_COLUMNS: &[(&str, Type)] = &[
    ("id", Type::Text),
    ("state", Type::Text),
    ("attempt", Type::Int),
    ("history_seq", Type::Int),
    ("run_at", Type::BigInt),
    ("progress_percent", Type::Int),
    ("progress_message", Type::Text),
    ("last_error", Type::Text),
    ("cancel_requested", Type::Bool),
    ("lease_token", Type::Text),
    ("worker_id", Type::Text),
    ("lease_expires_at", Type::BigInt),
    ("lease_ms", Type::BigInt),
    ("attempt_deadline", Type::BigInt),
    ("attempt_started_at", Type::BigInt),
    ("started_at", Type::BigInt),
    ("finished_at", Type::BigInt),
    ("updated_at", Type::BigInt),
    // Not loaded with the rest: a job's result is written when a success
    // sets it (and cleared apart, on a requeue).
    ("result", Type::Text),
];

/// Columns of a new job row, with their types.
pub const INSERTED_COLUMNS: &[(&str, Type)] = &[
    ("id", Type::Text),
    ("job_type", Type::Text),
    ("queue", Type::Text),
    ("payload", Type::Text),
    ("payload_bytes", Type::BigInt),
    ("priority", Type::Int),
    ("run_at", Type::BigInt),
    ("max_attempts", Type::Int),
    ("timeout_ms", Type::BigInt),
    ("backoff_base_ms", Type::BigInt),
    ("backoff_max_ms", Type::BigInt),
    ("unique_key", Type::Text),
    ("concurrency_key", Type::Text),
    ("concurrency_limit", Type::Int),
    ("request_key", Type::Text),
    ("tags", Type::Text),
    ("summary", Type::Text),
    ("parent_id", Type::Text),
    ("traceparent", Type::Text),
    ("state", Type::Text),
    ("attempt", Type::Int),
    ("history_seq", Type::Int),
    ("progress_percent", Type::Int),
    ("progress_message", Type::Text),
    ("last_error", Type::Text),
    ("cancel_requested", Type::Bool),
    ("created_at", Type::BigInt),
    ("finished_at", Type::BigInt),
    ("updated_at", Type::BigInt),
    ("schedule_name", Type::Text),
];

/// Columns of a history row, with their types.
pub const HISTORY_COLUMNS: &[(&str, Type)] = &[
    ("job_id", Type::Text),
    ("seq", Type::Int),
    ("kind", Type::Text),
    ("number", Type::Int),
    ("worker_id", Type::Text),
    ("lease_token", Type::Text),
    ("started_at", Type::BigInt),
    ("finished_at", Type::BigInt),
    ("outcome", Type::Text),
    ("error", Type::Text),
    ("cancel_requested", Type::Bool),
    ("then_state", Type::Text),
    ("then_run_at", Type::BigInt),
];

/// `a, b, c` of the names in `columns`.
pub fn names(columns: &[(&str, Type)]) -> String {
    columns
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a = j.a, b = j.b` for every column of `columns` but the first (the key).
pub fn assignments(columns: &[(&str, Type)], alias: &str) -> String {
    columns[1..]
        .iter()
        .map(|(name, _)| format!("{name} = {alias}.{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `j.a, j.b, j.c` of the names in `columns`.
pub fn qualified(columns: &[(&str, Type)], alias: &str) -> String {
    columns
        .iter()
        .map(|(name, _)| format!("{alias}.{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[(&str, Type)] = &[("id", Type::Text), ("n", Type::BigInt)];

    fn rows(count: i64) -> Vec<Vec<Value>> {
        (0..count)
            .map(|n| vec![Value::from(format!("job-{n}")), Value::from(n)])
            .collect()
    }

    #[test]
    fn sqlite_rows_go_in_power_of_two_chunks_each_value_bound_once_in_order() {
        let statements = with_values(
            DbBackend::Sqlite,
            "INSERT INTO t (id, n) SELECT j.id, j.n FROM ",
            rows(7),
            "j",
            COLUMNS,
            " WHERE 1",
        );
        let sizes: Vec<usize> = statements
            .iter()
            .map(|statement| statement.values.as_ref().map_or(0, |values| values.0.len()))
            .collect();
        // 4 + 2 + 1 rows of two values.
        assert_eq!(sizes, vec![8, 4, 2]);
        for (statement, size) in statements.iter().zip(&sizes) {
            assert_eq!(statement.sql.matches('?').count(), *size);
            assert!(statement.sql.starts_with("INSERT INTO t (id, n) SELECT j.id, j.n FROM (SELECT column1 AS id, column2 AS n FROM (VALUES (?, ?)"));
            assert!(statement.sql.ends_with(")) AS j WHERE 1"));
        }
        let bound: Vec<Value> = statements
            .into_iter()
            .flat_map(|statement| statement.values.map(|values| values.0).unwrap_or_default())
            .collect();
        assert_eq!(bound, rows(7).into_iter().flatten().collect::<Vec<_>>());
    }

    #[test]
    fn a_shape_seen_before_reuses_its_text() {
        let first = sqlite_text(
            "UPDATE t SET n = j.n FROM ",
            4,
            "j",
            COLUMNS,
            " WHERE t.id = j.id",
        );
        let again = sqlite_text(
            "UPDATE t SET n = j.n FROM ",
            4,
            "j",
            COLUMNS,
            " WHERE t.id = j.id",
        );
        assert!(Arc::ptr_eq(&first, &again));
        let other_size = sqlite_text(
            "UPDATE t SET n = j.n FROM ",
            2,
            "j",
            COLUMNS,
            " WHERE t.id = j.id",
        );
        assert!(!Arc::ptr_eq(&first, &other_size));
        assert_eq!(other_size.matches('?').count(), 4);
    }
}
