//! A small bounded map whose entries each carry their own deadline: what the hot read paths keep
//! (a presigned URL while it is fresh, a finished job's record for a while).
//!
//! Hand-written rather than a cache crate: one lock, one map, a deadline per entry and a bound
//! is all these uses need, while the crates that offer per-entry expiry bring background
//! threads and a dozen dependencies.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

/// Entries valid until their deadline, at most `capacity` of them.
pub struct ExpiringMap<K, V> {
    capacity: usize,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> ExpiringMap<K, V> {
    /// An empty map holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        ExpiringMap {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value of `key` if its deadline has not passed.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some((value, until)) if *until > now => Some(value.clone()),
            _ => None,
        }
    }

    /// Keeps `value` under `key` until `until`. A full map first drops what has expired, and if
    /// that frees nothing, everything: the bound holds, and what is hot comes back at once.
    pub fn insert(&self, key: K, value: V, until: Instant) {
        let now = Instant::now();
        if until <= now {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, deadline)| *deadline > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, until));
    }

    /// How many entries are held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_entry_is_served_until_its_deadline_and_not_after() {
        let map = ExpiringMap::new(4);
        map.insert("a", 1, Instant::now() + Duration::from_secs(10));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(map.get(&"a"), Some(1));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(map.get(&"a"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_map_drops_expired_entries_first_and_never_exceeds_its_bound() {
        let map = ExpiringMap::new(3);
        let now = Instant::now();
        map.insert(1, "short", now + Duration::from_secs(1));
        map.insert(2, "long", now + Duration::from_secs(100));
        map.insert(3, "long", now + Duration::from_secs(100));
        tokio::time::advance(Duration::from_secs(2)).await;
        map.insert(4, "new", Instant::now() + Duration::from_secs(100));
        assert_eq!(map.len(), 3, "the expired entry made room");
        assert_eq!(map.get(&2), Some("long"));
        assert_eq!(map.get(&4), Some("new"));
        // Nothing expired: the map starts over rather than grow.
        map.insert(5, "newest", Instant::now() + Duration::from_secs(100));
        assert_eq!(map.len(), 1);
        assert_eq!(map.get(&5), Some("newest"));
        assert_eq!(map.get(&2), None);
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_a_key_in_a_full_map_keeps_the_others() {
        let map = ExpiringMap::new(2);
        let later = Instant::now() + Duration::from_secs(100);
        map.insert("a", 1, later);
        map.insert("b", 2, later);
        map.insert("a", 3, later);
        assert_eq!((map.get(&"a"), map.get(&"b")), (Some(3), Some(2)));
        map.insert("c", 4, Instant::now());
        assert_eq!(map.len(), 2, "an entry already expired is not kept");
    }
}
