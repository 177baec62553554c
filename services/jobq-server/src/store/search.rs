//! The conditions of a job search by tags and payload fields, and the
//! order of a listing, for each engine side by side. Each condition is an
//! index-served prefilter (SQLite: the FTS5 trigram table `job_search`;
//! PostgreSQL: the pg_trgm index of the `job_search` table for payloads, the
//! jsonb index on `tags`) and an exact check of the rows it lets through.
//! The newest jobs may not be in the payload index yet; the prefilter lets
//! them all through.

use sea_orm::DbBackend;

use super::sql::Sql;
use crate::domain::{JobFilter, JobId, JobOrder, Millis, PageCursor, PayloadFilter, PayloadMatch};

/// Closes a SQLite prefilter on `job_search`: the jobs the writer has not
/// indexed yet (see `search_backlog`) pass it too, so the exact check that
/// follows sees every job stored. (PostgreSQL's says the same by job id.)
const NOT_YET_INDEXED: &str = " UNION ALL SELECT job_rowid FROM job_search_pending)";

/// Trigram indexes narrow nothing with fewer characters than this.
const MIN_TRIGRAM_CHARS: usize = 3;

/// The longest run of `text` free of LIKE's special characters, when it is
/// long enough for a trigram index (`%run%` is then a safe prefilter:
/// every row that holds `text` holds the run).
fn trigram_term(text: &str) -> Option<String> {
    text.split(['%', '_', '\\'])
        .max_by_key(|run| run.chars().count())
        .filter(|run| run.chars().count() >= MIN_TRIGRAM_CHARS)
        .map(|run| format!("%{run}%"))
}

