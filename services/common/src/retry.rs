//! Retry policies, in one place: the retries of jobs that hit transient failures (exponential
//! backoff with a cap and jitter), and the patience every JetStream call shows while the cluster
//! is unavailable (a leader election takes up to ~10 s; it must not count as anyone's failure).

use std::future::Future;
use std::time::Duration;

use crate::config::{ConfigError, Env};

/// How often and how patiently a job is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// `JOB_MAX_ATTEMPTS`: attempts that may fail transiently, the first included (default 5:
    /// one try and four retries after 5 s, 10 s, 20 s and 40 s, each stretched by up to 25 %
    /// jitter, so a storage outage of up to 75 s fails no job). Attempts cut short by a dead
    /// processor or an unavailable broker do not count.
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
            max_attempts: 5,
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
    /// attempt is left. The base delay, without jitter: what the documented bounds add up.
    pub fn delay_after(&self, failed_attempt: u32) -> Option<Duration> {
        if failed_attempt >= self.max_attempts {
            return None;
        }
        let exponent = failed_attempt.saturating_sub(1).min(63) as i32;
        let seconds = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = seconds.min(self.max_delay.as_secs_f64());
        Some(Duration::from_secs_f64(capped))
    }

    /// [`delay_after`](Self::delay_after) stretched by `random` (uniform in 0..1) times
    /// [`JOB_RETRY_JITTER`], so jobs that failed together (a storage outage) do not all retry in
    /// the same instant. Jitter only lengthens a delay, so the documented bounds still hold.
    pub fn jittered_delay_after(&self, failed_attempt: u32, random: f64) -> Option<Duration> {
        let base = self.delay_after(failed_attempt)?;
        Some(base.mul_f64(1.0 + JOB_RETRY_JITTER * random.clamp(0.0, 1.0)))
    }

    /// The sum of every retry delay without jitter: the longest transient outage the retries of
    /// one job are sure to ride out.
    pub fn outage_bound(&self) -> Duration {
        (1..self.max_attempts)
            .filter_map(|attempt| self.delay_after(attempt))
            .sum()
    }
}

/// Largest fraction by which jitter stretches a job's retry delay.
pub const JOB_RETRY_JITTER: f64 = 0.25;

/// How a call to JetStream is retried while the cluster cannot answer it (no leader during an
/// election, a node restarting): pauses that double from 100 ms to 2 s with jitter, for at most
/// `window` in all. Only then does the failure count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Patience {
    /// `NATS_RETRY_WINDOW_SECONDS`: how long a call is retried before its failure counts.
    pub window: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            window: Duration::from_secs(30),
        }
    }
}

impl Patience {
    /// First pause between tries.
    pub const FIRST_PAUSE: Duration = Duration::from_millis(100);
    /// Longest pause between tries.
    pub const MAX_PAUSE: Duration = Duration::from_secs(2);

    /// The pause before retry `retry` (1-based): exponential and capped, then "equal jitter"
    /// (half of it fixed, half uniform from `random` in 0..1), so services that failed together
    /// do not retry in lockstep.
    pub fn pause(retry: u32, random: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(16) as i32;
        let full = Self::FIRST_PAUSE.mul_f64(2f64.powi(exponent)).min(Self::MAX_PAUSE);
        full / 2 + (full / 2).mul_f64(random.clamp(0.0, 1.0))
    }

    /// The patience left until `deadline`.
    pub fn until(deadline: tokio::time::Instant) -> Self {
        Patience {
            window: deadline.saturating_duration_since(tokio::time::Instant::now()),
        }
    }

    /// Runs `call` until it succeeds, fails with an error `transient` says is not worth
    /// retrying, or the window is spent; returns the last outcome.
    pub async fn retry<T, E, Call, Calling>(
        &self,
        what: &'static str,
        mut call: Call,
        transient: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        Call: FnMut() -> Calling,
        Calling: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let started = tokio::time::Instant::now();
        let mut retry = 0u32;
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(error) if transient(&error) => error,
                Err(error) => return Err(error),
            };
            retry += 1;
            let pause = Self::pause(retry, rand::random());
            if started.elapsed() + pause > self.window {
                return Err(error);
            }
            if retry == 1 {
                tracing::warn!(%error, what, window_s = self.window.as_secs(), "jetstream unavailable, retrying");
            } else {
                tracing::debug!(%error, what, retry, "jetstream still unavailable");
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_waits_5_10_20_40_seconds_then_gives_up() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_after(1), Some(Duration::from_secs(5)));
        assert_eq!(policy.delay_after(2), Some(Duration::from_secs(10)));
        assert_eq!(policy.delay_after(3), Some(Duration::from_secs(20)));
        assert_eq!(policy.delay_after(4), Some(Duration::from_secs(40)));
        assert_eq!(policy.delay_after(5), None);
        assert_eq!(policy.outage_bound(), Duration::from_secs(75));
    }

    #[test]
    fn jitter_only_lengthens_a_delay_by_at_most_a_quarter() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.jittered_delay_after(2, 0.0), Some(Duration::from_secs(10)));
        assert_eq!(policy.jittered_delay_after(2, 0.5), Some(Duration::from_millis(11_250)));
        assert_eq!(policy.jittered_delay_after(2, 1.0), Some(Duration::from_millis(12_500)));
        assert_eq!(policy.jittered_delay_after(5, 0.5), None);
    }

    #[test]
    fn patience_pauses_double_up_to_two_seconds_with_half_of_each_random() {
        assert_eq!(Patience::pause(1, 0.0), Duration::from_millis(50));
        assert_eq!(Patience::pause(1, 1.0), Duration::from_millis(100));
        assert_eq!(Patience::pause(3, 0.0), Duration::from_millis(200));
        assert_eq!(Patience::pause(3, 1.0), Duration::from_millis(400));
        assert_eq!(Patience::pause(30, 0.0), Duration::from_secs(1));
        assert_eq!(Patience::pause(30, 1.0), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn patience_rides_out_an_outage_shorter_than_its_window() {
        let patience = Patience {
            window: Duration::from_secs(30),
        };
        let started = tokio::time::Instant::now();
        let outcome: Result<&str, String> = patience
            .retry(
                "test call",
                || async move {
                    if started.elapsed() < Duration::from_secs(9) {
                        Err("no leader".to_string())
                    } else {
                        Ok("stored")
                    }
                },
                |_| true,
            )
            .await;
        assert_eq!(outcome, Ok("stored"));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn patience_gives_up_within_its_window_and_never_retries_a_permanent_error() {
        let patience = Patience {
            window: Duration::from_secs(5),
        };
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let outcome: Result<(), String> = patience
            .retry(
                "test call",
                || {
                    calls += 1;
                    async { Err("no leader".to_string()) }
                },
                |_| true,
            )
            .await;
        assert_eq!(outcome, Err("no leader".to_string()));
        assert!(started.elapsed() <= Duration::from_secs(5));
        assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(calls > 3);

        let mut calls = 0;
        let outcome: Result<(), String> = patience
            .retry(
                "test call",
                || {
                    calls += 1;
                    async { Err("corrupt".to_string()) }
                },
                |error| error != "corrupt",
            )
            .await;
        assert_eq!(outcome, Err("corrupt".to_string()));
        assert_eq!(calls, 1);
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
