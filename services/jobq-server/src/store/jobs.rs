//! The writes of jobs, set-based: however many jobs a group of calls
//! touches, each step is one statement (load the rows, save the changes,
//! insert the ended history entries). The domain's transition closures run
//! in between, on the loaded rows; the rules stay in `domain`.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::DbBackend;

use super::bind::row_values;
use super::exec::Tx;

use super::dialect::Dialect;
use super::rows::{ChangedRow, HistoryRow, InsertedRow, TERMINAL, job_from_row, parse_state};
use super::sql::{
    self, CHANGED_COLUMNS, CORE_COLUMNS, HISTORY_COLUMNS, INSERTED_COLUMNS, Sql, Type,
    with_records, with_values,
};
use crate::domain::{
    Applied, DependencyRule, EntryKind, HistoryEntry, Job, JobChange, JobId, JobState, LeaseChange,
    LeaseQuery, LeaseToken, Leased, Millis, NewJob, QueueControls, QueueError, QueueGate,
    QueueResult, RateBucket, Refusal, excerpt, within_key_limits,
};

/// Loads jobs by id (payload and result only when `with_payload`); on
/// PostgreSQL the rows stay locked, in id order, until the transaction ends.
pub async fn load(
    tx: &dyn Tx,
    ids: &[&str],
    lock: bool,
    with_payload: bool,
) -> QueueResult<HashMap<String, Job>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let columns = if with_payload {
        format!("{CORE_COLUMNS}, payload, result")
    } else {
        CORE_COLUMNS.to_owned()
    };
    let mut statement = Sql::new(tx.backend())
        .push(&format!("SELECT {columns} FROM jobs WHERE id"))
        .in_list(ids);
    if lock {
        statement = statement.push(" ORDER BY id").for_no_key_update();
    }
    let rows = tx.rows(statement.build()).await?;
    rows.into_iter()
        .map(|row| job_from_row(row).map(|job| (job.id.to_string(), job)))
        .collect()
}

/// The columns a state change may write, as `job` holds them now: taken
/// before a change, so that only what the change altered is written.
fn stored_columns(job: &Job) -> QueueResult<Vec<sea_orm::Value>> {
    row_values(&ChangedRow::of(job), CHANGED_COLUMNS).map_err(QueueError::Storage)
}

/// Writes what changed of each job, `(its stored_columns before, the job
/// after)`: only the columns whose values differ, so an index over columns
/// that did not change is left alone. Jobs that changed the same columns
/// share one statement (a lease, a success, a heartbeat each change their
/// own set).
async fn save_changed(tx: &dyn Tx, changed: &[(&[sea_orm::Value], &Job)]) -> QueueResult<()> {
    let mut by_columns: BTreeMap<u64, Vec<Vec<sea_orm::Value>>> = BTreeMap::new();
    for (old, after) in changed {
        let new = stored_columns(after)?;
        // Column 0 is the key.
        let mask = (1..new.len())
            .filter(|&index| old[index] != new[index])
            .fold(0u64, |mask, index| mask | (1 << index));
        if mask == 0 {
            continue;
        }
        let row = new
            .into_iter()
            .enumerate()
            .filter(|(index, _)| *index == 0 || mask & (1 << index) != 0)
            .map(|(_, value)| value)
            .collect();
        by_columns.entry(mask).or_default().push(row);
    }
    for (mask, rows) in by_columns {
        let columns: Vec<(&str, Type)> = CHANGED_COLUMNS
            .iter()
            .enumerate()
            .filter(|(index, _)| *index == 0 || mask & (1 << index) != 0)
            .map(|(_, column)| *column)
            .collect();
        let statements = with_values(
            tx.backend(),
            &format!("UPDATE jobs SET {} FROM ", sql::assignments(&columns, "j")),
            rows,
            "j",
            &columns,
            " WHERE jobs.id = j.id",
        );
        execute_all(tx, statements).await?;
    }
    Ok(())
}

/// Clears the stored results of `ids` (requeued jobs).
async fn clear_results(tx: &dyn Tx, ids: &[&str]) -> QueueResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let statement = Sql::new(tx.backend())
        .push("UPDATE jobs SET result = NULL WHERE id")
        .in_list(ids)
        .build();
    tx.execute(statement).await?;
    Ok(())
}

