//! A bucket kept in memory: every entry of a KV bucket (API keys, tenants), followed through a
//! watch so changes (a revocation, a rotated secret) reach this instance within moments, without
//! a read per request. A miss, or any read while the watch is down, goes to the bucket itself, so
//! a key created a moment ago on another instance works at once and a revocation is never
//! outlived by a broken watch.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Pause before watching again after the watch broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);
/// How long a lookup missing from memory rides out a bucket that cannot answer (a leader
/// election), before it counts as unavailable.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(10);

/// The latest value under `key` and its revision, read through the stream's leader (a replica
/// may lag a write made a moment ago); `None` when absent or deleted.
pub async fn leader_entry(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(bytes::Bytes, u64)>, async_nats::jetstream::stream::LastRawMessageError> {
    let subject = format!("{}{key}", kv.prefix);
    match kv.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            let removed = message
                .headers
                .get("KV-Operation")
                .is_some_and(|operation| matches!(operation.as_str(), "DEL" | "PURGE"));
            Ok((!removed).then_some((message.payload, message.sequence)))
        }
        Err(error) if error.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// The bucket could not be read (for an entry not held in memory).
#[derive(Debug, thiserror::Error)]
#[error("the identity bucket cannot be read")]
pub struct LookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// A bucket's entries, in memory, kept current.
pub struct Directory<T> {
    kv: kv::Store,
    entries: RwLock<HashMap<String, Arc<T>>>,
    following: AtomicBool,
    kind: PhantomData<fn() -> T>,
}

/// Whether `key` is a valid KV key: `[-/_=.A-Za-z0-9]+`, not starting or ending with `.`.
pub fn is_kv_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'/' | b'_' | b'=' | b'.'))
}

impl<T: DeserializeOwned + Send + Sync + 'static> Directory<T> {
    /// A directory of `kv`; call [`Directory::follow`] to keep it current.
    pub fn new(kv: kv::Store) -> Arc<Self> {
        Arc::new(Directory {
            kv,
            entries: RwLock::new(HashMap::new()),
            following: AtomicBool::new(false),
            kind: PhantomData,
        })
    }

    /// Follows the bucket until `shutdown`: loads every entry, then applies each change.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.kv.watch_with_history(">").await {
                Ok(mut watch) => {
                    self.following.store(true, Ordering::SeqCst);
                    loop {
                        let entry = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            entry = watch.next() => entry,
                        };
                        match entry {
                            Some(Ok(entry)) => self.apply(entry),
                            Some(Err(error)) => {
                                tracing::warn!(bucket = %self.kv.name, %error, "watch of the bucket broke");
                                break;
                            }
                            None => break,
                        }
                    }
                    self.following.store(false, Ordering::SeqCst);
                }
                Err(error) => tracing::warn!(bucket = %self.kv.name, %error, "cannot watch the bucket"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REWATCH_PAUSE) => {}
            }
        }
    }

    fn apply(&self, entry: kv::Entry) {
        let mut entries = self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<T>(&entry.value) {
                Ok(value) => {
                    entries.insert(entry.key, Arc::new(value));
                }
                Err(error) => {
                    tracing::warn!(bucket = %self.kv.name, key = %entry.key, %error, "unreadable entry ignored");
                    entries.remove(&entry.key);
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                entries.remove(&entry.key);
            }
        }
    }

    /// The entry under `key`: from memory while the watch is live, else from the bucket. A name
    /// that cannot be a KV key (a gateway's `alice@example.com`) has no entry.
    pub async fn get(&self, key: &str) -> Result<Option<Arc<T>>, LookupError> {
        if !is_kv_key(key) {
            return Ok(None);
        }
        if self.following.load(Ordering::SeqCst) {
            let cached = self
                .entries
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .cloned();
            if cached.is_some() {
                return Ok(cached);
            }
        }
        // Not in memory: a key created a moment ago, or the watch is down. Read through the
        // leader (a replica may not have the write yet), riding out an election.
        let patience = crate::retry::Patience {
            window: LOOKUP_PATIENCE,
        };
        let read = patience
            .retry("reading an identity entry", || leader_entry(&self.kv, key), |_| true)
            .await;
        let value = match read {
            Ok(Some((value, _))) => value,
            Ok(None) => return Ok(None),
            Err(error) => return Err(LookupError(Box::new(error))),
        };
        match serde_json::from_slice::<T>(&value) {
            Ok(value) => Ok(Some(Arc::new(value))),
            Err(error) => {
                tracing::warn!(bucket = %self.kv.name, %key, %error, "unreadable entry ignored");
                Ok(None)
            }
        }
    }

    /// Whether the watch is live (for health and tests).
    pub fn is_following(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }
}
