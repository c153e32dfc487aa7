//! A bucket kept in memory: every entry of a KV bucket (API keys, tenants), followed through a
//! watch so changes (a revocation, a rotated secret) reach this instance within moments, without
//! a read per request. A miss goes to the bucket itself, so a key created a moment ago on
//! another instance works at once. Memory is trusted only while it is known to be current: twice
//! a second the bucket's last sequence is compared with the last revision the watch applied; a
//! watch behind for more than a second (stalled on a connection that never errors, or still
//! replaying after a reconnect) is distrusted, every lookup reads the bucket, and the watch is
//! started again. So a revocation is never outlived by a stalled watch by more than ~1.5 s.

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
/// How often memory is checked against the bucket.
const FRESHNESS_INTERVAL: Duration = Duration::from_millis(500);
/// How long the watch may stay behind the bucket before memory is distrusted.
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// What one freshness check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Whether lookups may answer from memory.
    pub trusted: bool,
    /// Since when the watch has been behind the bucket, if it is.
    pub behind_since: Option<tokio::time::Instant>,
    /// Whether to start the watch again (it has been behind too long).
    pub rewatch: bool,
}

/// Judges memory against the bucket: `applied` is the last revision the watch applied,
/// `last_sequence` the bucket's, `trusted` what the previous check concluded, `behind_since`
/// since when it found the watch behind. When the bucket cannot be asked (`None`: its leader is
/// being elected, or this connection is down), memory keeps its standing: a bucket that cannot
/// answer cannot take a revocation either, and distrusting memory then would make every request
/// wait for the same unavailable leader.
pub fn judge(
    applied: u64,
    last_sequence: Option<u64>,
    trusted: bool,
    behind_since: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
) -> Freshness {
    match last_sequence {
        None => Freshness {
            trusted,
            behind_since,
            rewatch: false,
        },
        Some(last) if applied >= last => Freshness {
            trusted: true,
            behind_since: None,
            rewatch: false,
        },
        Some(_) => {
            let since = behind_since.unwrap_or(now);
            let stale = now.duration_since(since) >= STALE_AFTER;
            Freshness {
                trusted: !stale,
                behind_since: Some(since),
                rewatch: stale,
            }
        }
    }
}

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
    applied: std::sync::atomic::AtomicU64,
    rewatch: tokio::sync::Notify,
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
            applied: std::sync::atomic::AtomicU64::new(0),
            rewatch: tokio::sync::Notify::new(),
            kind: PhantomData,
        })
    }

    /// Follows the bucket until `shutdown`: loads every entry, then applies each change, and
    /// checks twice a second that memory is current.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let checker = tokio::spawn(self.clone().check_freshness(shutdown.clone()));
        while !shutdown.is_cancelled() {
            match self.kv.watch_with_history(">").await {
                Ok(mut watch) => loop {
                    let entry = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.rewatch.notified() => {
                            tracing::warn!(bucket = %self.kv.name, "watch of the bucket fell behind; watching again");
                            break;
                        }
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
                },
                Err(error) => tracing::warn!(bucket = %self.kv.name, %error, "cannot watch the bucket"),
            }
            self.following.store(false, Ordering::SeqCst);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REWATCH_PAUSE) => {}
            }
        }
        checker.abort();
    }

    /// Compares memory with the bucket every [`FRESHNESS_INTERVAL`]; see [`judge`].
    async fn check_freshness(self: Arc<Self>, shutdown: CancellationToken) {
        let mut behind_since = None;
        let mut ticks = tokio::time::interval(FRESHNESS_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let mut stream = self.kv.stream.clone();
            let last_sequence = match tokio::time::timeout(FRESHNESS_INTERVAL, stream.info()).await {
                Ok(Ok(info)) => Some(info.state.last_sequence),
                _ => None,
            };
            let applied = self.applied.load(Ordering::SeqCst);
            let trusted = self.following.load(Ordering::SeqCst);
            let verdict = judge(
                applied,
                last_sequence,
                trusted,
                behind_since,
                tokio::time::Instant::now(),
            );
            behind_since = verdict.behind_since;
            self.following.store(verdict.trusted, Ordering::SeqCst);
            if verdict.rewatch {
                behind_since = None;
                self.rewatch.notify_one();
            }
        }
    }

    fn apply(&self, entry: kv::Entry) {
        self.applied.fetch_max(entry.revision, Ordering::SeqCst);
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

    /// Whether a lookup of `key` would be answered from memory (no read of the bucket).
    pub fn answers_from_memory(&self, key: &str) -> bool {
        !is_kv_key(key)
            || (self.following.load(Ordering::SeqCst)
                && self
                    .entries
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_watch_behind_the_bucket_is_distrusted_after_a_second_and_watched_again() {
        let start = Instant::now();
        let current = judge(7, Some(7), false, None, start);
        assert_eq!((current.trusted, current.rewatch), (true, false));
        // A revocation landed (sequence 8); the watch has not applied it yet.
        let first = judge(7, Some(8), true, None, start);
        assert!(first.trusted, "a moment behind is the normal delay of a watch");
        tokio::time::advance(Duration::from_millis(500)).await;
        let second = judge(7, Some(8), first.trusted, first.behind_since, Instant::now());
        assert!(second.trusted);
        tokio::time::advance(Duration::from_millis(500)).await;
        let stalled = judge(7, Some(8), second.trusted, second.behind_since, Instant::now());
        assert_eq!((stalled.trusted, stalled.rewatch), (false, true));
        // Caught up again.
        let caught_up = judge(8, Some(8), false, None, Instant::now());
        assert_eq!((caught_up.trusted, caught_up.behind_since), (true, None));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_keeps_its_standing_while_the_bucket_cannot_be_asked() {
        let trusted = judge(7, None, true, None, Instant::now());
        assert_eq!((trusted.trusted, trusted.rewatch), (true, false));
        let distrusted = judge(7, None, false, None, Instant::now());
        assert!(!distrusted.trusted, "not trusted before, not trusted now");
    }
}