/// Inserts ended history entries (one statement).
async fn insert_history(tx: &dyn Tx, entries: &[(JobId, HistoryEntry)]) -> QueueResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let rows: Vec<HistoryRow<'_>> = entries
        .iter()
        .map(|(id, entry)| HistoryRow::of(id, entry))
        .collect();
    let statements = with_records(
        tx.backend(),
        &format!(
            "INSERT INTO job_attempts ({}) SELECT {} FROM ",
            sql::names(HISTORY_COLUMNS),
            sql::qualified(HISTORY_COLUMNS, "j")
        ),
        &rows,
        "j",
        HISTORY_COLUMNS,
        "",
    )
    .map_err(QueueError::Storage)?;
    execute_all(tx, statements).await
}

/// Runs statements in order.
async fn execute_all(tx: &dyn Tx, statements: Vec<sea_orm::Statement>) -> QueueResult<()> {
    for statement in statements {
        tx.execute(statement).await?;
    }
    Ok(())
}

/// Applies changes to jobs: one load, the domain's closures, one save.
/// Several changes of one job apply in order, each to the result of the last.
pub async fn apply_changes(
    tx: &dyn Tx,
    changes: &[(JobId, &JobChange)],
) -> QueueResult<Vec<QueueResult<Applied>>> {
    let mut ids: Vec<&str> = changes.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut current = load(tx, &ids, true, false).await?;
    let mut outcomes = Vec::with_capacity(changes.len());
    // The stored columns of each changed job as loaded, to write only what changed.
    let mut originals: HashMap<String, Vec<sea_orm::Value>> = HashMap::new();
    let mut entries: Vec<(JobId, HistoryEntry)> = Vec::new();
    let mut cleared: HashSet<String> = HashSet::new();
    for (id, change) in changes {
        let Some(job) = current.get_mut(id.as_str()) else {
            outcomes.push(Err(QueueError::JobNotFound(id.to_string())));
            continue;
        };
        // A refused change leaves the job as it was.
        let mut after = job.clone();
        match change(&mut after) {
            Ok(entry) => {
                if &after != job && !originals.contains_key(id.as_str()) {
                    originals.insert(id.to_string(), stored_columns(job)?);
                }
                if let Some(entry) = &entry {
                    // A success's result is written with the rest of the row
                    // (it differs from the unloaded result); a requeue clears
                    // whatever result is stored, which was not loaded.
                    if entry.kind == EntryKind::Requeued {
                        cleared.insert(id.to_string());
                    }
                    entries.push((id.clone(), entry.clone()));
                }
                let before = std::mem::replace(job, after.clone());
                outcomes.push(Ok(Applied {
                    before,
                    job: after,
                    entry,
                }));
            }
            Err(refused) => outcomes.push(Err(refused)),
        }
    }
    let mut saved: Vec<(&[sea_orm::Value], &Job)> = originals
        .iter()
        .filter_map(|(id, before)| Some((before.as_slice(), current.get(id)?)))
        .collect();
    // In id order, as the rows were locked (PostgreSQL).
    saved.sort_unstable_by(|a, b| a.1.id.as_str().cmp(b.1.id.as_str()));
    save_changed(tx, &saved).await?;
    let cleared: Vec<&str> = cleared.iter().map(String::as_str).collect();
    clear_results(tx, &cleared).await?;
    insert_history(tx, &entries).await?;
    Ok(outcomes)
}

/// The smallest power of two at or above `n`: LIMITs are written into the
/// statement text (a bound LIMIT makes SQLite prepare it again on every
/// run), and rounding keeps the number of distinct statements small.
fn limit_bucket(n: u64) -> u64 {
    n.max(1).next_power_of_two()
}

/// Queued jobs of `queue` in lease order that fit in `max_payload_bytes`,
/// with their payloads; on PostgreSQL, rows other transactions hold are
/// skipped and the rest stay locked.
async fn lease_candidates(
    tx: &dyn Tx,
    queue: &str,
    types: &[String],
    max_payload_bytes: i64,
    limit: u64,
) -> QueueResult<Vec<Job>> {
    let statement = candidates_statement(tx.backend(), queue, types, max_payload_bytes, limit);
    let rows = tx.rows(statement).await?;
    rows.into_iter().map(job_from_row).collect()
}

