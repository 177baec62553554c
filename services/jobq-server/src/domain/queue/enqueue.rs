//! Enqueuing: new jobs from validated specs, stored in one transaction.

use super::JobQueue;
use super::leasing::Parked;
use crate::domain::clock::Millis;
use crate::domain::error::QueueResult;
use crate::domain::job::{Job, JobSpec, JobState};
use crate::domain::store::{InsertedAndLeased, LeaseChange, LeaseQuery, NewJob};
use crate::domain::transitions;

/// A new job as `spec` asks for it, created at `now`.
pub(in crate::domain) fn new_job(spec: JobSpec, now: Millis) -> Job {
    let run_at = spec.run_at.unwrap_or_else(|| {
        let delay = spec.delay.map_or(0, |delay| delay.as_millis() as Millis);
        now.saturating_add(delay)
    });
    let summary = crate::domain::summarize(&spec.job_type, &spec.payload);
    Job {
        id: crate::domain::JobId::generate(),
        job_type: spec.job_type,
        queue: spec.queue,
        payload: Some(spec.payload),
        payload_bytes: spec.payload_bytes,
        priority: spec.priority,
        run_at,
        max_attempts: spec.max_attempts,
        timeout: spec.timeout,
        retry_policy: spec.retry_policy,
        unique_key: spec.unique_key,
        concurrency_key: spec.concurrency_key,
        concurrency_limit: spec.concurrency_limit,
        request_key: None,
        tags: spec.tags,
        summary,
        parent_id: spec.parent_id,
        traceparent: spec.traceparent,
        depends_on: spec.depends_on,
        has_dependents: false,
        schedule_name: spec.schedule_name,
        state: if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Queued
        },
        attempt: 0,
        history_seq: 0,
        progress_percent: 0,
        progress_message: String::new(),
        result: None,
        last_error: None,
        cancel_requested: false,
        lease_token: None,
        worker_id: None,
        lease_expires_at: None,
        lease_duration: None,
        attempt_deadline: None,
        attempt_started_at: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        updated_at: now,
        history: Vec::new(),
    }
}

impl JobQueue {
    /// Enqueues jobs in one transaction: all are stored or none. `specs`
    /// pairs each spec with its field path for errors (`job`, `jobs[3]`).
    /// With a `request_id`, a call seen before returns what it created.
    /// Returns each stored job and whether it already existed.
    pub async fn enqueue(
        &self,
        specs: Vec<(JobSpec, String)>,
        request_id: Option<&str>,
    ) -> QueueResult<Vec<(Job, bool)>> {
        self.refuse_if_shutting_down()?;
        let now = self.now();
        let single = specs.len() == 1;
        let jobs: Vec<NewJob> = specs
            .into_iter()
            .enumerate()
            .map(|(index, (spec, field))| {
                let mut job = new_job(spec, now);
                // One key per job: a batch's jobs are told apart by their index.
                job.request_key = request_id.map(|id| {
                    if single {
                        id.to_owned()
                    } else {
                        format!("{id}#{index}")
                    }
                });
                NewJob { job, field }
            })
            .collect();
        let new_jobs: Vec<&Job> = jobs.iter().map(|new: &NewJob| &new.job).collect();
        let taken = self.take_parked(&new_jobs);
        if taken.is_empty() {
            let stored = self
                .store
                .insert_jobs(jobs, transitions::apply_dependencies)
                .await?;
            self.after_created(&created_of(&stored)).await;
            return Ok(stored);
        }
        // Workers are waiting for these queues: lease for them in the same
        // commit as the insert.
        let leases = match self.handover_leases(&taken).await {
            Ok(leases) => leases,
            Err(error) => {
                // The taken calls look again by themselves.
                drop(taken);
                return Err(error);
            }
        };
        let (taken, leases): (Vec<Parked>, Vec<(LeaseQuery, LeaseChange)>) = taken
            .into_iter()
            .zip(leases)
            .filter_map(|(call, lease)| lease.map(|lease| (call, lease)))
            .unzip();
        let InsertedAndLeased { inserted, leased } = self
            .store
            .insert_and_lease(jobs, transitions::apply_dependencies, leases)
            .await?;
        if let Ok(stored) = &inserted {
            self.after_created(&created_of(stored)).await;
        }
        self.hand_over(taken, leased).await;
        inserted
    }
}

/// The jobs an insert created (not those that already existed).
fn created_of(stored: &[(Job, bool)]) -> Vec<&Job> {
    stored
        .iter()
        .filter(|(_, existed)| !existed)
        .map(|(job, _)| job)
        .collect()
}
