//! The one heartbeat loop of a worker: renews every lease in one call, sends
//! progress, and stops jobs the server says must stop — or whose lease ran
//! out while the server could not be reached.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use jobq_proto::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::backoff::Backoff;
use super::context::{ActiveJob, StopCause};
use crate::convert::proto_duration;

/// Most leases in one Heartbeat call (the server's limit).
const MAX_LEASES_PER_CALL: usize = 1000;

/// Runs until `stop` fires.
pub(crate) async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut next_beat = Instant::now() + config.heartbeat_interval;
    let mut last_sent = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next_beat) => {}
            () = shared.progress_wake.notified() => {
                // Progress goes out early, but not more often than the progress interval.
                let earliest = last_sent + config.progress_interval;
                if !failing && earliest < next_beat {
                    next_beat = earliest;
                }
                continue;
            }
        }
        let jobs: Vec<Arc<ActiveJob>> = shared
            .active_jobs()
            .into_iter()
            .filter(|job| job.stop_cause() != Some(StopCause::LeaseLost))
            .collect();
        last_sent = Instant::now();
        if jobs.is_empty() {
            next_beat = last_sent + config.heartbeat_interval;
            continue;
        }
        let mut all_ok = true;
        for chunk in jobs.chunks(MAX_LEASES_PER_CALL) {
            let span = tracing::info_span!(
                "heartbeat",
                otel.name = "jobq.heartbeat",
                jobs = chunk.len()
            );
            if !beat(&shared, chunk).instrument(span).await {
                all_ok = false;
            }
        }
        if all_ok {
            if failing {
                tracing::info!("heartbeats go through again");
            }
            failing = false;
            backoff.reset();
            next_beat = Instant::now() + config.heartbeat_interval;
        } else {
            failing = true;
            let delay = backoff.next_delay().min(config.heartbeat_interval);
            next_beat = Instant::now() + delay;
            drop_expired_leases(&shared);
        }
    }
}

/// One Heartbeat call for `jobs`; false when the server could not be reached.
async fn beat(shared: &Shared, jobs: &[Arc<ActiveJob>]) -> bool {
    let config = &shared.config;
    let sent_at = Instant::now();
    let progress: Vec<Option<super::context::Progress>> =
        jobs.iter().map(|job| job.take_progress()).collect();
    let leases = jobs
        .iter()
        .zip(&progress)
        .map(|(job, progress)| pb::LeaseProgress {
            lease: Some(job.lease.clone()),
            progress_percent: progress.as_ref().map(|progress| progress.percent),
            progress_message: progress.as_ref().map(|progress| progress.message.clone()),
        })
        .collect();
    let request = pb::HeartbeatRequest {
        worker_id: config.worker_id.clone(),
        leases,
        lease_duration: Some(proto_duration(config.lease_duration)),
    };
    let timeout = shared
        .client
        .config()
        .request_timeout()
        .min(config.heartbeat_interval.max(Duration::from_secs(1)));
    let answer =
        tokio::time::timeout(timeout, shared.client.worker_service().heartbeat(request)).await;
    let results = match answer {
        Ok(Ok(response)) => response.into_inner().results,
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), "heartbeat failed (server unreachable?), retrying: {}", status.message());
            restore(jobs, progress);
            return false;
        }
        Err(_) => {
            tracing::warn!(?timeout, "heartbeat got no answer, retrying");
            restore(jobs, progress);
            return false;
        }
    };
    for job in jobs {
        let Some(result) = results.iter().find(|result| result.job_id == job.job_id()) else {
            tracing::warn!(
                job_id = job.job_id(),
                "the heartbeat answer says nothing about a job; keeping it"
            );
            continue;
        };
        if result.stop {
            let cause = StopCause::from_reason(result.reason());
            tracing::info!(
                job_id = job.job_id(),
                ?cause,
                "the server says the job must stop"
            );
            job.stop(cause);
        } else {
            job.renew(sent_at + config.lease_duration);
        }
    }
    true
}

fn restore(jobs: &[Arc<ActiveJob>], progress: Vec<Option<super::context::Progress>>) {
    for (job, progress) in jobs.iter().zip(progress) {
        if let Some(progress) = progress {
            job.restore_progress(progress);
        }
    }
}

/// Jobs whose lease must have run out by now (counting from the last
/// heartbeat the server answered) are the server's again: stop them.
fn drop_expired_leases(shared: &Shared) {
    let now = Instant::now();
    for job in shared.active_jobs() {
        if job.stop_cause().is_none() && job.lease_valid_until() <= now {
            tracing::warn!(
                job_id = job.job_id(),
                "lease ran out while the server was unreachable; stopping the job"
            );
            job.stop(StopCause::LeaseLost);
        }
    }
}
