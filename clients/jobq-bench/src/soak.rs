//! The soak: `--duration` of mixed load at `--rate` while worker processes
//! are killed with SIGKILL and replaced, and the server is killed with
//! SIGKILL once, half way, and started again on the same storage and
//! address; then it settles and every acknowledged enqueue is audited.
//!
//! The audit reads every job whose enqueue the server answered (GetJob, with
//! its attempts) and the handler runs the worker processes reported (`ran`
//! lines, printed as soon as the server answered each outcome, so a killed
//! worker's runs are known up to its death):
//! - lost: the job is missing, or not terminal once the run settled;
//! - duplicated: more than one attempt with outcome SUCCEEDED, or more than
//!   one handler success the server recorded;
//! - overlapping (counted in duplicated too): two handler runs whose
//!   outcomes the server recorded and whose run times (one machine's clock,
//!   taken around the handler) overlap; or, in the server's records, an
//!   attempt of a settled job left open, or an attempt that started more
//!   than SERVER_TIME_SLACK (1 s) before the one before it ended. (The
//!   server stamps a call when it arrives, and its group commit orders the
//!   calls after: a start can precede the previous end by about a commit.
//!   Those inversions are counted apart: `attempt_time_inversions`.)
//! - violations: a dead job whose counted (not released) attempts are not
//!   exactly 1..=max_attempts, each with its error; a succeeded job without
//!   a succeeded attempt, or of the kind that always fails; a handler
//!   success the server recorded on a job that did not end succeeded; a
//!   cancelled job nobody tried to cancel; a job whose cancel was
//!   acknowledged that ended neither cancelled nor succeeded by an attempt
//!   that finished before it stopped; a succeeded log job without its lines.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use jobq_client::{Client, NewJob, pb};
use serde_json::json;

use crate::BenchArgs;
use crate::server::RunServer;
use crate::worker::{BENCH_QUEUE, JOB_TYPE, WorkerRun};
use crate::workloads::{Invocation, RunResult, WorkerProcess, connect, state_counts};

/// The lease the soak's workers ask for: short, so a killed worker's jobs
/// come back within seconds.
const LEASE: &str = "4s";
/// Attempts of the jobs that always fail.
const DIES_AFTER: i32 = 3;
/// Attempts of every other job: room for the failures asked for and for
/// attempts lost to killed workers.
const MAX_ATTEMPTS: i32 = 6;
/// Failed attempts before a job of that kind succeeds.
const FAIL_TIMES: i32 = 2;
/// How long a job of the kind that can be cancelled runs.
const SLEEP_MS: u64 = 2000;
/// Lines a log job writes.
const LOG_LINES: usize = 5;
/// Succeeded log jobs whose lines the audit reads.
const LOG_JOBS_CHECKED: usize = 50;
/// How far the server's recorded start of an attempt may precede the end
/// of the one before it (see the audit).
const SERVER_TIME_SLACK: Duration = Duration::from_secs(1);
/// Broken invariants printed (all are counted).
const VIOLATIONS_SHOWN: usize = 20;

/// What a soak job does; by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Succeeds,
    FailsThenSucceeds,
    AlwaysFails,
    Sleeps,
    Logs,
}

impl Kind {
    fn of(seq: u64) -> Self {
        match seq % 10 {
            4 | 5 => Kind::FailsThenSucceeds,
            6 => Kind::AlwaysFails,
            7 | 9 => Kind::Sleeps,
            8 => Kind::Logs,
            _ => Kind::Succeeds,
        }
    }

    fn spec(self, seq: u64) -> pb::JobSpec {
        let payload = match self {
            Kind::Succeeds => json!({ "seq": seq }),
            Kind::FailsThenSucceeds => json!({ "seq": seq, "fail_times": FAIL_TIMES }),
            Kind::AlwaysFails => json!({ "seq": seq, "always_fail": true }),
            Kind::Sleeps => json!({ "seq": seq, "sleep_ms": SLEEP_MS }),
            Kind::Logs => json!({ "seq": seq, "log_lines": LOG_LINES }),
        };
        NewJob::new(JOB_TYPE, payload)
            .queue(BENCH_QUEUE)
            .max_attempts(match self {
                Kind::AlwaysFails => DIES_AFTER,
                _ => MAX_ATTEMPTS,
            })
            .backoff(Duration::from_millis(100), Duration::from_millis(500))
            .into_spec()
    }
}

