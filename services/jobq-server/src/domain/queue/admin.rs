//! What producers and admins do to jobs: read, list, cancel, requeue,
//! delete, one or in bulk, and the queues' controls.

use super::JobQueue;
use crate::domain::control::QueueControls;
use crate::domain::error::{QueueError, QueueResult};
use crate::domain::job::{
    Job, JobEvent, JobEventKind, JobFilter, JobId, JobSelector, PageCursor, StatsSnapshot,
};
use crate::domain::store::{Detail, JobChange};
use crate::domain::transitions;

/// Paging of ListJobs.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Page size.
    pub limit: u64,
    /// Where the previous page ended.
    pub after: Option<PageCursor>,
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct Page {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Where this page ended, when there may be more.
    pub next_after: Option<PageCursor>,
}

impl JobQueue {
    /// One job with as much detail as asked.
    pub async fn get(&self, id: &JobId, detail: Detail) -> QueueResult<Job> {
        self.store
            .get_job(id, detail)
            .await?
            .ok_or_else(|| QueueError::JobNotFound(id.to_string()))
    }

    /// How many jobs with the concurrency key `key` run now.
    pub async fn running_with_key(&self, key: &str) -> QueueResult<i64> {
        self.store.running_with_key(key).await
    }

    /// Whether the job exists and is terminal; `None` if it does not exist.
    pub async fn is_terminal(&self, id: &JobId) -> QueueResult<Option<bool>> {
        let states = self.store.job_states(std::slice::from_ref(id)).await?;
        Ok(states.first().map(|(_, state)| state.is_terminal()))
    }

    /// A page of jobs in the filter's order.
    pub async fn list(
        &self,
        filter: &JobFilter,
        page: PageRequest,
        detail: Detail,
    ) -> QueueResult<Page> {
        // One extra row tells whether another page follows.
        let mut jobs = self
            .store
            .list_jobs(filter, page.after.as_ref(), page.limit + 1, detail)
            .await?;
        let more = jobs.len() as u64 > page.limit;
        jobs.truncate(page.limit as usize);
        let next_after = if more {
            jobs.last().map(|job| PageCursor::after(job, filter.order))
        } else {
            None
        };
        Ok(Page { jobs, next_after })
    }

    /// Cancels a job (at once, or on the worker's next heartbeat if it runs).
    pub async fn cancel(&self, id: &JobId, reason: String) -> QueueResult<Job> {
        let now = self.now();
        let change: JobChange = Box::new(move |job| transitions::cancel(job, reason.clone(), now));
        self.apply_one(id, change).await
    }

