//! What a job type runs: the [`Handler`] trait, and the error that says
//! whether a failed attempt is worth retrying.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use super::context::JobContext;

/// What a handler returns: a JSON result (`Value::Null` for none) or why the attempt failed.
pub type JobResult = Result<serde_json::Value, JobError>;

/// The code of one job type. Implement it on a struct with `#[async_trait]`
/// (re-exported as [`crate::async_trait`]), or wrap a closure with [`handler_fn`].
///
/// A handler should watch [`JobContext::cancelled`]: the runtime cancels it
/// when the job is cancelled, times out, loses its lease or the worker shuts
/// down, and aborts it if it has not returned within the worker's cancel grace.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of a job.
    async fn run(&self, ctx: JobContext) -> JobResult;
}

/// A [`Handler`] made from an async closure; see [`handler_fn`].
pub struct FnHandler<F> {
    function: F,
}

/// Wraps `async |ctx| -> JobResult` as a [`Handler`].
pub fn handler_fn<F, Fut>(function: F) -> FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    FnHandler { function }
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    async fn run(&self, ctx: JobContext) -> JobResult {
        (self.function)(ctx).await
    }
}

/// Why an attempt failed, and whether another attempt could do better.
///
/// Any `std::error::Error` converts into a *retryable* `JobError`, so `?`
/// works on I/O and network calls; mark input problems fatal with
/// [`JobError::fatal`] or [`ResultExt::fatal`], so the job goes straight to the
/// dead-letter queue instead of burning its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl JobError {
    /// A failure another attempt may get past (network, a busy service...).
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure no retry can fix (bad input): the job is dead-lettered at once.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Asks for the next attempt after `delay` instead of the job's backoff.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Prefixes the message with `context`: `"context: message"`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The requested wait before the next attempt, if any.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.retryable { "retryable" } else { "fatal" };
        write!(f, "{} ({kind})", self.message)
    }
}

// JobError is deliberately not a std Error, so this blanket conversion does
// not collide with `From<T> for T` (the same trick as anyhow).
impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        JobError::retryable(message)
    }
}

/// Turns any `Result` into a `JobResult`-friendly one, so `?` reads naturally:
/// `parse(&payload).fatal()?`, `fetch(url).await.retryable_context("fetching")?`.
pub trait ResultExt<T> {
    /// Any error becomes a fatal [`JobError`].
    fn fatal(self) -> Result<T, JobError>;
    /// Any error becomes a retryable [`JobError`].
    fn retryable(self) -> Result<T, JobError>;
    /// Any error becomes a fatal [`JobError`] prefixed with `context`.
    fn fatal_context(self, context: impl fmt::Display) -> Result<T, JobError>;
    /// Any error becomes a retryable [`JobError`] prefixed with `context`.
    fn retryable_context(self, context: impl fmt::Display) -> Result<T, JobError>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn fatal(self) -> Result<T, JobError> {
        self.map_err(JobError::fatal)
    }

    fn retryable(self) -> Result<T, JobError> {
        self.map_err(JobError::retryable)
    }

    fn fatal_context(self, context: impl fmt::Display) -> Result<T, JobError> {
        self.map_err(|error| JobError::fatal(format!("{context}: {error}")))
    }

    fn retryable_context(self, context: impl fmt::Display) -> Result<T, JobError> {
        self.map_err(|error| JobError::retryable(format!("{context}: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_failure() -> Result<(), std::io::Error> {
        Err(std::io::Error::other("disk on fire"))
    }

    fn uses_question_mark() -> Result<(), JobError> {
        io_failure()?;
        Ok(())
    }

    #[test]
    fn std_errors_convert_to_retryable() {
        let error = uses_question_mark().err();
        assert_eq!(error, Some(JobError::retryable("disk on fire")));
    }

    #[test]
    fn result_ext_marks_fatal_with_context() {
        let error = io_failure().fatal_context("reading payload").err();
        let error = error.as_ref();
        assert_eq!(error.map(JobError::is_retryable), Some(false));
        assert_eq!(
            error.map(JobError::message),
            Some("reading payload: disk on fire")
        );
    }

    #[test]
    fn retry_after_is_kept() {
        let error = JobError::retryable("busy").retry_after(Duration::from_secs(3));
        assert_eq!(error.retry_delay(), Some(Duration::from_secs(3)));
        assert_eq!(error.to_string(), "busy (retryable)");
    }
}
