//! The state machine: each function checks that a transition is allowed and
//! applies it to a job in memory, returning the history entry it closes (an
//! ended attempt, or a client's action), if any. The store runs them on the
//! rows it loaded inside one transaction, so every transition is atomic.

use std::time::Duration;

use super::clock::Millis;
use super::error::{QueueError, QueueResult, Refusal};
use super::job::{AttemptOutcome, EntryKind, HistoryEntry, Job, JobId, JobState, LeaseToken};

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

/// Leases a queued job to `worker_id`: a new attempt, a new history entry.
pub fn start_attempt(
    job: &mut Job,
    worker_id: &str,
    token: LeaseToken,
    now: Millis,
    lease_duration: Duration,
) {
    job.state = JobState::Running;
    job.attempt += 1;
    job.history_seq += 1;
    job.lease_token = Some(token);
    job.worker_id = Some(worker_id.to_owned());
    job.lease_expires_at = Some(now.saturating_add(millis(lease_duration)));
    job.lease_duration = Some(lease_duration);
    job.attempt_deadline = Some(now.saturating_add(millis(job.timeout)));
    job.attempt_started_at = Some(now);
    job.started_at.get_or_insert(now);
    job.progress_percent = 0;
    job.progress_message.clear();
    job.updated_at = now;
}

/// Ends the running attempt: clears the lease and returns the attempt's
/// entry. Call it after the job's new state is set: the entry records it.
fn end_attempt(
    job: &mut Job,
    outcome: AttemptOutcome,
    error: Option<String>,
    cancel_requested: bool,
    now: Millis,
) -> HistoryEntry {
    let entry = HistoryEntry {
        seq: job.history_seq,
        kind: EntryKind::Attempt,
        number: job.attempt,
        worker_id: job.worker_id.take().unwrap_or_default(),
        lease_token: job.lease_token.take(),
        started_at: job.attempt_started_at.take().unwrap_or(now),
        finished_at: Some(now),
        outcome: Some(outcome),
        error,
        cancel_requested,
        then_state: Some(job.state),
        then_run_at: matches!(job.state, JobState::Retrying | JobState::Queued)
            .then_some(job.run_at),
    };
    job.lease_expires_at = None;
    job.lease_duration = None;
    job.attempt_deadline = None;
    job.cancel_requested = false;
    job.updated_at = now;
    entry
}

/// A client's action on a job that is not running, as a history entry.
fn action(job: &mut Job, kind: EntryKind, detail: Option<String>, now: Millis) -> HistoryEntry {
    job.history_seq += 1;
    HistoryEntry {
        seq: job.history_seq,
        kind,
        number: 0,
        worker_id: String::new(),
        lease_token: None,
        started_at: now,
        finished_at: Some(now),
        outcome: None,
        error: detail,
        cancel_requested: false,
        then_state: Some(job.state),
        then_run_at: None,
    }
}

fn finish(job: &mut Job, state: JobState, now: Millis) {
    job.state = state;
    job.finished_at = Some(now);
    job.updated_at = now;
}

/// The worker reports success. A cancel requested meanwhile does not undo
/// it: the work is done, the job succeeds, and the attempt says a cancel was
/// requested.
pub fn complete(
    job: &mut Job,
    token: &LeaseToken,
    result: Option<String>,
    now: Millis,
) -> QueueResult<HistoryEntry> {
    check_lease(job, token)?;
    let cancel_requested = job.cancel_requested;
    if cancel_requested {
        let reason = job.last_error.take().unwrap_or_default();
        job.last_error = Some(format!(
            "cancel requested ({reason}), but the attempt succeeded before it stopped"
        ));
    }
    job.result = result;
    job.progress_percent = 100;
    finish(job, JobState::Succeeded, now);
    Ok(end_attempt(
        job,
        AttemptOutcome::Succeeded,
        None,
        cancel_requested,
        now,
    ))
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
) -> QueueResult<HistoryEntry> {
    check_lease(job, token)?;
    let cancel_requested = job.cancel_requested;
    let outcome = if cancel_requested {
        AttemptOutcome::Cancelled
    } else {
        job.last_error = Some(error.clone());
        AttemptOutcome::Failed
    };
    after_failure(job, retryable, retry_after, now, jitter);
    Ok(end_attempt(
        job,
        outcome,
        Some(error),
        cancel_requested,
        now,
    ))
}

