//! Every write of the store goes through the writer, which commits the
//! writes waiting for it (enqueues, leases, reports, heartbeats, from any
//! number of callers) together in one transaction (group commit) and
//! answers each caller only after that commit. A group's enqueues become one
//! INSERT, its job changes one load and one UPDATE per set of changed
//! columns, so a group costs a few statements and one sync however many
//! calls it holds.
//!
//! SQLite allows one writer at a time: there one thread owns the write
//! connection and runs the groups one after another, each statement a
//! function call on that thread. PostgreSQL commits concurrent transactions
//! and flushes its WAL per commit: there a few committers run groups
//! side by side over the pool, and a group that collided with another
//! replica's (deadlock, serialization failure) runs again.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::dialect::Dialect;
use super::exec::{LocalTx, Tx};
use super::jobs;
use super::rows::storage;
use super::search_backlog::{self, SearchBacklog};
use crate::domain::{
    Applied, DependencyRule, Job, JobChange, JobId, LeaseChange, LeaseQuery, Leased, NewJob,
    QueueError, QueueResult,
};

/// A boxed future borrowing from the transaction it runs in.
pub type BoxFuture<'t, T> = Pin<Box<dyn Future<Output = T> + Send + 't>>;

/// Work run inside a transaction, any number of times (a retried
/// transaction runs it again); its value is type-erased for the queue.
pub type Work = Box<
    dyn for<'t> Fn(&'t dyn Tx) -> BoxFuture<'t, QueueResult<Box<dyn Any + Send>>> + Send + Sync,
>;

/// One write, as callers submit it.
pub enum Op {
    /// New jobs, all or none.
    Insert {
        /// The jobs.
        jobs: Vec<NewJob>,
        /// Their start state from their dependencies.
        rule: DependencyRule,
    },
    /// Changes of existing jobs.
    Update {
        /// The changes, by job.
        changes: Vec<(JobId, JobChange)>,
    },
    /// A lease.
    Lease {
        /// What to lease.
        query: LeaseQuery,
        /// How to start each attempt.
        start: LeaseChange,
    },
    /// Anything else, in a savepoint of its own: if it fails, it leaves no trace.
    Other(Work),
}

/// What one write answers.
pub enum Answer {
    /// For [`Op::Insert`].
    Insert(QueueResult<Vec<(Job, bool)>>),
    /// For [`Op::Update`].
    Update(Vec<QueueResult<Applied>>),
    /// For [`Op::Lease`].
    Lease(Leased),
    /// For [`Op::Other`].
    Other(QueueResult<Box<dyn Any + Send>>),
}

/// Most writes committed together.
const MAX_GROUP_OPS: usize = 512;
/// Most jobs inserted or changed by one group: a group stays a short transaction.
const MAX_GROUP_ROWS: usize = 20_000;
/// Writes waiting for the SQLite writer before callers wait to submit.
const QUEUE_DEPTH: usize = 4096;
/// How often a PostgreSQL transaction that collided is tried again.
const CONFLICT_TRIES: u32 = 5;

fn rows_of(op: &Op) -> usize {
    match op {
        Op::Insert { jobs, .. } => jobs.len(),
        Op::Update { changes } => changes.len(),
        Op::Lease { query, .. } => query.limit as usize,
        Op::Other(_) => 1,
    }
}

/// Runs `ops` in `tx` in the order: inserts (one statement for all), job
/// changes (one load, one save for all), leases, the rest. Any order is a
/// valid one: the callers are concurrent. A storage error fails the group.
async fn execute(tx: &dyn Tx, dialect: &Dialect, ops: &[&Op]) -> QueueResult<Vec<Answer>> {
    match dialect.statement_timer.get() {
        Some(histogram) => execute_ops(&TimedTx { tx, histogram }, dialect, ops).await,
        None => execute_ops(tx, dialect, ops).await,
    }
}

/// A transaction whose statements are timed.
struct TimedTx<'a> {
    tx: &'a dyn Tx,
    histogram: &'a prometheus_client::metrics::histogram::Histogram,
}

