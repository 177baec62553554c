//! Job history: what happened to jobs, minute by minute, by queue and type
//! (enqueues, starts, outcomes, wait and run time histograms). The current
//! minutes are kept in memory, fed by the queue's observer hook; each closed
//! minute is written once per replica, and a query sums the replicas' rows
//! and merges minutes into the asked step.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::clock::{Clock, Millis};
use super::error::{QueueError, QueueResult};
use super::job::{AttemptOutcome, Job, JobState};
use super::observe::JobObserver;
use super::store::Applied;

/// One minute, the unit history is kept in.
pub const MINUTE: Millis = 60_000;
/// Most buckets one query may ask for (a day of minutes).
pub const MAX_BUCKETS: i64 = 1_440;
/// Most queue×type series kept per minute: names are the clients', so a
/// flood of new names must not grow memory or rows without bound. Beyond
/// it, events are counted under [`OTHER`].
const MAX_SERIES_PER_MINUTE: usize = 2_000;
/// The queue and type of events counted beyond [`MAX_SERIES_PER_MINUTE`].
pub const OTHER: &str = "(other)";
/// Ratio between the bounds of one latency bucket: a percentile read from
/// the histogram is within about 5% of the true value.
const GROWTH: f64 = 1.1;

/// The start of the minute `at` falls in.
pub fn minute_of(at: Millis) -> Millis {
    at.div_euclid(MINUTE) * MINUTE
}

/// A sparse histogram of durations in milliseconds, on a log scale: bucket 0
/// holds zeros, bucket `b > 0` holds `[GROWTH^(b-1), GROWTH^b)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    buckets: BTreeMap<u32, u64>,
    max: Millis,
}

fn bucket_of(ms: Millis) -> u32 {
    if ms <= 0 {
        0
    } else {
        // The float can land a hair below a bound; clamping keeps it in range.
        ((ms as f64).ln() / GROWTH.ln()).floor().max(0.0) as u32 + 1
    }
}

/// The value a bucket stands for: the geometric middle of its bounds.
fn value_of(bucket: u32) -> Millis {
    if bucket == 0 {
        return 0;
    }
    let lower = GROWTH.powi(bucket as i32 - 1);
    (lower * GROWTH.sqrt()).round() as Millis
}

/// Count and percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many durations.
    pub count: u64,
    /// Median.
    pub p50: Millis,
    /// 90th percentile.
    pub p90: Millis,
    /// 99th percentile.
    pub p99: Millis,
    /// Longest.
    pub max: Millis,
}

impl LatencyHistogram {
    /// Counts one duration (negative ones as zero: clocks of replicas differ).
    pub fn record(&mut self, ms: Millis) {
        let ms = ms.max(0);
        *self.buckets.entry(bucket_of(ms)).or_insert(0) += 1;
        self.max = self.max.max(ms);
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (bucket, count) in &other.buckets {
            *self.buckets.entry(*bucket).or_insert(0) += count;
        }
        self.max = self.max.max(other.max);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The longest duration counted.
    pub fn max(&self) -> Millis {
        self.max
    }

    /// The duration at quantile `q` (0..=1), never above the longest one.
    pub fn quantile(&self, q: f64) -> Millis {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return value_of(*bucket).min(self.max);
            }
        }
        self.max
    }

    /// Count, p50, p90, p99 and max.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }

    /// The buckets as `bucket:count` pairs separated by commas, for storage.
    pub fn encode(&self) -> String {
        let pairs: Vec<String> = self
            .buckets
            .iter()
            .map(|(bucket, count)| format!("{bucket}:{count}"))
            .collect();
        pairs.join(",")
    }

    /// A histogram from [`LatencyHistogram::encode`]'s text and its max;
    /// a malformed pair is refused (the text is ours, so that is a bug or
    /// a damaged row, and it must not count silently as zero).
    pub fn decode(text: &str, max: Millis) -> Result<Self, String> {
        let mut buckets = BTreeMap::new();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let parsed = pair.split_once(':').and_then(|(bucket, count)| {
                Some((bucket.parse::<u32>().ok()?, count.parse::<u64>().ok()?))
            });
            let Some((bucket, count)) = parsed else {
                return Err(format!("bad histogram bucket {pair:?}"));
            };
            *buckets.entry(bucket).or_insert(0) += count;
        }
        Ok(Self {
            buckets,
            max: max.max(0),
        })
    }
}

