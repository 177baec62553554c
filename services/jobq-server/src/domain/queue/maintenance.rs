//! The server's own work on jobs: expiring leases (the reaper), queuing jobs
//! whose time has come (the promoter), releasing dependents, and retention.

use std::time::Duration;

use super::JobQueue;
use crate::domain::clock::Millis;
use crate::domain::error::QueueResult;
use crate::domain::job::{JobId, JobState};
use crate::domain::store::JobChange;
use crate::domain::transitions;

/// Most jobs one pass of the reaper or the promoter handles in one transaction.
const PASS_BATCH: u64 = 1000;

impl JobQueue {
    /// The reaper's pass: fails every attempt whose lease or deadline has
    /// passed. Returns how many it ended.
    pub async fn reap_expired(&self) -> QueueResult<usize> {
        let now = self.now();
        let ids = self.store.expired_jobs(now, PASS_BATCH).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let changes = ids
            .into_iter()
            .map(|id| {
                let jitter = rand::random::<f64>();
                // The job may have been renewed or reported since the scan; expire re-checks.
                let change: JobChange =
                    Box::new(move |job| Ok(transitions::expire(job, now, jitter)));
                (id, change)
            })
            .collect();
        let ended = self
            .apply(changes)
            .await?
            .into_iter()
            .filter(|job| job.as_ref().is_ok_and(|job| job.state != JobState::Running))
            .count();
        Ok(ended)
    }

    /// The promoter's pass: queues every scheduled or retrying job whose time has come.
    pub async fn promote_due(&self) -> QueueResult<usize> {
        let now = self.now();
        let ids = self.store.due_jobs(now, PASS_BATCH).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let changes = ids
            .into_iter()
            .map(|id| {
                let change: JobChange = Box::new(move |job| {
                    transitions::promote(job, now);
                    Ok(None)
                });
                (id, change)
            })
            .collect();
        let promoted = self
            .apply(changes)
            .await?
            .into_iter()
            .filter(|job| job.as_ref().is_ok_and(|job| job.state == JobState::Queued))
            .count();
        Ok(promoted)
    }

    /// How long the promoter may sleep: until the next run_at, at most `cap`.
    pub async fn until_next_due(&self, cap: Duration) -> QueueResult<Duration> {
        let now = self.now();
        Ok(match self.store.next_due_at().await? {
            Some(at) if at <= now => Duration::ZERO,
            Some(at) => Duration::from_millis((at - now) as u64).min(cap),
            None => cap,
        })
    }

    /// Jobs just finished: unblocks (or cancels) the jobs waiting on them.
    /// Returns the dependents that this finished in turn (cancelled), whose
    /// own dependents are next.
    pub(super) async fn release_dependents(&self, finished: Vec<JobId>) -> Vec<JobId> {
        match self.store.blocked_dependents(&finished).await {
            Ok(dependents) if !dependents.is_empty() => self.resolve_blocked(dependents).await,
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::warn!(%error, "could not look up dependents of finished jobs");
                Vec::new()
            }
        }
    }

    /// Re-checks blocked jobs against their dependencies' states; returns
    /// those it finished (cancelled) that have dependents themselves.
    pub(super) async fn resolve_blocked(&self, blocked: Vec<JobId>) -> Vec<JobId> {
        let now = self.now();
        let mut states = match self.store.dependency_states(&blocked).await {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(%error, "could not read dependencies of blocked jobs");
                return Vec::new();
            }
        };
        let changes = blocked
            .into_iter()
            .map(|id| {
                let dependencies = states.remove(&id).unwrap_or_default();
                let change: JobChange =
                    Box::new(move |job| Ok(transitions::resolve_blocked(job, &dependencies, now)));
                (id, change)
            })
            .collect();
        match self.store.update_jobs(changes).await {
            Ok(outcomes) => {
                let applied: Vec<_> = outcomes.into_iter().filter_map(Result::ok).collect();
                self.announce(&applied)
            }
            Err(error) => {
                tracing::warn!(%error, "could not release dependents");
                Vec::new()
            }
        }
    }

    /// Retention: deletes terminal jobs in `states` finished before `before`,
    /// with their logs. Returns how many.
    pub async fn purge_finished(&self, states: &[JobState], before: Millis) -> QueueResult<usize> {
        let ids = self
            .store
            .finished_before(states, before, PASS_BATCH)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self
            .delete_ids(ids)
            .await?
            .into_iter()
            .filter(Result::is_ok)
            .count())
    }
}
