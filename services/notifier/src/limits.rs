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

/// Compare-and-set attempts before a change gives up. Changes of one instance never conflict with
/// each other (they queue on a stripe lock), so only other instances' changes of the same user do.
const MAX_CONFLICTS: usize = 32;
/// Stripe locks serializing this instance's changes per user (by hash).
const STRIPES: usize = 64;

/// The value of a user's key: lease id → expiry (unix milliseconds).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UserLeases {
    /// Open streams' leases.
    pub leases: BTreeMap<String, i64>,
}

/// The key of a user: user ids may hold characters keys cannot (`@`, `:`, `+`), so hex.
pub fn key_of(user: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(5 + user.len() * 2);
    key.push_str("user.");
    for byte in user.bytes() {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    key
}

/// Why a lease could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// The bucket could not be read or written.
    #[error("stream leases unavailable: {0}")]
    Unavailable(String),
    /// Other writers kept winning the compare-and-set.
    #[error("stream leases of this user are contended")]
    Contended,
}

/// Open streams per user, shared through NATS.
pub struct StreamLimits {
    kv: kv::Store,
    max_per_user: usize,
    lease_ttl: Duration,
    instance: String,
    next_lease: AtomicU64,
    /// This instance's open leases by user, renewed in the background.
    local: Mutex<HashMap<String, HashSet<String>>>,
    /// One user's changes on this instance run one at a time: a burst of opens by one user costs
    /// one round trip each instead of a storm of failed compare-and-sets.
    stripes: Vec<tokio::sync::Mutex<()>>,
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
            kv,
            max_per_user,
            lease_ttl,
            instance,
            next_lease: AtomicU64::new(1),
            local: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
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
        let key = key_of(user);
        let stripe = {
            use std::hash::{Hash, Hasher};
            // Fixed keys: the same user always maps to the same stripe.
            let mut hasher = std::hash::DefaultHasher::new();
            key.hash(&mut hasher);
            hasher.finish() as usize % STRIPES
        };
        let _turn = self.stripes[stripe].lock().await;
        let unavailable = |error: &dyn std::fmt::Display| LimitsError::Unavailable(error.to_string());
        for conflict in 0..MAX_CONFLICTS {
            if conflict > 0 {
                // Another instance changed this user meanwhile: step aside a little, at random.
                let pause = rand::random_range(0..(2u64 << conflict.min(6)));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let entry = self.kv.entry(&key).await.map_err(|error| unavailable(&error))?;
            let (mut leases, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice::<UserLeases>(&entry.value)
                        .unwrap_or_default()
                        .leases,
                    Some(entry.revision),
                ),
                Some(entry) => (BTreeMap::new(), Some(entry.revision)),
                None => (BTreeMap::new(), None),
            };
            let now = chrono::Utc::now().timestamp_millis();
            if !change(&mut leases, now) {
                return Ok(false);
            }
            let value = serde_json::to_vec(&UserLeases { leases })
                .expect("leases serialize")
                .into();
            // A conflict (another writer got there first) goes round again.
            match revision {
                Some(revision) => match self.kv.update(&key, value, revision).await {
                    Ok(_) => return Ok(true),
                    Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(error) => return Err(unavailable(&error)),
                },
                None => match self.kv.create(&key, value).await {
                    Ok(_) => return Ok(true),
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(error) => return Err(unavailable(&error)),
                },
            }
        }
        Err(LimitsError::Contended)
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