/// `text` as it appears inside a JSON string of the stored payload (the
/// server writes payloads with serde_json, so the escapes are the same).
fn json_inner(text: &str) -> String {
    let quoted = serde_json::Value::from(text).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// How many of the newest jobs a SQLite search reads first, without its
/// trigram prefilter (see [`newest_window`]).
const NEWEST_WINDOW: u64 = 2048;

/// A search that a whole page may match among the newest jobs is tried
/// there first, on SQLite: a term common to many jobs makes the trigram
/// prefilter return them all (seconds at a million), while the newest few
/// thousand give a full page at once. Only when they do not is the indexed
/// search run. PostgreSQL's planner makes this choice by itself.
pub fn newest_window(backend: DbBackend, filter: &JobFilter) -> Option<u64> {
    let searching = !filter.tags.is_empty() || !filter.payload.is_empty();
    (backend == DbBackend::Sqlite && searching && filter.order == JobOrder::Newest)
        .then_some(NEWEST_WINDOW)
}

/// Appends ` AND <among the newest window jobs after the cursor>`.
pub fn push_window(statement: Sql, window: u64, after: Option<&PageCursor>) -> Sql {
    let statement = statement.push(" AND jobs.rowid IN (SELECT rowid FROM jobs AS newest");
    let statement = match after {
        Some(after) => statement
            .push(" WHERE newest.id < ")
            .bind(after.id.to_string()),
        None => statement,
    };
    statement.push(&format!(" ORDER BY newest.id DESC LIMIT {window})"))
}

/// Appends ` AND <the job has every tag of tags>`; with `prefilter`, narrowed
/// by the index first.
pub fn push_tags(statement: Sql, backend: DbBackend, tags: &[String], prefilter: bool) -> Sql {
    if tags.is_empty() {
        return statement;
    }
    match backend {
        DbBackend::Postgres => {
            let wanted = serde_json::Value::from(tags.to_vec()).to_string();
            statement
                .push(" AND tags::jsonb @> ")
                .bind(wanted)
                .push("::jsonb")
        }
        _ => tags.iter().fold(statement, |statement, tag| {
            // Tags are stored as a JSON list: `"tag"` is in its text.
            let quoted = serde_json::Value::from(tag.as_str()).to_string();
            let statement = match trigram_term(&quoted).filter(|_| prefilter) {
                Some(term) => statement
                    .push(" AND jobs.rowid IN (SELECT rowid FROM job_search WHERE tags LIKE ")
                    .bind(term)
                    .push(NOT_YET_INDEXED),
                None => statement,
            };
            statement
                .push(" AND EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = ")
                .bind(tag.clone())
                .push(")")
        }),
    }
}

/// Appends ` AND <the payload matches every filter>`; with `prefilter`,
/// narrowed by the index first.
pub fn push_payload(
    statement: Sql,
    backend: DbBackend,
    filters: &[PayloadFilter],
    prefilter: bool,
) -> Sql {
    filters.iter().fold(statement, |statement, filter| {
        push_payload_filter(statement, backend, filter, prefilter)
    })
}

fn push_payload_filter(
    statement: Sql,
    backend: DbBackend,
    filter: &PayloadFilter,
    prefilter: bool,
) -> Sql {
    let statement = match trigram_term(&json_inner(&filter.value)).filter(|_| prefilter) {
        Some(term) => match backend {
            DbBackend::Postgres => statement
                .push(" AND jobs.id IN (SELECT job_id FROM job_search WHERE payload ILIKE ")
                .bind(term)
                .push(" UNION ALL SELECT job_id FROM job_search_pending)"),
            _ => statement
                .push(" AND jobs.rowid IN (SELECT rowid FROM job_search WHERE payload LIKE ")
                .bind(term)
                .push(NOT_YET_INDEXED),
        },
        // Too short to narrow by index: the exact check reads every row.
        None => statement,
    };
    match backend {
        DbBackend::Postgres => {
            // `#>>` gives a string as it is and a number or boolean as JSON.
            let path = format!("{{{}}}", filter.path.join(","));
            match filter.matching {
                PayloadMatch::Equals => statement
                    .push(" AND payload::jsonb #>> ")
                    .bind(path.clone())
                    .push("::text[] = ")
                    .bind(filter.value.clone())
                    .push(" AND jsonb_typeof(payload::jsonb #> ")
                    .bind(path)
                    .push("::text[]) IN ('string', 'number', 'boolean')"),
                PayloadMatch::Contains => statement
                    .push(" AND jsonb_typeof(payload::jsonb #> ")
                    .bind(path.clone())
                    .push("::text[]) = 'string' AND strpos(lower(payload::jsonb #>> ")
                    .bind(path)
                    .push("::text[]), lower(")
                    .bind(filter.value.clone())
                    .push(")) > 0"),
            }
        }
        _ => {
            // Keys quoted, so `-` in a segment is a key character.
            let path = format!(
                "${}",
                filter
                    .path
                    .iter()
                    .map(|segment| format!(".\"{segment}\""))
                    .collect::<String>()
            );
            match filter.matching {
                // A string compares as it is; a number or boolean as its
                // JSON text (`->`), as on PostgreSQL.
                PayloadMatch::Equals => statement
                    .push(" AND CASE json_type(payload, ")
                    .bind(path.clone())
                    .push(") WHEN 'text' THEN json_extract(payload, ")
                    .bind(path.clone())
                    .push(") WHEN 'integer' THEN payload -> ")
                    .bind(path.clone())
                    .push(" WHEN 'real' THEN payload -> ")
                    .bind(path.clone())
                    .push(" WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' END = ")
                    .bind(filter.value.clone()),
                PayloadMatch::Contains => statement
                    .push(" AND json_type(payload, ")
                    .bind(path.clone())
                    .push(") = 'text' AND instr(lower(json_extract(payload, ")
                    .bind(path)
                    .push(")), lower(")
                    .bind(filter.value.clone())
                    .push(")) > 0"),
            }
        }
    }
}

/// Appends ` AND <comes after the cursor> ORDER BY ... LIMIT n` for `order`.
/// `all_finished`: the states filtered by are all terminal, so every job
/// listed has a finished_at and the order is the one the dead-letter index
/// (`jobs_dead_finished_idx`) is in.
/// ` AND (` and the jobs after (`finished_at`, `id`) in most-recently-
/// finished order; the caller closes the parenthesis.
fn after_finished_cursor(statement: Sql, finished_at: Millis, id: &JobId) -> Sql {
    statement
        .push(" AND (finished_at < ")
        .bind(finished_at)
        .push(" OR (finished_at = ")
        .bind(finished_at)
        .push(" AND id < ")
        .bind(id.to_string())
        .push(")")
}

pub fn push_order(
    statement: Sql,
    order: JobOrder,
    all_finished: bool,
    after: Option<&PageCursor>,
    limit: u64,
) -> Sql {
    let statement = match order {
        JobOrder::FinishedDesc if all_finished => {
            let statement = match after {
                Some(PageCursor {
                    id,
                    finished_at: Some(finished_at),
                }) => after_finished_cursor(statement, *finished_at, id).push(")"),
                // No finished job comes after an unfinished one.
                Some(PageCursor {
                    finished_at: None, ..
                }) => statement.push(" AND false"),
                None => statement,
            };
            statement.push(" ORDER BY finished_at DESC, id DESC")
        }
        JobOrder::Newest => {
            let statement = match after {
                Some(after) => statement.push(" AND id < ").bind(after.id.to_string()),
                None => statement,
            };
            statement.push(" ORDER BY id DESC")
        }
        JobOrder::FinishedDesc => {
            // Finished jobs first, latest first; then the unfinished ones,
            // newest first (`IS NULL` sorts false before true on both engines).
            let statement = match after {
                Some(PageCursor {
                    id,
                    finished_at: Some(finished_at),
                }) => after_finished_cursor(statement, *finished_at, id)
                    .push(" OR finished_at IS NULL)"),
                Some(PageCursor {
                    id,
                    finished_at: None,
                }) => statement
                    .push(" AND finished_at IS NULL AND id < ")
                    .bind(id.to_string()),
                None => statement,
            };
            statement.push(" ORDER BY finished_at IS NULL, finished_at DESC, id DESC")
        }
    };
    statement.push(" LIMIT ").bind(limit as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefilters_use_the_longest_plain_run() {
        assert_eq!(trigram_term("Kurzgesagt"), Some("%Kurzgesagt%".into()));
        assert_eq!(trigram_term("a_b%cdef"), Some("%cdef%".into()));
        assert_eq!(trigram_term("ab"), None);
        assert_eq!(trigram_term("a_b_c"), None);
        assert_eq!(json_inner("say \"hi\""), "say \\\"hi\\\"");
    }
}
