//! What workers report: successes, failures and released jobs, applied in
//! batches (one transaction for all the reports of a call, and the call's
//! next lease when the reports come with one).

use std::time::Duration;

use super::JobQueue;
use super::leasing::LeaseRequest;
use crate::domain::Applied;
use crate::domain::clock::Millis;
use crate::domain::error::{QueueError, QueueResult};
use crate::domain::job::{AttemptOutcome, Job, JobId, LeaseToken, LeasedJob};
use crate::domain::store::{Detail, JobChange, Leased};
use crate::domain::transitions;

/// A success report.
#[derive(Debug, Clone)]
pub struct CompleteReport {
    /// Job id.
    pub job_id: JobId,
    /// Lease token.
    pub lease_token: LeaseToken,
    /// JSON result.
    pub result: Option<String>,
}

/// A failure report.
#[derive(Debug, Clone)]
pub struct FailReport {
    /// Job id.
    pub job_id: JobId,
    /// Lease token.
    pub lease_token: LeaseToken,
    /// Error text.
    pub error: String,
    /// May be retried.
    pub retryable: bool,
    /// Wait this long instead of the backoff.
    pub retry_after: Option<Duration>,
}

/// Reports a worker sends along with its next lease.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    /// Successes.
    pub completes: Vec<CompleteReport>,
    /// Failed attempts.
    pub fails: Vec<FailReport>,
}

/// What [`JobQueue::report_and_lease`] did: one result per report, in order,
/// and the jobs leased.
#[derive(Debug)]
pub struct ReportedAndLeased {
    /// One per success report.
    pub completed: Vec<QueueResult<Job>>,
    /// One per failure report.
    pub failed: Vec<QueueResult<Job>>,
    /// The jobs now leased to the worker.
    pub leased: Vec<LeasedJob>,
}

/// The leases the reports name and the changes they make.
type ReportChanges = (Vec<(JobId, LeaseToken)>, Vec<(JobId, JobChange)>);

fn complete_changes(reports: Vec<CompleteReport>, now: Millis) -> ReportChanges {
    reports
        .into_iter()
        .map(|report| {
            let CompleteReport {
                job_id,
                lease_token,
                result,
            } = report;
            let lease = (job_id.clone(), lease_token.clone());
            let change: JobChange = Box::new(move |job| {
                transitions::complete(job, &lease_token, result.clone(), now).map(Some)
            });
            (lease, (job_id, change))
        })
        .unzip()
}

fn fail_changes(reports: Vec<FailReport>, now: Millis) -> ReportChanges {
    reports
        .into_iter()
        .map(|report| {
            let FailReport {
                job_id,
                lease_token,
                error,
                retryable,
                retry_after,
            } = report;
            let lease = (job_id.clone(), lease_token.clone());
            let jitter = rand::random::<f64>();
            let change: JobChange = Box::new(move |job| {
                transitions::fail(
                    job,
                    &lease_token,
                    error.clone(),
                    retryable,
                    retry_after,
                    now,
                    jitter,
                )
                .map(Some)
            });
            (lease, (job_id, change))
        })
        .unzip()
}

/// The ending a repeated success report would have made.
fn completed_alike(outcome: AttemptOutcome) -> bool {
    outcome == AttemptOutcome::Succeeded
}

/// The endings a repeated failure report would have made.
fn failed_alike(outcome: AttemptOutcome) -> bool {
    matches!(outcome, AttemptOutcome::Failed | AttemptOutcome::Cancelled)
}

impl JobQueue {
    /// Records many successes in one transaction; one result per report, in order.
    pub async fn complete_many(
        &self,
        reports: Vec<CompleteReport>,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let (leases, changes) = complete_changes(reports, self.now());
        let results = self.apply(changes).await?;
        self.accept_repeats(results, &leases, completed_alike).await
    }

    /// Records many failed attempts in one transaction; one result per report, in order.
    pub async fn fail_many(&self, reports: Vec<FailReport>) -> QueueResult<Vec<QueueResult<Job>>> {
        let (leases, changes) = fail_changes(reports, self.now());
        let results = self.apply(changes).await?;
        self.accept_repeats(results, &leases, failed_alike).await
    }