/// The SQL of [`lease_candidates`]. A job whose concurrency key is at its
/// limit is passed over here, so it holds back no job behind it.
fn candidates_statement(
    backend: DbBackend,
    queue: &str,
    types: &[String],
    max_payload_bytes: i64,
    limit: u64,
) -> sea_orm::Statement {
    let mut statement = Sql::new(backend)
        .push(&format!(
            "SELECT {CORE_COLUMNS}, payload FROM jobs WHERE state = 'queued' AND queue = "
        ))
        .bind(queue.to_owned());
    if !types.is_empty() {
        statement = statement.push(" AND job_type").in_list(types);
    }
    statement
        .push(" AND payload_bytes <= ")
        .bind(max_payload_bytes)
        .push(
            " AND (concurrency_key IS NULL OR (SELECT COUNT(*) FROM jobs AS running \
             WHERE running.state = 'running' AND running.concurrency_key = jobs.concurrency_key) \
             < jobs.concurrency_limit)",
        )
        .push(&format!(
            " ORDER BY priority DESC, run_at, id LIMIT {}",
            limit_bucket(limit)
        ))
        .for_no_key_update_skip_locked()
        .build()
}

/// How many jobs of each of `keys` run now.
pub async fn running_with_keys(tx: &dyn Tx, keys: &[String]) -> QueueResult<HashMap<String, i64>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let statement = Sql::new(tx.backend())
        .push(
            "SELECT concurrency_key, COUNT(*) AS running FROM jobs \
             WHERE state = 'running' AND concurrency_key",
        )
        .in_list(keys)
        .push(" GROUP BY concurrency_key")
        .build();
    let mut running = HashMap::new();
    for row in tx.rows(statement).await? {
        running.insert(
            row.get::<String>("concurrency_key")?,
            row.get::<i64>("running")?,
        );
    }
    Ok(running)
}

/// The SQL of [`read_queue_controls`].
pub(crate) fn queue_controls_statement(
    backend: DbBackend,
    queue: &str,
    lock: bool,
    count_running: bool,
) -> sea_orm::Statement {
    // Counted only for a queue with a concurrency limit, from the running
    // jobs' index (all running jobs, as many as the workers' slots at most):
    // SQLite without statistics would rather read every job of the queue.
    let running_index = match backend {
        DbBackend::Sqlite => " INDEXED BY jobs_running_due_idx",
        _ => "",
    };
    let running = if count_running {
        format!(
            "CASE WHEN concurrency_limit > 0 THEN (SELECT COUNT(*) FROM jobs{running_index} \
             WHERE state = 'running' AND jobs.queue = queues.name) ELSE CAST(0 AS BIGINT) END"
        )
    } else {
        "CAST(0 AS BIGINT)".to_owned()
    };
    let statement = Sql::new(backend)
        .push(&format!(
            "SELECT paused, concurrency_limit, rate_limit_per_second, rate_burst, rate_tokens, \
             rate_refilled_at, {running} AS running FROM queues WHERE name = "
        ))
        .bind(queue.to_owned());
    if lock {
        statement.for_update().build()
    } else {
        statement.build()
    }
}

/// A queue's stored controls and rate bucket, read inside a write (on
/// PostgreSQL with the row locked when `lock`), and how many of its jobs
/// run now when `count_running` (one statement for both).
pub async fn read_queue_controls(
    tx: &dyn Tx,
    queue: &str,
    lock: bool,
    count_running: bool,
) -> QueueResult<Option<(QueueControls, Option<RateBucket>, i64)>> {
    let statement = queue_controls_statement(tx.backend(), queue, lock, count_running);
    let Some(row) = tx.row(statement).await? else {
        return Ok(None);
    };
    let controls = QueueControls {
        name: queue.to_owned(),
        paused: row.get("paused")?,
        concurrency_limit: row.get("concurrency_limit")?,
        rate_limit_per_second: row.get("rate_limit_per_second")?,
        rate_burst: row.get("rate_burst")?,
    };
    let bucket = match (
        row.get::<Option<f64>>("rate_tokens")?,
        row.get::<Option<i64>>("rate_refilled_at")?,
    ) {
        (Some(tokens), Some(refilled_at)) => Some(RateBucket {
            tokens,
            refilled_at,
        }),
        _ => None,
    };
    Ok(Some((controls, bucket, row.get::<i64>("running")?)))
}