/// What happened in one minute (or a merged bucket) for one series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Jobs stored.
    pub enqueued: i64,
    /// Attempts started.
    pub started: i64,
    /// Jobs that succeeded.
    pub succeeded: i64,
    /// Attempts that failed and will be retried.
    pub failed: i64,
    /// Jobs dead-lettered.
    pub dead: i64,
    /// Jobs cancelled.
    pub cancelled: i64,
    /// Ready → started.
    pub wait: LatencyHistogram,
    /// Started → finished.
    pub run: LatencyHistogram,
}

impl HistoryStats {
    /// Adds `other` to this.
    pub fn merge(&mut self, other: &HistoryStats) {
        self.enqueued += other.enqueued;
        self.started += other.started;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.dead += other.dead;
        self.cancelled += other.cancelled;
        self.wait.merge(&other.wait);
        self.run.merge(&other.run);
    }
}

/// One minute of one queue and type, as one replica saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    /// Start of the minute.
    pub minute: Millis,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub job_type: String,
    /// What happened.
    pub stats: HistoryStats,
}

/// One bucket of a query's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPoint {
    /// Start of the bucket.
    pub start: Millis,
    /// The queue, when asked by queue.
    pub queue: Option<String>,
    /// The type, when asked by type.
    pub job_type: Option<String>,
    /// What happened, merged over the bucket's minutes and replicas.
    pub stats: HistoryStats,
}

/// A validated history query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// First bucket's start (a multiple of `step`).
    pub start: Millis,
    /// End (exclusive).
    pub end: Millis,
    /// Bucket length, whole minutes.
    pub step: Millis,
    /// Only these queues (all if empty).
    pub queues: Vec<String>,
    /// Only these types (all if empty).
    pub types: Vec<String>,
    /// A series per queue.
    pub by_queue: bool,
    /// A series per type.
    pub by_type: bool,
}

impl HistoryQuery {
    /// Checks a request: `step` (default one minute) a whole number of
    /// minutes, `start` (default an hour before `end`) before `end` (default
    /// `now`), at most [`MAX_BUCKETS`] buckets. The start is rounded down
    /// to a step boundary so buckets line up however the window slides.
    pub fn new(
        start: Option<Millis>,
        end: Option<Millis>,
        step: Option<Millis>,
        now: Millis,
    ) -> QueueResult<Self> {
        let step = match step {
            None | Some(0) => MINUTE,
            Some(step) if step < 0 || step % MINUTE != 0 => {
                return Err(QueueError::invalid(
                    "step",
                    "must be a whole number of minutes",
                ));
            }
            Some(step) => step,
        };
        let end = end.unwrap_or(now);
        let start = start.unwrap_or(end.saturating_sub(60 * MINUTE));
        if start >= end {
            return Err(QueueError::invalid("start_time", "must be before end_time"));
        }
        // Counted on the window asked for: "the last day by minute" is
        // 1,440 buckets, though its ends straddle two more minutes.
        let buckets = (end - start + step - 1) / step;
        let start = start.div_euclid(step) * step;
        if buckets > MAX_BUCKETS {
            return Err(QueueError::invalid(
                "start_time",
                format!(
                    "the window holds {buckets} buckets of step; at most {MAX_BUCKETS} are allowed"
                ),
            ));
        }
        Ok(Self {
            start,
            end,
            step,
            queues: Vec::new(),
            types: Vec::new(),
            by_queue: false,
            by_type: false,
        })
    }

    /// Whether rows of this queue and type are asked for.
    fn selects(&self, queue: &str, job_type: &str) -> bool {
        (self.queues.is_empty() || self.queues.iter().any(|q| q == queue))
            && (self.types.is_empty() || self.types.iter().any(|t| t == job_type))
    }

    /// The minutes this query reads: `[start, end)` rounded out to minutes.
    pub fn minutes(&self) -> (Millis, Millis) {
        (minute_of(self.start), minute_of(self.end - 1) + MINUTE)
    }

    /// Merges rows (of any replicas) into the query's buckets and series,
    /// oldest first, then by queue and type. Rows outside the window or
    /// the filters are left out.
    pub fn bucket<'r>(&self, rows: impl IntoIterator<Item = &'r HistoryRow>) -> Vec<HistoryPoint> {
        self.merge(
            rows.into_iter()
                .filter(|row| self.selects(&row.queue, &row.job_type)),
        )
    }

    /// Like [`HistoryQuery::bucket`] for rows already filtered by queue and
    /// type (the store's, summed per bucket: their queue and type are empty
    /// unless the query groups by them).
    fn merge<'r>(&self, rows: impl IntoIterator<Item = &'r HistoryRow>) -> Vec<HistoryPoint> {
        let mut points: BTreeMap<(Millis, Option<String>, Option<String>), HistoryStats> =
            BTreeMap::new();
        for row in rows {
            if row.minute < self.start || row.minute >= self.end {
                continue;
            }
            let start = row.minute.div_euclid(self.step) * self.step;
            let queue = self.by_queue.then(|| row.queue.clone());
            let job_type = self.by_type.then(|| row.job_type.clone());
            points
                .entry((start, queue, job_type))
                .or_default()
                .merge(&row.stats);
        }
        points
            .into_iter()
            .map(|((start, queue, job_type), stats)| HistoryPoint {
                start,
                queue,
                job_type,
                stats,
            })
            .collect()
    }
}

