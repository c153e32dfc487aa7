//! Recent job durations, shared through KV so every intake can estimate waiting times without
//! any per-request work: processors keep a moving average and publish it every few seconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::names;
use tokio_util::sync::CancellationToken;

use crate::Context;

/// Weight of the newest duration in the moving average.
const SMOOTHING: f64 = 0.2;
/// How often the average is published.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(2);

/// Exponentially weighted mean duration of completed jobs, in milliseconds.
#[derive(Clone, Default)]
pub struct DurationStats(Arc<Mutex<(Option<f64>, bool)>>);

impl DurationStats {
    /// Adds one completed job's duration.
    pub fn record(&self, duration: Duration) {
        let sample = duration.as_secs_f64() * 1000.0;
        let mut state = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.0 = Some(match state.0 {
            None => sample,
            Some(mean) => mean + SMOOTHING * (sample - mean),
        });
        state.1 = true;
    }

    fn take_if_changed(&self) -> Option<f64> {
        let mut state = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !state.1 {
            return None;
        }
        state.1 = false;
        state.0
    }
}

/// Publishes the mean to `stats.job-duration-ms` whenever it changed.
pub async fn publish_periodically(context: Arc<Context>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(PUBLISH_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(mean) = context.stats.take_if_changed() else {
            continue;
        };
        let value = Bytes::from(format!("{}", mean.round() as u64));
        if let Err(error) = context.store.kv().put(names::JOB_DURATION_STATS_KEY, value).await {
            tracing::warn!(%error, "job duration stats not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_moves_toward_new_samples_and_is_taken_once() {
        let stats = DurationStats::default();
        assert_eq!(stats.take_if_changed(), None);
        stats.record(Duration::from_secs(10));
        assert_eq!(stats.take_if_changed(), Some(10_000.0));
        assert_eq!(stats.take_if_changed(), None);
        stats.record(Duration::from_secs(20));
        assert_eq!(stats.take_if_changed(), Some(12_000.0));
    }
}