async fn save_bucket(tx: &dyn Tx, queue: &str, bucket: RateBucket) -> QueueResult<()> {
    let statement = Sql::new(tx.backend())
        .push("UPDATE queues SET rate_tokens = ")
        .bind(bucket.tokens)
        .push(", rate_refilled_at = ")
        .bind(bucket.refilled_at)
        .push(" WHERE name = ")
        .bind(queue.to_owned())
        .build();
    tx.execute(statement).await?;
    Ok(())
}

/// The gates a transaction has locked and read, by queue: the leases of
/// one group share them (the lock is held until the commit, so what was
/// read stays true, and each lease counts what it started).
pub type HeldGates = HashMap<String, QueueGate>;

/// How soon a lease that found a gate held by another looks again.
const CONTENDED_RETRY_MS: Millis = 20;

/// The SQL that picks jobs to lease, as the engine runs it (for EXPLAIN in
/// tests): one queue, any type, LIMIT 16.
pub fn lease_statement(backend: DbBackend) -> sea_orm::Statement {
    candidates_statement(backend, "default", &[], 4_194_304, 16)
}

/// Leases queued jobs: picks them per queue in lease order, each gated
/// queue within what its gate allows now (its controls read afresh under a
/// lock every replica shares), then keeps each concurrency key within its
/// limit (counted under the key's lock), takes what fits in the answer,
/// starts the attempts, saves them and spends the rate tokens.
pub async fn lease(
    tx: &dyn Tx,
    dialect: &Dialect,
    query: &LeaseQuery,
    start: &LeaseChange,
    held: &mut HeldGates,
) -> QueueResult<Leased> {
    let mut retry_at: Option<Millis> = None;
    let mut sooner = |at: Millis| retry_at = Some(retry_at.map_or(at, |old| old.min(at)));
    let mut candidates = Vec::new();
    for queue in &query.open {
        candidates.extend(
            lease_candidates(
                tx,
                queue,
                &query.types,
                query.max_payload_bytes,
                query.limit,
            )
            .await?,
        );
    }
    let mut gated = query.gated.clone();
    gated.sort_unstable();
    let mut gates = Vec::new();
    for queue in &gated {
        if !held.contains_key(queue) {
            if dialect
                .try_lock_all(tx, "queue:", &[queue.as_str()])
                .await?
                != [true]
            {
                sooner(query.now + CONTENDED_RETRY_MS);
                continue;
            }
            let gate = match read_queue_controls(tx, queue, false, true).await? {
                Some((controls, bucket, running)) => {
                    QueueGate::new(controls, running, bucket, query.now)
                }
                None => QueueGate::new(QueueControls::open(queue.clone()), 0, None, query.now),
            };
            held.insert(queue.clone(), gate);
        }
        let allowed = held
            .get(queue)
            .map_or(0, QueueGate::allowance)
            .min(query.limit);
        if allowed > 0 {
            let mut picked =
                lease_candidates(tx, queue, &query.types, query.max_payload_bytes, allowed).await?;
            picked.truncate(allowed as usize);
            candidates.extend(picked);
        }
        gates.push(queue);
    }
    // Several queries: restore the one lease order across them.
    candidates.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
    let candidates = within_keys(tx, dialect, candidates, &mut sooner, query.now).await?;
    let mut room = query.max_payload_bytes;
    let mut picked = Vec::new();
    for job in candidates {
        if picked.len() as u64 >= query.limit {
            break;
        }
        if job.payload_bytes > room {
            continue;
        }
        room -= job.payload_bytes;
        picked.push(job);
    }
    for queue in gates {
        let Some(gate) = held.get_mut(queue) else {
            continue;
        };
        let started = picked.iter().filter(|job| &job.queue == queue).count() as u64;
        gate.start(started);
        if let Some(bucket) = gate.bucket()
            && started > 0
        {
            save_bucket(tx, queue, bucket).await?;
        }
        if let Some(at) = gate.capacity_at() {
            sooner(at);
        }
    }
    let mut before = Vec::with_capacity(picked.len());
    let mut leased: Vec<(Job, LeaseToken)> = Vec::with_capacity(picked.len());
    for mut job in picked {
        before.push(stored_columns(&job)?);
        let token = start(&mut job);
        leased.push((job, token));
    }
    let changed: Vec<(&[sea_orm::Value], &Job)> = before
        .iter()
        .zip(&leased)
        .map(|(before, (after, _))| (before.as_slice(), after))
        .collect();
    save_changed(tx, &changed).await?;
    Ok(Leased {
        jobs: leased,
        retry_at,
    })
}