/// Where closed minutes are kept.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Writes this replica's rows (again: a row already written is replaced).
    async fn write_history(&self, replica: &str, rows: &[HistoryRow]) -> QueueResult<()>;
    /// The stored minutes in `[from, to)` that `query` selects (its queues
    /// and types), summed over replicas into the query's buckets: one row
    /// per bucket start and series (queue and type empty unless the query
    /// groups by them). The rows of replica `skip.0` for minutes `skip.1`
    /// are left out (the caller holds them in memory).
    async fn read_history(
        &self,
        query: &HistoryQuery,
        from: Millis,
        to: Millis,
        skip: (&str, &[Millis]),
    ) -> QueueResult<Vec<HistoryRow>>;
    /// Deletes rows of minutes before `before`; returns how many.
    async fn prune_history(&self, before: Millis) -> QueueResult<u64>;
}

type Series = HashMap<(String, String), HistoryStats>;

/// The minutes not yet written, in memory.
#[derive(Default)]
struct Recorder {
    minutes: BTreeMap<Millis, Series>,
    /// Minutes before this one are being (or were) written: a late event
    /// counts in the first open minute instead, so no written row changes.
    closed_before: Millis,
}

impl Recorder {
    fn record(&mut self, now: Millis, job: &Job, count: impl FnOnce(&mut HistoryStats)) {
        let minute = minute_of(now).max(self.closed_before);
        let series = self.minutes.entry(minute).or_default();
        let mut key = (job.queue.clone(), job.job_type.clone());
        if !series.contains_key(&key) && series.len() >= MAX_SERIES_PER_MINUTE {
            key = (OTHER.to_owned(), OTHER.to_owned());
        }
        count(series.entry(key).or_default());
    }

    fn rows(&self, minutes: impl Fn(Millis) -> bool) -> Vec<HistoryRow> {
        self.minutes
            .iter()
            .filter(|(minute, _)| minutes(**minute))
            .flat_map(|(minute, series)| {
                series.iter().map(|((queue, job_type), stats)| HistoryRow {
                    minute: *minute,
                    queue: queue.clone(),
                    job_type: job_type.clone(),
                    stats: stats.clone(),
                })
            })
            .collect()
    }
}

/// The job history of this server: records events, writes closed minutes,
/// answers queries, prunes.
pub struct JobHistory {
    store: Arc<dyn HistoryStore>,
    clock: Arc<dyn Clock>,
    /// Names this server's rows; each start is a new replica, so rows
    /// written before a restart are never overwritten.
    replica: String,
    retention: Duration,
    recorder: Mutex<Recorder>,
    /// Each minute closed here (its start), for watchers.
    closed: broadcast::Sender<Millis>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(duration: Duration) -> Millis {
    duration.as_millis().min(i64::MAX as u128) as Millis
}

impl JobHistory {
    /// History over `store`, kept for `retention`, written as `replica`.
    pub fn new(
        store: Arc<dyn HistoryStore>,
        clock: Arc<dyn Clock>,
        replica: String,
        retention: Duration,
    ) -> Self {
        Self {
            store,
            clock,
            replica,
            retention,
            recorder: Mutex::new(Recorder::default()),
            closed: broadcast::Sender::new(16),
        }
    }

    /// How long history is kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Now, by the history's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// The start of each minute closed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Millis> {
        self.closed.subscribe()
    }

    /// How long until the current minute closes.
    pub fn until_minute_closes(&self) -> Duration {
        let now = self.now();
        Duration::from_millis((minute_of(now) + MINUTE - now).max(0) as u64)
    }

