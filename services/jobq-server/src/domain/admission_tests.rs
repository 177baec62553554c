//! Queue controls and concurrency keys through the queue and the real store,
//! with a manual clock: what a lease may take, and what it spends.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{
    Detail, JobSpec, JobState, LeasedJob, MissedTicks, QueueControls, QueueEdit, ScheduleDefinition,
};
use crate::testkit::{Fixture, lease_request, spec};

fn in_queue(queue: &str) -> JobSpec {
    JobSpec {
        queue: queue.into(),
        ..spec(3)
    }
}

fn keyed(key: &str, limit: i32) -> JobSpec {
    JobSpec {
        concurrency_key: Some(key.into()),
        concurrency_limit: limit,
        ..spec(3)
    }
}

async fn enqueue(fx: &Fixture, specs: Vec<JobSpec>) {
    let specs = specs
        .into_iter()
        .map(|spec| (spec, "job".to_owned()))
        .collect();
    fx.queue.enqueue(specs, None).await.expect("enqueue");
}

async fn set(fx: &Fixture, queue: &str, edit: impl Fn(&mut QueueControls) + Send + Sync + 'static) {
    fx.queue
        .update_queue(queue.into(), edit)
        .await
        .expect("update queue");
}

async fn lease(fx: &Fixture, queues: &[&str], max_jobs: u64) -> Vec<LeasedJob> {
    let mut request = lease_request(max_jobs, Duration::from_secs(60));
    request.worker.queues = queues.iter().map(|queue| (*queue).to_owned()).collect();
    fx.queue.lease(request).await.expect("lease")
}

#[tokio::test]
async fn a_rate_limit_admits_its_burst_then_one_job_per_token() {
    let fx = Fixture::new().await;
    set(&fx, "default", |q| {
        q.rate_limit_per_second = 2.0;
        q.rate_burst = 1.0;
    })
    .await;
    enqueue(&fx, (0..10).map(|_| spec(3)).collect()).await;
    assert_eq!(lease(&fx, &["default"], 10).await.len(), 1, "the burst");
    assert_eq!(lease(&fx, &["default"], 10).await.len(), 0);
    fx.advance(Duration::from_millis(499));
    assert_eq!(
        lease(&fx, &["default"], 10).await.len(),
        0,
        "half a token less one ms"
    );
    fx.advance(Duration::from_millis(1));
    assert_eq!(lease(&fx, &["default"], 10).await.len(), 1);
    // Ten seconds at 2/s, a lease every 100 ms: 20 jobs, however often asked.
    let mut started = 0;
    for _ in 0..100 {
        fx.advance(Duration::from_millis(100));
        started += lease(&fx, &["default"], 10).await.len();
        if started == 8 {
            break;
        }
    }
    assert_eq!(started, 8, "the rest of the ten jobs, at the rate");
}

#[tokio::test]
async fn one_lease_over_a_limited_and_an_open_queue_keeps_each_to_its_own_allowance() {
    let fx = Fixture::new().await;
    set(&fx, "slow", |q| {
        q.rate_limit_per_second = 1.0;
    })
    .await;
    set(&fx, "two", |q| q.concurrency_limit = 2).await;
    enqueue(&fx, (0..5).map(|_| in_queue("slow")).collect()).await;
    enqueue(&fx, (0..5).map(|_| in_queue("two")).collect()).await;
    enqueue(&fx, (0..5).map(|_| in_queue("open")).collect()).await;
    let leased = lease(&fx, &["slow", "two", "open"], 15).await;
    let from = |queue: &str| leased.iter().filter(|job| job.job.queue == queue).count();
    assert_eq!((from("slow"), from("two"), from("open")), (1, 2, 5));
}

#[tokio::test]
async fn a_concurrency_limit_counts_running_jobs_and_frees_room_as_they_end() {
    let fx = Fixture::new().await;
    set(&fx, "default", |q| q.concurrency_limit = 2).await;
    enqueue(&fx, (0..5).map(|_| spec(3)).collect()).await;
    let first = lease(&fx, &["default"], 5).await;
    assert_eq!(first.len(), 2);
    assert!(lease(&fx, &["default"], 5).await.is_empty());
    fx.complete(&first[0]).await;
    assert_eq!(lease(&fx, &["default"], 5).await.len(), 1);
}

#[tokio::test]
async fn a_paused_queue_leases_nothing_until_resumed() {
    let fx = Fixture::new().await;
    set(&fx, "default", |q| q.paused = true).await;
    enqueue(&fx, vec![spec(3)]).await;
    assert!(lease(&fx, &["default"], 5).await.is_empty());
    set(&fx, "default", |q| q.paused = false).await;
    assert_eq!(lease(&fx, &["default"], 5).await.len(), 1);
}

