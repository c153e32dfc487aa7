//! The per-user cap on open streams, across every notifier instance. Each user has one key in the
//! `download-stream-leases` bucket holding the leases of their open streams, each with an expiry.
//! A stream takes a lease with compare-and-set before it starts and gives it back when it ends;
//! every instance renews the leases of its own open streams, so the leases of a crashed instance
//! lapse after `SSE_STREAM_LEASE_SECONDS` and its users get their slots back without any cleanup.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The value of a user's key: lease id → expiry (unix milliseconds).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UserLeases {
    /// Open streams' leases.
    pub leases: BTreeMap<String, i64>,
}

/// The key of a user: user ids may hold characters keys cannot (`@`, `:`, `+`), so hex.
pub fn key_of(user: &str) -> String {
    common::names::hex_key("user", user)
}

/// Why a lease could not be had.
pub use common::kv_cas::CasError as LimitsError;

/// Open streams per user, shared through NATS.
pub struct StreamLimits {
    /// Users' leases, changed with compare-and-set (one user's changes on this instance run one
    /// at a time: a burst of opens by one user costs one round trip each).
    leases: common::kv_cas::CasValues,
    max_per_user: usize,
    lease_ttl: Duration,
    instance: String,
    next_lease: AtomicU64,
    /// This instance's open leases by user, renewed in the background.
    local: Mutex<HashMap<String, HashSet<String>>>,
}

/// One open stream's lease; given back when dropped.
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    user: String,
    lease: String,
}

impl StreamLimits {
    /// At most `max_per_user` open streams per user across instances; leases last `lease_ttl`
    /// unless renewed.
    pub fn new(kv: kv::Store, max_per_user: usize, lease_ttl: Duration) -> Arc<Self> {
        let instance = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        Arc::new(StreamLimits {
            leases: common::kv_cas::CasValues::new(kv),
            max_per_user,
            lease_ttl,
            instance,
            next_lease: AtomicU64::new(1),
            local: Mutex::new(HashMap::new()),
        })
    }

    fn ttl_ms(&self) -> i64 {
        self.lease_ttl.as_millis() as i64
    }

    /// Takes a lease for `user`; `Ok(None)` when the user is at the cap.
    pub async fn acquire(self: &Arc<Self>, user: &str) -> Result<Option<StreamSlot>, LimitsError> {
        let lease = format!("{}-{}", self.instance, self.next_lease.fetch_add(1, Ordering::Relaxed));
        let (max, ttl) = (self.max_per_user, self.ttl_ms());
        let granted = self
            .change(user, |leases, now| {
                leases.retain(|_, expiry| *expiry > now);
                if leases.len() >= max {
                    return false;
                }
                leases.insert(lease.clone(), now + ttl);
                true
            })
            .await?;
        if !granted {
            return Ok(None);
        }
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(user.to_string())
            .or_default()
            .insert(lease.clone());
        Ok(Some(StreamSlot {
            limits: self.clone(),
            user: user.to_string(),
            lease,
        }))
    }

    /// Applies `change` to a user's leases with compare-and-set; `Ok(false)` when `change`
    /// declined (nothing written).
    async fn change(
        &self,
        user: &str,
        mut change: impl FnMut(&mut BTreeMap<String, i64>, i64) -> bool,
    ) -> Result<bool, LimitsError> {
        self.leases
            .change(&key_of(user), |value: &mut UserLeases| {
                change(&mut value.leases, chrono::Utc::now().timestamp_millis())
            })
            .await
    }

    /// Gives a lease back (in the background: a stream's end never waits on NATS).
    fn release(self: &Arc<Self>, user: String, lease: String) {
        {
            let mut local = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(own) = local.get_mut(&user) {
                own.remove(&lease);
                if own.is_empty() {
                    local.remove(&user);
                }
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Shutting down: the lease lapses.
        };
        let limits = self.clone();
        runtime.spawn(async move {
            let released = limits
                .change(&user, |leases, now| {
                    leases.retain(|id, expiry| *id != lease && *expiry > now);
                    true
                })
                .await;
            if let Err(error) = released {
                tracing::warn!(%error, "stream lease not given back; it lapses on its own");
            }
        });
    }

    /// Renews this instance's leases every third of their lifetime until `stop`.
    pub async fn renew_forever(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.lease_ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let users: Vec<String> = self
                .local
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            let ttl = self.ttl_ms();
            for user in users {
                let renewed = self
                    .change(&user, |leases, now| {
                        leases.retain(|_, expiry| *expiry > now);
                        // Only leases still open here: one released meanwhile stays released.
                        let local = self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        for lease in local.get(&user).into_iter().flatten() {
                            leases.insert(lease.clone(), now + ttl);
                        }
                        true
                    })
                    .await;
                if let Err(error) = renewed {
                    tracing::warn!(%error, "stream leases not renewed; retrying at the next tick");
                }
            }
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.limits
            .release(std::mem::take(&mut self.user), std::mem::take(&mut self.lease));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_are_valid_kv_keys_and_distinct() {
        assert_eq!(key_of("a@b"), "user.614062");
        assert_ne!(key_of("ab"), key_of("a.b"));
        assert!(
            key_of("x:y+z@example.com")
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.')
        );
    }
}
