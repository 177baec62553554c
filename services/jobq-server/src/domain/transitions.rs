//! The state machine: each function checks that a transition is allowed and
//! applies it to a job in memory. The store runs them inside the transaction
//! that loaded the job, so every transition is atomic.

use std::time::Duration;

use super::clock::Millis;
use super::error::{QueueError, QueueResult};
use super::job::{Attempt, AttemptOutcome, Job, JobId, JobState, LeaseToken};

/// How the current attempt of a job ended; the store closes its attempt row with it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    /// Token of the lease the attempt ran under.
    pub lease_token: LeaseToken,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Error text.
    pub error: Option<String>,
    /// When.
    pub finished_at: Millis,
}

fn millis(duration: Duration) -> Millis {
    duration.as_millis().min(i64::MAX as u128) as Millis
}

/// Checks that `token` is the current lease of a running job.
pub fn check_lease(job: &Job, token: &LeaseToken) -> QueueResult<()> {
    if job.state == JobState::Running && job.lease_token.as_ref() == Some(token) {
        Ok(())
    } else {
        Err(QueueError::StaleLease {
            job_id: job.id.to_string(),
        })
    }
}

/// Leases a queued job to `worker_id`: counts a new attempt and returns its record.
pub fn start_attempt(
    job: &mut Job,
    worker_id: &str,
    token: LeaseToken,
    now: Millis,
    lease_duration: Duration,
) -> Attempt {
    job.state = JobState::Running;
    job.attempt += 1;
    job.lease_token = Some(token);
    job.worker_id = Some(worker_id.to_owned());
    job.lease_expires_at = Some(now.saturating_add(millis(lease_duration)));
    job.attempt_deadline = Some(now.saturating_add(millis(job.timeout)));
    job.started_at.get_or_insert(now);
    job.progress_percent = 0;
    job.progress_message.clear();
    job.updated_at = now;
    Attempt {
        number: job.attempt,
        worker_id: worker_id.to_owned(),
        started_at: now,
        finished_at: None,
        outcome: None,
        error: None,
    }
}

/// Ends the running attempt: clears the lease and says how it ended.
fn end_attempt(
    job: &mut Job,
    outcome: AttemptOutcome,
    error: Option<String>,
    now: Millis,
) -> AttemptEnd {
    let lease_token = job
        .lease_token
        .take()
        .unwrap_or_else(|| LeaseToken::from_string(String::new()));
    job.worker_id = None;
    job.lease_expires_at = None;
    job.attempt_deadline = None;
    job.updated_at = now;
    AttemptEnd {
        lease_token,
        outcome,
        error,
        finished_at: now,
    }
}

fn finish(job: &mut Job, state: JobState, now: Millis) {
    job.state = state;
    job.finished_at = Some(now);
    job.cancel_requested = false;
}

/// The worker reports success.
pub fn complete(
    job: &mut Job,
    token: &LeaseToken,
    result: Option<String>,
    now: Millis,
) -> QueueResult<AttemptEnd> {
    check_lease(job, token)?;
    let end = end_attempt(job, AttemptOutcome::Succeeded, None, now);
    job.result = result;
    job.progress_percent = 100;
    finish(job, JobState::Succeeded, now);
    Ok(end)
}

/// After a failed attempt: cancelled if a cancel is pending, dead if it may
/// not be retried, otherwise retried after the backoff (or `retry_after`).
fn after_failure(
    job: &mut Job,
    retryable: bool,
    retry_after: Option<Duration>,
    now: Millis,
    jitter: f64,
) {
    if job.cancel_requested {
        finish(job, JobState::Cancelled, now);
    } else if !retryable || job.attempt >= job.max_attempts {
        finish(job, JobState::Dead, now);
    } else {
        let delay =
            retry_after.unwrap_or_else(|| job.retry_policy.delay_after(job.attempt, jitter));
        job.run_at = now.saturating_add(millis(delay));
        job.state = if job.run_at <= now {
            JobState::Queued
        } else {
            JobState::Retrying
        };
    }
}

/// The worker reports a failed attempt.
pub fn fail(
    job: &mut Job,
    token: &LeaseToken,
    error: String,
    retryable: bool,
    retry_after: Option<Duration>,
    now: Millis,
    jitter: f64,
) -> QueueResult<AttemptEnd> {
    check_lease(job, token)?;
    let outcome = if job.cancel_requested {
        AttemptOutcome::Cancelled
    } else {
        AttemptOutcome::Failed
    };
    let end = end_attempt(job, outcome, Some(error.clone()), now);
    if !job.cancel_requested {
        job.last_error = Some(error);
    }
    after_failure(job, retryable, retry_after, now, jitter);
    Ok(end)
}

