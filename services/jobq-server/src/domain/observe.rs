//! What the queue tells an observer (metrics, traces) after each commit.
//! Changes made by this server are told as such, so that counters summed
//! over replicas count each event once; other replicas' changes are told
//! apart, for tallies that want them.

use super::clock::Millis;
use super::job::{Job, JobEvent};
use super::store::Applied;

/// Told of committed changes, right after the commit, on the caller's task:
/// it must not block or wait.
pub trait JobObserver: Send + Sync {
    /// New jobs were stored.
    fn created(&self, jobs: &[&Job], now: Millis);
    /// Stored jobs changed (a lease, a report, a retry, a cancel, an expiry…).
    fn changed(&self, applied: &[Applied], now: Millis);
    /// Jobs were deleted.
    fn deleted(&self, jobs: &[&Job], now: Millis);
    /// Another replica announced these changes (only while some replica
    /// watches; see store::peers). Counters must not count them again.
    fn remote(&self, _events: &[JobEvent]) {}
}
