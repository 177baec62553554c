//! Admission: how many jobs may start now. A queue may be paused, limited in
//! how many of its jobs run at once and in how many start per second (a
//! token bucket); a job may carry a concurrency key that limits how many
//! jobs with that key run at once. The rules are here; the store applies
//! them to what it reads inside the lease's own transaction, under locks
//! every replica shares, so the limits hold across replicas.

use std::collections::HashMap;

use super::clock::Millis;
use super::control::QueueControls;
use super::job::Job;

/// Highest rate limit and burst a queue may have, in jobs per second.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Highest limit of a concurrency key.
pub const MAX_KEY_LIMIT: i32 = 10_000;

/// A rate limit's token bucket as stored with its queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateBucket {
    /// Jobs that may start now; fractions accumulate.
    pub tokens: f64,
    /// When `tokens` was counted.
    pub refilled_at: Millis,
}

impl QueueControls {
    /// The rate limit's bucket size: the burst set, else the rate rounded up
    /// (at least one job).
    pub fn effective_burst(&self) -> f64 {
        if self.rate_burst > 0.0 {
            self.rate_burst
        } else {
            self.rate_limit_per_second.ceil().max(1.0)
        }
    }

    /// Whether the queue hands out jobs freely (no pause, no limit): leasing
    /// from it needs no lock and no count.
    pub fn is_open(&self) -> bool {
        !self.paused && self.concurrency_limit <= 0 && self.rate_limit_per_second <= 0.0
    }
}

/// One queue's gate during one lease: what its controls allow now, and what
/// starting jobs spends.
#[derive(Debug, Clone)]
pub struct QueueGate {
    controls: QueueControls,
    running: i64,
    bucket: Option<RateBucket>,
}

impl QueueGate {
    /// The gate of a queue with `controls` and `running` jobs running, its
    /// rate bucket (`stored`; `None`: never used) refilled up to `now`.
    pub fn new(
        controls: QueueControls,
        running: i64,
        stored: Option<RateBucket>,
        now: Millis,
    ) -> Self {
        let rate = controls.rate_limit_per_second;
        let bucket = (rate > 0.0).then(|| {
            let burst = controls.effective_burst();
            match stored {
                None => RateBucket {
                    tokens: burst,
                    refilled_at: now,
                },
                Some(stored) => {
                    let elapsed = (now - stored.refilled_at).max(0) as f64 / 1000.0;
                    RateBucket {
                        tokens: (stored.tokens + elapsed * rate).min(burst),
                        // A clock that went back does not move the bucket back.
                        refilled_at: now.max(stored.refilled_at),
                    }
                }
            }
        });
        Self {
            controls,
            running,
            bucket,
        }
    }

    /// How many jobs may start now (`u64::MAX`: no limit).
    pub fn allowance(&self) -> u64 {
        if self.controls.paused {
            return 0;
        }
        let mut allowed = u64::MAX;
        if self.controls.concurrency_limit > 0 {
            let free = i64::from(self.controls.concurrency_limit) - self.running;
            allowed = allowed.min(free.max(0) as u64);
        }
        if let Some(bucket) = &self.bucket {
            allowed = allowed.min(bucket.tokens.max(0.0).floor() as u64);
        }
        allowed
    }

    /// Counts `started` jobs as started: they run, and spend a token each.
    pub fn start(&mut self, started: u64) {
        self.running += started as i64;
        if let Some(bucket) = &mut self.bucket {
            bucket.tokens = (bucket.tokens - started as f64).max(0.0);
        }
    }

    /// The bucket to store back, for a rate-limited queue.
    pub fn bucket(&self) -> Option<RateBucket> {
        self.bucket
    }

    /// When the rate limit lets the next job start, if it holds jobs back
    /// now (a pause or a full concurrency limit waits for a change or for a
    /// job to end instead, which wake waiting calls themselves).
    pub fn capacity_at(&self) -> Option<Millis> {
        let bucket = self.bucket?;
        if self.controls.paused || bucket.tokens >= 1.0 {
            return None;
        }
        let missing = 1.0 - bucket.tokens;
        let wait_ms = (missing * 1000.0 / self.controls.rate_limit_per_second).ceil();
        Some(bucket.refilled_at + wait_ms as Millis)
    }
}