/// The reaper's rule: a running job whose lease or attempt deadline has
/// passed has failed its attempt. `None` when the job is still within both.
pub fn expire(job: &mut Job, now: Millis, jitter: f64) -> Option<AttemptEnd> {
    if job.state != JobState::Running {
        return None;
    }
    let timed_out = job.attempt_deadline.is_some_and(|deadline| deadline <= now);
    let lease_expired = job.lease_expires_at.is_some_and(|deadline| deadline <= now);
    let (outcome, error) = if job.cancel_requested && (timed_out || lease_expired) {
        (
            AttemptOutcome::Cancelled,
            "cancelled; the worker stopped without reporting".to_owned(),
        )
    } else if timed_out {
        (
            AttemptOutcome::TimedOut,
            format!("attempt {} timed out after {:?}", job.attempt, job.timeout),
        )
    } else if lease_expired {
        let worker = job.worker_id.clone().unwrap_or_default();
        (
            AttemptOutcome::LeaseExpired,
            format!("lease of worker {worker} expired: no heartbeat"),
        )
    } else {
        return None;
    };
    let end = end_attempt(job, outcome, Some(error.clone()), now);
    if !job.cancel_requested {
        job.last_error = Some(error);
    }
    after_failure(job, true, None, now, jitter);
    Some(end)
}

/// The worker hands the job back: queued again at once, the attempt not counted.
pub fn release(job: &mut Job, token: &LeaseToken, now: Millis) -> QueueResult<AttemptEnd> {
    check_lease(job, token)?;
    let end = end_attempt(job, AttemptOutcome::Released, None, now);
    if job.cancel_requested {
        finish(job, JobState::Cancelled, now);
    } else {
        job.attempt = job.attempt.saturating_sub(1);
        job.state = JobState::Queued;
        job.run_at = now;
    }
    Ok(end)
}

/// A client cancels the job: at once unless it runs, in which case the
/// worker is told on its next heartbeat.
pub fn cancel(job: &mut Job, reason: String, now: Millis) -> QueueResult<()> {
    if job.state.is_terminal() {
        return Err(QueueError::FailedPrecondition(format!(
            "job {} is already {}; only a job that has not finished can be cancelled",
            job.id, job.state
        )));
    }
    job.last_error = Some(reason);
    job.updated_at = now;
    if job.state == JobState::Running {
        job.cancel_requested = true;
    } else {
        finish(job, JobState::Cancelled, now);
    }
    Ok(())
}

/// A client asks to run a finished job again, with its attempts reset.
pub fn retry(job: &mut Job, now: Millis) -> QueueResult<()> {
    if !job.state.is_terminal() {
        return Err(QueueError::FailedPrecondition(format!(
            "job {} is {}; only a succeeded, cancelled or dead job can be retried",
            job.id, job.state
        )));
    }
    job.state = JobState::Queued;
    job.attempt = 0;
    job.run_at = now;
    job.finished_at = None;
    job.result = None;
    job.progress_percent = 0;
    job.progress_message.clear();
    job.cancel_requested = false;
    job.updated_at = now;
    Ok(())
}

/// A scheduled or retrying job whose time has come becomes queued.
pub fn promote(job: &mut Job, now: Millis) -> bool {
    let waiting = matches!(job.state, JobState::Scheduled | JobState::Retrying);
    if waiting && job.run_at <= now {
        job.state = JobState::Queued;
        job.updated_at = now;
        true
    } else {
        false
    }
}

/// The first dependency that ended without succeeding, if any.
fn failed_dependency(dependencies: &[(JobId, JobState)]) -> Option<&(JobId, JobState)> {
    dependencies
        .iter()
        .find(|(_, state)| matches!(state, JobState::Dead | JobState::Cancelled))
}

/// Sets the starting state of a new job from the states of its dependencies:
/// cancelled if one already failed, blocked until all have succeeded.
pub fn apply_dependencies(job: &mut Job, dependencies: &[(JobId, JobState)], now: Millis) {
    if let Some((id, state)) = failed_dependency(dependencies) {
        job.last_error = Some(format!("dependency {id} ended {state}"));
        finish(job, JobState::Cancelled, now);
    } else if dependencies
        .iter()
        .any(|(_, state)| *state != JobState::Succeeded)
    {
        job.state = JobState::Blocked;
    }
}

