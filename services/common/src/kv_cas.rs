//! JSON values in a KV bucket that several instances change at once, each change a
//! compare-and-set: the loser re-reads and applies its change again. One key's changes on this
//! instance run one at a time (stripe locks), so a burst of changes of one key costs one round
//! trip each instead of a storm of failed compare-and-sets; only other instances' changes of the
//! same key conflict.
//!
//! Each key's value and revision as this instance last read or wrote them are kept, so a change
//! is one round trip (the write) while no other instance wrote the key since; a change that the
//! kept value (or a replica's) would decline is decided again on the value read through the
//! stream's leader, since only a current value may refuse.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Compare-and-set rounds lost to other instances before a change gives up.
const MAX_CONFLICTS: usize = 32;
/// Stripe locks serializing this instance's changes per key (by hash).
const STRIPES: usize = 64;
/// Keys whose last value is kept; beyond, the kept values are forgotten (a change then reads).
const MAX_KEPT: usize = 10_000;

/// Why a change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The bucket could not be read or written.
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    /// Other writers kept winning the compare-and-set.
    #[error("shared state of this key is contended")]
    Contended,
}

/// An error with its causes, `error: cause: cause`, for an error kept as text.
pub fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let next = current.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = current.source();
    }
    text
}

/// JSON values (`T: Default` when the key is absent, deleted or unreadable) changed with
/// compare-and-set.
pub struct CasValues {
    kv: kv::Store,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Each key's value and revision as last read or written here.
    kept: std::sync::Mutex<HashMap<String, (Bytes, u64)>>,
}

impl CasValues {
    /// Values of `kv`.
    pub fn new(kv: kv::Store) -> Self {
        CasValues {
            kv,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            kept: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The bucket.
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Bytes, u64)>> {
        self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn keep(&self, key: &str, bytes: Bytes, revision: u64) {
        let mut kept = self.kept();
        if kept.len() >= MAX_KEPT && !kept.contains_key(key) {
            kept.clear();
        }
        kept.insert(key.to_string(), (bytes, revision));
    }

    /// The current value of `key` and its revision (`None`: no key to update, create it).
    async fn read<T: DeserializeOwned + Default>(&self, key: &str) -> Result<(T, Option<u64>), CasError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|error| CasError::Unavailable(cause_chain(&error)))?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                self.keep(key, entry.value.clone(), entry.revision);
                (parse(key, &entry.value), Some(entry.revision))
            }
            Some(entry) => (T::default(), Some(entry.revision)),
            None => (T::default(), None),
        })
    }

    /// The value of `key` through the stream's leader: a replica answering a direct get may not
    /// have applied the latest writes (another instance's release), and a refusal must not rest
    /// on that.
    async fn read_from_leader<T: DeserializeOwned + Default>(&self, key: &str) -> Result<(T, Option<u64>), CasError> {
        let last = leader_entry(&self.kv, key)
            .await
            .map_err(|error| CasError::Unavailable(cause_chain(&error)))?;
        Ok(match last {
            Some((Some(value), revision)) => {
                self.keep(key, value.clone(), revision);
                (parse(key, &value), Some(revision))
            }
            Some((None, revision)) => (T::default(), Some(revision)),
            None => (T::default(), None),
        })
    }

    /// Applies `change` to the value of `key` with compare-and-set; `Ok(false)` when `change`
    /// declined (nothing written) on the current value.
    pub async fn change<T: Serialize + DeserializeOwned + Default>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<bool, CasError> {
        let stripe = {
            use std::hash::{Hash, Hasher};
            // Fixed keys: the same key always maps to the same stripe.
            let mut hasher = std::hash::DefaultHasher::new();
            key.hash(&mut hasher);
            hasher.finish() as usize % STRIPES
        };
        let _turn = self.stripes[stripe].lock().await;
        let mut kept = self.kept().get(key).cloned();
        // After a decline, values are read through the leader: only the current value refuses.
        let mut confirming = false;
        let mut conflicts = 0;
        while conflicts < MAX_CONFLICTS {
            let (mut value, revision) = match kept.take() {
                Some((bytes, revision)) => (parse::<T>(key, &bytes), Some(revision)),
                None if confirming => self.read_from_leader::<T>(key).await?,
                None => self.read::<T>(key).await?,
            };
            if !change(&mut value) {
                if confirming {
                    return Ok(false);
                }
                confirming = true;
                continue; // Declined on a kept or replica's value: decide again on the leader's.
            }
            let bytes: Bytes = serde_json::to_vec(&value).expect("shared values serialize").into();
            // A conflict (another writer got there first) goes round again, on a fresh read.
            if let Some(written) = compare_and_set(&self.kv, key, bytes.clone(), revision).await? {
                self.keep(key, bytes, written);
                return Ok(true);
            }
            self.kept().remove(key);
            conflicts += 1;
            // Another instance changed this key meanwhile: step aside a little, at random.
            let pause = rand::random_range(0..(2u64 << conflicts.min(6)));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(CasError::Contended)
    }
}

/// Writes `value` under `key` if the key is still at `revision` (`None`: if it does not exist);
/// the new revision, or `Ok(None)` when another writer got there first.
pub async fn compare_and_set(
    kv: &kv::Store,
    key: &str,
    value: Bytes,
    revision: Option<u64>,
) -> Result<Option<u64>, CasError> {
    let unavailable = |error: &(dyn std::error::Error + 'static)| CasError::Unavailable(cause_chain(error));
    match revision {
        Some(revision) => match kv.update(key, value, revision).await {
            Ok(written) => Ok(Some(written)),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(error) => Err(unavailable(&error)),
        },
        None => match kv.create(key, value).await {
            Ok(written) => Ok(Some(written)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(unavailable(&error)),
        },
    }
}

/// The last write of `key` as the bucket stream's leader holds it (a direct get may be answered
/// by a replica that has not applied the latest writes): its value (`None` for a delete or
/// purge marker) and revision, or `None` when the key was never written.
pub async fn leader_entry(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(Option<Bytes>, u64)>, async_nats::jetstream::stream::LastRawMessageError> {
    let subject = format!("{}{key}", kv.prefix);
    match kv.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            let removed = message
                .headers
                .get("KV-Operation")
                .is_some_and(|operation| matches!(operation.as_str(), "DEL" | "PURGE"));
            Ok(Some(((!removed).then_some(message.payload), message.sequence)))
        }
        Err(error) if error.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// A kept or read value; an unreadable one is replaced by the default.
fn parse<T: DeserializeOwned + Default>(key: &str, bytes: &[u8]) -> T {
    serde_json::from_slice(bytes).unwrap_or_else(|error| {
        tracing::warn!(key, %error, "unreadable shared value replaced");
        T::default()
    })
}
