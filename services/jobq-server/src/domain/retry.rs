//! Exponential backoff between attempts.

use std::time::Duration;

/// How long a job waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    /// Wait after the first failed attempt.
    pub base_backoff: Duration,
    /// Longest wait.
    pub max_backoff: Duration,
}

/// Largest share of the delay added at random, so retries of jobs that failed
/// together spread out instead of hitting the same dependency at once.
const JITTER_FRACTION: f64 = 0.2;

impl RetryPolicy {
    /// Wait before the attempt after `failed_attempt` (1-based):
    /// `min(max, base * 2^(failed_attempt-1))`, plus `jitter` (0.0..1.0) times 20% of it.
    pub fn delay_after(&self, failed_attempt: i32, jitter: f64) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).clamp(0, 62) as u32;
        let factor = 2u64.saturating_pow(exponent);
        let base_ms = self.base_backoff.as_millis().min(u128::from(u64::MAX)) as u64;
        let max_ms = self.max_backoff.as_millis().min(u128::from(u64::MAX)) as u64;
        let capped = base_ms.saturating_mul(factor).min(max_ms);
        let jitter_ms = (capped as f64 * JITTER_FRACTION * jitter.clamp(0.0, 1.0)) as u64;
        Duration::from_millis(capped.saturating_add(jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_then_caps() {
        let policy = RetryPolicy {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        };
        let delays: Vec<_> = (1..=6)
            .map(|n| policy.delay_after(n, 0.0).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_adds_at_most_a_fifth() {
        let policy = RetryPolicy {
            base_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(100),
        };
        assert_eq!(policy.delay_after(1, 1.0), Duration::from_secs(12));
        assert_eq!(policy.delay_after(1, 0.5), Duration::from_secs(11));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let policy = RetryPolicy {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
        };
        assert_eq!(policy.delay_after(i32::MAX, 0.0), Duration::from_secs(3600));
    }
}
