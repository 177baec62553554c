//! Capped exponential backoff (with jitter) for calls to a server that is
//! down, on top of the `backon` crate's delay sequence.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays between retries: `min`, doubling, never above `max`, with jitter;
/// [`Backoff::reset`] after a success starts again from `min`.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Back to the shortest delay.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(
            delays.iter().all(|delay| *delay <= Duration::from_secs(1)),
            "{delays:?}"
        );
        assert!(delays[0] >= Duration::from_millis(100), "{delays:?}");
        assert!(
            delays[11] >= Duration::from_millis(500),
            "reaches the cap region: {delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(250));
    }
}
