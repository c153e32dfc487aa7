//! Retry policy of jobs that hit transient failures: exponential backoff with a cap.

use std::time::Duration;

use crate::config::{ConfigError, Env};

/// How often and how patiently a job is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// `JOB_MAX_ATTEMPTS`: attempts in all, the first included (default 4: one try and three
    /// retries after 5 s, 10 s and 20 s).
    pub max_attempts: u32,
    /// `JOB_RETRY_INITIAL_DELAY_MS`: delay before the first retry.
    pub initial_delay: Duration,
    /// `JOB_RETRY_MULTIPLIER`: growth factor of the delay.
    pub multiplier: f64,
    /// `JOB_RETRY_MAX_DELAY_MS`: upper bound of any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_secs(5),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Reads the policy.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: env.parse("JOB_MAX_ATTEMPTS", defaults.max_attempts)?,
            initial_delay: env.millis("JOB_RETRY_INITIAL_DELAY_MS", defaults.initial_delay.as_millis() as u64)?,
            multiplier: env.parse("JOB_RETRY_MULTIPLIER", defaults.multiplier)?,
            max_delay: env.millis("JOB_RETRY_MAX_DELAY_MS", defaults.max_delay.as_millis() as u64)?,
        };
        env.require(
            (1..=100).contains(&policy.max_attempts),
            "JOB_MAX_ATTEMPTS",
            "must be between 1 and 100",
        )?;
        env.require(
            policy.multiplier.is_finite() && policy.multiplier >= 1.0,
            "JOB_RETRY_MULTIPLIER",
            "must be a number >= 1",
        )?;
        Ok(policy)
    }

    /// Delay before the attempt that follows `failed_attempt` (1-based), or `None` when no
    /// attempt is left.
    pub fn delay_after(&self, failed_attempt: u32) -> Option<Duration> {
        if failed_attempt >= self.max_attempts {
            return None;
        }
        let exponent = failed_attempt.saturating_sub(1).min(63) as i32;
        let seconds = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = seconds.min(self.max_delay.as_secs_f64());
        Some(Duration::from_secs_f64(capped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_waits_5_10_20_seconds_then_gives_up() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_after(1), Some(Duration::from_secs(5)));
        assert_eq!(policy.delay_after(2), Some(Duration::from_secs(10)));
        assert_eq!(policy.delay_after(3), Some(Duration::from_secs(20)));
        assert_eq!(policy.delay_after(4), None);
    }

    #[test]
    fn delays_are_capped() {
        let policy = RetryPolicy {
            max_attempts: 50,
            max_delay: Duration::from_secs(30),
            ..Default::default()
        };
        assert_eq!(policy.delay_after(40), Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_single_attempt_never_retries() {
        let policy = RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        };
        assert_eq!(policy.delay_after(1), None);
    }

    #[test]
    fn multiplier_below_one_is_refused() {
        let env = Env::from_pairs([("JOB_RETRY_MULTIPLIER", "0.5")]);
        assert_eq!(RetryPolicy::from_env(&env).unwrap_err().key, "JOB_RETRY_MULTIPLIER");
    }
}
