//! Jobs per queue and state, kept in memory from committed changes (this
//! server's, and those other replicas announce) and replaced now and then
//! by a count from the database. Stats streams and metrics gauges read it,
//! so no reader and no change costs a table scan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

use super::clock::Millis;
use super::job::{Job, JobEvent, JobEventKind, JobState, QueueStats, StatsSnapshot};
use super::observe::JobObserver;
use super::store::Applied;

#[derive(Debug, Default, Clone, PartialEq)]
struct QueueTally {
    states: BTreeMap<JobState, i64>,
    /// Earliest run_at among the queue's queued jobs, when known.
    oldest_ready: Option<Millis>,
    /// A job with the earliest run_at left the queued state: the next
    /// earliest is only known to the database.
    oldest_unknown: bool,
}

/// One job's move between states, as the tally applies it.
#[derive(Debug, Clone)]
struct Move {
    queue: String,
    run_at: Millis,
    /// None: a new job.
    from: Option<JobState>,
    /// None: a deleted job.
    to: Option<JobState>,
}

impl Move {
    fn of(job: &Job, from: Option<JobState>) -> Self {
        Self {
            queue: job.queue.clone(),
            run_at: job.run_at,
            from,
            to: Some(job.state),
        }
    }

    fn deleted(job: &Job) -> Self {
        Self {
            queue: job.queue.clone(),
            run_at: job.run_at,
            from: Some(job.state),
            to: None,
        }
    }
}

#[derive(Debug, Default)]
struct Tallies {
    queues: BTreeMap<String, QueueTally>,
    /// While the database is being counted: the moves seen meanwhile, to
    /// apply again on top of the count (which may not have seen them).
    during_count: Option<Vec<Move>>,
}

