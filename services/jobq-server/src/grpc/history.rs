//! GetJobHistory and WatchJobHistory: the request checked into a
//! [`HistoryQuery`], points converted back, and the task behind a watch.

use std::sync::Arc;
use std::time::Duration;

use jobq_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert::{self, proto_duration, timestamp};
use crate::domain::{
    HistoryPoint, HistoryQuery, JobHistory, LatencyHistogram, MINUTE, Millis, QueueError,
    QueueResult,
};

/// Longest step accepted: a year.
const MAX_STEP: Duration = Duration::from_secs(366 * 24 * 3600);
/// Most queue or type names one request may filter on.
const MAX_FILTER_NAMES: usize = 100;
/// How long a watch waits after a minute closes here before it reads the
/// minute back: the other replicas (their clocks a little apart) write
/// their rows of it meanwhile.
const PEER_WRITE_WAIT: Duration = Duration::from_secs(2);

fn names(raw: Vec<String>, field: &str) -> QueueResult<Vec<String>> {
    if raw.len() > MAX_FILTER_NAMES {
        return Err(QueueError::invalid(
            field,
            format!("at most {MAX_FILTER_NAMES} names"),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(index, name)| convert::name(name, &format!("{field}[{index}]")))
        .collect()
}

/// The query a request asks for, at `now`; also whether its window slides
/// (no end_time).
pub fn query_of(
    request: pb::GetJobHistoryRequest,
    now: Millis,
) -> QueueResult<(HistoryQuery, bool)> {
    let start = request
        .start_time
        .as_ref()
        .map(|ts| convert::millis_of(ts, "start_time"))
        .transpose()?;
    let end = request
        .end_time
        .as_ref()
        .map(|ts| convert::millis_of(ts, "end_time"))
        .transpose()?;
    let step = match &request.step {
        None => None,
        Some(step) => {
            let step = convert::duration_of(step, "step", MAX_STEP)?;
            // Sub-millisecond parts would be lost below: refuse them here.
            if step.as_nanos() % (MINUTE as u128 * 1_000_000) != 0 {
                return Err(QueueError::invalid(
                    "step",
                    "must be a whole number of minutes",
                ));
            }
            Some(step.as_millis() as Millis)
        }
    };
    let mut query = HistoryQuery::new(start, end, step, now)?;
    query.queues = names(request.queues, "queues")?;
    query.types = names(request.types, "types")?;
    query.by_queue = request.by_queue;
    query.by_type = request.by_type;
    Ok((query, end.is_none()))
}

fn summary(histogram: &LatencyHistogram) -> pb::LatencySummary {
    let summary = histogram.summary();
    let duration = |ms: Millis| proto_duration(Duration::from_millis(ms.max(0) as u64));
    pb::LatencySummary {
        count: summary.count as i64,
        p50: Some(duration(summary.p50)),
        p90: Some(duration(summary.p90)),
        p99: Some(duration(summary.p99)),
        max: Some(duration(summary.max)),
    }
}

fn proto_point(point: HistoryPoint, step: Millis) -> pb::HistoryPoint {
    let stats = point.stats;
    pb::HistoryPoint {
        start_time: Some(timestamp(point.start)),
        step: Some(proto_duration(Duration::from_millis(step as u64))),
        queue: point.queue.unwrap_or_default(),
        r#type: point.job_type.unwrap_or_default(),
        enqueued: stats.enqueued,
        started: stats.started,
        succeeded: stats.succeeded,
        failed: stats.failed,
        dead: stats.dead,
        cancelled: stats.cancelled,
        wait: Some(summary(&stats.wait)),
        run: Some(summary(&stats.run)),
    }
}

/// The answer to `query`.
pub async fn answer(
    history: &JobHistory,
    query: &HistoryQuery,
) -> QueueResult<pb::GetJobHistoryResponse> {
    let points = history.query(query).await?;
    Ok(pb::GetJobHistoryResponse {
        points: points
            .into_iter()
            .map(|point| proto_point(point, query.step))
            .collect(),
        retention: Some(proto_duration(history.retention())),
    })
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; watch again (on this or another server)")
}

/// Feeds one WatchJobHistory client: the whole window, then the bucket of
/// each minute this server closes (read again whole, so other replicas'
/// rows of it count too), until the client hangs up or the server stops.
pub async fn watch_history(
    history: Arc<JobHistory>,
    query: HistoryQuery,
    sliding: bool,
    sender: mpsc::Sender<Result<pb::GetJobHistoryResponse, Status>>,
    shutdown: CancellationToken,
) {
    // Subscribed before the first read: a minute closing meanwhile is sent again.
    let mut closed = history.subscribe();
    let mut message = answer(&history, &query).await;
    loop {
        let failed = message.is_err();
        let sent = tokio::select! {
            sent = sender.send(message.map_err(Status::from)) => sent.is_ok(),
            () = shutdown.cancelled() => {
                let _ = sender.try_send(Err(shutting_down()));
                return;
            }
        };
        if !sent || failed {
            return;
        }
        let minute = loop {
            tokio::select! {
                minute = closed.recv() => match minute {
                    Ok(minute) if minute < query.start || (!sliding && minute >= query.end) => continue,
                    Ok(minute) => break minute,
                    // Only the latest minute matters; older ones were sent or are gone.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
                () = sender.closed() => return,
                () = shutdown.cancelled() => {
                    let _ = sender.send(Err(shutting_down())).await;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(PEER_WRITE_WAIT) => {}
            () = sender.closed() => return,
            () = shutdown.cancelled() => {
                let _ = sender.send(Err(shutting_down())).await;
                return;
            }
        }
        let start = minute.div_euclid(query.step) * query.step;
        let mut bucket = query.clone();
        bucket.start = start;
        bucket.end = if sliding {
            start + query.step
        } else {
            (start + query.step).min(query.end)
        };
        message = answer(&history, &bucket).await;
    }
}
