//! The per-user cap on open streams of one notifier instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open streams per user.
pub struct StreamLimits {
    max_per_user: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream's place in its user's count; released when dropped.
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    user: String,
}

impl StreamLimits {
    /// At most `max_per_user` open streams per user.
    pub fn new(max_per_user: usize) -> Arc<Self> {
        Arc::new(StreamLimits {
            max_per_user,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `user`, or `None` when the user is at the cap.
    pub fn acquire(self: &Arc<Self>, user: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("limits lock");
        let count = open.entry(user.to_string()).or_insert(0);
        if *count >= self.max_per_user {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            limits: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("limits lock");
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_at_the_cap_gets_no_slot_until_one_is_released() {
        let limits = StreamLimits::new(2);
        let first = limits.acquire("u").unwrap();
        let _second = limits.acquire("u").unwrap();
        assert!(limits.acquire("u").is_none());
        assert!(limits.acquire("other").is_some(), "the cap is per user");
        drop(first);
        assert!(limits.acquire("u").is_some());
    }
}
