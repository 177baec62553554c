//! `noop`: does nothing, optionally after a while, optionally failing — for
//! smoke tests, demos and the latency benchmark.
//!
//! Payload (all optional): `sleep_ms` (≤ 24 h), `log_lines` (≤ 10,000 stdout
//! lines written first), `fail` (`"retryable"` or `"fatal"`), `result` (any
//! JSON, returned as the job's result).

use std::time::Duration;

use jobq_client::{Handler, JobContext, JobError, JobResult, async_trait};
use serde::Deserialize;
use tracing::Instrument;

/// Longest sleep accepted.
const MAX_SLEEP_MS: u64 = 24 * 3600 * 1000;

/// The payload of a `noop` job.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopPayload {
    /// Sleep this long (watching for cancellation).
    #[serde(default)]
    pub sleep_ms: u64,
    /// Write this many stdout lines first.
    #[serde(default)]
    pub log_lines: u32,
    /// Fail instead of succeeding: `retryable` or `fatal`.
    #[serde(default)]
    pub fail: Option<String>,
    /// The result to return.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// The `noop` handler.
#[derive(Debug, Clone, Copy)]
pub struct NoopHandler;

#[async_trait]
impl Handler for NoopHandler {
    async fn run(&self, ctx: JobContext) -> JobResult {
        // A handler's own span, nested under the attempt's (and in its trace).
        let span = tracing::info_span!("noop", job_id = ctx.id());
        self.run_in(ctx).instrument(span).await
    }
}

impl NoopHandler {
    async fn run_in(&self, ctx: JobContext) -> JobResult {
        let payload: NoopPayload = ctx.payload()?;
        if payload.sleep_ms > MAX_SLEEP_MS {
            return Err(JobError::fatal("payload.sleep_ms: at most 86400000 (24 h)"));
        }
        if payload.log_lines > 10_000 {
            return Err(JobError::fatal("payload.log_lines: at most 10000"));
        }
        for line in 1..=payload.log_lines {
            ctx.log()
                .stdout(format!("line {line} of {}", payload.log_lines));
        }
        if payload.sleep_ms > 0 {
            ctx.progress(0, "sleeping");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(payload.sleep_ms)) => {}
                () = ctx.cancelled() => return Err(ctx.stopped_error()),
            }
            ctx.progress(100, "slept");
        }
        match payload.fail.as_deref() {
            None => Ok(payload.result.unwrap_or(serde_json::Value::Null)),
            Some("retryable") => Err(JobError::retryable("failing on request (payload.fail)")),
            Some("fatal") => Err(JobError::fatal("failing on request (payload.fail)")),
            Some(other) => Err(JobError::fatal(format!(
                "payload.fail: {other:?} is neither \"retryable\" nor \"fatal\""
            ))),
        }
    }
}