/// The candidates whose concurrency key has room, each key counted under
/// its lock (a key another lease holds is left for now).
async fn within_keys(
    tx: &dyn Tx,
    dialect: &Dialect,
    candidates: Vec<Job>,
    sooner: &mut impl FnMut(Millis),
    now: Millis,
) -> QueueResult<Vec<Job>> {
    let mut keys: Vec<String> = candidates
        .iter()
        .filter_map(|job| job.concurrency_key.clone())
        .collect();
    if keys.is_empty() {
        return Ok(candidates);
    }
    keys.sort_unstable();
    keys.dedup();
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = dialect.try_lock_all(tx, "key:", &names).await?;
    let mut locked = Vec::with_capacity(keys.len());
    for (key, got) in keys.iter().zip(got) {
        if got {
            locked.push(key.clone());
        } else {
            sooner(now + CONTENDED_RETRY_MS);
        }
    }
    let running = running_with_keys(tx, &locked).await?;
    let candidates = candidates
        .into_iter()
        .filter(|job| {
            job.concurrency_key
                .as_ref()
                .is_none_or(|key| locked.binary_search(key).is_ok())
        })
        .collect();
    Ok(within_key_limits(candidates, &running))
}

/// What the insert of several batches found already stored.
#[derive(Default)]
struct Lookups {
    by_request_key: HashMap<String, Job>,
    by_unique_key: HashMap<String, Job>,
    states: HashMap<JobId, JobState>,
}

async fn lookups(tx: &dyn Tx, batches: &[&[NewJob]]) -> QueueResult<Lookups> {
    let jobs = || {
        batches
            .iter()
            .flat_map(|batch| batch.iter().map(|new| &new.job))
    };
    let request_keys: Vec<&str> = jobs()
        .filter_map(|job| job.request_key.as_deref())
        .collect();
    let unique_keys: Vec<&str> = jobs().filter_map(|job| job.unique_key.as_deref()).collect();
    let mut referenced: Vec<&str> = jobs()
        .flat_map(|job| job.parent_id.iter().chain(&job.depends_on))
        .map(JobId::as_str)
        .collect();
    referenced.sort_unstable();
    referenced.dedup();
    let backend = tx.backend();
    let mut by_request_key = HashMap::new();
    if !request_keys.is_empty() {
        let statement = Sql::new(backend)
            .push(&format!(
                "SELECT {CORE_COLUMNS} FROM jobs WHERE request_key IS NOT NULL AND request_key"
            ))
            .in_list(&request_keys)
            .build();
        for row in tx.rows(statement).await? {
            let job = job_from_row(row)?;
            if let Some(key) = job.request_key.clone() {
                by_request_key.insert(key, job);
            }
        }
    }
    let mut by_unique_key = HashMap::new();
    if !unique_keys.is_empty() {
        let statement = Sql::new(backend)
            .push(&format!(
                "SELECT {CORE_COLUMNS} FROM jobs WHERE state NOT IN ('succeeded', 'cancelled', 'dead') \
                 AND unique_key IS NOT NULL AND unique_key"
            ))
            .in_list(&unique_keys)
            .build();
        for row in tx.rows(statement).await? {
            let job = job_from_row(row)?;
            if let Some(key) = job.unique_key.clone() {
                by_unique_key.insert(key, job);
            }
        }
    }
    let mut states = HashMap::new();
    if !referenced.is_empty() {
        let statement = Sql::new(backend)
            .push("SELECT id, state FROM jobs WHERE id")
            .in_list(&referenced)
            .for_share()
            .build();
        for row in tx.rows(statement).await? {
            let id: String = row.get("id")?;
            let state: String = row.get("state")?;
            let state = parse_state(&state, &id)?;
            states.insert(JobId::from_stored(id), state);
        }
    }
    Ok(Lookups {
        by_request_key,
        by_unique_key,
        states,
    })
}

