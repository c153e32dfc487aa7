//! Request budgets per client (tenant, or address for anonymous requests), shared by every
//! intake through the `download-rate-limits` bucket, with the IETF `RateLimit` headers.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, as `governor` implements it): a
//! client's state is one number, its theoretical arrival time (TAT). `RATE_LIMIT_MAX_REQUESTS`
//! per `RATE_LIMIT_WINDOW_MS` means one request every `window / max` on average, with bursts
//! of up to `max`; there is no window edge where a client gets two budgets.
//!
//! Sharing costs a compare-and-set on the client's key per *batch*: requests of one client that
//! arrive while this instance's write for that client is in flight wait and are decided together
//! by the next write (group commit), so under load the round trips per request fall well below
//! one. A refusal the cached state already implies costs no round trip at all (the TAT only ever
//! grows, so a cached refusal is never wrong). When NATS does not answer within
//! [`WRITE_TIMEOUT`], the decision is taken on this instance's cached state alone: limits then
//! hold per instance until NATS answers again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::oneshot;

/// Forget clients idle for a window once the table holds this many.
const PURGE_THRESHOLD: usize = 10_000;
/// How long a shared decision (a batch's reads and writes, conflicts included) may take before
/// this instance decides alone.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Compare-and-set rounds lost to other instances before deciding alone.
const MAX_CONFLICTS: usize = 16;

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// The configured budget: `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Requests per window (the burst).
    pub limit: u32,
    /// The window.
    pub window: Duration,
}

impl Default for Policy {
    /// The defaults of `RATE_LIMIT_MAX_REQUESTS` and `RATE_LIMIT_WINDOW_MS`: 100 per minute.
    fn default() -> Self {
        Policy {
            limit: 100,
            window: Duration::from_secs(60),
        }
    }
}

impl Policy {
    fn window_ns(self) -> i64 {
        self.window.as_nanos() as i64
    }

    /// The emission interval: one request per `window / limit`.
    fn interval_ns(self) -> i64 {
        (self.window_ns() / i64::from(self.limit)).max(1)
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): `"default";q=<limit>;w=<s>`.
    pub fn header(self) -> String {
        format!(
            "\"default\";q={};w={}",
            self.limit,
            self.window.as_secs_f64().ceil().max(1.0) as u64
        )
    }
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests the client could still make at once.
    pub remaining: u32,
    /// Seconds until the whole budget is back (at least 1).
    pub reset_seconds: u64,
    /// Seconds until the next request would be allowed (at least 1; for refusals).
    pub retry_after_seconds: u64,
}

fn ceil_seconds(nanos: i64) -> u64 {
    (nanos.max(0) as u64).div_ceil(NANOS_PER_SECOND as u64).max(1)
}

/// GCRA for `count` requests arriving at `now` (unix ns) against a client whose TAT is `tat`:
/// each request is decided in turn; returns the decisions and the new TAT.
pub fn decide(policy: Policy, tat: i64, now: i64, count: usize) -> (Vec<Decision>, i64) {
    let (window, interval) = (policy.window_ns(), policy.interval_ns());
    let mut tat = tat.max(now);
    let decisions = (0..count)
        .map(|_| {
            let next = tat + interval;
            let allowed = next - now <= window;
            if allowed {
                tat = next;
            }
            let remaining = ((window - (tat - now)) / interval).clamp(0, i64::from(policy.limit)) as u32;
            Decision {
                allowed,
                limit: policy.limit,
                remaining,
                reset_seconds: ceil_seconds(tat - now),
                retry_after_seconds: ceil_seconds(tat + interval - now - window),
            }
        })
        .collect();
    (decisions, tat)
}

/// A client's state as this instance last saw (or wrote) it.
#[derive(Debug, Default)]
struct Client {
    tat: i64,
    /// The key's revision when `tat` was read or written; `None`: not known (read first).
    revision: Option<u64>,
    /// Requests waiting for the write in flight.
    waiting: Vec<oneshot::Sender<Decision>>,
    /// Whether a write for this client is in flight.
    flushing: bool,
}

