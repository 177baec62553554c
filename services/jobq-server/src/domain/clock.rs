//! Time, through one seam, so the rules can be tested at any instant.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit every stored time uses.
pub type Millis = i64;

/// Where the queue reads the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as Millis)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Millis {
        (**self).now()
    }
}

/// A clock that only moves when told to: the rules can be tested at any
/// instant without waiting (leases, backoff, the reaper, the promoter).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: std::sync::atomic::AtomicI64,
}

impl ManualClock {
    /// A clock standing at `now`.
    pub fn at(now: Millis) -> Self {
        Self {
            now: std::sync::atomic::AtomicI64::new(now),
        }
    }

    /// Moves the clock forward by `duration`.
    pub fn advance(&self, duration: std::time::Duration) {
        let ms = duration.as_millis().min(i64::MAX as u128) as i64;
        self.now.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets the clock to `now`.
    pub fn set(&self, now: Millis) {
        self.now.store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
}