/// Re-checks a blocked job after one of its dependencies finished: cancelled
/// if one failed, released (queued, or scheduled for its run_at) once all succeeded.
pub fn resolve_blocked(job: &mut Job, dependencies: &[(JobId, JobState)], now: Millis) {
    if job.state != JobState::Blocked {
        return;
    }
    if let Some((id, state)) = failed_dependency(dependencies) {
        job.last_error = Some(format!("dependency {id} ended {state}"));
        job.updated_at = now;
        finish(job, JobState::Cancelled, now);
    } else if dependencies
        .iter()
        .all(|(_, state)| *state == JobState::Succeeded)
    {
        job.state = if job.run_at > now {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        job.updated_at = now;
    }
}

/// Checks that a job may be deleted: anything but a running job.
pub fn check_deletable(job: &Job) -> QueueResult<()> {
    if job.state == JobState::Running {
        Err(QueueError::FailedPrecondition(format!(
            "job {} is running; cancel it before deleting it",
            job.id
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RetryPolicy;

    fn job(max_attempts: i32) -> Job {
        Job {
            id: JobId::generate(),
            job_type: "noop".into(),
            queue: "default".into(),
            payload: "{}".into(),
            priority: 0,
            run_at: 0,
            max_attempts,
            timeout: Duration::from_secs(10),
            retry_policy: RetryPolicy {
                base_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
            },
            unique_key: None,
            tags: vec![],
            parent_id: None,
            traceparent: None,
            depends_on: vec![],
            schedule_name: None,
            state: JobState::Queued,
            attempt: 0,
            progress_percent: 0,
            progress_message: String::new(),
            result: None,
            last_error: None,
            cancel_requested: false,
            lease_token: None,
            worker_id: None,
            lease_expires_at: None,
            attempt_deadline: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            updated_at: 0,
            attempts: vec![],
        }
    }

    fn lease(job: &mut Job, now: Millis) -> LeaseToken {
        let token = LeaseToken::generate();
        start_attempt(job, "w1", token.clone(), now, Duration::from_secs(5));
        token
    }

    #[test]
    fn failures_back_off_then_dead_letter() {
        let mut job = job(3);
        let token = lease(&mut job, 1_000);
        fail(&mut job, &token, "boom".into(), true, None, 2_000, 0.0).expect("fresh lease");
        assert_eq!((job.state, job.run_at), (JobState::Retrying, 3_000));
        assert!(promote(&mut job, 3_000));
        let token = lease(&mut job, 3_000);
        fail(&mut job, &token, "boom".into(), true, None, 4_000, 0.0).expect("fresh lease");
        assert_eq!((job.state, job.run_at), (JobState::Retrying, 6_000));
        promote(&mut job, 6_000);
        let token = lease(&mut job, 6_000);
        fail(&mut job, &token, "boom".into(), true, None, 7_000, 0.0).expect("fresh lease");
        assert_eq!(job.state, JobState::Dead);
        assert_eq!(job.finished_at, Some(7_000));
    }

    #[test]
    fn non_retryable_failure_dead_letters_at_once() {
        let mut job = job(10);
        let token = lease(&mut job, 0);
        fail(&mut job, &token, "bad payload".into(), false, None, 1, 0.0).expect("fresh lease");
        assert_eq!(job.state, JobState::Dead);
    }

    #[test]
    fn stale_token_is_refused_and_changes_nothing() {
        let mut job = job(3);
        let _current = lease(&mut job, 0);
        let before = job.clone();
        let stale = LeaseToken::generate();
        assert!(matches!(
            complete(&mut job, &stale, None, 1),
            Err(QueueError::StaleLease { .. })
        ));
        assert_eq!(job, before);
    }

    #[test]
    fn expiry_distinguishes_timeout_from_lost_lease() {
        let mut job = job(3);
        lease(&mut job, 0);
        assert!(expire(&mut job, 4_999, 0.0).is_none());
        let end = expire(&mut job, 5_000, 0.0).expect("lease ran out");
        assert_eq!(end.outcome, AttemptOutcome::LeaseExpired);
        assert_eq!(job.state, JobState::Retrying);

        let mut job = self::job(3);
        lease(&mut job, 0);
        job.lease_expires_at = Some(60_000);
        let end = expire(&mut job, 10_000, 0.0).expect("attempt timed out");
        assert_eq!(end.outcome, AttemptOutcome::TimedOut);
    }

    #[test]
    fn cancel_of_running_job_waits_for_the_worker() {
        let mut job = job(3);
        let token = lease(&mut job, 0);
        cancel(&mut job, "no longer needed".into(), 1).expect("running job");
        assert_eq!((job.state, job.cancel_requested), (JobState::Running, true));
        fail(&mut job, &token, "stopped".into(), true, None, 2, 0.0).expect("fresh lease");
        assert_eq!(job.state, JobState::Cancelled);
        assert!(cancel(&mut job, "again".into(), 3).is_err());
    }

    #[test]
    fn release_does_not_count_the_attempt() {
        let mut job = job(1);
        let token = lease(&mut job, 0);
        release(&mut job, &token, 1).expect("fresh lease");
        assert_eq!((job.state, job.attempt), (JobState::Queued, 0));
    }

    #[test]
    fn dependencies_block_until_all_succeed_and_cancel_on_failure() {
        let (a, b) = (JobId::generate(), JobId::generate());
        let mut dependent = job(3);
        apply_dependencies(
            &mut dependent,
            &[
                (a.clone(), JobState::Running),
                (b.clone(), JobState::Queued),
            ],
            0,
        );
        assert_eq!(dependent.state, JobState::Blocked);
        resolve_blocked(
            &mut dependent,
            &[
                (a.clone(), JobState::Succeeded),
                (b.clone(), JobState::Running),
            ],
            1,
        );
        assert_eq!(dependent.state, JobState::Blocked);
        resolve_blocked(
            &mut dependent,
            &[
                (a.clone(), JobState::Succeeded),
                (b.clone(), JobState::Succeeded),
            ],
            2,
        );
        assert_eq!(dependent.state, JobState::Queued);

        let mut doomed = job(3);
        apply_dependencies(&mut doomed, &[(a.clone(), JobState::Running)], 0);
        resolve_blocked(&mut doomed, &[(a.clone(), JobState::Dead)], 3);
        assert_eq!(doomed.state, JobState::Cancelled);
        assert!(
            doomed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(a.as_str()))
        );
    }
}
