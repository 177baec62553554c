//! The server's own lines in a job's log: what happened to the job, in words.

use std::time::Duration;

use super::clock::Millis;
use super::job::{AttemptOutcome, Job, JobState};
use super::transitions::AttemptEnd;

fn seconds(ms: Millis) -> String {
    format!(
        "{:.1}s",
        Duration::from_millis(ms.max(0) as u64).as_secs_f64()
    )
}

/// Where a job that ended an attempt goes next, as a clause.
fn next_step(job: &Job) -> String {
    match job.state {
        JobState::Retrying => format!(
            "retry scheduled in {} (attempt {} of {})",
            seconds(job.run_at - job.updated_at),
            job.attempt + 1,
            job.max_attempts
        ),
        JobState::Queued => format!(
            "queued again (attempt {} of {})",
            job.attempt + 1,
            job.max_attempts
        ),
        JobState::Dead if job.attempt >= job.max_attempts => {
            format!("dead-lettered: all {} attempts used", job.max_attempts)
        }
        JobState::Dead => "dead-lettered: the failure is not retryable".to_owned(),
        JobState::Cancelled => format!(
            "cancelled: {}",
            job.last_error.as_deref().unwrap_or("no reason given")
        ),
        other => format!("now {other}"),
    }
}

/// The system line for a change of `before` into `after`, if it is worth one.
pub fn describe(before: Option<&Job>, after: &Job, ended: Option<&AttemptEnd>) -> Option<String> {
    let Some(before) = before else {
        return Some(match after.state {
            JobState::Scheduled => format!(
                "enqueued in queue {}, scheduled to run at {} ms",
                after.queue, after.run_at
            ),
            JobState::Blocked => format!(
                "enqueued in queue {}, blocked until {} dependencies succeed",
                after.queue,
                after.depends_on.len()
            ),
            JobState::Cancelled => format!(
                "enqueued and cancelled at once: {}",
                after.last_error.as_deref().unwrap_or("a dependency failed")
            ),
            _ => format!(
                "enqueued in queue {} with priority {}",
                after.queue, after.priority
            ),
        });
    };
    if let Some(end) = ended {
        let attempt = before.attempt;
        let worker = before.worker_id.as_deref().unwrap_or("?");
        let error = end.error.as_deref().unwrap_or("");
        return Some(match end.outcome {
            AttemptOutcome::Succeeded => format!("attempt {attempt} succeeded on worker {worker}"),
            AttemptOutcome::Failed => {
                format!("attempt {attempt} failed: {error}; {}", next_step(after))
            }
            AttemptOutcome::LeaseExpired => format!(
                "attempt {attempt} lost: no heartbeat from worker {worker} before its lease expired; {}",
                next_step(after)
            ),
            AttemptOutcome::TimedOut => format!(
                "attempt {attempt} timed out after {:?}; {}",
                before.timeout,
                next_step(after)
            ),
            AttemptOutcome::Cancelled => format!("attempt {attempt} stopped; {}", next_step(after)),
            AttemptOutcome::Released => format!(
                "attempt {attempt} released by worker {worker} (shutting down); {}",
                next_step(after)
            ),
        });
    }
    match (before.state, after.state) {
        (JobState::Queued, JobState::Running) => Some(format!(
            "attempt {} of {} leased by worker {}",
            after.attempt,
            after.max_attempts,
            after.worker_id.as_deref().unwrap_or("?")
        )),
        (JobState::Running, JobState::Running)
            if after.cancel_requested && !before.cancel_requested =>
        {
            Some(format!(
                "cancel requested ({}); worker {} is told on its next heartbeat",
                after.last_error.as_deref().unwrap_or("no reason given"),
                after.worker_id.as_deref().unwrap_or("?")
            ))
        }
        (JobState::Scheduled, JobState::Queued) => Some("run_at reached; queued".to_owned()),
        (JobState::Retrying, JobState::Queued) => {
            Some("backoff over; queued for the next attempt".to_owned())
        }
        (JobState::Blocked, JobState::Queued | JobState::Scheduled) => {
            Some("all dependencies succeeded; released".to_owned())
        }
        (from, JobState::Queued) if from.is_terminal() => {
            Some(format!("{from} job queued again by a client"))
        }
        (_, JobState::Cancelled) => Some(format!(
            "cancelled: {}",
            after.last_error.as_deref().unwrap_or("no reason given")
        )),
        _ => None,
    }
}