/// Decides each job of one batch: an existing one to return, or a new one
/// to insert (its start state set by `rule`). Unique keys the batch claims
/// are added to `claimed` only if the whole batch is valid.
fn plan_batch(
    batch: &[NewJob],
    found: &Lookups,
    claimed: &mut HashMap<String, Job>,
    rule: DependencyRule,
) -> QueueResult<Vec<(Job, bool)>> {
    let mut planned: Vec<(Job, bool)> = Vec::with_capacity(batch.len());
    let mut batch_claims: HashMap<String, Job> = HashMap::new();
    for NewJob { job, field } in batch {
        if let Some(key) = &job.request_key
            && let Some(existing) = found.by_request_key.get(key)
        {
            if existing.job_type != job.job_type || existing.queue != job.queue {
                return Err(QueueError::refused(
                    Refusal::RequestIdReused,
                    format!(
                        "request_id {} was used before for a {} job in queue {}",
                        excerpt(key),
                        existing.job_type,
                        existing.queue
                    ),
                ));
            }
            planned.push((existing.clone(), true));
            continue;
        }
        if let Some(key) = &job.unique_key {
            let holder = found
                .by_unique_key
                .get(key)
                .or_else(|| claimed.get(key))
                .or_else(|| batch_claims.get(key));
            if let Some(holder) = holder {
                planned.push((holder.clone(), true));
                continue;
            }
        }
        if let Some(parent) = &job.parent_id
            && !found.states.contains_key(parent)
        {
            return Err(QueueError::invalid(
                format!("{field}.parent_id"),
                format!("job {parent} does not exist"),
            ));
        }
        let mut dependencies = Vec::with_capacity(job.depends_on.len());
        for (position, dependency) in job.depends_on.iter().enumerate() {
            let Some(state) = found.states.get(dependency) else {
                return Err(QueueError::invalid(
                    format!("{field}.depends_on[{position}]"),
                    format!("job {dependency} does not exist"),
                ));
            };
            dependencies.push((dependency.clone(), *state));
        }
        let mut job = job.clone();
        if !dependencies.is_empty() {
            rule(&mut job, &dependencies, field)?;
        }
        if let Some(key) = &job.unique_key {
            batch_claims.insert(key.clone(), job.clone());
        }
        planned.push((job, false));
    }
    claimed.extend(batch_claims);
    Ok(planned)
}