/// What the producers and the canceller did.
#[derive(Default)]
struct Ledger {
    /// Every acknowledged enqueue: the id the server answered.
    jobs: HashMap<String, Kind>,
    /// Recent sleeping jobs, the canceller's candidates.
    sleepers: VecDeque<String>,
    /// Jobs a cancel was sent for (answered or not).
    cancel_tried: HashSet<String>,
    /// Jobs whose cancel the server acknowledged.
    cancel_acked: HashSet<String>,
    enqueue_errors: u64,
    cancels_refused: u64,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Ledger>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acknowledged(&self, id: String, kind: Kind) {
        let mut ledger = self.lock();
        if kind == Kind::Sleeps {
            ledger.sleepers.push_back(id.clone());
            while ledger.sleepers.len() > 50 {
                ledger.sleepers.pop_front();
            }
        }
        ledger.jobs.insert(id, kind);
    }
}

/// One EnqueueJob per tick at `per_second`, until `until`. A failed call is
/// tried again with the same request id (the server answers a repeat with
/// the job the first call created) until it is answered or the soak ends.
async fn produce_singles(
    client: Client,
    ledger: Shared,
    next: Arc<AtomicU64>,
    per_second: f64,
    until: Instant,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        ticker.tick().await;
        let seq = next.fetch_add(1, Ordering::Relaxed);
        let kind = Kind::of(seq);
        let request_id = uuid::Uuid::new_v4().to_string();
        loop {
            match client
                .enqueue_with_request_id(kind.spec(seq), &request_id)
                .await
            {
                Ok(enqueued) => {
                    ledger.acknowledged(enqueued.job.id, kind);
                    break;
                }
                Err(error) => {
                    tracing::debug!("soak enqueue: {error}");
                    ledger.lock().enqueue_errors += 1;
                    if Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// EnqueueJobs calls of `batch` jobs at `per_second` jobs, until `until`;
/// a failed call is counted and not repeated (its jobs are not acknowledged).
async fn produce_batches(
    client: Client,
    ledger: Shared,
    next: Arc<AtomicU64>,
    per_second: f64,
    batch: u64,
    until: Instant,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(batch as f64 / per_second));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        ticker.tick().await;
        let first = next.fetch_add(batch, Ordering::Relaxed);
        let kinds: Vec<Kind> = (first..first + batch).map(Kind::of).collect();
        let specs = (first..first + batch)
            .zip(&kinds)
            .map(|(seq, kind)| kind.spec(seq))
            .collect();
        match client.enqueue_many(specs).await {
            Ok(answers) => {
                for (answer, kind) in answers.into_iter().zip(kinds) {
                    ledger.acknowledged(answer.job.id, kind);
                }
            }
            Err(error) => {
                tracing::debug!("soak batch enqueue: {error}");
                ledger.lock().enqueue_errors += 1;
            }
        }
    }
}

/// Cancels sleeping jobs until `until`: every tick the oldest candidate
/// (likely running by now), every other tick the newest too (likely queued).
async fn cancel(client: Client, ledger: Shared, until: Instant) {
    let mut tick = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tick += 1;
        let targets: Vec<String> = {
            let mut ledger = ledger.lock();
            let mut targets: Vec<String> = ledger.sleepers.pop_front().into_iter().collect();
            if tick.is_multiple_of(2) {
                targets.extend(ledger.sleepers.pop_back());
            }
            for id in &targets {
                ledger.cancel_tried.insert(id.clone());
            }
            targets
        };
        for id in targets {
            match client.cancel_job(&id, "soak").await {
                Ok(_) => {
                    ledger.lock().cancel_acked.insert(id);
                }
                // Already finished (FAILED_PRECONDITION), or the server is down.
                Err(error) => {
                    tracing::debug!("soak cancel: {error}");
                    ledger.lock().cancels_refused += 1;
                }
            }
        }
    }
}

fn spawn_worker(
    args: &BenchArgs,
    invocation: &Invocation,
    endpoint: &str,
    runs: &Arc<Mutex<Vec<WorkerRun>>>,
) -> anyhow::Result<WorkerProcess> {
    WorkerProcess::spawn_with(
        invocation,
        endpoint,
        args.concurrency,
        args.token.as_deref(),
        &[
            "--internal-lease".to_owned(),
            LEASE.to_owned(),
            "--internal-trace-runs".to_owned(),
        ],
        Some(runs.clone()),
    )
}

/// Runs the soak against `server` (which it restarts once) and audits it.
pub(crate) async fn run_soak(
    args: &BenchArgs,
    server: &mut RunServer,
    invocation: &Invocation,
) -> anyhow::Result<RunResult> {
    let endpoint = server.endpoint.clone();
    let token = args.token.as_deref();
    let runs: Arc<Mutex<Vec<WorkerRun>>> = Arc::default();
    let mut workers = (0..args.workers.max(2))
        .map(|_| spawn_worker(args, invocation, &endpoint, &runs))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ledger = Shared::default();
    let next = Arc::new(AtomicU64::new(0));
    let rate = args.rate.max(2) as f64;
    let started = Instant::now();
    let until = started + args.duration;
    let mut load = tokio::task::JoinSet::new();
    load.spawn(produce_singles(
        connect(&endpoint, token).await?,
        ledger.clone(),
        next.clone(),
        rate / 2.0,
        until,
    ));
    load.spawn(produce_batches(
        connect(&endpoint, token).await?,
        ledger.clone(),
        next.clone(),
        rate / 2.0,
        10,
        until,
    ));
    load.spawn(cancel(
        connect(&endpoint, token).await?,
        ledger.clone(),
        until,
    ));

    // Chaos: a worker killed every eighth of the run (5 s..60 s apart), the
    // server killed and restarted half way.
    let kill_every = (args.duration / 8).clamp(Duration::from_secs(5), Duration::from_secs(60));
    let restart_at = started + args.duration / 2;
    let mut next_kill = started + kill_every;
    let (mut worker_kills, mut server_restarts) = (0u64, 0u64);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if server_restarts == 0 && Instant::now() >= restart_at {
            server.kill_and_restart().await?;
            server_restarts += 1;
            eprintln!(
                "# soak: server killed and restarted at {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        if Instant::now() >= next_kill && Instant::now() < until {
            let index = (worker_kills as usize) % workers.len();
            let victim = &mut workers[index].child;
            victim.start_kill().context("killing a worker process")?;
            tokio::time::timeout(Duration::from_secs(30), victim.wait())
                .await
                .context("a killed worker process did not exit within 30 s")??;
            workers[index] = spawn_worker(args, invocation, &endpoint, &runs)?;
            worker_kills += 1;
            next_kill += kill_every;
        }
    }
    while let Some(done) = load.join_next().await {
        done.context("a soak producer or the canceller panicked")?;
    }

    // Settle: every job of the queue terminal, within a generous limit.
    let client = connect(&endpoint, token).await?;
    let settle_started = Instant::now();
    let settle_limit = Duration::from_secs(600) + args.duration / 2;
    loop {
        if let Ok(counts) = state_counts(&client).await {
            let pending: i64 = [
                pb::JobState::Scheduled,
                pb::JobState::Blocked,
                pb::JobState::Queued,
                pb::JobState::Running,
                pb::JobState::Retrying,
            ]
            .iter()
            .filter_map(|state| counts.get(state))
            .sum();
            if pending == 0 {
                break;
            }
        }
        if settle_started.elapsed() > settle_limit {
            eprintln!("# soak: not settled within {settle_limit:?}; auditing as it stands");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_s = settle_started.elapsed().as_secs_f64();
    let mut violations = Vec::new();
    for worker in workers {
        if let Err(error) = worker.stop().await {
            violations.push(format!("a worker process did not stop cleanly: {error:#}"));
        }
    }

    let ledger = std::mem::take(&mut *ledger.lock());
    let runs = std::mem::take(&mut *runs.lock().unwrap_or_else(PoisonError::into_inner));
    let mut audit = audit(&client, &ledger, &runs).await?;
    violations.append(&mut audit.violations);
    for violation in violations.iter().take(VIOLATIONS_SHOWN) {
        eprintln!("# soak audit: {violation}");
    }
    if violations.len() > VIOLATIONS_SHOWN {
        eprintln!(
            "# soak audit: and {} more",
            violations.len() - VIOLATIONS_SHOWN
        );
    }

    let enqueued = ledger.jobs.len() as u64;
    let mut result = RunResult {
        jobs: enqueued,
        seconds: args.duration.as_secs_f64(),
        lost: audit.lost,
        duplicated: audit.duplicated,
        violations: violations.len() as u64,
        ..RunResult::default()
    };
    for (name, value) in [
        ("enqueued", enqueued),
        ("succeeded", audit.succeeded),
        ("retried", audit.retried),
        ("cancelled", audit.cancelled),
        ("dead", audit.dead),
        ("lost", audit.lost),
        ("duplicated", audit.duplicated),
        ("overlapping", audit.overlapping),
        ("lease_expired_attempts", audit.lease_expired),
        ("worker_kills", worker_kills),
        ("server_restarts", server_restarts),
        ("enqueue_errors", ledger.enqueue_errors),
        ("cancels_acknowledged", ledger.cancel_acked.len() as u64),
        ("cancels_refused", ledger.cancels_refused),
        ("handler_runs_traced", runs.len() as u64),
        ("log_jobs_checked", audit.log_jobs_checked),
        ("attempt_time_inversions", audit.time_inversions),
        ("max_inversion_ms", audit.max_inversion_ms),
        ("violations", violations.len() as u64),
    ] {
        result.extra.insert(name.into(), value.into());
    }
    result
        .extra
        .insert("settle_s".into(), ((settle_s * 10.0).round() / 10.0).into());
    result.extra.insert("rate".into(), args.rate.into());
    result
        .extra
        .insert("worker_processes".into(), args.workers.max(2).into());
    Ok(result)
}

/// The audit's figures; see the module's documentation.
#[derive(Debug, Default)]
struct Audit {
    succeeded: u64,
    retried: u64,
    cancelled: u64,
    dead: u64,
    lost: u64,
    duplicated: u64,
    overlapping: u64,
    lease_expired: u64,
    time_inversions: u64,
    max_inversion_ms: u64,
    log_jobs_checked: u64,
    violations: Vec<String>,
}

/// Every acknowledged job as the server holds it now (`None`: not found),
/// eight GetJob calls in flight.
async fn fetch_all(
    client: &Client,
    ids: Vec<String>,
) -> anyhow::Result<HashMap<String, Option<pb::Job>>> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, ids, next) = (client.clone(), ids.clone(), next.clone());
        tasks.spawn(async move {
            let mut found = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(index) else {
                    return anyhow::Ok(found);
                };
                let mut tries = 0;
                let job = loop {
                    tries += 1;
                    match client.get_job(id).await {
                        Ok(job) => break Some(job),
                        Err(error) if error.is_not_found() => break None,
                        Err(error) if tries < 5 => {
                            tracing::warn!("soak audit: GetJob {id}: {error}; again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(error) => {
                            return Err(anyhow::Error::new(error).context(format!("GetJob {id}")));
                        }
                    }
                };
                found.push((id.clone(), job));
            }
        });
    }
    let mut all = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

async fn audit(client: &Client, ledger: &Ledger, runs: &[WorkerRun]) -> anyhow::Result<Audit> {
    use pb::{AttemptOutcome, JobState};
    let mut audit = Audit::default();
    let jobs = fetch_all(client, ledger.jobs.keys().cloned().collect()).await?;
    let mut runs_of: HashMap<&str, Vec<&WorkerRun>> = HashMap::new();
    for run in runs.iter().filter(|run| run.recorded) {
        runs_of.entry(run.job_id.as_str()).or_default().push(run);
    }
    let mut log_jobs = Vec::new();
    for (id, kind) in &ledger.jobs {
        let Some(Some(job)) = jobs.get(id) else {
            audit.lost += 1;
            audit
                .violations
                .push(format!("job {id} ({kind:?}) was acknowledged and is gone"));
            continue;
        };
        let state = job.state();
        let mut attempts: Vec<&pb::Attempt> = job.attempts.iter().collect();
        attempts.sort_by_key(|attempt| attempt.seq);
        let counted: Vec<&pb::Attempt> = attempts
            .iter()
            .copied()
            .filter(|attempt| attempt.outcome() != AttemptOutcome::Released)
            .collect();
        if counted.len() > 1 {
            audit.retried += 1;
        }
        audit.lease_expired += attempts
            .iter()
            .filter(|attempt| attempt.outcome() == AttemptOutcome::LeaseExpired)
            .count() as u64;
        let successes = attempts
            .iter()
            .filter(|attempt| attempt.outcome() == AttemptOutcome::Succeeded)
            .count();

        // Ran twice, or at once: in the server's records, then in the workers'.
        let mut twice = successes > 1;
        let mut overlap = false;
        // The server's attempt times are taken when each call reaches it,
        // before its group commit orders the calls: attempt n+1's start can
        // precede attempt n's end by about a commit. Overlap beyond
        // SERVER_TIME_SLACK (or an attempt left open) is two leases at once.
        let nanos = |at: &prost_types::Timestamp| {
            i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos)
        };
        let settled = matches!(
            state,
            JobState::Succeeded | JobState::Cancelled | JobState::Dead
        );
        let mut server_overlap = settled
            && attempts.iter().any(|attempt| {
                attempt.finished_at.is_none() || attempt.outcome() == AttemptOutcome::Unspecified
            });
        for pair in attempts.windows(2) {
            let (Some(end), Some(start)) = (
                pair[0].finished_at.as_ref().map(nanos),
                pair[1].started_at.as_ref().map(nanos),
            ) else {
                continue;
            };
            if start < end {
                audit.time_inversions += 1;
                let by_ms = u64::try_from((end - start) / 1_000_000).unwrap_or(u64::MAX);
                audit.max_inversion_ms = audit.max_inversion_ms.max(by_ms);
                server_overlap |= end - start > SERVER_TIME_SLACK.as_nanos() as i128;
            }
        }
        overlap |= server_overlap;
        if let Some(job_runs) = runs_of.get_mut(id.as_str()) {
            job_runs.sort_by_key(|run| run.start_ns);
            twice |= job_runs.iter().filter(|run| run.ok).count() > 1;
            let worker_overlap = job_runs
                .windows(2)
                .any(|pair| pair[1].start_ns < pair[0].end_ns);
            overlap |= worker_overlap;
            if job_runs.iter().any(|run| run.ok) && state != JobState::Succeeded {
                audit.violations.push(format!(
                    "job {id} ({kind:?}): the server recorded a handler success, and it ended {state:?}"
                ));
            }
        }
        if twice || overlap {
            audit.duplicated += 1;
            audit.violations.push(format!(
                "job {id} ({kind:?}) ran twice{}: {} succeeded attempts",
                if overlap { " at once" } else { "" },
                successes
            ));
        }
        if overlap {
            audit.overlapping += 1;
        }

        let cancel_requested = attempts.iter().any(|attempt| attempt.cancel_requested);
        match state {
            JobState::Succeeded => {
                audit.succeeded += 1;
                if successes == 0 {
                    audit.violations.push(format!(
                        "job {id} ({kind:?}) succeeded without a succeeded attempt"
                    ));
                }
                if *kind == Kind::AlwaysFails {
                    audit
                        .violations
                        .push(format!("job {id} always fails, and it succeeded"));
                }
                if *kind == Kind::Logs {
                    log_jobs.push(id.clone());
                }
            }
            JobState::Dead => {
                audit.dead += 1;
                let numbered = counted
                    .iter()
                    .zip(1..)
                    .all(|(attempt, number)| attempt.number == number);
                let explained = counted.iter().all(|attempt| {
                    attempt.outcome() != AttemptOutcome::Succeeded && !attempt.error.is_empty()
                });
                if counted.len() != job.max_attempts as usize || !numbered || !explained {
                    audit.violations.push(format!(
                        "dead job {id} ({kind:?}): max_attempts {}, counted attempts {:?}",
                        job.max_attempts,
                        counted
                            .iter()
                            .map(|attempt| (attempt.number, attempt.outcome(), &attempt.error))
                            .collect::<Vec<_>>()
                    ));
                }
            }
            JobState::Cancelled => {
                audit.cancelled += 1;
                if !ledger.cancel_tried.contains(id) {
                    audit
                        .violations
                        .push(format!("job {id} ({kind:?}) was cancelled, by nobody"));
                }
            }
            _ => {
                audit.lost += 1;
                audit.violations.push(format!(
                    "job {id} ({kind:?}) is still {state:?} after the run settled"
                ));
            }
        }
        // A cancel the server acknowledged ends the job cancelled, unless its
        // attempt finished first (a success then stands, flagged).
        if ledger.cancel_acked.contains(id)
            && (state == JobState::Dead || (state == JobState::Succeeded && !cancel_requested))
        {
            audit.violations.push(format!(
                "job {id} ({kind:?}): its cancel was acknowledged, and it ended {state:?}"
            ));
        }
    }

    // The log lines of some succeeded log jobs arrived.
    log_jobs.sort();
    for id in log_jobs.iter().take(LOG_JOBS_CHECKED) {
        let log = client
            .get_job_logs(pb::GetJobLogsRequest {
                job_id: id.clone(),
                streams: vec![pb::LogStream::Stdout as i32],
                ..pb::GetJobLogsRequest::default()
            })
            .await?;
        audit.log_jobs_checked += 1;
        if log.lines.len() < LOG_LINES {
            audit.violations.push(format!(
                "log job {id} succeeded with {} of its {LOG_LINES} lines",
                log.lines.len()
            ));
        }
    }
    Ok(audit)
}
