//! Reports that ride on a lease (`JobQueue::report_and_lease`): recorded in
//! the lease's own transaction, before it, each on its own; run against the
//! real store with a manual clock.

use std::time::Duration;

use crate::domain::{
    CompleteReport, Detail, FailReport, JobId, JobSpec, JobState, LeaseToken, LeasedJob,
    QueueError, Reports,
};
use crate::testkit::{Fixture, lease_request, spec};

async fn enqueue(fx: &Fixture, specs: Vec<JobSpec>) -> Vec<JobId> {
    let specs = specs
        .into_iter()
        .enumerate()
        .map(|(index, spec)| (spec, format!("jobs[{index}]")))
        .collect();
    fx.queue
        .enqueue(specs, None)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|(job, _)| job.id)
        .collect()
}

fn completion(leased: &LeasedJob) -> CompleteReport {
    CompleteReport {
        job_id: leased.job.id.clone(),
        lease_token: leased.lease_token.clone(),
        result: Some("{\"ok\":true}".into()),
    }
}

fn failure(leased: &LeasedJob) -> FailReport {
    FailReport {
        job_id: leased.job.id.clone(),
        lease_token: leased.lease_token.clone(),
        error: "boom".into(),
        retryable: true,
        retry_after: None,
    }
}

async fn state(fx: &Fixture, id: &JobId) -> JobState {
    fx.queue.get(id, Detail::Basic).await.expect("get").state
}

#[tokio::test]
async fn reports_are_recorded_each_on_its_own_and_the_next_jobs_leased_in_one_call() {
    let fx = Fixture::new().await;
    let ids = enqueue(&fx, vec![spec(3), spec(3), spec(3), spec(3)]).await;
    let leased = fx.lease(2).await;
    assert_eq!(leased.len(), 2);
    let stale = CompleteReport {
        job_id: leased[0].job.id.clone(),
        lease_token: LeaseToken::from_string("not-the-token".into()),
        result: None,
    };
    let done = fx
        .queue
        .report_and_lease(
            Reports {
                completes: vec![stale, completion(&leased[0])],
                fails: vec![failure(&leased[1])],
            },
            lease_request(5, Duration::from_secs(60)),
        )
        .await
        .expect("report and lease");

    assert!(
        matches!(&done.completed[0], Err(QueueError::StaleLease { job_id }) if job_id == leased[0].job.id.as_str()),
        "a report under another token is refused: {:?}",
        done.completed[0]
    );
    let completed = done.completed[1].as_ref().expect("completed");
    assert_eq!(completed.state, JobState::Succeeded);
    let failed = done.failed[0].as_ref().expect("failed");
    assert_eq!(failed.state, JobState::Retrying);
    // The two jobs still queued, not the one waiting for its retry.
    let mut next: Vec<&str> = done.leased.iter().map(|job| job.job.id.as_str()).collect();
    next.sort_unstable();
    let mut queued = vec![ids[2].as_str(), ids[3].as_str()];
    queued.sort_unstable();
    assert_eq!(next, queued);
    assert!(
        done.leased
            .iter()
            .all(|job| job.job.state == JobState::Running)
    );
    let stored = fx
        .queue
        .get(&leased[0].job.id, Detail::Full)
        .await
        .expect("get");
    assert_eq!(stored.state, JobState::Succeeded);
    assert_eq!(stored.result.as_deref(), Some("{\"ok\":true}"));
}

#[tokio::test]
async fn a_report_frees_its_concurrency_key_for_the_lease_it_rides_on() {
    let fx = Fixture::new().await;
    let keyed = || JobSpec {
        concurrency_key: Some("channel-1".into()),
        concurrency_limit: 1,
        ..spec(1)
    };
    let ids = enqueue(&fx, vec![keyed(), keyed()]).await;
    let first = fx.lease(2).await;
    assert_eq!(first.len(), 1, "the key lets one run at a time");
    let done = fx
        .queue
        .report_and_lease(
            Reports {
                completes: vec![completion(&first[0])],
                fails: Vec::new(),
            },
            lease_request(2, Duration::from_secs(60)),
        )
        .await
        .expect("report and lease");
    assert!(done.completed[0].is_ok());
    assert_eq!(done.leased.len(), 1, "the report ran before the lease");
    assert_eq!(done.leased[0].job.id, ids[1]);
}

#[tokio::test]
async fn a_report_sent_again_with_a_lease_is_answered_as_the_first() {
    let fx = Fixture::new().await;
    enqueue(&fx, vec![spec(1)]).await;
    let leased = fx.lease(1).await.remove(0);
    fx.complete(&leased).await;
    let done = fx
        .queue
        .report_and_lease(
            Reports {
                completes: vec![completion(&leased)],
                fails: Vec::new(),
            },
            lease_request(1, Duration::from_secs(60)),
        )
        .await
        .expect("report and lease");
    let again = done.completed[0].as_ref().expect("accepted again");
    assert_eq!(again.state, JobState::Succeeded);
    assert!(done.leased.is_empty());
}

#[tokio::test]
async fn reports_are_committed_before_the_lease_waits_for_work() {
    let fx = Fixture::new().await;
    enqueue(&fx, vec![spec(1)]).await;
    let leased = fx.lease(1).await.remove(0);
    let mut waiting = lease_request(1, Duration::from_secs(60));
    waiting.wait = Duration::from_secs(60);
    let queue = fx.queue.clone();
    let report = Reports {
        completes: vec![completion(&leased)],
        fails: Vec::new(),
    };
    let call = tokio::spawn(async move { queue.report_and_lease(report, waiting).await });

    // The report is recorded while the call still waits for a job.
    let recorded = tokio::time::timeout(Duration::from_secs(60), async {
        while state(&fx, &leased.job.id).await != JobState::Succeeded {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        recorded.is_ok(),
        "the report was not recorded while waiting"
    );
    assert!(!call.is_finished());

    let later = enqueue(&fx, vec![spec(1)]).await;
    let done = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call answered once a job came")
        .expect("task")
        .expect("report and lease");
    assert_eq!(
        done.completed[0].as_ref().expect("completed").state,
        JobState::Succeeded
    );
    assert_eq!(done.leased.len(), 1);
    assert_eq!(done.leased[0].job.id, later[0]);
}