#[async_trait::async_trait]
impl Tx for TimedTx<'_> {
    fn backend(&self) -> sea_orm::DbBackend {
        self.tx.backend()
    }

    async fn rows(&self, statement: sea_orm::Statement) -> QueueResult<Vec<super::exec::Row>> {
        let started = std::time::Instant::now();
        let rows = self.tx.rows(statement).await;
        self.histogram.observe(started.elapsed().as_secs_f64());
        rows
    }

    async fn execute(&self, statement: sea_orm::Statement) -> QueueResult<u64> {
        let started = std::time::Instant::now();
        let changed = self.tx.execute(statement).await;
        self.histogram.observe(started.elapsed().as_secs_f64());
        changed
    }
}

async fn execute_ops(tx: &dyn Tx, dialect: &Dialect, ops: &[&Op]) -> QueueResult<Vec<Answer>> {
    let mut answers: Vec<Option<Answer>> = ops.iter().map(|_| None).collect();

    let inserts: Vec<(usize, &[NewJob], DependencyRule)> = ops
        .iter()
        .enumerate()
        .filter_map(|(index, op)| match op {
            Op::Insert { jobs, rule } => Some((index, jobs.as_slice(), *rule)),
            _ => None,
        })
        .collect();
    if let Some((_, _, rule)) = inserts.first() {
        let batches: Vec<&[NewJob]> = inserts.iter().map(|(_, jobs, _)| *jobs).collect();
        let results = jobs::insert_batches(tx, &batches, *rule).await?;
        for ((index, _, _), result) in inserts.iter().zip(results) {
            answers[*index] = Some(Answer::Insert(result));
        }
    }

    let mut updates: Vec<(usize, usize)> = Vec::new();
    let mut changes: Vec<(JobId, &JobChange)> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        if let Op::Update { changes: own } = op {
            updates.push((index, own.len()));
            changes.extend(own.iter().map(|(id, change)| (id.clone(), change)));
        }
    }
    if !changes.is_empty() {
        let mut results = jobs::apply_changes(tx, &changes).await?.into_iter();
        for (index, count) in updates {
            answers[index] = Some(Answer::Update(results.by_ref().take(count).collect()));
        }
    } else {
        for (index, _) in updates {
            answers[index] = Some(Answer::Update(Vec::new()));
        }
    }

    let mut gates = jobs::HeldGates::new();
    for (index, op) in ops.iter().enumerate() {
        match op {
            Op::Lease { query, start } => {
                let leased = jobs::lease(tx, dialect, query, start, &mut gates).await?;
                answers[index] = Some(Answer::Lease(leased));
            }
            Op::Other(work) => {
                tx.execute(raw(tx, "SAVEPOINT other_write")).await?;
                let outcome = work(tx).await;
                match &outcome {
                    Ok(_) => {}
                    Err(error) if error.is_storage() => return Err(error.clone()),
                    Err(_) => {
                        tx.execute(raw(tx, "ROLLBACK TO SAVEPOINT other_write"))
                            .await?;
                    }
                }
                tx.execute(raw(tx, "RELEASE SAVEPOINT other_write")).await?;
                answers[index] = Some(Answer::Other(outcome));
            }
            Op::Insert { .. } | Op::Update { .. } => {}
        }
    }
    answers
        .into_iter()
        .map(|answer| answer.ok_or_else(|| QueueError::Storage("a write got no answer".into())))
        .collect()
}

fn raw(tx: &dyn Tx, sql: &str) -> sea_orm::Statement {
    sea_orm::Statement::from_string(tx.backend(), sql)
}

/// Runs `ops` in one sea-orm transaction and commits it (PostgreSQL).
async fn commit_pooled(
    db: &DatabaseConnection,
    dialect: &Dialect,
    ops: &[&Op],
) -> QueueResult<Vec<Answer>> {
    let started = std::time::Instant::now();
    let tx = db.begin().await.map_err(storage)?;
    let began = started.elapsed();
    let answers = execute(&tx, dialect, ops).await?;
    let executed = started.elapsed();
    tx.commit().await.map_err(storage)?;
    tracing::trace!(
        begin_us = began.as_micros() as u64,
        execute_us = (executed - began).as_micros() as u64,
        commit_us = (started.elapsed() - executed).as_micros() as u64,
        "pooled transaction"
    );
    Ok(answers)
}