/// Inserts several batches of new jobs; each batch is all or none and gets
/// its own answer. A group that names no other job (no parent, no
/// dependency) is inserted first and looked up only if something was in
/// the way: the usual group (new keys, or none) costs one statement. One
/// that collided with a stored key has its rows taken back and goes the
/// careful way: lookups, the insert, the dependency edges.
pub async fn insert_batches(
    tx: &dyn Tx,
    batches: &[&[NewJob]],
    rule: DependencyRule,
) -> QueueResult<Vec<QueueResult<Vec<(Job, bool)>>>> {
    let names_other_jobs = batches
        .iter()
        .flat_map(|batch| batch.iter())
        .any(|new| new.job.parent_id.is_some() || !new.job.depends_on.is_empty());
    if !names_other_jobs {
        let mut claimed = HashMap::new();
        let plans: Vec<QueueResult<Vec<(Job, bool)>>> = batches
            .iter()
            .map(|batch| plan_batch(batch, &Lookups::default(), &mut claimed, rule))
            .collect();
        let new_jobs = planned_new_jobs(&plans);
        let inserted = insert_rows(tx, &new_jobs).await?;
        if inserted.len() == new_jobs.len() {
            return Ok(plans);
        }
        // Something stored holds one of these keys: undo, and look first.
        let undone: Vec<&str> = inserted.iter().map(String::as_str).collect();
        if !undone.is_empty() {
            let statement = Sql::new(tx.backend())
                .push("DELETE FROM jobs WHERE id")
                .in_list(&undone)
                .build();
            tx.execute(statement).await?;
        }
    }
    let found = lookups(tx, batches).await?;
    let mut claimed = HashMap::new();
    let mut plans: Vec<QueueResult<Vec<(Job, bool)>>> = batches
        .iter()
        .map(|batch| plan_batch(batch, &found, &mut claimed, rule))
        .collect();
    let new_jobs = planned_new_jobs(&plans);
    if new_jobs.is_empty() {
        return Ok(plans);
    }
    let inserted = insert_rows(tx, &new_jobs).await?;
    let mut edges: Vec<(&str, &str)> = Vec::new();
    let mut depended_on: Vec<&str> = Vec::new();
    for job in &new_jobs {
        if inserted.contains(job.id.as_str()) {
            for dependency in &job.depends_on {
                edges.push((job.id.as_str(), dependency.as_str()));
                depended_on.push(dependency.as_str());
            }
        }
    }
    if inserted.len() < new_jobs.len() {
        let lost: Vec<Job> = new_jobs
            .iter()
            .filter(|job| !inserted.contains(job.id.as_str()))
            .cloned()
            .collect();
        resolve_lost_inserts(tx, &mut plans, &inserted, lost).await?;
    }
    if !edges.is_empty() {
        insert_edges(tx, &edges, &mut depended_on).await?;
    }
    Ok(plans)
}

/// The jobs the plans will store (not those answered with a stored job).
fn planned_new_jobs(plans: &[QueueResult<Vec<(Job, bool)>>]) -> Vec<Job> {
    plans
        .iter()
        .filter_map(|plan| plan.as_ref().ok())
        .flat_map(|plan| {
            plan.iter()
                .filter(|(_, existed)| !existed)
                .map(|(job, _)| job.clone())
        })
        .collect()
}

/// Inserts `jobs`, skipping any whose unique_key or request_key is taken;
/// the ids of those inserted.
async fn insert_rows(tx: &dyn Tx, jobs: &[Job]) -> QueueResult<HashSet<String>> {
    let mut inserted: HashSet<String> = HashSet::with_capacity(jobs.len());
    if jobs.is_empty() {
        return Ok(inserted);
    }
    let rows: Vec<InsertedRow<'_>> = jobs.iter().map(InsertedRow::of).collect();
    let statements = with_records(
        tx.backend(),
        &format!(
            "INSERT INTO jobs ({}) SELECT {} FROM ",
            sql::names(INSERTED_COLUMNS),
            sql::qualified(INSERTED_COLUMNS, "j")
        ),
        &rows,
        "j",
        INSERTED_COLUMNS,
        // A key taken since the lookup (another replica), or never looked
        // up: those rows are skipped here and dealt with by the caller.
        " WHERE true ON CONFLICT DO NOTHING RETURNING id",
    )
    .map_err(QueueError::Storage)?;
    for statement in statements {
        for row in tx.rows(statement).await? {
            if let Ok(id) = row.get::<String>("id") {
                inserted.insert(id);
            }
        }
    }
    Ok(inserted)
}

/// Stores the dependency edges of new jobs and marks the jobs they depend on.
async fn insert_edges(
    tx: &dyn Tx,
    edges: &[(&str, &str)],
    depended_on: &mut Vec<&str>,
) -> QueueResult<()> {
    #[derive(serde::Serialize)]
    struct Edge<'a> {
        job_id: &'a str,
        depends_on_id: &'a str,
    }
    let backend = tx.backend();
    let rows: Vec<Edge<'_>> = edges
        .iter()
        .map(|(job_id, depends_on_id)| Edge {
            job_id,
            depends_on_id,
        })
        .collect();
    let columns = [("job_id", Type::Text), ("depends_on_id", Type::Text)];
    let statements = with_records(
        backend,
        "INSERT INTO job_dependencies (job_id, depends_on_id) SELECT j.job_id, j.depends_on_id FROM ",
        &rows,
        "j",
        &columns,
        " WHERE true ON CONFLICT DO NOTHING",
    )
    .map_err(QueueError::Storage)?;
    execute_all(tx, statements).await?;
    depended_on.sort_unstable();
    depended_on.dedup();
    let statement = Sql::new(backend)
        .push("UPDATE jobs SET has_dependents = TRUE WHERE has_dependents = FALSE AND id")
        .in_list(depended_on)
        .build();
    tx.execute(statement).await?;
    Ok(())
}