    /// Records a worker's reports and leases its next jobs in one
    /// transaction: the reports first (the slots and concurrency keys they
    /// free are free for the lease), each succeeding or failing on its own.
    /// When that leases nothing and the request may wait, it then waits as
    /// [`JobQueue::lease`] does, the reports already committed. A server
    /// shutting down still records reports but leases nothing.
    pub async fn report_and_lease(
        &self,
        reports: Reports,
        request: LeaseRequest,
    ) -> QueueResult<ReportedAndLeased> {
        let now = self.now();
        let (complete_leases, mut changes) = complete_changes(reports.completes, now);
        let (fail_leases, fail_changes) = fail_changes(reports.fails, now);
        changes.extend(fail_changes);
        let leasing = self.refuse_if_shutting_down().is_ok();
        let lease = if leasing {
            self.touch_worker(&request.worker).await;
            self.lease_plan(&request).await?
        } else {
            None
        };
        let (outcomes, leased) = match lease {
            Some((query, start)) => self.store.update_and_lease(changes, query, start).await?,
            None => (self.store.update_jobs(changes).await?, Leased::default()),
        };
        let mut results = self.after_applied(outcomes).await;
        let failed = results.split_off(complete_leases.len());
        let completed = self
            .accept_repeats(results, &complete_leases, completed_alike)
            .await?;
        let failed = self
            .accept_repeats(failed, &fail_leases, failed_alike)
            .await?;
        let mut leased = self.grant(leased.jobs, now).await;
        if leased.is_empty() && leasing && !request.wait.is_zero() {
            leased = self.lease(request).await?;
        }
        Ok(ReportedAndLeased {
            completed,
            failed,
            leased,
        })
    }

    /// A report sent again (its answer was lost) finds its lease ended, by
    /// itself: it is answered as the first was, not refused as stale, so a
    /// worker can retry reports safely. `same` says which ending the report
    /// would have made.
    async fn accept_repeats(
        &self,
        results: Vec<QueueResult<Job>>,
        leases: &[(JobId, LeaseToken)],
        same: impl Fn(AttemptOutcome) -> bool,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let mut answered = Vec::with_capacity(results.len());
        for (result, (job_id, token)) in results.into_iter().zip(leases) {
            answered.push(match result {
                Err(QueueError::StaleLease { .. }) => {
                    match self.store.attempt_outcome(job_id, token).await? {
                        Some(outcome) if same(outcome) => self.get(job_id, Detail::Basic).await,
                        _ => Err(QueueError::StaleLease {
                            job_id: job_id.to_string(),
                        }),
                    }
                }
                other => other,
            });
        }
        Ok(answered)
    }

    /// Hands leased jobs back in one transaction; one result per lease, in order.
    pub async fn release_many(
        &self,
        leases: Vec<(JobId, LeaseToken)>,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let now = self.now();
        let changes = leases
            .into_iter()
            .map(|(job_id, lease_token)| {
                let change: JobChange =
                    Box::new(move |job| transitions::release(job, &lease_token, now).map(Some));
                (job_id, change)
            })
            .collect();
        self.apply(changes).await
    }

    /// Applies changes in one transaction, then their after-commit effects.
    pub(super) async fn apply(
        &self,
        changes: Vec<(JobId, JobChange)>,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let outcomes = self.store.update_jobs(changes).await?;
        Ok(self.after_applied(outcomes).await)
    }

    /// The after-commit effects of committed changes; the jobs they left.
    async fn after_applied(&self, outcomes: Vec<QueueResult<Applied>>) -> Vec<QueueResult<Job>> {
        let applied: Vec<_> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .cloned()
            .collect();
        self.after_changes(&applied).await;
        outcomes
            .into_iter()
            .map(|outcome| outcome.map(|applied| applied.job))
            .collect()
    }

    /// Applies one change.
    pub(super) async fn apply_one(&self, id: &JobId, change: JobChange) -> QueueResult<Job> {
        self.apply(vec![(id.clone(), change)])
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(QueueError::Storage(
                    "a batch of one answered nothing".into(),
                ))
            })
    }
}
