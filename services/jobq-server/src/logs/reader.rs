//! Reading a job's log: the lines told from its history merged with the
//! lines stored in the record, after a position, a bounded page at a time.
//! A follower is just a reader that reads again when woken: it never lags,
//! and memory per follower is one page.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{LogLine, LogStore, LogStream, position};
use crate::domain::{CLOSING_LINE, Detail, JobId, JobQueue, QueueError, QueueResult, narrate};

/// One page of a job's log.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// Lines in position order (of the streams asked for).
    pub lines: Vec<LogLine>,
    /// Position to read after next time: the last line looked at (a line
    /// of another stream counts too).
    pub next_after: u64,
    /// There is more to read now.
    pub more: bool,
    /// The job is finished and its whole log has been read: no line will
    /// ever come after `next_after`.
    pub complete: bool,
}

/// Reads job logs.
#[derive(Clone)]
pub struct LogReader {
    queue: Arc<JobQueue>,
    logs: Arc<LogStore>,
}

impl LogReader {
    /// A reader over `logs`, with histories from `queue`.
    pub fn new(queue: Arc<JobQueue>, logs: Arc<LogStore>) -> Self {
        Self { queue, logs }
    }

    /// Up to `limit` lines after `after`, of `streams` (all if empty);
    /// `None` if the job does not exist.
    pub async fn page(
        &self,
        job_id: &JobId,
        after: u64,
        limit: usize,
        streams: &[LogStream],
    ) -> QueueResult<Option<LogPage>> {
        let job = match self.queue.get(job_id, Detail::History).await {
            Ok(job) => job,
            Err(QueueError::JobNotFound(_)) => return Ok(None),
            Err(other) => return Err(other),
        };
        let told: Vec<LogLine> = narrate(&job)
            .into_iter()
            .map(|line| LogLine {
                position: position(line.entry, line.line),
                time: line.time,
                attempt: line.attempt,
                stream: LogStream::System,
                message: line.message,
                fields: None,
                cseq: None,
            })
            .filter(|line| line.position > after)
            .collect();
        // A closing line may only be told once every line pushed during
        // its attempt is stored: pushes still under way finish first.
        if told.iter().any(|line| line.position as u32 == CLOSING_LINE) {
            self.logs.settled(job_id).await;
        }
        let stored = self.logs.stored(job_id, after, limit).await?;
        // Stored lines of entries this history does not know yet wait for
        // the next read, after the lines that open those entries.
        let mut frontier = position(job.history_seq.saturating_add(1), 0) - 1;
        let truncated = stored.len() == limit;
        if truncated && let Some(last) = stored.last() {
            frontier = frontier.min(last.position);
        }
        let mut merged: Vec<LogLine> = told
            .into_iter()
            .chain(stored)
            .filter(|line| line.position <= frontier)
            .collect();
        merged.sort_by_key(|line| line.position);
        let more = truncated || merged.len() > limit;
        merged.truncate(limit);
        let next_after = merged.last().map_or(after, |line| line.position);
        let complete = job.state.is_terminal() && !more;
        let lines = merged
            .into_iter()
            .filter(|line| streams.is_empty() || streams.contains(&line.stream))
            .collect();
        Ok(Some(LogPage {
            lines,
            next_after,
            more,
            complete,
        }))
    }

    /// Resolves when `job_id`'s log may have grown: a line stored, a change
    /// of the job, or at the latest after `patience` (a change on another
    /// replica that was not announced here).
    pub async fn changed(
        &self,
        job_id: &JobId,
        appended: &mut tokio::sync::broadcast::Receiver<JobId>,
        events: &mut tokio::sync::broadcast::Receiver<crate::domain::JobEvent>,
        patience: Duration,
    ) {
        let wait_appended = async {
            loop {
                match appended.recv().await {
                    Ok(id) if &id == job_id => return,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                }
            }
        };
        let wait_event = async {
            loop {
                match events.recv().await {
                    Ok(event) if &event.job.id == job_id => return,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                }
            }
        };
        tokio::select! {
            () = wait_appended => {}
            () = wait_event => {}
            () = tokio::time::sleep(patience) => {}
        }
    }