/// Runs `ops` in one transaction of the SQLite writer's connection and
/// commits it; rolls back on any error.
async fn commit_local(tx: &LocalTx, dialect: &Dialect, ops: &[&Op]) -> QueueResult<Vec<Answer>> {
    tx.in_transaction(execute(tx, dialect, ops)).await
}

/// Writes that commit together, as one caller submitted them.
struct Submitted {
    ops: Vec<Op>,
    reply: oneshot::Sender<QueueResult<Vec<Answer>>>,
}

/// The writer of one store.
pub struct Writer {
    inbox: mpsc::Sender<Submitted>,
    /// Each committer says when it has committed its last group and ended
    /// (and the PostgreSQL search indexer when it has ended).
    ended: std::sync::Mutex<Vec<oneshot::Receiver<()>>>,
    /// Stops the PostgreSQL search indexer.
    stop: tokio_util::sync::CancellationToken,
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Writer {
    /// A writer for `dialect`: on SQLite it opens the writer's connection
    /// and starts the group-commit thread; on PostgreSQL it starts group
    /// committers over `db`. They end when the writer is closed or dropped.
    pub fn start(db: DatabaseConnection, dialect: Arc<Dialect>) -> Result<Self, String> {
        let (inbox, receiver) = mpsc::channel(QUEUE_DEPTH);
        let stop = tokio_util::sync::CancellationToken::new();
        let mut ended = Vec::new();
        if dialect.groups_writes() {
            let connection = dialect.open_sqlite_writer()?;
            let (ended_sender, ended_receiver) = oneshot::channel();
            std::thread::Builder::new()
                .name("jobq-sqlite-writer".into())
                .spawn(move || {
                    sqlite_committer(LocalTx::new(connection), &dialect, receiver);
                    let _ = ended_sender.send(());
                })
                .map_err(|error| format!("starting the SQLite writer thread: {error}"))?;
            ended.push(ended_receiver);
        } else {
            let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
            let activity = Arc::new(std::sync::Mutex::new(PostgresActivity {
                backlog: SearchBacklog::default(),
                committing: 0,
                last_group: std::time::Instant::now(),
            }));
            for _ in 0..super::dialect::POSTGRES_COMMITTERS {
                let (ended_sender, ended_receiver) = oneshot::channel();
                let (db, dialect, receiver, activity) = (
                    db.clone(),
                    dialect.clone(),
                    receiver.clone(),
                    activity.clone(),
                );
                tokio::spawn(async move {
                    pooled_committer(db, &dialect, receiver, activity).await;
                    let _ = ended_sender.send(());
                });
                ended.push(ended_receiver);
            }
            let (ended_sender, ended_receiver) = oneshot::channel();
            let stop = stop.clone();
            tokio::spawn(async move {
                postgres_search_indexer(db, activity, stop).await;
                let _ = ended_sender.send(());
            });
            ended.push(ended_receiver);
        }
        Ok(Self {
            inbox,
            ended: std::sync::Mutex::new(ended),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        })
    }

    /// Stops taking writes and waits until those taken are committed.
    pub async fn close(self) {
        self.stop.cancel();
        drop(self.inbox);
        let ended = std::mem::take(
            &mut *self
                .ended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for committer in ended {
            let _ = committer.await;
        }
    }

    /// Runs one write and returns its answer once it is committed.
    pub async fn submit(&self, op: Op) -> QueueResult<Answer> {
        self.submit_all(vec![op])
            .await?
            .pop()
            .ok_or_else(|| QueueError::Storage("a write got no answer".into()))
    }

    /// Runs writes in one transaction, in the order [`execute`] gives them
    /// (inserts before leases), and returns their answers once committed.
    pub async fn submit_all(&self, ops: Vec<Op>) -> QueueResult<Vec<Answer>> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Submitted { ops, reply })
            .await
            .map_err(|_| QueueError::ShuttingDown)?;
        answer.await.map_err(|_| QueueError::ShuttingDown)?
    }