#[tokio::test]
async fn a_concurrency_key_runs_its_jobs_one_at_a_time_and_holds_back_no_one_else() {
    let fx = Fixture::new().await;
    enqueue(
        &fx,
        vec![
            keyed("channel:a", 1),
            keyed("channel:a", 1),
            keyed("channel:a", 1),
            spec(3),
            keyed("host:b", 2),
            keyed("host:b", 2),
            keyed("host:b", 2),
        ],
    )
    .await;
    let first = lease(&fx, &["default"], 10).await;
    let with = |jobs: &[LeasedJob], key: Option<&str>| {
        jobs.iter()
            .filter(|job| job.job.concurrency_key.as_deref() == key)
            .count()
    };
    assert_eq!(first.len(), 4);
    assert_eq!(with(&first, Some("channel:a")), 1);
    assert_eq!(with(&first, Some("host:b")), 2);
    assert_eq!(with(&first, None), 1);
    assert!(
        lease(&fx, &["default"], 10).await.is_empty(),
        "every key is at its limit"
    );
    // The jobs waiting on their key used no attempt.
    let page = fx
        .queue
        .list(
            &crate::domain::JobFilter::default(),
            crate::domain::PageRequest {
                limit: 100,
                after: None,
            },
            Detail::Basic,
        )
        .await
        .expect("list");
    for job in page.jobs.iter().filter(|job| job.state == JobState::Queued) {
        assert_eq!(job.attempt, 0, "{} waited on its key", job.id);
    }
    let channel_a = first
        .iter()
        .find(|job| job.job.concurrency_key.as_deref() == Some("channel:a"))
        .expect("one of channel:a");
    fx.complete(channel_a).await;
    let next = lease(&fx, &["default"], 10).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].job.concurrency_key.as_deref(), Some("channel:a"));
    assert_eq!(
        fx.queue.running_with_key("channel:a").await.expect("count"),
        1
    );
}

#[tokio::test]
async fn a_skipping_schedule_enqueues_nothing_for_ticks_reached_far_too_late() {
    let fx = Fixture::new().await;
    for (name, missed_ticks) in [("once", MissedTicks::RunOnce), ("skip", MissedTicks::Skip)] {
        fx.queue
            .put_schedule(ScheduleDefinition {
                name: name.into(),
                cron: "0 * * * * *".into(),
                time_zone: String::new(),
                template: spec(1),
                paused: false,
                missed_ticks,
            })
            .await
            .expect("schedule");
    }
    // On time: both fire.
    fx.advance(Duration::from_secs(60));
    let fired = fx.queue.fire_due_schedules().await.expect("fire");
    assert_eq!(fired.len(), 2);
    // Five ticks pass unseen (the scheduler stalled): one job, or none.
    fx.advance(Duration::from_secs(5 * 60 + 1));
    let fired = fx.queue.fire_due_schedules().await.expect("fire");
    let names: Vec<_> = fired
        .iter()
        .filter_map(|job| job.schedule_name.as_deref())
        .collect();
    assert_eq!(names, ["once"]);
    // Both plan the next tick after now, and fire on it.
    let schedules = fx.queue.schedules().await.expect("schedules");
    for schedule in &schedules {
        assert!(schedule.next_run_at > fx.queue.now(), "{}", schedule.name);
    }
    fx.advance(Duration::from_secs(60));
    assert_eq!(fx.queue.fire_due_schedules().await.expect("fire").len(), 2);
}

#[tokio::test]
async fn concurrent_changes_of_different_controls_all_apply() {
    let fx = Fixture::new().await;
    for round in 0..10 {
        let queue = format!("q{round}");
        let edits: Vec<QueueEdit> = vec![
            Arc::new(|q| q.paused = true),
            Arc::new(|q| q.concurrency_limit = 3),
            Arc::new(|q| q.rate_limit_per_second = 2.0),
            Arc::new(|q| q.rate_burst = 4.0),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for edit in edits {
            let (queue_handle, name) = (fx.queue.clone(), queue.clone());
            tasks.spawn(async move { queue_handle.update_queue(name, move |q| edit(q)).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("update");
        }
        let stored = fx
            .queue
            .queues()
            .await
            .expect("queues")
            .into_iter()
            .find(|q| q.name == queue)
            .expect("the queue");
        assert_eq!(
            (
                stored.paused,
                stored.concurrency_limit,
                stored.rate_limit_per_second,
                stored.rate_burst
            ),
            (true, 3, 2.0, 4.0),
            "round {round}"
        );
    }
}
