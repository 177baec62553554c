//! What workers report: successes, failures and released jobs, applied in
//! batches (one transaction for all the reports of a call).

use std::time::Duration;

use super::JobQueue;
use crate::domain::error::{QueueError, QueueResult};
use crate::domain::job::{AttemptOutcome, Job, JobId, LeaseToken};
use crate::domain::store::Detail;
use crate::domain::store::JobChange;
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

impl JobQueue {
    /// Records many successes in one transaction; one result per report, in order.
    pub async fn complete_many(
        &self,
        reports: Vec<CompleteReport>,
    ) -> QueueResult<Vec<QueueResult<Job>>> {
        let now = self.now();
        let leases: Vec<(JobId, LeaseToken)> = reports
            .iter()
            .map(|report| (report.job_id.clone(), report.lease_token.clone()))
            .collect();
        let changes = reports
            .into_iter()
            .map(|report| {
                let CompleteReport {
                    job_id,
                    lease_token,
                    result,
                } = report;
                let change: JobChange = Box::new(move |job| {
                    transitions::complete(job, &lease_token, result.clone(), now).map(Some)
                });
                (job_id, change)
            })
            .collect();
        let results = self.apply(changes).await?;
        self.accept_repeats(results, &leases, |outcome| {
            outcome == AttemptOutcome::Succeeded
        })
        .await
    }

    /// Records many failed attempts in one transaction; one result per report, in order.
    pub async fn fail_many(&self, reports: Vec<FailReport>) -> QueueResult<Vec<QueueResult<Job>>> {
        let now = self.now();
        let leases: Vec<(JobId, LeaseToken)> = reports
            .iter()
            .map(|report| (report.job_id.clone(), report.lease_token.clone()))
            .collect();
        let changes = reports
            .into_iter()
            .map(|report| {
                let FailReport {
                    job_id,
                    lease_token,
                    error,
                    retryable,
                    retry_after,
                } = report;
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
                (job_id, change)
            })
            .collect();
        let results = self.apply(changes).await?;
        self.accept_repeats(results, &leases, |outcome| {
            matches!(outcome, AttemptOutcome::Failed | AttemptOutcome::Cancelled)
        })
        .await
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
        let applied: Vec<_> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .cloned()
            .collect();
        self.after_changes(&applied).await;
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.map(|applied| applied.job))
            .collect())
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
