//! Capped exponential backoff with jitter, under an overall deadline.

use std::time::Duration;

/// How long to keep retrying, and how long to pause at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total time one call may spend retrying.
    pub deadline: Duration,
    /// First pause; doubles each attempt.
    pub base: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(60),
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `attempt` (0-based): half the capped
    /// exponential step plus a random share of the other half ("equal jitter").
    pub fn backoff(&self, attempt: u32, random: u64) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let half = step / 2;
        let spread = (half.as_micros() as u64).max(1);
        half + Duration::from_micros(random % spread)
    }

    /// The pause before retry `attempt` if it still fits before the deadline,
    /// given the time `spent` so far.
    pub fn next_pause(&self, attempt: u32, spent: Duration, random: u64) -> Option<Duration> {
        let pause = self.backoff(attempt, random);
        (spent + pause <= self.deadline).then_some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_is_capped() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(60),
            base: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
        };
        // With no jitter the pause is half the step.
        assert_eq!(p.backoff(0, 0), Duration::from_millis(50));
        assert_eq!(p.backoff(1, 0), Duration::from_millis(100));
        assert_eq!(p.backoff(3, 0), Duration::from_millis(400));
        assert_eq!(p.backoff(10, 0), Duration::from_millis(500));
        assert_eq!(p.backoff(200, 0), Duration::from_millis(500));
        // Jitter never exceeds the step.
        for r in [1, 999, u64::MAX] {
            assert!(p.backoff(10, r) <= Duration::from_millis(1000));
            assert!(p.backoff(10, r) >= Duration::from_millis(500));
        }
    }

    #[test]
    fn stops_at_the_deadline() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(1),
            base: Duration::from_millis(400),
            max_backoff: Duration::from_secs(5),
        };
        assert!(p.next_pause(0, Duration::ZERO, 0).is_some());
        assert!(p.next_pause(0, Duration::from_millis(900), 0).is_none());
    }
}
