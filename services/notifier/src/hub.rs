//! Fan-out of job events to open streams. Each notifier instance follows the events stream with
//! one ordered consumer and hands every event to the streams of its job in memory, through
//! bounded per-stream buffers: a client that falls too far behind is disconnected (it resumes
//! with `Last-Event-ID`), so a slow client never delays the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use common::messages::JobEvent;
use common::{JobId, names};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events are shared between the streams of a job, so a buffer slot is one pointer.
type Subscribers = HashMap<JobId, Vec<(u64, mpsc::Sender<Arc<LiveEvent>>)>>;

/// A job event with the trace context it was published in (its `traceparent` header), so each
/// stream's delivery of it joins the job's trace.
#[derive(Debug)]
pub struct LiveEvent {
    /// The event.
    pub event: JobEvent,
    /// Its publisher's `traceparent`, when it came from the events stream with one.
    pub traceparent: Option<String>,
}

impl From<JobEvent> for LiveEvent {
    fn from(event: JobEvent) -> Self {
        LiveEvent {
            event,
            traceparent: None,
        }
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = JobEvent;

    fn deref(&self) -> &JobEvent {
        &self.event
    }
}

/// Open streams by job.
pub struct Hub {
    next_id: AtomicU64,
    buffer: usize,
    subscribers: Mutex<Subscribers>,
}

/// One stream's feed of live events; leaves the hub when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    job_id: JobId,
    id: u64,
    /// Live events of the job, in order. Ends if the client fell too far behind.
    pub receiver: mpsc::Receiver<Arc<LiveEvent>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self
            .hub
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(list) = subscribers.get_mut(&self.job_id) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                subscribers.remove(&self.job_id);
            }
        }
    }
}

impl Hub {
    /// A hub whose streams buffer up to `buffer` events each.
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Hub {
            next_id: AtomicU64::new(1),
            buffer: buffer.max(1),
            subscribers: Mutex::new(HashMap::new()),
        })
    }

    /// Starts receiving a job's live events.
    pub fn subscribe(self: &Arc<Self>, job_id: JobId) -> Subscription {
        let (sender, receiver) = mpsc::channel(self.buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(job_id)
            .or_default()
            .push((id, sender));
        Subscription {
            hub: self.clone(),
            job_id,
            id,
            receiver,
        }
    }

    /// Hands an event to every stream of its job, dropping streams whose buffer is full.
    pub fn dispatch(&self, event: JobEvent) {
        self.dispatch_live(LiveEvent::from(event));
    }

    /// Like [`dispatch`](Self::dispatch), with the event's trace context.
    pub fn dispatch_live(&self, event: LiveEvent) {
        let job_id = event.job_id();
        let event = Arc::new(event);
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(list) = subscribers.get_mut(&job_id) else {
            return;
        };
        list.retain(|(_, sender)| match sender.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(%job_id, "stream too far behind, disconnecting it (it resumes with Last-Event-ID)");
                crate::metrics::slow_client_cut();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if list.is_empty() {
            subscribers.remove(&job_id);
        }
    }

    /// Streams open on this instance.
    pub fn open_streams(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Follows every new job event and dispatches it, until `stop`; re-subscribes after errors.
pub async fn follow(
    jetstream: jetstream::Context,
    hub: Arc<Hub>,
    ready: tokio::sync::oneshot::Sender<()>,
    stop: CancellationToken,
) {
    let dispatch = |message: jetstream::Message| {
        match serde_json::from_slice::<JobEvent>(&message.payload) {
            Ok(event) => hub.dispatch_live(LiveEvent {
                event,
                traceparent: common::telemetry::traceparent_of(message.headers.as_ref()),
            }),
            Err(error) => tracing::warn!(subject = %message.subject, %error, "unreadable job event skipped"),
        }
        std::future::ready(())
    };
    common::consume::follow_new(
        "job events",
        &jetstream,
        names::EVENTS_STREAM,
        names::EVENTS_STREAM_SUBJECTS,
        dispatch,
        Some(ready),
        stop,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(job_id: JobId, seq: u64) -> JobEvent {
        JobEvent::V1 {
            job_id,
            seq,
            status: common::JobStatus::Processing,
            progress: 10,
            previous_progress: None,
            error: None,
            error_code: None,
            attempt: 1,
            at: chrono::Utc::now(),
            result_key: None,
            owner: None,
            webhook: None,
        }
    }

    #[tokio::test]
    async fn events_reach_only_the_streams_of_their_job() {
        let hub = Hub::new(8);
        let first = JobId::new();
        let mut a = hub.subscribe(first);
        let mut b = hub.subscribe(first);
        let mut other = hub.subscribe(JobId::new());
        hub.dispatch(event(first, 1));
        assert_eq!(a.receiver.recv().await.unwrap().seq(), 1);
        assert_eq!(b.receiver.recv().await.unwrap().seq(), 1);
        assert!(other.receiver.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_is_dropped_without_holding_up_the_others() {
        let hub = Hub::new(2);
        let job_id = JobId::new();
        let mut slow = hub.subscribe(job_id);
        let mut fast = hub.subscribe(job_id);
        for seq in 1..=3 {
            hub.dispatch(event(job_id, seq));
            assert_eq!(fast.receiver.recv().await.unwrap().seq(), seq);
        }
        assert_eq!(slow.receiver.recv().await.unwrap().seq(), 1);
        assert_eq!(slow.receiver.recv().await.unwrap().seq(), 2);
        assert!(slow.receiver.recv().await.is_none(), "the slow stream was disconnected");
        assert_eq!(hub.open_streams(), 1);
    }

    #[test]
    fn dropping_a_subscription_leaves_the_hub() {
        let hub = Hub::new(2);
        let subscription = hub.subscribe(JobId::new());
        assert_eq!(hub.open_streams(), 1);
        drop(subscription);
        assert_eq!(hub.open_streams(), 0);
    }
}
