//! Background loops of the server. Each owns nothing global: it gets the
//! queue and a cancellation token, and returns when the token fires.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::domain::{JobHistory, JobQueue, JobTally, StatsSnapshot};

/// Longest the promoter sleeps without looking, in case a wake-up was missed.
const PROMOTER_MAX_SLEEP: Duration = Duration::from_secs(1);
/// Pause after a failed pass, so a broken database is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// Turns expired leases and timed-out attempts into failed attempts, every `interval`.
pub async fn reaper(queue: Arc<JobQueue>, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match queue.reap_expired().await {
            Ok(0) => {}
            Ok(ended) => tracing::info!(ended, "reaper ended expired attempts"),
            Err(error) => tracing::warn!(%error, "reaper pass failed"),
        }
    }
}

/// How often the scheduler looks for due cron ticks.
const SCHEDULER_TICK: Duration = Duration::from_millis(250);
/// How often retention looks for jobs to purge.
const RETENTION_TICK: Duration = Duration::from_secs(60);

/// Fires due cron schedules; every replica may run it, the store makes each tick fire once.
pub async fn scheduler(queue: Arc<JobQueue>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SCHEDULER_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match queue.fire_due_schedules().await {
            Ok(fired) => {
                for job in fired {
                    tracing::info!(schedule = ?job.schedule_name, job_id = %job.id, "schedule fired");
                }
            }
            Err(error) => tracing::warn!(%error, "scheduler pass failed"),
        }
    }
}

/// Purges finished jobs and their logs once they are older than the retention periods.
pub async fn retention(
    queue: Arc<JobQueue>,
    finished_max_age: Duration,
    dead_max_age: Duration,
    stop: CancellationToken,
) {
    use crate::domain::JobState;
    let mut ticker = tokio::time::interval(RETENTION_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = queue.now();
        let age = |max: Duration| now.saturating_sub(max.as_millis().min(i64::MAX as u128) as i64);
        let passes = [
            (
                &[JobState::Succeeded, JobState::Cancelled][..],
                age(finished_max_age),
            ),
            (&[JobState::Dead][..], age(dead_max_age)),
        ];
        for (states, before) in passes {
            match queue.purge_finished(states, before).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, ?states, "retention purged finished jobs"),
                Err(error) => tracing::warn!(%error, "retention pass failed"),
            }
        }
    }
}

/// Queues scheduled and retrying jobs when their run_at comes. Sleeps until
/// the earliest run_at, and wakes early when a job starts waiting.
pub async fn promoter(queue: Arc<JobQueue>, stop: CancellationToken) {
    loop {
        let pause = match queue.promote_due().await {
            Ok(_) => queue
                .until_next_due(PROMOTER_MAX_SLEEP)
                .await
                .unwrap_or(ERROR_PAUSE),
            Err(error) => {
                tracing::warn!(%error, "promoter pass failed");
                ERROR_PAUSE
            }
        };
        if pause.is_zero() {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
            () = queue.waiting_changed() => {}
        }
    }
}

/// How often the database is asked whether it answers.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps the health service honest: NOT_SERVING while the database cannot
/// be reached (calls would only fail), SERVING again when it answers.
pub async fn database_health(
    queue: Arc<JobQueue>,
    health: tonic_health::server::HealthReporter,
    services: &'static [&'static str],
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(HEALTH_CHECK_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let answers = tokio::time::timeout(HEALTH_CHECK_EVERY * 2, queue.ping())
            .await
            .is_ok_and(|ping| ping.is_ok());
        if answers == serving || stop.is_cancelled() {
            continue;
        }
        serving = answers;
        let status = if serving {
            tracing::info!("the database answers again: serving");
            tonic_health::ServingStatus::Serving
        } else {
            tracing::warn!("the database does not answer: not serving until it does");
            tonic_health::ServingStatus::NotServing
        };
        for name in services {
            health.set_service_status(*name, status).await;
        }
    }
}

/// Fewest milliseconds between two stats published: a burst of changes makes
/// at most four updates a second for every watcher.
const STATS_COALESCE: Duration = Duration::from_millis(250);
/// Fewest milliseconds between two lookups of a queue's earliest ready job
/// (each reads the queue's part of the lease index).
const OLDEST_LOOKUP_PAUSE: Duration = Duration::from_secs(1);

/// The latest job counts per queue and state, for the stats streams.
pub type StatsFeed = tokio::sync::watch::Receiver<Arc<StatsSnapshot>>;

/// Counts the jobs in the database into `tally` (the moves seen while it
/// counts are applied again on top).
pub async fn count_jobs(queue: &JobQueue, tally: &JobTally) {
    tally.counting();
    match queue.stats(&[]).await {
        Ok(stats) => tally.recounted(&stats),
        Err(error) => {
            tally.count_failed();
            tracing::warn!(%error, "could not count jobs");
        }
    }
    match queue.search_backlog().await {
        Ok(waiting) => tally.search_backlog_counted(waiting),
        Err(error) => {
            tracing::warn!(%error, "could not count the jobs waiting for the search index")
        }
    }
}

/// Keeps `tally` true and publishes it: recounts the database every
/// `recount` (the first count is the caller's, before it serves: a count
/// that overlaps a change it also sees counts that change twice until the
/// next one), looks up a queue's earliest ready job again when that
/// one left, and sends a snapshot after each burst of changes.
pub fn stats_feed(
    queue: Arc<JobQueue>,
    tally: Arc<JobTally>,
    recount: Duration,
    tasks: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> StatsFeed {
    let (sender, receiver) =
        tokio::sync::watch::channel(Arc::new(tally.snapshot(&[], queue.now())));
    tasks.spawn(async move {
        let mut changes = tally.subscribe();
        let mut recount_ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + recount, recount);
        recount_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_lookup = tokio::time::Instant::now() - OLDEST_LOOKUP_PAUSE;
        loop {
            let unknown = tally.oldest_unknown();
            let lookup_at = last_lookup + OLDEST_LOOKUP_PAUSE;
            tokio::select! {
                () = stop.cancelled() => return,
                _ = recount_ticker.tick() => count_jobs(&queue, &tally).await,
                () = tokio::time::sleep_until(lookup_at), if !unknown.is_empty() => {
                    last_lookup = tokio::time::Instant::now();
                    match queue.oldest_ready(&unknown).await {
                        Ok(found) => tally.oldest_found(&unknown, &found),
                        Err(error) => tracing::warn!(%error, "could not find the oldest ready jobs"),
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    changes.borrow_and_update();
                    sender.send_replace(Arc::new(tally.snapshot(&[], queue.now())));
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(STATS_COALESCE) => {}
                    }
                }
            }
        }
    });
    receiver
}

/// How long after a minute's end its rows are written: events stamped just
/// before the boundary are in by then.
const HISTORY_FLUSH_DELAY: Duration = Duration::from_millis(250);

/// Writes each closed minute of the job history, prunes history older than
/// its retention (at start and after each write), and writes the current
/// minute too at shutdown.
pub async fn history(history: Arc<JobHistory>, stop: CancellationToken) {
    loop {
        match history.prune().await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "history retention pruned old minutes"),
            Err(error) => tracing::warn!(%error, "history retention pass failed"),
        }
        tokio::select! {
            () = stop.cancelled() => {
                if let Err(error) = history.flush(true).await {
                    tracing::warn!(%error, "could not write the job history at shutdown");
                }
                return;
            }
            () = tokio::time::sleep(history.until_minute_closes() + HISTORY_FLUSH_DELAY) => {}
        }
        if let Err(error) = history.flush(false).await {
            tracing::warn!(%error, "could not write the job history; will try again next minute");
        }
    }
}
