//! Per-client fixed-window rate limiting with the IETF `RateLimit-*` headers.
//!
//! Clients are keyed by user id when the gateway sent one, else by peer address. Counters live in
//! this process: with several intake instances each enforces the limit on its own share of the
//! traffic. (Cluster-wide limits held in NATS come with the per-user limits issue.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Purge expired windows once the table holds this many clients.
const PURGE_THRESHOLD: usize = 10_000;

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests left in the current window.
    pub remaining: u32,
    /// Seconds until the window resets (at least 1).
    pub reset_seconds: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

/// Counts requests per client and window.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    max_requests: u32,
    clients: Mutex<HashMap<String, Window>>,
}

impl RateLimiter {
    /// A limiter of `max_requests` per `window`.
    pub fn new(window: Duration, max_requests: u32) -> Self {
        RateLimiter {
            window,
            max_requests,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `client` at `now`.
    pub fn check(&self, client: &str, now: Instant) -> Decision {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if clients.len() >= PURGE_THRESHOLD {
            let window = self.window;
            clients.retain(|_, entry| now.duration_since(entry.started) < window);
        }
        let entry = clients
            .entry(client.to_string())
            .or_insert(Window { started: now, count: 0 });
        if now.duration_since(entry.started) >= self.window {
            *entry = Window { started: now, count: 0 };
        }
        let allowed = entry.count < self.max_requests;
        if allowed {
            entry.count += 1;
        }
        let reset = self.window.saturating_sub(now.duration_since(entry.started));
        Decision {
            allowed,
            limit: self.max_requests,
            remaining: self.max_requests - entry.count,
            reset_seconds: reset.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_applies_per_client_and_resets_with_the_window() {
        let limiter = RateLimiter::new(Duration::from_secs(60), 2);
        let start = Instant::now();
        assert_eq!(limiter.check("a", start).remaining, 1);
        assert!(limiter.check("a", start).allowed);
        let refused = limiter.check("a", start + Duration::from_secs(10));
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset_seconds, 50);
        assert!(limiter.check("b", start).allowed, "another client has its own budget");
        assert!(limiter.check("a", start + Duration::from_secs(60)).allowed);
    }

    #[test]
    fn expired_clients_are_purged_when_the_table_is_large() {
        let limiter = RateLimiter::new(Duration::from_secs(1), 5);
        let start = Instant::now();
        for index in 0..PURGE_THRESHOLD {
            limiter.check(&format!("client-{index}"), start);
        }
        limiter.check("late", start + Duration::from_secs(2));
        assert_eq!(limiter.clients.lock().unwrap().len(), 1);
    }
}
