//! A job's life as spans in the trace its enqueue started: each lease, each
//! attempt's end, the retry, the dead letter, the cancel — and, at debug
//! level, as log lines carrying the job's id, type, queue, attempt and trace
//! id. Costs nothing unless spans are exported or debug lines are on.

use crate::domain::{Applied, Job, JobEvent, JobObserver, JobState, Millis};

/// Emits the lifecycle spans.
#[derive(Debug, Default)]
pub struct LifecycleSpans;

/// A short span named `name` under the job's trace.
fn job_span(job: &Job, name: &str, traceparent: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        otel.name = name,
        job_id = %job.id,
        job_type = %job.job_type,
        queue = %job.queue,
        attempt = job.attempt,
        trace_id = jobq_telemetry::propagation::trace_id_of(traceparent).unwrap_or_default(),
        state = job.state.as_str(),
        outcome = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    jobq_telemetry::propagation::set_parent(&span, traceparent);
    span
}

/// What a change is called in a trace.
fn event_name(change: &Applied) -> Option<&'static str> {
    let Applied { before, job, entry } = change;
    if before.state == job.state {
        return None;
    }
    Some(match job.state {
        JobState::Running => "job.started",
        JobState::Retrying => "job.retry_scheduled",
        JobState::Dead => "job.dead_lettered",
        JobState::Cancelled => "job.cancelled",
        JobState::Succeeded => "job.succeeded",
        JobState::Queued if entry.as_ref().is_some_and(|entry| entry.is_attempt()) => {
            "job.requeued"
        }
        JobState::Queued => "job.ready",
        JobState::Scheduled | JobState::Blocked => return None,
    })
}

impl JobObserver for LifecycleSpans {
    fn created(&self, _jobs: &[&Job], _now: Millis) {}

    fn changed(&self, applied: &[Applied], _now: Millis) {
        let exporting = jobq_telemetry::exporting();
        if !exporting && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        for change in applied {
            let traceparent = change.job.traceparent.as_deref().unwrap_or_default();
            if traceparent.is_empty() && !tracing::enabled!(tracing::Level::DEBUG) {
                continue;
            }
            let Some(name) = event_name(change) else {
                continue;
            };
            let span = job_span(&change.job, name, traceparent);
            if let Some(entry) = change.entry.as_ref().filter(|entry| entry.is_attempt()) {
                if let Some(outcome) = entry.outcome {
                    span.record("outcome", outcome.as_str());
                }
                if let Some(error) = &entry.error {
                    span.record("error", error.as_str());
                }
            }
            span.in_scope(|| tracing::debug!(event = name, "job {}", change.job.state.as_str()));
        }
    }

    fn deleted(&self, _jobs: &[&Job], _now: Millis) {}
}

/// Tells several observers.
pub struct Observers(pub Vec<std::sync::Arc<dyn JobObserver>>);

impl JobObserver for Observers {
    fn created(&self, jobs: &[&Job], now: Millis) {
        for observer in &self.0 {
            observer.created(jobs, now);
        }
    }

    fn changed(&self, applied: &[Applied], now: Millis) {
        for observer in &self.0 {
            observer.changed(applied, now);
        }
    }

    fn deleted(&self, jobs: &[&Job], now: Millis) {
        for observer in &self.0 {
            observer.deleted(jobs, now);
        }
    }

    fn remote(&self, events: &[JobEvent]) {
        for observer in &self.0 {
            observer.remote(events);
        }
    }
}
