//! [`NewJob`]: a builder for the [`JobSpec`] of a job to enqueue.

use std::time::{Duration, SystemTime};

use jobq_proto::v1::{JobSpec, RetryPolicy};

use crate::convert::{proto_duration, proto_timestamp, proto_value};
use crate::error::ClientError;

/// A job to enqueue. Unset knobs take the server's defaults.
///
/// ```
/// use std::time::Duration;
/// let spec = jobq_client::NewJob::new("channel_download", serde_json::json!({ "url": "https://example.com/c" }))
///     .queue("media")
///     .priority(5)
///     .timeout(Duration::from_secs(3600))
///     .unique_key("channel:example")
///     .into_spec();
/// assert_eq!(spec.queue, "media");
/// ```
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    spec: JobSpec,
}

impl NewJob {
    /// A job of `job_type` with a JSON payload.
    pub fn new(job_type: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            spec: JobSpec {
                r#type: job_type.into(),
                payload: Some(proto_value(payload)),
                ..JobSpec::default()
            },
        }
    }

    /// A job of `job_type` whose payload is JSON text.
    pub fn from_json_text(job_type: impl Into<String>, payload: &str) -> Result<Self, ClientError> {
        Ok(Self::new(job_type, serde_json::from_str(payload)?))
    }

    /// Queue name (default `default`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.spec.queue = queue.into();
        self
    }

    /// Priority, -1000..1000; higher runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.spec.priority = priority;
        self
    }

    /// Do not run before now + `delay`. Replaces [`NewJob::run_at`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.spec.delay = Some(proto_duration(delay));
        self.spec.run_at = None;
        self
    }

    /// Do not run before `time`. Replaces [`NewJob::delay`].
    pub fn run_at(mut self, time: SystemTime) -> Self {
        self.spec.run_at = Some(proto_timestamp(time));
        self.spec.delay = None;
        self
    }

    /// Attempts before the job is dead-lettered.
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.spec.max_attempts = attempts;
        self
    }

    /// Longest run time of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.timeout = Some(proto_duration(timeout));
        self
    }

    /// Backoff between attempts: `min(max, base * 2^(attempt-1))`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.spec.retry_policy = Some(RetryPolicy {
            base_backoff: Some(proto_duration(base)),
            max_backoff: Some(proto_duration(max)),
        });
        self
    }

    /// While a job with this key is not finished, enqueuing returns it instead of a new one.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.spec.unique_key = key.into();
        self
    }

    /// Runs the job under a concurrency key: at most `limit` jobs with the
    /// key run at once, across all workers and servers.
    pub fn concurrency_key(mut self, key: impl Into<String>, limit: i32) -> Self {
        self.spec.concurrency_key = key.into();
        self.spec.concurrency_limit = limit;
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.spec.tags.push(tag.into());
        self
    }

    /// The job that spawned this one.
    pub fn parent(mut self, parent_id: impl Into<String>) -> Self {
        self.spec.parent_id = parent_id.into();
        self
    }

    /// A job that must succeed before this one runs (call again for more).
    pub fn depends_on(mut self, job_id: impl Into<String>) -> Self {
        self.spec.depends_on.push(job_id.into());
        self
    }

    /// W3C traceparent to continue in the worker.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.spec.traceparent = traceparent.into();
        self
    }

    /// The protobuf spec.
    pub fn into_spec(self) -> JobSpec {
        self.spec
    }
}

impl From<NewJob> for JobSpec {
    fn from(job: NewJob) -> Self {
        job.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_and_run_at_replace_each_other() {
        let spec = NewJob::new("t", serde_json::json!({}))
            .run_at(SystemTime::now())
            .delay(Duration::from_secs(1))
            .into_spec();
        assert!(spec.run_at.is_none() && spec.delay.is_some());
        let spec = NewJob::new("t", serde_json::json!({}))
            .delay(Duration::from_secs(1))
            .run_at(SystemTime::now())
            .into_spec();
        assert!(spec.run_at.is_some() && spec.delay.is_none());
    }

    #[test]
    fn payload_is_serialized() {
        let spec = NewJob::new("t", serde_json::json!({"a": 1}))
            .depends_on("x")
            .depends_on("y")
            .into_spec();
        assert_eq!(
            spec.payload.as_ref().map(crate::convert::json_value),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(spec.depends_on, vec!["x", "y"]);
    }
}