/// The candidates, in the order given, whose concurrency key has room: of
/// each key at most its limit minus the jobs with that key `running` now.
/// Jobs without a key all pass.
pub fn within_key_limits(candidates: Vec<Job>, running: &HashMap<String, i64>) -> Vec<Job> {
    let mut started: HashMap<String, i64> = HashMap::new();
    candidates
        .into_iter()
        .filter(|job| {
            let Some(key) = &job.concurrency_key else {
                return true;
            };
            let limit = i64::from(job.concurrency_limit.max(1));
            let now_running = running.get(key).copied().unwrap_or(0);
            let starting = started.entry(key.clone()).or_insert(0);
            if now_running + *starting < limit {
                *starting += 1;
                true
            } else {
                false
            }
        })
        .collect()
}

/// What a schedule does about ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum MissedTicks {
    /// One job for all the ticks missed.
    #[default]
    RunOnce,
    /// Missed ticks enqueue nothing.
    Skip,
}

impl MissedTicks {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MissedTicks::RunOnce => "run_once",
            MissedTicks::Skip => "skip",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        [MissedTicks::RunOnce, MissedTicks::Skip]
            .into_iter()
            .find(|policy| policy.as_str() == raw)
    }
}

/// A tick reached later than this counts as missed, however long the server ran.
pub const MISSED_AFTER_MS: Millis = 60_000;
/// A tick that came this long before the scheduler started counts as missed
/// (no scheduler ran then; a shorter gap may be a replica's ordinary delay).
pub const MISSED_BEFORE_START_MS: Millis = 2_000;

