//! The job history's rules: histograms and percentiles, query checks,
//! bucketing, and the whole path (events → memory → stored rows → answers)
//! over the real store, under a manual clock.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SqliteDurability;
use crate::domain::{
    FailReport, HistoryQuery, HistoryRow, HistoryStats, JobHistory, JobObserver, LatencyHistogram,
    MINUTE, QueueError, minute_of,
};
use crate::store::SqlStore;
use crate::testkit::{Fixture, START, spec};

fn within(actual: i64, expected: i64, tolerance: f64) -> bool {
    (actual - expected).abs() as f64 <= expected as f64 * tolerance
}

#[test]
fn percentiles_come_from_the_log_buckets_within_a_few_percent() {
    let mut histogram = LatencyHistogram::default();
    for ms in 1..=1000 {
        histogram.record(ms);
    }
    let summary = histogram.summary();
    assert_eq!(summary.count, 1000);
    assert_eq!(summary.max, 1000);
    assert!(within(summary.p50, 500, 0.06), "p50 {}", summary.p50);
    assert!(within(summary.p90, 900, 0.06), "p90 {}", summary.p90);
    assert!(within(summary.p99, 990, 0.06), "p99 {}", summary.p99);
    assert!(summary.p99 <= summary.max);

    let mut zeros = LatencyHistogram::default();
    zeros.record(0);
    zeros.record(-5);
    assert_eq!(zeros.summary().p99, 0);
    assert_eq!(LatencyHistogram::default().summary().p50, 0);
}

#[test]
fn merged_histograms_give_the_percentiles_of_all_their_durations() {
    // Averaging the two p50s would say 5,000 ms; the merged median is 10 ms.
    let (mut fast, mut slow) = (LatencyHistogram::default(), LatencyHistogram::default());
    for _ in 0..90 {
        fast.record(10);
    }
    for _ in 0..10 {
        slow.record(10_000);
    }
    let mut all = fast.clone();
    all.merge(&slow);
    assert!(within(all.quantile(0.5), 10, 0.06));
    assert!(within(all.quantile(0.95), 10_000, 0.06));
    assert_eq!(all.max(), 10_000);
}

#[test]
fn histograms_survive_their_stored_text() {
    let mut histogram = LatencyHistogram::default();
    for ms in [0, 1, 7, 7, 250, 86_400_000] {
        histogram.record(ms);
    }
    let text = histogram.encode();
    let back = LatencyHistogram::decode(&text, histogram.max()).expect("decode");
    assert_eq!(back, histogram);
    assert_eq!(
        LatencyHistogram::decode("", 0).expect("empty"),
        LatencyHistogram::default()
    );
    assert!(LatencyHistogram::decode("3:x", 0).is_err());
    assert!(LatencyHistogram::decode("nonsense", 0).is_err());
}

fn field_of(result: crate::domain::QueueResult<HistoryQuery>) -> String {
    match result {
        Err(QueueError::InvalidArgument { field, .. }) => field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn queries_are_checked_and_aligned_to_their_step() {
    let now = START + 90 * MINUTE + 1_234;
    let query = HistoryQuery::new(None, None, None, now).expect("defaults");
    assert_eq!(query.step, MINUTE);
    assert_eq!(query.end, now);
    assert_eq!(query.start, minute_of(now - 60 * MINUTE));

    let query =
        HistoryQuery::new(Some(START + 7 * MINUTE), None, Some(15 * MINUTE), now).expect("15 min");
    assert_eq!(query.start, START, "rounded down to a 15-minute boundary");

    assert_eq!(
        field_of(HistoryQuery::new(None, None, Some(90_000), now)),
        "step"
    );
    assert_eq!(
        field_of(HistoryQuery::new(None, None, Some(-MINUTE), now)),
        "step"
    );
    assert_eq!(
        field_of(HistoryQuery::new(Some(now), Some(now), None, now)),
        "start_time"
    );
    // A day of minutes is the most; a day and a minute is too much.
    assert!(HistoryQuery::new(Some(START), Some(START + 1_440 * MINUTE), None, now).is_ok());
    assert_eq!(
        field_of(HistoryQuery::new(
            Some(START),
            Some(START + 1_441 * MINUTE),
            None,
            now
        )),
        "start_time"
    );
}

fn row(minute: i64, queue: &str, job_type: &str, succeeded: i64, run_ms: i64) -> HistoryRow {
    let mut stats = HistoryStats {
        succeeded,
        ..HistoryStats::default()
    };
    for _ in 0..succeeded {
        stats.run.record(run_ms);
    }
    HistoryRow {
        minute,
        queue: queue.into(),
        job_type: job_type.into(),
        stats,
    }
}

#[test]
fn rows_merge_into_buckets_and_series() {
    let rows = [
        row(START, "media", "download", 2, 100),
        row(START + MINUTE, "media", "download", 3, 100),
        row(START + 14 * MINUTE, "media", "probe", 1, 5_000),
        row(START + 15 * MINUTE, "cleanup", "sweep", 4, 10),
        // Outside the window.
        row(START + 30 * MINUTE, "media", "download", 9, 1),
    ];
    let mut query = HistoryQuery::new(
        Some(START),
        Some(START + 30 * MINUTE),
        Some(15 * MINUTE),
        START,
    )
    .expect("query");
    let points = query.bucket(&rows);
    assert_eq!(points.len(), 2);
    assert_eq!(points[0].start, START);
    assert_eq!(points[0].stats.succeeded, 6);
    assert_eq!(points[0].stats.run.max(), 5_000);
    assert_eq!(points[0].queue, None);
    assert_eq!(points[1].start, START + 15 * MINUTE);
    assert_eq!(points[1].stats.succeeded, 4);

    query.by_type = true;
    let points = query.bucket(&rows);
    let first: Vec<_> = points
        .iter()
        .filter(|point| point.start == START)
        .map(|point| (point.job_type.clone(), point.stats.succeeded))
        .collect();
    assert_eq!(
        first,
        [(Some("download".into()), 5), (Some("probe".into()), 1)]
    );

    query.by_type = false;
    query.by_queue = true;
    query.queues = vec!["cleanup".into()];
    let points = query.bucket(&rows);
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].queue.as_deref(), Some("cleanup"));
}

