//! The one loop every long-lived JetStream subscription of this system runs: open a consumer's
//! message stream, hand each message to a handler, and open it again after an error (a pull
//! stream can stall after `NoResponders`/`MissingHeartbeat`, and ordered consumers fail over
//! leader changes), until stopped.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

/// Pause before re-opening a stream that failed.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// Runs `handle` on every message from the streams `open` yields, until `stop`. `ready` is
/// signalled once the first stream is open. Messages are handled one after another; a handler
/// that wants concurrency spawns (and bounds) its own tasks.
pub async fn consume_forever<Open, Opening, Messages, Failure, Handle, Handling>(
    what: &'static str,
    mut open: Open,
    mut handle: Handle,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
    stop: CancellationToken,
) where
    Open: FnMut() -> Opening,
    Opening: Future<Output = Result<Messages, async_nats::Error>>,
    Messages: Stream<Item = Result<jetstream::Message, Failure>> + Unpin,
    Failure: std::fmt::Display,
    Handle: FnMut(jetstream::Message) -> Handling,
    Handling: Future<Output = ()>,
{
    while !stop.is_cancelled() {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = open() => opened,
        };
        let mut messages = match opened {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, what, "cannot subscribe, retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REOPEN_DELAY) => continue,
                }
            }
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => handle(message).await,
                Some(Err(error)) => {
                    tracing::warn!(%error, what, "subscription failed, re-subscribing");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Follows the messages of `stream` on `filter` published from now on, handing each to `handle`
/// until `stop`. After a failure (the server restarting, say) it resumes right after the last
/// message handled rather than "from now on", so an outage loses nothing the stream still holds.
pub async fn follow_new<Handle, Handling>(
    what: &'static str,
    jetstream: &jetstream::Context,
    stream: &str,
    filter: &str,
    mut handle: Handle,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    stop: CancellationToken,
) where
    Handle: FnMut(jetstream::Message) -> Handling,
    Handling: Future<Output = ()>,
{
    let last_handled = AtomicU64::new(0);
    let open = || open_after(jetstream, stream, filter, last_handled.load(Ordering::Relaxed));
    let handle = |message: jetstream::Message| {
        if let Ok(info) = message.info() {
            last_handled.store(info.stream_sequence, Ordering::Relaxed);
        }
        handle(message)
    };
    consume_forever(what, open, handle, ready, stop).await;
}

/// An ordered consumer of `stream` on `filter`: new messages when `after` is 0, else the messages
/// after stream sequence `after`.
async fn open_after(
    jetstream: &jetstream::Context,
    stream: &str,
    filter: &str,
    after: u64,
) -> Result<jetstream::consumer::pull::Ordered, async_nats::Error> {
    let stream = jetstream.get_stream(stream).await?;
    let deliver_policy = match after {
        0 => jetstream::consumer::DeliverPolicy::New,
        after => jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        },
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}
