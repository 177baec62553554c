//! Many jobs, many workers: every job is completed exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use jobq_tests::pb::{JobSpec, JobState, LeaseJobsRequest, ListJobsRequest};
use jobq_tests::{JobqClient, LeasedJobExt, TestServer, bounded, duration, lease_request, spec};
use serde_json::json;
use tokio::task::JoinSet;

const JOBS: usize = 2000;
const ENQUEUE_BATCH: usize = 500;
const WORKERS: usize = 8;
const LEASE_BATCH: i32 = 10;

/// What all workers share: which jobs were leased, what went wrong, how many completed.
#[derive(Default)]
struct Ledger {
    leased: Mutex<HashSet<String>>,
    violations: Mutex<Vec<String>>,
    completed: AtomicUsize,
}

impl Ledger {
    fn violation(&self, what: String) {
        if let Ok(mut violations) = self.violations.lock() {
            violations.push(what);
        }
    }

    fn leased_count(&self) -> usize {
        self.leased
            .lock()
            .map(|leased| leased.len())
            .unwrap_or(usize::MAX)
    }
}

/// Leases batches (waiting up to 1 s for work) and completes each job, until
/// every job has been leased by someone.
async fn worker(client: JobqClient, worker_id: String, ledger: Arc<Ledger>) -> Result<()> {
    while ledger.leased_count() < JOBS {
        // A long lease: a busy machine must not make a lease run out mid-batch.
        let request = LeaseJobsRequest {
            wait: Some(duration(Duration::from_secs(1))),
            lease_duration: Some(duration(Duration::from_secs(120))),
            ..lease_request(&worker_id, LEASE_BATCH)
        };
        let leased = client.lease(request).await?;
        ensure!(
            leased.len() <= LEASE_BATCH as usize,
            "asked for {LEASE_BATCH} jobs, got {}",
            leased.len()
        );
        for job in leased {
            let first_time = ledger
                .leased
                .lock()
                .map_err(|_| anyhow!("ledger poisoned"))?
                .insert(job.id().to_owned());
            if !first_time {
                ledger.violation(format!(
                    "job {} leased a second time (by {worker_id})",
                    job.id()
                ));
            }
            match client.try_complete(job.lease(), None).await {
                Ok(done) if done.state() == JobState::Succeeded => {
                    ledger.completed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(done) => ledger.violation(format!(
                    "CompleteJob left job {} {:?}",
                    job.id(),
                    done.state()
                )),
                Err(status) => ledger.violation(format!(
                    "CompleteJob of {} by {worker_id} refused: {status:?}",
                    job.id()
                )),
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_jobs_eight_workers_every_job_completed_exactly_once() -> Result<()> {
    let server = TestServer::start().await?;
    let producer = server.client();
    let ledger = Arc::new(Ledger::default());

    // Workers start first, so leasing runs while batches are still coming in.
    let mut workers = JoinSet::new();
    for n in 0..WORKERS {
        let client = server.connect().await?;
        workers.spawn(worker(client, format!("worker-{n}"), Arc::clone(&ledger)));
    }

    let mut enqueued = HashSet::new();
    for batch in 0..JOBS / ENQUEUE_BATCH {
        let specs = (0..ENQUEUE_BATCH)
            .map(|i| JobSpec {
                payload: Some(jobq_tests::json(json!({ "n": batch * ENQUEUE_BATCH + i }))),
                ..spec("bulk")
            })
            .collect();
        enqueued.extend(
            producer
                .enqueue_batch(specs)
                .await?
                .into_iter()
                .map(|job| job.id),
        );
    }
    assert_eq!(enqueued.len(), JOBS, "every enqueued job has its own id");

    bounded(
        Duration::from_secs(240),
        "the 8 workers draining 2,000 jobs",
        async {
            while let Some(joined) = workers.join_next().await {
                joined.context("worker task panicked")??;
            }
            anyhow::Ok(())
        },
    )
    .await??;

    let violations = ledger
        .violations
        .lock()
        .map_err(|_| anyhow!("ledger poisoned"))?
        .clone();
    ensure!(
        violations.is_empty(),
        "{} violations, first ones: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    assert_eq!(
        ledger.completed.load(Ordering::SeqCst),
        JOBS,
        "accepted CompleteJob calls"
    );
    let leased = ledger
        .leased
        .lock()
        .map_err(|_| anyhow!("ledger poisoned"))?
        .clone();
    assert!(
        leased == enqueued,
        "the leased ids are not the enqueued ids"
    );

    let stats = producer.stats().await?;
    let default_queue = stats
        .queues
        .iter()
        .find(|q| q.queue == "default")
        .context("no stats for the default queue")?;
    let counts: Vec<_> = default_queue
        .counts
        .iter()
        .map(|c| (c.state(), c.count))
        .collect();
    assert_eq!(
        counts,
        vec![(JobState::Succeeded, JOBS as i64)],
        "GetQueueStats of the default queue"
    );

    let listed = producer
        .list_all(ListJobsRequest {
            states: vec![JobState::Succeeded as i32],
            page_size: 500,
            ..Default::default()
        })
        .await?;
    let listed: HashSet<_> = listed.into_iter().map(|job| job.id).collect();
    assert!(
        listed == enqueued,
        "ListJobs(succeeded) shows {} jobs, not exactly the {JOBS} enqueued",
        listed.len()
    );
    Ok(())
}