    /// Runs `work` in a transaction (a savepoint of the group's, on SQLite).
    pub async fn run<T, F>(&self, work: F) -> QueueResult<T>
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t dyn Tx) -> BoxFuture<'t, QueueResult<T>> + Send + Sync + 'static,
    {
        let erased: Work = Box::new(move |tx| {
            let future = work(tx);
            Box::pin(async move {
                future
                    .await
                    .map(|value| Box::new(value) as Box<dyn Any + Send>)
            })
        });
        match self.submit(Op::Other(erased)).await? {
            Answer::Other(outcome) => outcome?
                .downcast::<T>()
                .map(|value| *value)
                .map_err(|_| QueueError::Storage("a write answered the wrong type".into())),
            _ => Err(QueueError::Storage("a write got the wrong answer".into())),
        }
    }
}

/// Takes the writes that commit with `first`: every one waiting (from
/// `next`), within the group's limits; one that would overflow them is
/// `carried` to the next group.
fn gather(
    first: Submitted,
    mut next: impl FnMut() -> Option<Submitted>,
    carried: &mut Option<Submitted>,
) -> (Vec<Submitted>, usize) {
    let mut rows: usize = first.ops.iter().map(rows_of).sum();
    let mut group = vec![first];
    while group.len() < MAX_GROUP_OPS && rows < MAX_GROUP_ROWS {
        let Some(submitted) = next() else { break };
        let more: usize = submitted.ops.iter().map(rows_of).sum();
        if rows + more > MAX_GROUP_ROWS {
            *carried = Some(submitted);
            break;
        }
        rows += more;
        group.push(submitted);
    }
    (group, rows)
}

/// Answers each caller of a committed (or failed) group.
fn answer(
    group: Vec<Submitted>,
    outcome: QueueResult<Vec<Answer>>,
    rows: usize,
    started: std::time::Instant,
) {
    tracing::trace!(
        writes = group
            .iter()
            .map(|submitted| submitted.ops.len())
            .sum::<usize>(),
        rows,
        micros = started.elapsed().as_micros() as u64,
        "group committed"
    );
    match outcome {
        Ok(answers) => {
            let mut answers = answers.into_iter();
            for submitted in group {
                let own = answers.by_ref().take(submitted.ops.len()).collect();
                // A caller that gave up is no reason to stop.
                let _ = submitted.reply.send(Ok(own));
            }
        }
        Err(error) => {
            tracing::warn!(%error, writes = group.len(), "a group of writes failed");
            for submitted in group {
                let _ = submitted.reply.send(Err(error.clone()));
            }
        }
    }
}

/// The SQLite writer's thread: takes every write waiting, commits them
/// together, answers each caller after the commit. The statements run on
/// this thread, one function call each; the futures of a group never wait
/// on anything but this connection, so a small runtime polls them here.
fn sqlite_committer(tx: LocalTx, dialect: &Dialect, mut inbox: mpsc::Receiver<Submitted>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "the SQLite writer cannot start");
            return;
        }
    };
    let mut carried: Option<Submitted> = None;
    let mut backlog = SearchBacklog::default();
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match next_write(&runtime, &tx, &mut inbox, &mut backlog) {
                Some(first) => first,
                None => return,
            },
        };
        let (group, rows) = gather(first, || inbox.try_recv().ok(), &mut carried);
        let started = std::time::Instant::now();
        let outcome = {
            let ops: Vec<&Op> = group.iter().flat_map(|submitted| &submitted.ops).collect();
            let outcome = runtime.block_on(commit_local(&tx, dialect, &ops));
            backlog.wrote(&ops);
            outcome
        };
        answer(group, outcome, rows, started);
        // After the answers: no caller waits for the index.
        while backlog.over_bound() {
            if !index_search_chunk(&runtime, &tx, &mut backlog) {
                break;
            }
        }
    }
}

