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

/// A bucket's entries, in memory, kept current.
pub struct Directory<T> {
    kv: kv::Store,
    entries: RwLock<HashMap<String, Arc<T>>>,
    following: AtomicBool,
    kind: PhantomData<fn() -> T>,
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

    /// The entry under `key`: from memory while the watch is live, else from the bucket.
    pub async fn get(&self, key: &str) -> Result<Option<Arc<T>>, kv::EntryError> {
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
        let Some(value) = self.kv.get(key).await? else {
            return Ok(None);
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
