//! The queue's rules, run against the real store with a manual clock: time
//! moves only when a test moves it, so nothing here waits or races the
//! machine's load.

use std::time::Duration;

use crate::domain::{
    AttemptOutcome, CompleteReport, Detail, EntryKind, FailReport, HeartbeatLease,
    HeartbeatOutcome, JobState, LeaseToken, QueueError, Refusal, StopReason, narrate,
};
use crate::testkit::{Fixture, lease_request, spec};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn an_expired_lease_is_reaped_and_retried_after_its_backoff() {
    let fx = Fixture::new().await;
    let (job, _) = fx
        .queue
        .enqueue(vec![(spec(3), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease");
    assert_eq!(leased.len(), 1);
    fx.advance(Duration::from_millis(9_999));
    assert_eq!(
        fx.queue.reap_expired().await.expect("reap"),
        0,
        "lease still valid"
    );
    fx.advance(Duration::from_millis(1));
    assert_eq!(fx.queue.reap_expired().await.expect("reap"), 1);
    let reaped = fx.queue.get(&job.id, Detail::History).await.expect("get");
    assert_eq!(reaped.state, JobState::Retrying);
    let backoff = reaped.run_at - fx.queue.now();
    assert!(
        (1_000..=1_200).contains(&backoff),
        "first backoff is 1 s plus jitter: {backoff} ms"
    );
    assert_eq!(
        reaped.history[0].outcome,
        Some(AttemptOutcome::LeaseExpired)
    );
    assert_eq!(
        fx.queue.promote_due().await.expect("promote"),
        0,
        "not before run_at"
    );
    fx.advance(Duration::from_millis(backoff as u64));
    assert_eq!(fx.queue.promote_due().await.expect("promote"), 1);
    let again = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease");
    assert_eq!((again[0].job.attempt, again[0].job.history_seq), (2, 2));
}

#[tokio::test]
async fn backoff_grows_and_attempts_end_in_the_dead_letter_queue() {
    let fx = Fixture::new().await;
    fx.queue
        .enqueue(vec![(spec(4), "job".into())], None)
        .await
        .expect("enqueue");
    let mut waits = Vec::new();
    for _ in 0..4 {
        fx.queue.promote_due().await.expect("promote");
        let leased = fx
            .queue
            .lease(lease_request(1, secs(10)))
            .await
            .expect("lease")
            .remove(0);
        let report = FailReport {
            job_id: leased.job.id.clone(),
            lease_token: leased.lease_token.clone(),
            error: "boom".into(),
            retryable: true,
            retry_after: None,
        };
        let job = fx
            .queue
            .fail_many(vec![report])
            .await
            .expect("fail")
            .remove(0)
            .expect("fresh lease");
        if job.state == JobState::Dead {
            break;
        }
        let wait = job.run_at - fx.queue.now();
        waits.push(wait);
        fx.advance(Duration::from_millis(wait as u64));
    }
    // 1 s, 2 s, 4 s, each with at most 20% jitter; the 4th failure dead-letters.
    assert_eq!(waits.len(), 3, "{waits:?}");
    for (wait, base) in waits.iter().zip([1_000, 2_000, 4_000]) {
        assert!((base..=base * 6 / 5).contains(wait), "{waits:?}");
    }
}

#[tokio::test]
async fn a_timed_out_attempt_is_ended_by_the_reaper_despite_heartbeats() {
    let fx = Fixture::new().await;
    let mut timed = spec(2);
    timed.timeout = secs(30);
    fx.queue
        .enqueue(vec![(timed, "job".into())], None)
        .await
        .expect("enqueue");
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    let beat = || HeartbeatLease {
        job_id: leased.job.id.clone(),
        lease_token: leased.lease_token.clone(),
        progress_percent: None,
        progress_message: None,
    };
    for _ in 0..2 {
        fx.advance(secs(9));
        let outcome = fx
            .queue
            .heartbeat("w1", vec![beat()], None)
            .await
            .expect("heartbeat");
        assert!(matches!(outcome[0], HeartbeatOutcome::Continue { .. }));
    }
    fx.advance(secs(12));
    let outcome = fx
        .queue
        .heartbeat("w1", vec![beat()], None)
        .await
        .expect("heartbeat");
    assert!(matches!(
        outcome[0],
        HeartbeatOutcome::Stop {
            reason: StopReason::TimedOut,
            ..
        }
    ));
    let job = fx
        .queue
        .get(&leased.job.id, Detail::History)
        .await
        .expect("get");
    assert_eq!(job.history[0].outcome, Some(AttemptOutcome::TimedOut));
    assert_eq!(job.state, JobState::Retrying);
}

#[tokio::test]
async fn a_heartbeat_renews_for_as_long_as_the_lease_was_taken_for() {
    let fx = Fixture::new().await;
    fx.queue
        .enqueue(vec![(spec(1), "job".into())], None)
        .await
        .expect("enqueue");
    let leased = fx
        .queue
        .lease(lease_request(1, secs(600)))
        .await
        .expect("lease")
        .remove(0);
    fx.advance(secs(100));
    let beat = HeartbeatLease {
        job_id: leased.job.id.clone(),
        lease_token: leased.lease_token.clone(),
        progress_percent: Some(40),
        progress_message: Some("downloading".into()),
    };
    let outcome = fx
        .queue
        .heartbeat("w1", vec![beat], None)
        .await
        .expect("heartbeat");
    assert_eq!(
        outcome[0],
        HeartbeatOutcome::Continue {
            lease_expires_at: fx.queue.now() + 600_000
        }
    );
    // A heartbeat that reports no progress leaves it as it was.
    let quiet = HeartbeatLease {
        job_id: leased.job.id.clone(),
        lease_token: leased.lease_token.clone(),
        progress_percent: None,
        progress_message: None,
    };
    fx.queue
        .heartbeat("w1", vec![quiet], None)
        .await
        .expect("heartbeat");
    let job = fx
        .queue
        .get(&leased.job.id, Detail::Basic)
        .await
        .expect("get");
    assert_eq!(
        (job.progress_percent, job.progress_message.as_str()),
        (40, "downloading")
    );
    // An empty message clears it.
    let clear = HeartbeatLease {
        job_id: leased.job.id.clone(),
        lease_token: leased.lease_token.clone(),
        progress_percent: None,
        progress_message: Some(String::new()),
    };
    fx.queue
        .heartbeat("w1", vec![clear], Some(secs(60)))
        .await
        .expect("heartbeat");
    let job = fx
        .queue
        .get(&leased.job.id, Detail::Basic)
        .await
        .expect("get");
    assert_eq!(
        (job.progress_percent, job.progress_message.as_str()),
        (40, "")
    );
    assert_eq!(job.lease_expires_at, Some(fx.queue.now() + 60_000));
}

#[tokio::test]
async fn dependents_wait_then_run_or_are_cancelled_and_stay_so() {
    let fx = Fixture::new().await;
    let (first, _) = fx
        .queue
        .enqueue(vec![(spec(1), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    let mut dependent_spec = spec(1);
    dependent_spec.depends_on = vec![first.id.clone()];
    let (dependent, _) = fx
        .queue
        .enqueue(vec![(dependent_spec.clone(), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    assert_eq!(dependent.state, JobState::Blocked);
    // The dependency dies: the dependent is cancelled.
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    assert_eq!(leased.job.id, first.id, "the blocked job is not leasable");
    let report = FailReport {
        job_id: first.id.clone(),
        lease_token: leased.lease_token.clone(),
        error: "fatal".into(),
        retryable: false,
        retry_after: None,
    };
    fx.queue.fail_many(vec![report]).await.expect("fail");
    let cancelled = fx
        .queue
        .get(&dependent.id, Detail::History)
        .await
        .expect("get");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.history[0].kind, EntryKind::Cancelled);
    // A new job on the dead one is refused, not created cancelled.
    let refused = fx
        .queue
        .enqueue(vec![(dependent_spec, "jobs[0]".into())], None)
        .await
        .expect_err("dead dependency");
    assert!(matches!(
        refused,
        QueueError::FailedPrecondition { reason: Refusal::DependencyFailed, ref message } if message.contains("jobs[0].depends_on[0]")
    ));
    // The dependency is retried and succeeds: the dependent stays cancelled...
    fx.queue.retry(&first.id).await.expect("retry");
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    fx.queue
        .complete_many(vec![CompleteReport {
            job_id: first.id.clone(),
            lease_token: leased.lease_token.clone(),
            result: None,
        }])
        .await
        .expect("complete");
    let still = fx
        .queue
        .get(&dependent.id, Detail::Basic)
        .await
        .expect("get");
    assert_eq!(still.state, JobState::Cancelled);
    // ...until it is retried itself, and then it runs.
    let retried = fx.queue.retry(&dependent.id).await.expect("retry");
    assert_eq!(retried.state, JobState::Queued);
}

#[tokio::test]
async fn a_retried_dependent_waits_while_its_dependency_has_not_succeeded() {
    let fx = Fixture::new().await;
    let (first, _) = fx
        .queue
        .enqueue(vec![(spec(1), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    let mut dependent_spec = spec(1);
    dependent_spec.depends_on = vec![first.id.clone()];
    let (dependent, _) = fx
        .queue
        .enqueue(vec![(dependent_spec, "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    fx.queue
        .cancel(&dependent.id, "not now".into())
        .await
        .expect("cancel");
    let retried = fx.queue.retry(&dependent.id).await.expect("retry");
    assert_eq!(retried.state, JobState::Blocked);
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    fx.queue
        .complete_many(vec![CompleteReport {
            job_id: first.id.clone(),
            lease_token: leased.lease_token,
            result: None,
        }])
        .await
        .expect("complete");
    let released = fx
        .queue
        .get(&dependent.id, Detail::Basic)
        .await
        .expect("get");
    assert_eq!(released.state, JobState::Queued);
}

#[tokio::test]
async fn attempt_seqs_never_repeat_across_releases_and_retries() {
    let fx = Fixture::new().await;
    let (job, _) = fx
        .queue
        .enqueue(vec![(spec(3), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    fx.queue
        .release_many(vec![(job.id.clone(), leased.lease_token)])
        .await
        .expect("release");
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    fx.queue
        .complete_many(vec![CompleteReport {
            job_id: job.id.clone(),
            lease_token: leased.lease_token,
            result: Some("{\"ok\":true}".into()),
        }])
        .await
        .expect("complete");
    let done = fx.queue.get(&job.id, Detail::History).await.expect("get");
    assert_eq!(
        done.result.as_deref(),
        Some("{\"ok\":true}"),
        "a success stores its result"
    );
    fx.queue.retry(&job.id).await.expect("retry");
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    assert_eq!(leased.job.attempt, 1, "a requeue starts the count again");
    let job = fx.queue.get(&job.id, Detail::History).await.expect("get");
    let attempts: Vec<(i32, i32, Option<AttemptOutcome>)> = job
        .attempts()
        .map(|entry| (entry.seq, entry.number, entry.outcome))
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, 1, Some(AttemptOutcome::Released)),
            (2, 1, Some(AttemptOutcome::Succeeded)),
            (4, 1, None),
        ]
    );
    assert_eq!(job.history[2].kind, EntryKind::Requeued);
    assert_eq!(job.result, None, "a requeue clears the result");
}

#[tokio::test]
async fn the_log_tells_every_attempt_the_history_holds() {
    let fx = Fixture::new().await;
    let (job, _) = fx
        .queue
        .enqueue(vec![(spec(3), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    for _ in 0..2 {
        fx.queue.promote_due().await.expect("promote");
        let leased = fx
            .queue
            .lease(lease_request(1, secs(10)))
            .await
            .expect("lease")
            .remove(0);
        fx.queue
            .fail_many(vec![FailReport {
                job_id: job.id.clone(),
                lease_token: leased.lease_token,
                error: "boom".into(),
                retryable: true,
                retry_after: Some(Duration::ZERO),
            }])
            .await
            .expect("fail");
    }
    let job = fx.queue.get(&job.id, Detail::History).await.expect("get");
    let told = narrate(&job);
    let texts: Vec<&str> = told.iter().map(|line| line.message.as_str()).collect();
    assert_eq!(told.len(), 5, "{texts:?}");
    assert!(
        texts[1].starts_with("attempt 1 of 3 leased by worker w1"),
        "{texts:?}"
    );
    assert!(
        texts[2].starts_with("attempt 1 failed: boom; queued again"),
        "{texts:?}"
    );
    assert!(texts[4].starts_with("attempt 2 failed: boom"), "{texts:?}");
}

#[tokio::test]
async fn a_request_id_returns_the_first_calls_jobs() {
    let fx = Fixture::new().await;
    let first = fx
        .queue
        .enqueue(vec![(spec(1), "job".into())], Some("req-1"))
        .await
        .expect("enqueue");
    let again = fx
        .queue
        .enqueue(vec![(spec(1), "job".into())], Some("req-1"))
        .await
        .expect("enqueue");
    assert_eq!(first[0].0.id, again[0].0.id);
    assert!(!first[0].1 && again[0].1);
    let mut other = spec(1);
    other.job_type = "other".into();
    let reused = fx
        .queue
        .enqueue(vec![(other, "job".into())], Some("req-1"))
        .await
        .expect_err("reused");
    assert!(matches!(
        reused,
        QueueError::FailedPrecondition {
            reason: Refusal::RequestIdReused,
            ..
        }
    ));
}

#[tokio::test]
async fn concurrent_enqueues_are_committed_together_and_each_stored_once() {
    let fx = Fixture::new().await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..64 {
        let queue = fx.queue.clone();
        calls.spawn(async move {
            let mut unique = spec(1);
            unique.unique_key = Some(format!("key-{}", n % 16));
            queue.enqueue(vec![(unique, "job".into())], None).await
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(call) = calls.join_next().await {
        let (job, _) = call.expect("task").expect("enqueue").remove(0);
        ids.insert(job.id);
    }
    assert_eq!(ids.len(), 16, "one job per unique key");
    let leased = fx
        .queue
        .lease(lease_request(100, secs(10)))
        .await
        .expect("lease");
    assert_eq!(leased.len(), 16);
}

#[tokio::test]
async fn a_lease_never_hands_out_more_payload_than_fits() {
    let fx = Fixture::new().await;
    let mut big = spec(1);
    big.payload_bytes = 600_000;
    let specs = (0..10)
        .map(|i| (big.clone(), format!("jobs[{i}]")))
        .collect();
    fx.queue.enqueue(specs, None).await.expect("enqueue");
    let mut request = lease_request(10, secs(10));
    request.max_payload_bytes = 2_000_000;
    assert_eq!(
        fx.queue.lease(request.clone()).await.expect("lease").len(),
        3
    );
    request.max_payload_bytes = 500_000;
    assert!(
        fx.queue.lease(request).await.expect("lease").is_empty(),
        "none fits alone"
    );
    let _ = LeaseToken::generate();
}

/// Waits (at most a generous while) until `count` LeaseJobs calls are parked.
async fn until_parked(fx: &Fixture, count: usize) {
    let patience = tokio::time::Instant::now() + secs(60);
    while fx.queue.parked_calls() != count {
        assert!(
            tokio::time::Instant::now() < patience,
            "{} calls parked, expected {count}",
            fx.queue.parked_calls()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_waiting_lease_call_is_handed_the_job_enqueued_for_it() {
    let fx = Fixture::new().await;
    let mut request = lease_request(4, secs(10));
    request.wait = secs(600);
    let queue = fx.queue.clone();
    let waiting = tokio::spawn(async move { queue.lease(request).await });
    until_parked(&fx, 1).await;
    let (job, existed) = fx
        .queue
        .enqueue(vec![(spec(3), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    assert!(!existed);
    assert_eq!(
        job.state,
        JobState::Queued,
        "the enqueue answers the job as enqueued"
    );
    let handed = waiting.await.expect("join").expect("lease");
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].job.id, job.id);
    assert_eq!(handed[0].job.state, JobState::Running);
    assert_eq!(fx.queue.parked_calls(), 0);
    let stored = fx.queue.get(&job.id, Detail::Basic).await.expect("get");
    assert_eq!(stored.state, JobState::Running);
    assert_eq!(stored.lease_token.as_ref(), Some(&handed[0].lease_token));
    assert_eq!(stored.worker_id.as_deref(), Some("w1"));
}

#[tokio::test]
async fn a_waiting_call_for_other_types_is_left_waiting_and_leaves_when_dropped() {
    let fx = Fixture::new().await;
    let mut request = lease_request(4, secs(10));
    request.wait = secs(600);
    request.worker.types = vec!["other".into()];
    let queue = fx.queue.clone();
    let waiting = tokio::spawn(async move { queue.lease(request).await });
    until_parked(&fx, 1).await;
    let (job, _) = fx
        .queue
        .enqueue(vec![(spec(3), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    assert_eq!(
        fx.queue.parked_calls(),
        1,
        "the call for other types still waits"
    );
    let stored = fx.queue.get(&job.id, Detail::Basic).await.expect("get");
    assert_eq!(stored.state, JobState::Queued);
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(
        fx.queue.parked_calls(),
        0,
        "a call that went away leaves the list"
    );
    // Nothing waits now: the next job is simply queued.
    let (next, _) = fx
        .queue
        .enqueue(vec![(spec(3), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    let stored = fx.queue.get(&next.id, Detail::Basic).await.expect("get");
    assert_eq!(stored.state, JobState::Queued);
}

#[tokio::test]
async fn jobs_leased_for_a_call_that_went_away_are_handed_back() {
    let fx = Fixture::new().await;
    let (job, _) = fx
        .queue
        .enqueue(vec![(spec(3), "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    let leased = fx
        .queue
        .lease(lease_request(1, secs(10)))
        .await
        .expect("lease")
        .remove(0);
    let (call, handed) = crate::domain::queue::Parked::for_test(lease_request(1, secs(10)));
    drop(handed);
    fx.queue
        .hand_over(vec![call], vec![vec![(leased.job, leased.lease_token)]])
        .await;
    let stored = fx.queue.get(&job.id, Detail::History).await.expect("get");
    assert_eq!(stored.state, JobState::Queued, "released, not left running");
    assert_eq!(stored.attempt, 0, "a release does not count as an attempt");
    assert_eq!(stored.history[0].outcome, Some(AttemptOutcome::Released));
}

#[tokio::test]
async fn a_delay_counts_from_the_creation_of_the_job() {
    let fx = Fixture::new().await;
    let mut delayed = spec(3);
    delayed.delay = Some(secs(2));
    let (job, _) = fx
        .queue
        .enqueue(vec![(delayed, "job".into())], None)
        .await
        .expect("enqueue")
        .remove(0);
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(
        job.run_at - job.created_at,
        2_000,
        "exactly the delay after creation"
    );
    fx.advance(Duration::from_millis(1_999));
    assert_eq!(fx.queue.promote_due().await.expect("promote"), 0);
    fx.advance(Duration::from_millis(1));
    assert_eq!(fx.queue.promote_due().await.expect("promote"), 1);
}