/// Jobs whose insert was skipped because another writer stored the same
/// unique_key or request_key first: answered with that writer's job.
async fn resolve_lost_inserts(
    tx: &dyn Tx,
    plans: &mut [QueueResult<Vec<(Job, bool)>>],
    inserted: &HashSet<String>,
    lost: Vec<Job>,
) -> QueueResult<()> {
    let request_keys: Vec<&str> = lost
        .iter()
        .filter_map(|job| job.request_key.as_deref())
        .collect();
    let unique_keys: Vec<&str> = lost
        .iter()
        .filter_map(|job| job.unique_key.as_deref())
        .collect();
    let backend = tx.backend();
    let statement = Sql::new(backend)
        .push(&format!(
            "SELECT {CORE_COLUMNS} FROM jobs WHERE (request_key IS NOT NULL AND request_key"
        ))
        .in_list(&request_keys)
        .push(") OR (state NOT IN ('succeeded', 'cancelled', 'dead') AND unique_key IS NOT NULL AND unique_key")
        .in_list(&unique_keys)
        .push(")")
        .build();
    let winners: Vec<Job> = tx
        .rows(statement)
        .await?
        .into_iter()
        .map(job_from_row)
        .collect::<QueueResult<_>>()?;
    // Each lost job's stand-in. The lost job may also stand in a plan as
    // the holder of a unique_key another batch of this group claimed first:
    // those entries get the winner as well.
    let mut stand_ins: HashMap<&str, &Job> = HashMap::with_capacity(lost.len());
    for job in &lost {
        let winner = winners.iter().find(|winner| {
            (job.request_key.is_some() && winner.request_key == job.request_key)
                || (job.unique_key.is_some()
                    && winner.unique_key == job.unique_key
                    && !TERMINAL.contains(&winner.state.as_str()))
        });
        match winner {
            Some(winner) => {
                stand_ins.insert(job.id.as_str(), winner);
            }
            // The winner finished in the meantime: the caller may retry.
            None => {
                return Err(QueueError::Conflict(format!(
                    "job {} collided with another writer's insert",
                    job.id
                )));
            }
        }
    }
    for plan in plans.iter_mut().filter_map(|plan| plan.as_mut().ok()) {
        for (job, existed) in plan.iter_mut() {
            if inserted.contains(job.id.as_str()) {
                continue;
            }
            if let Some(winner) = stand_ins.get(job.id.as_str()) {
                *job = (*winner).clone();
                *existed = true;
            }
        }
    }
    Ok(())
}

/// Deletes the jobs `check` allows, with their history and dependency edges.
pub async fn delete(
    tx: &dyn Tx,
    ids: &[JobId],
    check: fn(&Job) -> QueueResult<()>,
) -> QueueResult<Vec<QueueResult<Job>>> {
    let keys: Vec<&str> = ids.iter().map(JobId::as_str).collect();
    let current = load(tx, &keys, true, false).await?;
    let mut outcomes = Vec::with_capacity(ids.len());
    let mut doomed: Vec<&str> = Vec::new();
    for id in ids {
        outcomes.push(match current.get(id.as_str()) {
            None => Err(QueueError::JobNotFound(id.to_string())),
            Some(job) => check(job).map(|()| {
                doomed.push(id.as_str());
                job.clone()
            }),
        });
    }
    if doomed.is_empty() {
        return Ok(outcomes);
    }
    let backend = tx.backend();
    for table_and_key in [
        "DELETE FROM job_attempts WHERE job_id",
        "DELETE FROM job_dependencies WHERE job_id",
        "DELETE FROM jobs WHERE id",
    ] {
        let statement = Sql::new(backend)
            .push(table_and_key)
            .in_list(&doomed)
            .build();
        tx.execute(statement).await?;
    }
    Ok(outcomes)
}
