//! Waiting without sleeping blindly: poll a condition until it holds, and put
//! a bound on anything that could hang.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

/// Pause between two probes of [`eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns
/// that value; fails when `within` has passed first (`what` says what was
/// awaited) or when the probe itself fails (a server error is no reason to
/// keep trying).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        let outcome = tokio::time::timeout_at(deadline, probe())
            .await
            .with_context(|| {
                format!("timed out after {within:?} waiting for {what} (a probe hung)")
            })?;
        if let Some(value) =
            outcome.with_context(|| format!("probe failed while waiting for {what}"))?
        {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `future` for at most `limit`; `what` names it in the error.
pub async fn bounded<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))
}