    /// Wake-ups for a follower, taken before its first read so none is missed.
    pub fn subscribe(
        &self,
    ) -> (
        tokio::sync::broadcast::Receiver<JobId>,
        tokio::sync::broadcast::Receiver<crate::domain::JobEvent>,
    ) {
        (self.logs.appended(), self.queue.subscribe())
    }

    /// The queue, for its shutdown token.
    pub fn queue(&self) -> &Arc<JobQueue> {
        &self.queue
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{CompleteReport, FailReport, LeaseToken};
    use crate::logs::NewLine;
    use crate::testkit::{Fixture, lease_request, spec};

    fn lines(n: usize, from: usize) -> Vec<NewLine> {
        (from..from + n)
            .map(|i| NewLine {
                stream: LogStream::Stdout,
                time: 0,
                message: format!("line {i}"),
                fields: None,
                cseq: Some(i as u64),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_log_is_the_history_with_pushed_lines_in_their_attempts_and_pages_never_skip() {
        let fx = Fixture::new().await;
        let reader = LogReader::new(fx.queue.clone(), fx.logs.clone());
        let (job, _) = fx
            .queue
            .enqueue(vec![(spec(2), "job".into())], None)
            .await
            .expect("enqueue")
            .remove(0);
        let first = fx
            .queue
            .lease(lease_request(1, Duration::from_secs(10)))
            .await
            .expect("lease")
            .remove(0);
        fx.logs
            .push(&job.id, &first.lease_token, lines(3, 1))
            .await
            .expect("push");
        // A retried push of the same lines stores nothing more.
        let again = fx
            .logs
            .push(&job.id, &first.lease_token, lines(3, 1))
            .await
            .expect("push");
        assert_eq!((again.accepted, again.duplicates), (0, 3));
        fx.queue
            .fail_many(vec![FailReport {
                job_id: job.id.clone(),
                lease_token: first.lease_token.clone(),
                error: "boom".into(),
                retryable: true,
                retry_after: Some(Duration::ZERO),
            }])
            .await
            .expect("fail");
        // The old lease pushes nothing any more.
        assert!(
            fx.logs
                .push(&job.id, &first.lease_token, lines(1, 9))
                .await
                .is_err()
        );
        let second = fx
            .queue
            .lease(lease_request(1, Duration::from_secs(10)))
            .await
            .expect("lease")
            .remove(0);
        fx.logs
            .push(&job.id, &second.lease_token, lines(2, 1))
            .await
            .expect("push");
        fx.queue
            .complete_many(vec![CompleteReport {
                job_id: job.id.clone(),
                lease_token: second.lease_token.clone(),
                result: None,
            }])
            .await
            .expect("complete");

        let whole = reader
            .page(&job.id, 0, 100, &[])
            .await
            .expect("read")
            .expect("job exists");
        assert!(whole.complete && !whole.more);
        let positions: Vec<u64> = whole.lines.iter().map(|line| line.position).collect();
        assert_eq!(
            positions,
            vec![
                position(0, 1),
                position(1, 1),
                position(1, 2),
                position(1, 3),
                position(1, 4),
                position(1, CLOSING_LINE),
                position(2, 1),
                position(2, 2),
                position(2, 3),
                position(2, CLOSING_LINE),
            ]
        );
        assert!(whole.lines[5].message.starts_with("attempt 1 failed: boom"));
        // Page by page, three lines at a time: the same lines, none twice.
        let mut paged = Vec::new();
        let mut after = 0;
        loop {
            let page = reader
                .page(&job.id, after, 3, &[])
                .await
                .expect("read")
                .expect("job exists");
            paged.extend(page.lines.iter().map(|line| line.position));
            after = page.next_after;
            if page.complete {
                break;
            }
        }
        assert_eq!(paged, positions);
        // Only one stream: the cursor still moves past the others.
        let stdout = reader
            .page(&job.id, 0, 100, &[LogStream::Stdout])
            .await
            .expect("read")
            .expect("job exists");
        assert_eq!(stdout.lines.len(), 5);
        assert_eq!(stdout.next_after, position(2, CLOSING_LINE));
        let _ = LeaseToken::generate();
    }
}