/// Whether a scheduler that started at `started_at` and reaches `tick` at
/// `now` missed it.
pub fn tick_missed(tick: Millis, now: Millis, started_at: Millis) -> bool {
    now - tick > MISSED_AFTER_MS || tick < started_at - MISSED_BEFORE_START_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobSpec;

    fn controls(paused: bool, concurrency: i32, rate: f64, burst: f64) -> QueueControls {
        QueueControls {
            name: "q".into(),
            paused,
            concurrency_limit: concurrency,
            rate_limit_per_second: rate,
            rate_burst: burst,
        }
    }

    #[test]
    fn an_open_queue_admits_without_limit_and_a_paused_one_admits_nothing() {
        let open = QueueGate::new(controls(false, 0, 0.0, 0.0), 50, None, 0);
        assert_eq!(open.allowance(), u64::MAX);
        assert_eq!(open.capacity_at(), None);
        let paused = QueueGate::new(controls(true, 0, 5.0, 0.0), 0, None, 0);
        assert_eq!(paused.allowance(), 0);
        assert_eq!(
            paused.capacity_at(),
            None,
            "a pause waits for a resume, not a timer"
        );
    }

    #[test]
    fn a_concurrency_limit_admits_what_is_free() {
        let mut gate = QueueGate::new(controls(false, 3, 0.0, 0.0), 1, None, 0);
        assert_eq!(gate.allowance(), 2);
        gate.start(2);
        assert_eq!(gate.allowance(), 0);
        let over = QueueGate::new(controls(false, 2, 0.0, 0.0), 5, None, 0);
        assert_eq!(
            over.allowance(),
            0,
            "a lowered limit admits nothing until jobs end"
        );
    }

    #[test]
    fn a_rate_limit_starts_with_a_full_burst_and_refills_at_its_rate() {
        let now = 1_000_000;
        let mut gate = QueueGate::new(controls(false, 0, 5.0, 0.0), 0, None, now);
        assert_eq!(gate.allowance(), 5, "burst defaults to the rate");
        gate.start(5);
        assert_eq!(gate.allowance(), 0);
        // The next token is a fifth of a second away.
        assert_eq!(gate.capacity_at(), Some(now + 200));
        let stored = gate.bucket();
        let later = QueueGate::new(controls(false, 0, 5.0, 0.0), 0, stored, now + 199);
        assert_eq!(later.allowance(), 0);
        let later = QueueGate::new(controls(false, 0, 5.0, 0.0), 0, stored, now + 200);
        assert_eq!(later.allowance(), 1);
        // A long quiet spell fills the bucket to its burst, no further.
        let quiet = QueueGate::new(controls(false, 0, 5.0, 2.0), 0, stored, now + 60_000);
        assert_eq!(quiet.allowance(), 2);
    }

    #[test]
    fn a_slow_rate_keeps_its_fractions() {
        let now = 0;
        let mut gate = QueueGate::new(controls(false, 0, 0.5, 0.0), 0, None, now);
        assert_eq!(
            gate.allowance(),
            1,
            "a rate under 1/s still lets one job start"
        );
        gate.start(1);
        assert_eq!(gate.capacity_at(), Some(2_000));
        let half = QueueGate::new(controls(false, 0, 0.5, 0.0), 0, gate.bucket(), 1_000);
        assert_eq!(half.allowance(), 0);
        assert_eq!(
            half.capacity_at(),
            Some(2_000),
            "the half token counted so far is kept"
        );
    }

    #[test]
    fn the_tighter_of_two_limits_wins() {
        let gate = QueueGate::new(controls(false, 2, 10.0, 0.0), 0, None, 0);
        assert_eq!(gate.allowance(), 2);
        let gate = QueueGate::new(controls(false, 20, 3.0, 0.0), 0, None, 0);
        assert_eq!(gate.allowance(), 3);
    }

    #[test]
    fn a_clock_that_goes_back_neither_adds_nor_takes_tokens() {
        let stored = RateBucket {
            tokens: 0.5,
            refilled_at: 10_000,
        };
        let gate = QueueGate::new(controls(false, 0, 1.0, 0.0), 0, Some(stored), 9_000);
        assert_eq!(gate.bucket(), Some(stored));
    }

    fn keyed(id: &str, key: Option<&str>, limit: i32) -> Job {
        let spec = JobSpec {
            job_type: "t".into(),
            queue: "q".into(),
            payload: "{}".into(),
            priority: 0,
            run_at: None,
            delay: None,
            max_attempts: 1,
            timeout: std::time::Duration::from_secs(1),
            retry_policy: crate::domain::RetryPolicy {
                base_backoff: std::time::Duration::from_secs(1),
                max_backoff: std::time::Duration::from_secs(1),
            },
            unique_key: None,
            concurrency_key: key.map(str::to_owned),
            concurrency_limit: limit,
            tags: Vec::new(),
            parent_id: None,
            traceparent: None,
            depends_on: Vec::new(),
            schedule_name: None,
            payload_bytes: 2,
        };
        let mut job = crate::domain::queue::new_job(spec, 0);
        job.id = crate::domain::JobId::from_stored(id.to_owned());
        job
    }

    #[test]
    fn keys_admit_up_to_their_limit_and_let_other_jobs_pass() {
        let candidates = vec![
            keyed("a1", Some("channel:a"), 1),
            keyed("a2", Some("channel:a"), 1),
            keyed("free", None, 0),
            keyed("b1", Some("host:b"), 3),
            keyed("b2", Some("host:b"), 3),
            keyed("b3", Some("host:b"), 3),
        ];
        let running = HashMap::from([("host:b".to_owned(), 1)]);
        let picked: Vec<String> = within_key_limits(candidates, &running)
            .into_iter()
            .map(|job| job.id.to_string())
            .collect();
        assert_eq!(picked, ["a1", "free", "b1", "b2"]);
    }

    #[test]
    fn a_key_at_its_limit_admits_nothing() {
        let running = HashMap::from([("channel:a".to_owned(), 1)]);
        let picked = within_key_limits(vec![keyed("a1", Some("channel:a"), 1)], &running);
        assert!(picked.is_empty());
    }

    #[test]
    fn ticks_count_as_missed_when_no_scheduler_ran_or_far_too_late() {
        let started = 100_000;
        // On time, or a replica's ordinary delay around a start.
        assert!(!tick_missed(started + 5_000, started + 5_010, started));
        assert!(!tick_missed(started - 1_000, started + 10, started));
        // Before this server started, with no scheduler to fire it.
        assert!(tick_missed(started - 3_000, started + 10, started));
        // Reached more than a minute late by a running scheduler.
        assert!(tick_missed(started + 1_000, started + 62_000, started));
    }
}