/// The reaper's rule: a running job whose lease or attempt deadline has
/// passed has failed its attempt. `None` when the job is still within both.
pub fn expire(job: &mut Job, now: Millis, jitter: f64) -> Option<HistoryEntry> {
    if job.state != JobState::Running {
        return None;
    }
    let timed_out = job.attempt_deadline.is_some_and(|deadline| deadline <= now);
    let lease_expired = job.lease_expires_at.is_some_and(|deadline| deadline <= now);
    let cancel_requested = job.cancel_requested;
    let (outcome, error) = if cancel_requested && (timed_out || lease_expired) {
        (
            AttemptOutcome::Cancelled,
            "cancelled; the worker stopped without reporting".to_owned(),
        )
    } else if timed_out {
        (
            AttemptOutcome::TimedOut,
            format!(
                "attempt {} timed out after {}",
                job.attempt,
                humantime::format_duration(job.timeout)
            ),
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
    if !cancel_requested {
        job.last_error = Some(error.clone());
    }
    after_failure(job, true, None, now, jitter);
    Some(end_attempt(
        job,
        outcome,
        Some(error),
        cancel_requested,
        now,
    ))
}

/// The worker hands the job back: queued again at once, the attempt not
/// counted; cancelled instead if a cancel is pending.
pub fn release(job: &mut Job, token: &LeaseToken, now: Millis) -> QueueResult<HistoryEntry> {
    check_lease(job, token)?;
    let cancel_requested = job.cancel_requested;
    let outcome = if cancel_requested {
        finish(job, JobState::Cancelled, now);
        AttemptOutcome::Cancelled
    } else {
        job.state = JobState::Queued;
        job.run_at = now;
        AttemptOutcome::Released
    };
    let entry = end_attempt(job, outcome, None, cancel_requested, now);
    if outcome == AttemptOutcome::Released {
        job.attempt = job.attempt.saturating_sub(1);
    }
    Ok(entry)
}

/// What a heartbeat asks of one lease.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// Renew for this long from now; `None`: for the lease's own length.
    pub lease_duration: Option<Duration>,
    /// New progress percent, if reported.
    pub progress_percent: Option<i32>,
    /// New progress message, if reported ("" clears it).
    pub progress_message: Option<String>,
}

/// A heartbeat: renews the lease and records progress; past the attempt's
/// deadline, ends the attempt as timed out instead.
pub fn renew(
    job: &mut Job,
    token: &LeaseToken,
    renewal: &Renewal,
    default_lease: Duration,
    now: Millis,
    jitter: f64,
) -> QueueResult<Option<HistoryEntry>> {
    check_lease(job, token)?;
    if job.attempt_deadline.is_some_and(|deadline| deadline <= now) {
        job.lease_expires_at = Some(now);
        return Ok(expire(job, now, jitter));
    }
    // "As much again": the length the lease was taken (or last renewed) for.
    let length = renewal
        .lease_duration
        .or(job.lease_duration)
        .unwrap_or(default_lease);
    job.lease_duration = Some(length);
    // A job with a cancel pending keeps its lease too, so the worker can
    // stop cleanly and report.
    job.lease_expires_at = Some(now.saturating_add(millis(length)));
    if let Some(percent) = renewal.progress_percent {
        job.progress_percent = percent;
    }
    if let Some(message) = &renewal.progress_message {
        job.progress_message.clone_from(message);
    }
    job.updated_at = now;
    Ok(None)
}

/// A client cancels the job: at once unless it runs, in which case the
/// worker is told on its next heartbeat.
pub fn cancel(job: &mut Job, reason: String, now: Millis) -> QueueResult<Option<HistoryEntry>> {
    if job.state.is_terminal() {
        return Err(QueueError::refused(
            Refusal::JobFinished,
            format!(
                "job {} is already {}; only a job that has not finished can be cancelled",
                job.id, job.state
            ),
        ));
    }
    job.last_error = Some(reason.clone());
    job.updated_at = now;
    if job.state == JobState::Running {
        job.cancel_requested = true;
        Ok(None)
    } else {
        finish(job, JobState::Cancelled, now);
        Ok(Some(action(job, EntryKind::Cancelled, Some(reason), now)))
    }
}

/// A client asks to run a finished job again, with its attempts reset. It
/// waits as blocked while one of its dependencies has not succeeded.
pub fn retry(
    job: &mut Job,
    dependencies: &[(JobId, JobState)],
    now: Millis,
) -> QueueResult<HistoryEntry> {
    if !job.state.is_terminal() {
        return Err(QueueError::refused(
            Refusal::JobNotFinished,
            format!(
                "job {} is {}; only a succeeded, cancelled or dead job can be retried",
                job.id, job.state
            ),
        ));
    }
    let waiting = dependencies
        .iter()
        .any(|(_, state)| *state != JobState::Succeeded);
    job.state = if waiting {
        JobState::Blocked
    } else {
        JobState::Queued
    };
    job.attempt = 0;
    job.run_at = now;
    job.finished_at = None;
    // What ended the last run stays in its history, not on the requeued job.
    job.last_error = None;
    job.result = None;
    job.progress_percent = 0;
    job.progress_message.clear();
    job.cancel_requested = false;
    job.updated_at = now;
    Ok(action(job, EntryKind::Requeued, None, now))
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

/// Sets the starting state of a new job from the states of its dependencies
/// (blocked until all have succeeded). A dependency that already ended dead
/// or cancelled refuses the job: it could never run. `field` names the
/// job's `depends_on` in the error.
pub fn apply_dependencies(
    job: &mut Job,
    dependencies: &[(JobId, JobState)],
    field: &str,
) -> QueueResult<()> {
    if let Some((id, state)) = failed_dependency(dependencies) {
        let position = job.depends_on.iter().position(|dep| dep == id).unwrap_or(0);
        return Err(QueueError::refused(
            Refusal::DependencyFailed,
            format!(
                "{field}.depends_on[{position}]: job {id} already ended {state}, so this job could never run"
            ),
        ));
    }
    if dependencies
        .iter()
        .any(|(_, state)| *state != JobState::Succeeded)
    {
        job.state = JobState::Blocked;
    }
    Ok(())
}

/// Re-checks a blocked job after one of its dependencies finished: cancelled
/// if one failed, released (queued, or scheduled for its run_at) once all
/// succeeded. Returns the entry of a cancel.
pub fn resolve_blocked(
    job: &mut Job,
    dependencies: &[(JobId, JobState)],
    now: Millis,
) -> Option<HistoryEntry> {
    if job.state != JobState::Blocked {
        return None;
    }
    if let Some((id, state)) = failed_dependency(dependencies) {
        let reason = format!("dependency {id} ended {state}");
        job.last_error = Some(reason.clone());
        finish(job, JobState::Cancelled, now);
        return Some(action(job, EntryKind::Cancelled, Some(reason), now));
    }
    if dependencies
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
    None
}

/// Checks that a job may be deleted: anything but a running job.
pub fn check_deletable(job: &Job) -> QueueResult<()> {
    if job.state == JobState::Running {
        Err(QueueError::refused(
            Refusal::JobRunning,
            format!("job {} is running; cancel it before deleting it", job.id),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::RetryPolicy;

    /// A queued job of the default queue, for tests.
    pub(crate) fn job(max_attempts: i32) -> Job {
        Job {
            id: JobId::generate(),
            job_type: "noop".into(),
            queue: "default".into(),
            payload: None,
            payload_bytes: 2,
            priority: 0,
            run_at: 0,
            max_attempts,
            timeout: Duration::from_secs(10),
            retry_policy: RetryPolicy {
                base_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
            },
            unique_key: None,
            concurrency_key: None,
            concurrency_limit: 0,
            summary: String::new(),
            request_key: None,
            tags: vec![],
            parent_id: None,
            traceparent: None,
            depends_on: vec![],
            has_dependents: false,
            schedule_name: None,
            state: JobState::Queued,
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
            created_at: 0,
            started_at: None,
            finished_at: None,
            updated_at: 0,
            history: vec![],
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
        let end =
            fail(&mut job, &token, "boom".into(), true, None, 2_000, 0.0).expect("fresh lease");
        assert_eq!((job.state, job.run_at), (JobState::Retrying, 3_000));
        assert_eq!(
            (end.then_state, end.then_run_at),
            (Some(JobState::Retrying), Some(3_000))
        );
        assert!(promote(&mut job, 3_000));
        let token = lease(&mut job, 3_000);
        fail(&mut job, &token, "boom".into(), true, None, 4_000, 0.0).expect("fresh lease");
        assert_eq!((job.state, job.run_at), (JobState::Retrying, 6_000));
        promote(&mut job, 6_000);
        let token = lease(&mut job, 6_000);
        fail(&mut job, &token, "boom".into(), true, None, 7_000, 0.0).expect("fresh lease");
        assert_eq!(job.state, JobState::Dead);
        assert_eq!(job.finished_at, Some(7_000));
        assert_eq!(job.history_seq, 3);
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
        assert_eq!(end.outcome, Some(AttemptOutcome::LeaseExpired));
        assert_eq!(job.state, JobState::Retrying);

        let mut job = self::job(3);
        lease(&mut job, 0);
        job.lease_expires_at = Some(60_000);
        let end = expire(&mut job, 10_000, 0.0).expect("attempt timed out");
        assert_eq!(end.outcome, Some(AttemptOutcome::TimedOut));
    }

    #[test]
    fn a_success_after_a_cancel_request_stands_and_says_so() {
        let mut job = job(3);
        let token = lease(&mut job, 0);
        cancel(&mut job, "no longer needed".into(), 1).expect("running job");
        assert_eq!((job.state, job.cancel_requested), (JobState::Running, true));
        let end = complete(&mut job, &token, None, 2).expect("fresh lease");
        assert_eq!(job.state, JobState::Succeeded);
        assert!(end.cancel_requested);
        assert_eq!(end.outcome, Some(AttemptOutcome::Succeeded));
        assert!(
            job.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no longer needed"))
        );
        assert!(cancel(&mut job, "again".into(), 3).is_err());
    }

    #[test]
    fn a_failure_after_a_cancel_request_cancels() {
        let mut job = job(3);
        let token = lease(&mut job, 0);
        cancel(&mut job, "stop".into(), 1).expect("running job");
        let end =
            fail(&mut job, &token, "stopped".into(), true, None, 2, 0.0).expect("fresh lease");
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(end.outcome, Some(AttemptOutcome::Cancelled));
    }

    #[test]
    fn release_does_not_count_the_attempt_but_keeps_its_entry() {
        let mut job = job(1);
        let token = lease(&mut job, 0);
        let end = release(&mut job, &token, 1).expect("fresh lease");
        assert_eq!((job.state, job.attempt), (JobState::Queued, 0));
        assert_eq!((end.seq, end.number), (1, 1));
        lease(&mut job, 2);
        assert_eq!((job.history_seq, job.attempt), (2, 1));
    }

    #[test]
    fn a_new_job_on_a_failed_dependency_is_refused() {
        let (a, b) = (JobId::generate(), JobId::generate());
        let mut dependent = job(3);
        dependent.depends_on = vec![a.clone(), b.clone()];
        apply_dependencies(
            &mut dependent,
            &[
                (a.clone(), JobState::Running),
                (b.clone(), JobState::Queued),
            ],
            "job",
        )
        .expect("live dependencies");
        assert_eq!(dependent.state, JobState::Blocked);
        let error = apply_dependencies(&mut job(3), &[(a.clone(), JobState::Dead)], "job")
            .expect_err("dead dependency");
        assert!(matches!(
            error,
            QueueError::FailedPrecondition {
                reason: Refusal::DependencyFailed,
                ..
            }
        ));
    }

    #[test]
    fn blocked_jobs_release_when_all_succeed_and_cancel_when_one_fails() {
        let (a, b) = (JobId::generate(), JobId::generate());
        let mut dependent = job(3);
        dependent.state = JobState::Blocked;
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
        doomed.state = JobState::Blocked;
        let entry = resolve_blocked(&mut doomed, &[(a.clone(), JobState::Dead)], 3)
            .expect("a cancel is recorded");
        assert_eq!(doomed.state, JobState::Cancelled);
        assert_eq!(entry.kind, EntryKind::Cancelled);
        assert!(
            doomed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(a.as_str()))
        );
    }

    #[test]
    fn renewal_keeps_the_lease_length_and_unreported_progress() {
        let mut job = job(3);
        let token = LeaseToken::generate();
        start_attempt(&mut job, "w1", token.clone(), 0, Duration::from_secs(600));
        job.progress_percent = 40;
        job.progress_message = "halfway".into();
        let keep = Renewal {
            lease_duration: None,
            progress_percent: None,
            progress_message: None,
        };
        renew(&mut job, &token, &keep, Duration::from_secs(30), 1_000, 0.0).expect("fresh lease");
        assert_eq!(job.lease_expires_at, Some(601_000));
        assert_eq!(
            (job.progress_percent, job.progress_message.as_str()),
            (40, "halfway")
        );
        let clear = Renewal {
            lease_duration: None,
            progress_percent: Some(50),
            progress_message: Some(String::new()),
        };
        renew(
            &mut job,
            &token,
            &clear,
            Duration::from_secs(30),
            2_000,
            0.0,
        )
        .expect("fresh lease");
        assert_eq!(
            (job.progress_percent, job.progress_message.as_str()),
            (50, "")
        );
    }
}