async fn history_store(dir: &tempfile::TempDir) -> Arc<SqlStore> {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("history.db").display()
    );
    Arc::new(
        SqlStore::open(&url, SqliteDurability::Normal, Duration::from_secs(5))
            .await
            .expect("store"),
    )
}

#[tokio::test]
async fn events_become_minutes_in_memory_then_rows_counted_once() {
    let fx = Fixture::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = history_store(&dir).await;
    let history = Arc::new(JobHistory::new(
        store.clone(),
        fx.clock.clone(),
        "replica-a".into(),
        Duration::from_secs(3600),
    ));
    fx.queue
        .set_observer(history.clone() as Arc<dyn JobObserver>);

    let enqueued = fx
        .queue
        .enqueue(
            vec![(spec(1), "jobs[0]".into()), (spec(1), "jobs[1]".into())],
            None,
        )
        .await
        .expect("enqueue");
    assert_eq!(enqueued.len(), 2);
    fx.advance(Duration::from_secs(3));
    let leased = fx.lease(2).await;
    assert_eq!(leased.len(), 2);
    fx.advance(Duration::from_secs(5));
    fx.complete(&leased[0]).await;
    // One attempt allowed: this failure dead-letters the job.
    fx.queue
        .fail_many(vec![FailReport {
            job_id: leased[1].job.id.clone(),
            lease_token: leased[1].lease_token.clone(),
            error: "boom".into(),
            retryable: true,
            retry_after: None,
        }])
        .await
        .expect("fail");

    let query = HistoryQuery::new(None, None, None, fx.queue.now()).expect("query");
    let check = |points: Vec<crate::domain::HistoryPoint>, when: &str| {
        assert_eq!(points.len(), 1, "{when}: one minute, one series");
        let stats = &points[0].stats;
        assert_eq!(points[0].start, START, "{when}");
        assert_eq!(
            (
                stats.enqueued,
                stats.started,
                stats.succeeded,
                stats.failed,
                stats.dead
            ),
            (2, 2, 1, 0, 1),
            "{when}"
        );
        let wait = stats.wait.summary();
        assert_eq!(wait.count, 2, "{when}");
        assert!(
            within(wait.p50, 3_000, 0.06),
            "{when}: wait p50 {}",
            wait.p50
        );
        let run = stats.run.summary();
        assert_eq!(run.count, 2, "{when}");
        assert!(within(run.p99, 5_000, 0.06), "{when}: run p99 {}", run.p99);
    };
    // The open minute is answered from memory; nothing is stored yet.
    check(history.query(&query).await.expect("query"), "open minute");
    assert_eq!(history.flush(false).await.expect("flush"), 0);

    fx.advance(Duration::from_secs(60));
    let mut closed = history.subscribe();
    assert_eq!(history.flush(false).await.expect("flush"), 1);
    assert_eq!(closed.try_recv().expect("closed minute"), START);
    let query = HistoryQuery::new(None, None, None, fx.queue.now()).expect("query");
    check(
        history.query(&query).await.expect("query"),
        "written minute",
    );

    // A restarted server (another replica name) reads the same rows.
    let restarted = JobHistory::new(
        store.clone(),
        fx.clock.clone(),
        "replica-b".into(),
        Duration::from_secs(3600),
    );
    check(
        restarted.query(&query).await.expect("query"),
        "after restart",
    );

    // Past the retention the minute is neither answered nor kept.
    fx.advance(Duration::from_secs(3600));
    let late =
        HistoryQuery::new(Some(START), None, Some(60 * MINUTE), fx.queue.now()).expect("query");
    assert!(restarted.query(&late).await.expect("query").is_empty());
    assert_eq!(restarted.prune().await.expect("prune"), 1);
}

#[tokio::test]
async fn shutdown_writes_the_open_minute_and_late_events_join_the_next_one() {
    let fx = Fixture::new().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = history_store(&dir).await;
    let history = Arc::new(JobHistory::new(
        store.clone(),
        fx.clock.clone(),
        "replica-a".into(),
        Duration::from_secs(3600),
    ));
    fx.queue
        .set_observer(history.clone() as Arc<dyn JobObserver>);
    fx.advance(Duration::from_secs(61));
    history.flush(false).await.expect("flush");
    // An event stamped before the closed boundary counts in the open minute.
    let job = fx
        .queue
        .enqueue(vec![(spec(1), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0)
        .0;
    history.created(&[&job], START + 1_000);
    assert_eq!(history.flush(true).await.expect("flush"), 1);
    let other = JobHistory::new(
        store,
        fx.clock.clone(),
        "replica-b".into(),
        Duration::from_secs(3600),
    );
    let query = HistoryQuery::new(Some(START), None, None, fx.queue.now()).expect("query");
    let points = other.query(&query).await.expect("query");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].start, START + MINUTE);
    assert_eq!(points[0].stats.enqueued, 2);
}
