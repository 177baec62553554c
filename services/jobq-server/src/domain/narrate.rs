//! The server's own lines in a job's log, told from the job's history: the
//! enqueue, each attempt's start and end, and clients' actions. They are not
//! stored as lines: they are derived from the records every transition
//! writes anyway, so the log always agrees with the history and a job that
//! writes nothing costs no log writes at all.

use std::time::Duration;

use super::clock::Millis;
use super::job::{AttemptOutcome, EntryKind, HistoryEntry, Job, JobState};

/// Line number of the line that closes a history entry: after any line the
/// worker may push during it.
pub const CLOSING_LINE: u32 = u32::MAX;

/// One line the server tells about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Narration {
    /// History entry (0: the enqueue).
    pub entry: i32,
    /// Line within the entry: 1 opens it, [`CLOSING_LINE`] closes it.
    pub line: u32,
    /// When it happened.
    pub time: Millis,
    /// What happened.
    pub message: String,
    /// The attempt it belongs to (its seq), 0 outside attempts.
    pub attempt: i32,
}

/// A wait as people read it: `1.5s` under a minute, else `1h 2m 5s`.
fn seconds(ms: Millis) -> String {
    let ms = ms.max(0) as u64;
    if ms < 60_000 {
        format!("{:.1}s", Duration::from_millis(ms).as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

/// Where the job went after an entry ended, as a clause.
fn next_step(job: &Job, entry: &HistoryEntry) -> String {
    let finished_at = entry.finished_at.unwrap_or(entry.started_at);
    match entry.then_state {
        Some(JobState::Retrying) => format!(
            "retry in {} (attempt {} of {})",
            seconds(entry.then_run_at.unwrap_or(finished_at) - finished_at),
            entry.number + 1,
            job.max_attempts
        ),
        Some(JobState::Queued) if entry.outcome == Some(AttemptOutcome::Released) => {
            "queued again; the attempt does not count".to_owned()
        }
        Some(JobState::Queued) => format!(
            "queued again (attempt {} of {})",
            entry.number + 1,
            job.max_attempts
        ),
        Some(JobState::Dead) if entry.number >= job.max_attempts => {
            format!("dead-lettered: all {} attempts used", job.max_attempts)
        }
        Some(JobState::Dead) => "dead-lettered: the failure is not retryable".to_owned(),
        Some(JobState::Cancelled) => "cancelled".to_owned(),
        Some(other) => format!("now {other}"),
        None => String::new(),
    }
}

fn closing(job: &Job, entry: &HistoryEntry) -> Option<String> {
    let outcome = entry.outcome?;
    let attempt = entry.number;
    let worker = &entry.worker_id;
    let error = entry.error.as_deref().unwrap_or("");
    let next = next_step(job, entry);
    Some(match outcome {
        AttemptOutcome::Succeeded if entry.cancel_requested => format!(
            "attempt {attempt} succeeded on worker {worker} before it stopped for the cancel requested"
        ),
        AttemptOutcome::Succeeded => format!("attempt {attempt} succeeded on worker {worker}"),
        AttemptOutcome::Failed => format!("attempt {attempt} failed: {error}; {next}"),
        AttemptOutcome::LeaseExpired => format!(
            "attempt {attempt} lost: no heartbeat from worker {worker} before its lease expired; {next}"
        ),
        AttemptOutcome::TimedOut => format!("{error}; {next}"),
        AttemptOutcome::Cancelled => {
            let reason = job.last_error.as_deref().unwrap_or("no reason given");
            format!("attempt {attempt} stopped on worker {worker} for a cancel ({reason})")
        }
        AttemptOutcome::Released => {
            format!("attempt {attempt} released by worker {worker} (shutting down); {next}")
        }
    })
}

/// Every line the server tells about `job` (its history filled in), in
/// log order.
pub fn narrate(job: &Job) -> Vec<Narration> {
    let mut lines = vec![Narration {
        entry: 0,
        line: 1,
        time: job.created_at,
        message: format!(
            "enqueued in queue {} (priority {}, at most {} attempts)",
            job.queue, job.priority, job.max_attempts
        ),
        attempt: 0,
    }];
    for entry in &job.history {
        match entry.kind {
            EntryKind::Attempt => {
                lines.push(Narration {
                    entry: entry.seq,
                    line: 1,
                    time: entry.started_at,
                    message: format!(
                        "attempt {} of {} leased by worker {}",
                        entry.number, job.max_attempts, entry.worker_id
                    ),
                    attempt: entry.seq,
                });
                if let Some(message) = closing(job, entry) {
                    lines.push(Narration {
                        entry: entry.seq,
                        line: CLOSING_LINE,
                        time: entry.finished_at.unwrap_or(entry.started_at),
                        message,
                        attempt: entry.seq,
                    });
                }
            }
            EntryKind::Cancelled => lines.push(Narration {
                entry: entry.seq,
                line: 1,
                time: entry.started_at,
                message: format!(
                    "cancelled: {}",
                    entry.error.as_deref().unwrap_or("no reason given")
                ),
                attempt: 0,
            }),
            EntryKind::Requeued => lines.push(Narration {
                entry: entry.seq,
                line: 1,
                time: entry.started_at,
                message: if entry.then_state == Some(JobState::Blocked) {
                    "queued again by a client; waiting for its dependencies".to_owned()
                } else {
                    "queued again by a client, attempts reset".to_owned()
                },
                attempt: 0,
            }),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn waits_read_as_people_write_them() {
        assert_eq!(seconds(1_500), "1.5s");
        assert_eq!(seconds(59_900), "59.9s");
        assert_eq!(seconds(3_602_000), "1h 2s");
        assert_eq!(seconds(-5), "0.0s");
    }
}