/// Per-client budgets shared through NATS.
pub struct RateLimiter {
    policy: Policy,
    /// `RateLimit-Policy`, the same on every answer: formatted once.
    policy_header: Option<poem::http::HeaderValue>,
    kv: kv::Store,
    clients: Mutex<HashMap<String, Client>>,
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl RateLimiter {
    /// A limiter of `policy` whose state lives in `kv` (the rate-limits bucket).
    pub fn new(kv: kv::Store, policy: Policy) -> Arc<Self> {
        Arc::new(RateLimiter {
            policy,
            policy_header: poem::http::HeaderValue::from_str(&policy.header()).ok(),
            kv,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// [`Policy::header`] as a header value.
    pub fn policy_header(&self) -> Option<&poem::http::HeaderValue> {
        self.policy_header.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request of `client` (`tenant:<id>`, `ip:<address>`, …).
    pub async fn check(self: &Arc<Self>, client: &str) -> Decision {
        let receiver = {
            let now = now_ns();
            let mut clients = self.lock();
            if clients.len() >= PURGE_THRESHOLD {
                let window = self.policy.window_ns();
                clients.retain(|_, state| state.flushing || state.tat + window > now);
            }
            let state = clients.entry(client.to_string()).or_default();
            let (cached, _) = decide(self.policy, state.tat, now, 1);
            if !cached[0].allowed {
                // The TAT only grows: what the cache refuses, the shared state refuses too.
                return cached[0];
            }
            let (sender, receiver) = oneshot::channel();
            state.waiting.push(sender);
            if !state.flushing {
                state.flushing = true;
                tokio::spawn(self.clone().flush(client.to_string()));
            }
            receiver
        };
        match receiver.await {
            Ok(decision) => decision,
            // The flush task died (a panic): decide on the cache rather than fail the request.
            Err(_) => {
                decide(
                    self.policy,
                    self.lock().get(client).map_or(0, |state| state.tat),
                    now_ns(),
                    1,
                )
                .0[0]
            }
        }
    }

    /// Decides the waiting requests of `client` with one shared write per batch, until none wait.
    async fn flush(self: Arc<Self>, client: String) {
        let key = common::names::hex_key("rate", &client);
        loop {
            let (batch, mut tat, mut revision) = {
                let mut clients = self.lock();
                let state = clients.entry(client.clone()).or_default();
                if state.waiting.is_empty() {
                    state.flushing = false;
                    return;
                }
                (std::mem::take(&mut state.waiting), state.tat, state.revision)
            };
            // One deadline for the batch's whole decision, conflicts included.
            let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
            let mut decided = None;
            for _ in 0..MAX_CONFLICTS {
                if revision.is_none() {
                    match tokio::time::timeout_at(deadline, self.kv.entry(&key)).await {
                        Ok(Ok(entry)) => (tat, revision) = parse_entry(entry, tat),
                        _ => break,
                    }
                }
                let (decisions, next) = decide(self.policy, tat, now_ns(), batch.len());
                if decisions.iter().all(|decision| !decision.allowed) {
                    decided = Some((decisions, tat, revision));
                    break;
                }
                // `Some(0)`: no key yet, create it.
                let expected = revision.filter(|revision| *revision != 0);
                let value = bytes::Bytes::from(next.to_string());
                let write = common::kv_cas::compare_and_set(&self.kv, &key, value, expected);
                match tokio::time::timeout_at(deadline, write).await {
                    Ok(Ok(Some(new_revision))) => {
                        decided = Some((decisions, next, Some(new_revision)));
                        break;
                    }
                    // Another instance wrote first: read its state and decide again.
                    Ok(Ok(None)) => revision = None,
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let (decisions, tat, revision) = decided.unwrap_or_else(|| {
                tracing::warn!(client = %client, "shared rate limits unavailable; deciding on this instance's state");
                crate::metrics::rate_limited_locally(batch.len() as u64);
                let (decisions, next) = decide(self.policy, tat, now_ns(), batch.len());
                (decisions, next, None)
            });
            {
                let mut clients = self.lock();
                let state = clients.entry(client.clone()).or_default();
                state.tat = state.tat.max(tat);
                state.revision = revision;
            }
            for (waiter, decision) in batch.into_iter().zip(decisions) {
                let _ = waiter.send(decision);
            }
        }
    }
}

/// The TAT and revision of a key's entry (`Some(0)`: no key, create it).
fn parse_entry(entry: Option<kv::Entry>, cached: i64) -> (i64, Option<u64>) {
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let tat = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .unwrap_or(0);
            (tat.max(cached), Some(entry.revision))
        }
        // Deleted or expired: a delete marker's revision is what to update.
        Some(entry) => (cached, Some(entry.revision)),
        None => (cached, Some(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = NANOS_PER_SECOND;

    fn policy(limit: u32, window_seconds: u64) -> Policy {
        Policy {
            limit,
            window: Duration::from_secs(window_seconds),
        }
    }

    #[test]
    fn a_full_burst_then_one_request_per_interval() {
        let policy = policy(10, 60);
        let now = 1_000 * SECOND;
        let (decisions, tat) = decide(policy, 0, now, 12);
        let allowed = decisions.iter().filter(|decision| decision.allowed).count();
        assert_eq!(allowed, 10, "the whole budget at once");
        assert_eq!(decisions[0].remaining, 9);
        assert_eq!(decisions[9].remaining, 0);
        assert_eq!(decisions[9].reset_seconds, 60, "the budget is whole again in a window");
        assert!(!decisions[10].allowed);
        assert_eq!(decisions[10].retry_after_seconds, 6, "one request every 6 s");
        // 5 s later still nothing; at 6 s exactly one.
        assert!(!decide(policy, tat, now + 5 * SECOND, 1).0[0].allowed);
        let (later, _) = decide(policy, tat, now + 6 * SECOND, 2);
        assert!(later[0].allowed);
        assert!(!later[1].allowed);
    }

    #[test]
    fn no_double_burst_at_a_window_edge() {
        // A fixed window lets 2×limit through around its edge; GCRA lets limit + refill.
        let policy = policy(100, 60);
        let start = 5_000 * SECOND;
        let (first, tat) = decide(policy, 0, start + 59 * SECOND, 100);
        assert!(first.iter().all(|decision| decision.allowed));
        let (second, _) = decide(policy, tat, start + 61 * SECOND, 100);
        let allowed = second.iter().filter(|decision| decision.allowed).count();
        assert_eq!(allowed, 3, "2 s of refill at one per 0.6 s");
    }

    #[test]
    fn an_idle_client_gets_its_whole_budget_back_and_no_more() {
        let policy = policy(5, 10);
        let (_, tat) = decide(policy, 0, 100 * SECOND, 5);
        let (decisions, _) = decide(policy, tat, 1_000 * SECOND, 7);
        assert_eq!(decisions.iter().filter(|decision| decision.allowed).count(), 5);
    }

    #[test]
    fn policy_header_follows_the_draft() {
        assert_eq!(policy(100, 60).header(), "\"default\";q=100;w=60");
        let sub_second = Policy {
            limit: 3,
            window: Duration::from_millis(500),
        };
        assert_eq!(sub_second.header(), "\"default\";q=3;w=1");
    }

    #[test]
    fn refusals_keep_the_state_and_count_nothing() {
        let policy = policy(2, 10);
        let now = 50 * SECOND;
        let (_, tat) = decide(policy, 0, now, 2);
        let (refused, after) = decide(policy, tat, now, 5);
        assert!(refused.iter().all(|decision| !decision.allowed));
        assert_eq!(after, tat);
    }
}