    /// Queues a finished job again (blocked while its dependencies have not succeeded).
    pub async fn retry(&self, id: &JobId) -> QueueResult<Job> {
        self.retry_many_ids(vec![id.clone()])
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(QueueError::Storage(
                    "a batch of one answered nothing".into(),
                ))
            })
    }

    async fn retry_many_ids(&self, ids: Vec<JobId>) -> QueueResult<Vec<QueueResult<Job>>> {
        let now = self.now();
        let mut dependencies = self.store.dependency_states(&ids).await?;
        let changes = ids
            .into_iter()
            .map(|id| {
                let states = dependencies.remove(&id).unwrap_or_default();
                let change: JobChange =
                    Box::new(move |job| transitions::retry(job, &states, now).map(Some));
                (id, change)
            })
            .collect();
        let retried = self.apply(changes).await?;
        // A dependency may have finished between the read and the commit:
        // let the blocked ones check again.
        let blocked: Vec<JobId> = retried
            .iter()
            .filter_map(|job| job.as_ref().ok())
            .filter(|job| job.state == crate::domain::JobState::Blocked)
            .map(|job| job.id.clone())
            .collect();
        if !blocked.is_empty() {
            let mut finished = self.resolve_blocked(blocked).await;
            while !finished.is_empty() {
                finished = self.release_dependents(finished).await;
            }
        }
        Ok(retried)
    }

    /// Deletes a job that is not running, with its history and log.
    pub async fn delete(&self, id: &JobId) -> QueueResult<()> {
        self.delete_ids(vec![id.clone()])
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(QueueError::Storage(
                    "a batch of one answered nothing".into(),
                ))
            })
            .map(drop)
    }

    /// Deletes jobs in one transaction; one result per id.
    pub(super) async fn delete_ids(&self, ids: Vec<JobId>) -> QueueResult<Vec<QueueResult<Job>>> {
        let results = self
            .store
            .delete_jobs(ids, transitions::check_deletable)
            .await?;
        let deleted: Vec<&Job> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        if !deleted.is_empty() {
            let ids: Vec<JobId> = deleted.iter().map(|job| job.id.clone()).collect();
            self.log.deleted(&ids).await;
            let now = self.now();
            if let Some(observer) = self.observer.get() {
                observer.deleted(&deleted, now);
            }
            self.emit(|| {
                deleted
                    .iter()
                    .map(|job| JobEvent {
                        kind: JobEventKind::Deleted,
                        job: (*job).clone(),
                        at: now,
                    })
                    .collect()
            });
        }
        Ok(results)
    }

    /// Queues again every finished job the selector picks; returns their ids.
    pub async fn retry_many(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>> {
        let ids = self.store.select_jobs(selector).await?;
        let mut retried = Vec::new();
        for chunk in ids.chunks(500) {
            for result in self.retry_many_ids(chunk.to_vec()).await? {
                match result {
                    Ok(job) => retried.push(job.id),
                    // Not finished (any more), or gone: skipped, as the API promises.
                    Err(QueueError::FailedPrecondition { .. } | QueueError::JobNotFound(_)) => {}
                    Err(other) => return Err(other),
                }
            }
        }
        Ok(retried)
    }

    /// Deletes every job the selector picks that is not running; returns their ids.
    pub async fn delete_many(&self, selector: &JobSelector) -> QueueResult<Vec<JobId>> {
        let ids = self.store.select_jobs(selector).await?;
        let mut deleted = Vec::new();
        for chunk in ids.chunks(500) {
            for result in self.delete_ids(chunk.to_vec()).await? {
                match result {
                    Ok(job) => deleted.push(job.id),
                    Err(QueueError::FailedPrecondition { .. } | QueueError::JobNotFound(_)) => {}
                    Err(other) => return Err(other),
                }
            }
        }
        Ok(deleted)
    }

    /// Counts by queue and state.
    pub async fn stats(&self, queues: &[String]) -> QueueResult<StatsSnapshot> {
        self.store.stats(queues, self.now()).await
    }

    /// Jobs stored and not yet in the payload search index.
    pub async fn search_backlog(&self) -> QueueResult<u64> {
        self.store.search_backlog().await
    }

    /// Earliest run_at of the queued jobs of each of `queues` that has one.
    pub async fn oldest_ready(
        &self,
        queues: &[String],
    ) -> QueueResult<std::collections::BTreeMap<String, crate::domain::Millis>> {
        self.store.oldest_ready(queues).await
    }

    /// Every queue that has jobs or controls, with its controls.
    pub async fn queues(&self) -> QueueResult<Vec<QueueControls>> {
        let names = self.store.queue_names().await?;
        self.queues_among(names).await
    }

    /// The queues named in `names` (known to have jobs) and those with
    /// stored controls, with their controls.
    pub async fn queues_among(
        &self,
        names: impl IntoIterator<Item = String>,
    ) -> QueueResult<Vec<QueueControls>> {
        let mut controls = self.store.queue_controls().await?;
        for name in names {
            if !controls.iter().any(|control| control.name == name) {
                controls.push(QueueControls::open(name));
            }
        }
        controls.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(controls)
    }

    /// Changes a queue's controls with `edit`; returns them.
    pub async fn update_queue(
        &self,
        name: String,
        edit: impl Fn(&mut QueueControls) + Send + Sync + 'static,
    ) -> QueueResult<QueueControls> {
        let controls = self
            .store
            .update_queue_controls(&name, self.now(), std::sync::Arc::new(edit))
            .await?;
        self.controls_changed();
        if let Some(peers) = self.peers.get() {
            peers.controls_changed();
        }
        Ok(controls)
    }
}