    /// Writes the minutes that have closed (all of them, the current one too,
    /// when `everything`, as at shutdown), then tells watchers. A failed
    /// write keeps them in memory for the next try.
    pub async fn flush(&self, everything: bool) -> QueueResult<usize> {
        let now = self.now();
        let cutoff = if everything {
            Millis::MAX
        } else {
            minute_of(now)
        };
        let (rows, newly_closed) = {
            let mut recorder = lock(&self.recorder);
            let previous = recorder.closed_before;
            if !everything {
                recorder.closed_before = recorder.closed_before.max(cutoff);
            }
            let rows = recorder.rows(|minute| minute < cutoff);
            let newly_closed = (!everything && cutoff > previous).then_some(cutoff - MINUTE);
            (rows, newly_closed)
        };
        if !rows.is_empty() {
            self.store.write_history(&self.replica, &rows).await?;
            let mut recorder = lock(&self.recorder);
            let written: Vec<Millis> = recorder
                .minutes
                .keys()
                .copied()
                .filter(|minute| *minute < cutoff)
                .collect();
            // Only what was written goes: in `everything` mode an event may
            // have come in meanwhile (it is lost with the process anyway).
            for minute in written {
                if rows.iter().any(|row| row.minute == minute) {
                    recorder.minutes.remove(&minute);
                }
            }
        }
        if let Some(minute) = newly_closed {
            let _ = self.closed.send(minute);
        }
        Ok(rows.len())
    }

    /// Deletes the minutes that began longer than the retention ago;
    /// returns how many rows.
    pub async fn prune(&self) -> QueueResult<u64> {
        let before = self.now().saturating_sub(millis(self.retention));
        self.store.prune_history(before).await
    }

    /// The history `query` asks for: stored rows of every replica plus this
    /// server's minutes not yet written (the current one included). Nothing
    /// older than the retention is returned, pruned yet or not.
    pub async fn query(&self, query: &HistoryQuery) -> QueueResult<Vec<HistoryPoint>> {
        let (from, to) = query.minutes();
        let from = from.max(minute_of(self.now().saturating_sub(millis(self.retention))));
        if from >= to {
            return Ok(Vec::new());
        }
        // Memory first: a minute written after this snapshot is skipped in
        // the stored rows (it is in the snapshot); one written before it is
        // no longer in memory. Either way it counts once.
        let open = lock(&self.recorder).rows(|minute| minute >= from && minute < to);
        let mut open_minutes: Vec<Millis> = open.iter().map(|row| row.minute).collect();
        open_minutes.dedup();
        // The store sums a week of minutes into its buckets itself: a week
        // of ten series is 100,000 rows, too many to send and merge here.
        let stored = self
            .store
            .read_history(query, from, to, (&self.replica, &open_minutes))
            .await?;
        let open = open
            .iter()
            .filter(|row| query.selects(&row.queue, &row.job_type));
        Ok(query.merge(stored.iter().chain(open)))
    }
}

impl JobObserver for JobHistory {
    fn created(&self, jobs: &[&Job], now: Millis) {
        let mut recorder = lock(&self.recorder);
        for job in jobs {
            recorder.record(now, job, |stats| stats.enqueued += 1);
        }
    }

    fn changed(&self, applied: &[Applied], now: Millis) {
        let mut recorder = lock(&self.recorder);
        for Applied { before, job, entry } in applied {
            if job.state == JobState::Running && before.state != JobState::Running {
                let ready_at = before.run_at.max(before.created_at);
                recorder.record(now, job, |stats| {
                    stats.started += 1;
                    stats.wait.record(now - ready_at);
                });
            }
            let ended = entry
                .as_ref()
                .filter(|entry| entry.is_attempt())
                .and_then(|entry| entry.outcome);
            if let Some(outcome) = ended {
                let retries = matches!(
                    outcome,
                    AttemptOutcome::Failed
                        | AttemptOutcome::TimedOut
                        | AttemptOutcome::LeaseExpired
                ) && matches!(job.state, JobState::Retrying | JobState::Queued);
                let run = before.attempt_started_at.map(|started| now - started);
                // A released attempt did not run to an end: it is no run time.
                let timed = outcome != AttemptOutcome::Released;
                recorder.record(now, job, |stats| {
                    if retries {
                        stats.failed += 1;
                    }
                    if let (Some(run), true) = (run, timed) {
                        stats.run.record(run);
                    }
                });
            }
            if before.state != job.state {
                match job.state {
                    JobState::Succeeded => recorder.record(now, job, |s| s.succeeded += 1),
                    JobState::Dead => recorder.record(now, job, |s| s.dead += 1),
                    JobState::Cancelled => recorder.record(now, job, |s| s.cancelled += 1),
                    _ => {}
                }
            }
        }
    }

    fn deleted(&self, _jobs: &[&Job], _now: Millis) {}
}