impl Tallies {
    fn apply(&mut self, change: Move) {
        let tally = self.queues.entry(change.queue.clone()).or_default();
        if let Some(from) = change.from {
            let count = tally.states.entry(from).or_default();
            *count = (*count - 1).max(0);
            if from == JobState::Queued {
                if tally.states.get(&JobState::Queued).copied().unwrap_or(0) == 0 {
                    tally.oldest_ready = None;
                    tally.oldest_unknown = false;
                } else if tally
                    .oldest_ready
                    .is_some_and(|oldest| change.run_at <= oldest)
                {
                    tally.oldest_unknown = true;
                }
            }
        }
        if let Some(to) = change.to {
            *tally.states.entry(to).or_default() += 1;
            if to == JobState::Queued {
                tally.oldest_ready = Some(
                    tally
                        .oldest_ready
                        .map_or(change.run_at, |oldest| oldest.min(change.run_at)),
                );
            }
        }
        tally.states.retain(|_, count| *count > 0);
        if let Some(seen) = self.during_count.as_mut() {
            seen.push(change);
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct JobTally {
    tallies: Mutex<Tallies>,
    /// Bumped on every change, so publishers wake without polling.
    generation: watch::Sender<u64>,
    /// Jobs waiting for the payload search index, as last counted.
    search_backlog: AtomicU64,
}

impl Default for JobTally {
    fn default() -> Self {
        Self {
            tallies: Mutex::new(Tallies::default()),
            generation: watch::channel(0).0,
            search_backlog: AtomicU64::new(0),
        }
    }
}

impl JobTally {
    /// Notes how many jobs the last count found waiting for the search index.
    pub fn search_backlog_counted(&self, waiting: u64) {
        self.search_backlog.store(waiting, Ordering::Relaxed);
    }

    /// Jobs waiting for the search index, as last counted.
    pub fn search_backlog(&self) -> u64 {
        self.search_backlog.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, moves: impl IntoIterator<Item = Move>) {
        let mut tallies = self.lock();
        let mut any = false;
        for change in moves {
            tallies.apply(change);
            any = true;
        }
        drop(tallies);
        if any {
            self.generation
                .send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }

    /// Resolves on changes made after `subscribe`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Call before counting the database, then [`JobTally::recounted`].
    pub fn counting(&self) {
        self.lock().during_count = Some(Vec::new());
    }

    /// The count started by [`JobTally::counting`] failed.
    pub fn count_failed(&self) {
        self.lock().during_count = None;
    }

    /// Replaces everything with a fresh count (taken after
    /// [`JobTally::counting`]), and the moves seen meanwhile on top.
    pub fn recounted(&self, stats: &StatsSnapshot) {
        let fresh: BTreeMap<String, QueueTally> = stats
            .queues
            .iter()
            .map(|queue| {
                let tally = QueueTally {
                    states: queue
                        .counts
                        .iter()
                        .copied()
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                    oldest_ready: queue.oldest_ready_run_at,
                    oldest_unknown: false,
                };
                (queue.queue.clone(), tally)
            })
            .collect();
        let changed = {
            let mut tallies = self.lock();
            let before = std::mem::replace(&mut tallies.queues, fresh);
            for change in tallies.during_count.take().unwrap_or_default() {
                tallies.apply(change);
            }
            before != tallies.queues
        };
        if changed {
            self.generation
                .send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }

    /// Queues whose earliest ready job left and must be looked up again.
    pub fn oldest_unknown(&self) -> Vec<String> {
        self.lock()
            .queues
            .iter()
            .filter(|(_, tally)| tally.oldest_unknown)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Sets what the database says is the earliest ready run_at of each of
    /// `queues` (absent: none queued).
    pub fn oldest_found(&self, queues: &[String], found: &BTreeMap<String, Millis>) {
        let mut tallies = self.lock();
        for name in queues {
            if let Some(tally) = tallies.queues.get_mut(name) {
                tally.oldest_ready = found.get(name).copied();
                tally.oldest_unknown = false;
            }
        }
        drop(tallies);
        self.generation
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// The counts of `queues` (all when empty), as GetQueueStats gives them.
    pub fn snapshot(&self, queues: &[String], as_of: Millis) -> StatsSnapshot {
        let wanted: BTreeSet<&String> = queues.iter().collect();
        let queues = self
            .lock()
            .queues
            .iter()
            .filter(|(name, tally)| {
                !tally.states.is_empty() && (wanted.is_empty() || wanted.contains(name))
            })
            .map(|(name, tally)| QueueStats {
                queue: name.clone(),
                counts: tally.states.iter().map(|(s, n)| (*s, *n)).collect(),
                oldest_ready_run_at: tally.oldest_ready,
            })
            .collect();
        StatsSnapshot { queues, as_of }
    }

    /// Applies events another replica announced.
    pub fn apply_events(&self, events: &[JobEvent]) {
        self.apply(events.iter().filter_map(|event| match &event.kind {
            JobEventKind::Created => Some(Move::of(&event.job, None)),
            JobEventKind::StateChanged { from } | JobEventKind::AttemptFailed { from, .. }
                if *from != event.job.state =>
            {
                Some(Move::of(&event.job, Some(*from)))
            }
            JobEventKind::Deleted => Some(Move::deleted(&event.job)),
            _ => None,
        }));
    }
}

impl JobObserver for JobTally {
    fn created(&self, jobs: &[&Job], _now: Millis) {
        self.apply(jobs.iter().map(|job| Move::of(job, None)));
    }

    fn changed(&self, applied: &[Applied], _now: Millis) {
        self.apply(
            applied
                .iter()
                .filter(|change| change.before.state != change.job.state)
                .map(|change| Move::of(&change.job, Some(change.before.state))),
        );
    }

    fn deleted(&self, jobs: &[&Job], _now: Millis) {
        self.apply(jobs.iter().map(|job| Move::deleted(job)));
    }

    fn remote(&self, events: &[JobEvent]) {
        self.apply_events(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transitions::tests::job;

    fn in_queue(queue: &str, run_at: Millis) -> Job {
        Job {
            queue: queue.into(),
            run_at,
            ..job(3)
        }
    }

    fn counts(tally: &JobTally, queue: &str) -> (Vec<(JobState, i64)>, Option<Millis>) {
        let snapshot = tally.snapshot(&[queue.to_owned()], 0);
        snapshot
            .queues
            .first()
            .map(|stats| (stats.counts.clone(), stats.oldest_ready_run_at))
            .unwrap_or_default()
    }

    fn moved(job: &mut Job, to: JobState) -> Applied {
        let before = job.clone();
        job.state = to;
        Applied {
            before,
            job: job.clone(),
            entry: None,
        }
    }

    #[test]
    fn counts_follow_new_moved_and_deleted_jobs_and_the_earliest_ready_run_at() {
        let tally = JobTally::default();
        let mut first = in_queue("media", 100);
        let second = in_queue("media", 200);
        let other = in_queue("other", 50);
        tally.created(&[&first, &second, &other], 0);
        assert_eq!(
            counts(&tally, "media"),
            (vec![(JobState::Queued, 2)], Some(100))
        );

        // The earliest ready job leaves: the next earliest is the database's to say.
        tally.changed(&[moved(&mut first, JobState::Running)], 0);
        assert_eq!(
            counts(&tally, "media").0,
            vec![(JobState::Queued, 1), (JobState::Running, 1)]
        );
        assert_eq!(tally.oldest_unknown(), ["media"]);
        tally.oldest_found(
            &["media".to_owned()],
            &BTreeMap::from([("media".to_owned(), 200)]),
        );
        assert!(tally.oldest_unknown().is_empty());
        assert_eq!(counts(&tally, "media").1, Some(200));

        tally.changed(&[moved(&mut first, JobState::Succeeded)], 0);
        tally.deleted(&[&second], 0);
        assert_eq!(
            counts(&tally, "media"),
            (vec![(JobState::Succeeded, 1)], None)
        );
        // Only the queues asked for.
        let snapshot = tally.snapshot(&["other".to_owned()], 7);
        assert_eq!(snapshot.as_of, 7);
        assert_eq!(snapshot.queues.len(), 1);
        assert_eq!(snapshot.queues[0].queue, "other");
    }

    #[test]
    fn a_recount_keeps_the_moves_made_while_the_database_was_counted() {
        let tally = JobTally::default();
        tally.created(&[&in_queue("media", 100)], 0);
        tally.counting();
        // Committed after the count read the table: the count has not seen it.
        let late = in_queue("thumbnails", 300);
        tally.created(&[&late], 0);
        let counted = StatsSnapshot {
            queues: vec![QueueStats {
                queue: "media".into(),
                counts: vec![(JobState::Queued, 5)],
                oldest_ready_run_at: Some(10),
            }],
            as_of: 0,
        };
        tally.recounted(&counted);
        assert_eq!(
            counts(&tally, "media"),
            (vec![(JobState::Queued, 5)], Some(10))
        );
        assert_eq!(
            counts(&tally, "thumbnails"),
            (vec![(JobState::Queued, 1)], Some(300))
        );

        // Without a count under way, a recount replaces everything.
        tally.recounted(&StatsSnapshot {
            queues: vec![],
            as_of: 0,
        });
        assert!(tally.snapshot(&[], 0).queues.is_empty());
    }

    #[test]
    fn another_replicas_events_move_counts_once_and_progress_moves_nothing() {
        let tally = JobTally::default();
        let mut job = in_queue("media", 100);
        let event = |kind, job: &Job| JobEvent {
            kind,
            job: job.clone(),
            at: 0,
        };
        let mut changes = tally.subscribe();
        tally.apply_events(&[event(JobEventKind::Created, &job)]);
        assert!(changes.has_changed().unwrap_or(false));
        changes.borrow_and_update();
        job.state = JobState::Running;
        tally.apply_events(&[
            event(
                JobEventKind::StateChanged {
                    from: JobState::Queued,
                },
                &job,
            ),
            event(JobEventKind::Progress, &job),
        ]);
        assert_eq!(
            counts(&tally, "media"),
            (vec![(JobState::Running, 1)], None)
        );
        changes.borrow_and_update();
        tally.apply_events(&[event(JobEventKind::Progress, &job)]);
        assert!(
            !changes.has_changed().unwrap_or(true),
            "progress is no change of counts"
        );
    }
}