/// The next write for the SQLite writer. Once no write has come for
/// [`search_backlog::IDLE`], it indexes the search backlog a chunk at a time
/// until a write comes. None once the writer is closed.
fn next_write(
    runtime: &tokio::runtime::Runtime,
    tx: &LocalTx,
    inbox: &mut mpsc::Receiver<Submitted>,
    backlog: &mut SearchBacklog,
) -> Option<Submitted> {
    // A write that comes within `wait` (the timer must be made inside the runtime).
    let mut write_within =
        |wait| runtime.block_on(async { tokio::time::timeout(wait, inbox.recv()).await });
    if backlog.maybe_pending() {
        if let Ok(next) = write_within(search_backlog::IDLE) {
            return next;
        }
        while backlog.maybe_pending() {
            if !index_search_chunk(runtime, tx, backlog) {
                break;
            }
            if let Ok(next) = write_within(search_backlog::IDLE_PAUSE) {
                return next;
            }
        }
    }
    inbox.blocking_recv()
}

/// Indexes one chunk of the search backlog; false if that failed (it is
/// tried again after the next write).
fn index_search_chunk(
    runtime: &tokio::runtime::Runtime,
    tx: &LocalTx,
    backlog: &mut SearchBacklog,
) -> bool {
    backlog.chunk_done(runtime.block_on(search_backlog::index_sqlite_chunk(tx)))
}

/// What the PostgreSQL committers tell the search indexer.
struct PostgresActivity {
    backlog: SearchBacklog,
    /// Groups being committed now.
    committing: usize,
    /// When the last group ended.
    last_group: std::time::Instant,
}

impl PostgresActivity {
    /// Whether the indexer should take a chunk now: jobs may wait, and the
    /// committers have been idle a while or the backlog is over its bound.
    fn index_due(&self) -> bool {
        let idle = self.committing == 0 && self.last_group.elapsed() >= search_backlog::IDLE;
        self.backlog.maybe_pending() && (idle || self.backlog.over_bound())
    }
}

type SharedActivity = Arc<std::sync::Mutex<PostgresActivity>>;

fn lock(activity: &SharedActivity) -> std::sync::MutexGuard<'_, PostgresActivity> {
    activity
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Indexes this replica's search backlog on PostgreSQL once its committers
/// have had no write for [`search_backlog::IDLE`], or as soon as more than
/// the bound waits; ends when `stop` is cancelled.
async fn postgres_search_indexer(
    db: DatabaseConnection,
    activity: SharedActivity,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(search_backlog::IDLE) => {}
        }
        while !stop.is_cancelled() {
            if !lock(&activity).index_due() {
                break;
            }
            let outcome = search_backlog::index_postgres_chunk(&db).await;
            if !lock(&activity).backlog.chunk_done(outcome) {
                break;
            }
        }
    }
}

/// A PostgreSQL group committer: takes the writes waiting and commits them
/// in one transaction (one round trip per statement for the whole group,
/// one WAL flush); a group that collided with another replica's (deadlock,
/// serialization) is run again.
async fn pooled_committer(
    db: DatabaseConnection,
    dialect: &Dialect,
    inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<Submitted>>>,
    activity: SharedActivity,
) {
    let mut carried: Option<Submitted> = None;
    loop {
        let (group, rows) = {
            let mut inbox = inbox.lock().await;
            let first = match carried.take() {
                Some(first) => first,
                None => match inbox.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            gather(first, || inbox.try_recv().ok(), &mut carried)
        };
        let started = std::time::Instant::now();
        lock(&activity).committing += 1;
        let outcome = {
            let ops: Vec<&Op> = group.iter().flat_map(|submitted| &submitted.ops).collect();
            let mut tries = 0;
            let outcome = loop {
                match commit_pooled(&db, dialect, &ops).await {
                    Err(QueueError::Conflict(detail)) if tries + 1 < CONFLICT_TRIES => {
                        tries += 1;
                        tracing::debug!(%detail, tries, "a group of writes collided with another; running it again");
                    }
                    other => break other,
                }
            };
            let mut activity = lock(&activity);
            activity.backlog.wrote(&ops);
            activity.committing -= 1;
            activity.last_group = std::time::Instant::now();
            outcome
        };
        answer(group, outcome, rows, started);
    }
}
