//! Backpressure: the job backlog (messages in `DOWNLOAD_JOBS`, jobs accepted and not yet finished
//! by a processor), read in the background every [`REFRESH_EVERY`] and shared by all requests, so
//! no initiate costs a NATS request for it. Between two reads the intake counts its own accepts.
//! At `QUEUE_MAX_BACKLOG` initiate answers 503 `QUEUE_FULL`, with a `Retry-After` from the rate
//! at which processors drained the stream recently.
//!
//! This is the soft limit: other intakes' accepts since the last read are not seen, so the
//! backlog can pass it by what they accept in one refresh. The stream's `max_msgs`
//! (`QUEUE_MAX_MESSAGES`, discard new) is the hard one.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::names;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the backlog is read.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// The drain rate is measured over this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// `Retry-After` when nothing drained recently (no processor running).
pub const RETRY_AFTER_WITHOUT_DRAIN: u64 = 30;
/// Accepts remembered between two reads (beyond, they count until the next read only).
const MAX_UNREAD: usize = 100_000;
/// The longest `Retry-After` answered.
const MAX_RETRY_AFTER: u64 = 300;

/// One read of the stream.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Messages removed from the stream so far (acknowledged jobs): last sequence − messages.
    drained: u64,
}

#[derive(Debug, Default)]
struct Reading {
    /// Messages in the stream at the last read, plus this intake's accepts it did not hold.
    backlog: u64,
    /// Stream sequences of this intake's accepts the last read did not hold.
    unread: Vec<u64>,
    /// The stream's last sequence at the last read: an accept at or below it is in that read.
    read_up_to: u64,
    /// Whether the stream was read at least once.
    known: bool,
    samples: VecDeque<Sample>,
}

/// The shared view of the backlog.
#[derive(Debug)]
pub struct Backlog {
    limit: u64,
    reading: Mutex<Reading>,
}

/// Seconds a refused client should wait: the time to drain the excess (at least one message) at
/// `drain_per_second`, within 1..=300, or [`RETRY_AFTER_WITHOUT_DRAIN`] when nothing drains.
pub fn retry_after(backlog: u64, limit: u64, drain_per_second: f64) -> u64 {
    if drain_per_second < 0.01 {
        return RETRY_AFTER_WITHOUT_DRAIN;
    }
    let excess = (backlog + 1).saturating_sub(limit).max(1) as f64;
    ((excess / drain_per_second).ceil() as u64).clamp(1, MAX_RETRY_AFTER)
}

impl Backlog {
    /// A backlog refusing new jobs at `limit` messages.
    pub fn new(limit: u64) -> Self {
        Backlog {
            limit,
            reading: Mutex::new(Reading::default()),
        }
    }

    fn reading(&self) -> std::sync::MutexGuard<'_, Reading> {
        self.reading.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err(retry_after_seconds)` when the backlog is at the limit.
    pub fn admit(&self) -> Result<(), u64> {
        let reading = self.reading();
        if reading.backlog < self.limit {
            return Ok(());
        }
        Err(retry_after(reading.backlog, self.limit, drain_rate(&reading.samples)))
    }

    /// `Retry-After` for a job the stream refused as full (its hard limit, which the backlog
    /// may not show yet): the time to drain one message past the larger of the two.
    pub fn retry_after_when_full(&self) -> u64 {
        let reading = self.reading();
        retry_after(
            reading.backlog.max(self.limit),
            self.limit,
            drain_rate(&reading.samples),
        )
    }

    /// Counts a job this intake queued (its message at stream `sequence`) until a read holds it.
    pub fn accepted(&self, sequence: u64) {
        let mut reading = self.reading();
        if sequence <= reading.read_up_to {
            return; // The last read (made after it was stored) holds it already.
        }
        reading.backlog += 1;
        if reading.unread.len() < MAX_UNREAD {
            reading.unread.push(sequence);
        }
    }

    /// The backlog as last read plus this intake's accepts since.
    pub fn current(&self) -> Option<u64> {
        let reading = self.reading();
        reading.known.then_some(reading.backlog)
    }

    /// Records a read of the stream (`messages` held, the last at `last_sequence`): this
    /// intake's accepts stored after it count on top, each exactly once.
    fn record(&self, messages: u64, last_sequence: u64, at: Instant) {
        let mut reading = self.reading();
        reading.unread.retain(|sequence| *sequence > last_sequence);
        reading.backlog = messages + reading.unread.len() as u64;
        reading.read_up_to = reading.read_up_to.max(last_sequence);
        reading.known = true;
        reading.samples.push_back(Sample {
            at,
            drained: last_sequence.saturating_sub(messages),
        });
        while reading
            .samples
            .front()
            .is_some_and(|oldest| at.duration_since(oldest.at) > RATE_WINDOW)
        {
            reading.samples.pop_front();
        }
    }

    /// Reads the stream every [`REFRESH_EVERY`] until `shutdown`. A failed read keeps the last
    /// value (and this intake's accepts keep counting on it).
    pub async fn follow(&self, jetstream: async_nats::jetstream::Context, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(REFRESH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // One STREAM.INFO request per read (the handle itself is made without one).
            let read = tokio::time::timeout(REFRESH_EVERY * 4, async {
                let stream = jetstream.get_stream_no_info(names::JOBS_STREAM).await?;
                let info = stream.get_info().await?;
                Ok::<_, async_nats::Error>((info.state.messages, info.state.last_sequence))
            })
            .await;
            match read {
                Ok(Ok((messages, last_sequence))) => {
                    if failing {
                        tracing::info!("job backlog readable again");
                        failing = false;
                    }
                    self.record(messages, last_sequence, Instant::now());
                }
                Ok(Err(error)) if !failing => {
                    tracing::warn!(%error, "job backlog not readable; keeping the last value");
                    failing = true;
                }
                Err(_) if !failing => {
                    tracing::warn!("job backlog read timed out; keeping the last value");
                    failing = true;
                }
                _ => {}
            }
        }
    }
}

/// Messages per second drained over the samples.
fn drain_rate(samples: &VecDeque<Sample>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some(first), Some(last)) if last.at > first.at => {
            last.drained.saturating_sub(first.drained) as f64 / last.at.duration_since(first.at).as_secs_f64()
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_drain_rate() {
        assert_eq!(retry_after(20, 20, 0.0), RETRY_AFTER_WITHOUT_DRAIN);
        assert_eq!(retry_after(20, 20, 0.5), 2, "one message at 0.5/s");
        assert_eq!(retry_after(119, 20, 10.0), 10, "100 messages at 10/s");
        assert_eq!(retry_after(1_000_000, 20, 1.0), MAX_RETRY_AFTER);
        assert_eq!(retry_after(20, 20, 1_000.0), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backlog_counts_own_accepts_until_the_next_read() {
        let backlog = Backlog::new(3);
        assert!(backlog.admit().is_ok(), "unknown backlog: admit");
        let start = Instant::now();
        backlog.record(1, 1, start);
        backlog.accepted(2);
        assert!(backlog.admit().is_ok());
        backlog.accepted(3);
        assert_eq!(backlog.current(), Some(3));
        assert_eq!(backlog.admit(), Err(RETRY_AFTER_WITHOUT_DRAIN));
        // Processors drained 8 messages in 2 s: 4/s, one over the limit → 1 s.
        tokio::time::advance(Duration::from_secs(2)).await;
        backlog.record(3, 11, Instant::now());
        assert_eq!(backlog.admit(), Err(1));
        backlog.record(2, 11, Instant::now());
        assert!(backlog.admit().is_ok());
        // A read that does not hold this intake's last accept yet (taken before it was stored)
        // counts it on top; the next read, which holds it, counts it once.
        backlog.accepted(12);
        backlog.record(2, 11, Instant::now());
        assert_eq!(backlog.current(), Some(3));
        backlog.record(3, 12, Instant::now());
        assert_eq!(backlog.current(), Some(3));
        // A read that holds an accept counted after it (the read came first) counts it once.
        backlog.record(4, 13, Instant::now());
        backlog.accepted(13);
        assert_eq!(backlog.current(), Some(4));
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_leave_the_rate() {
        let backlog = Backlog::new(1);
        backlog.record(5, 5, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        backlog.record(5, 105, Instant::now());
        tokio::time::advance(RATE_WINDOW + Duration::from_secs(1)).await;
        backlog.record(5, 105, Instant::now());
        assert_eq!(
            backlog.admit(),
            Err(RETRY_AFTER_WITHOUT_DRAIN),
            "nothing drained in the window"
        );
    }
}
