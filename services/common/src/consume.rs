//! The one loop every long-lived JetStream subscription of this system runs: open a consumer's
//! message stream, hand each message to a handler, and open it again after an error (a pull
//! stream can stall after `NoResponders`/`MissingHeartbeat`, and ordered consumers fail over
//! leader changes), until stopped.

use std::future::Future;
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

/// Opens an ordered consumer that delivers the messages of `stream` on `filter` published from
/// now on.
pub async fn new_messages(
    jetstream: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<jetstream::consumer::pull::Ordered, async_nats::Error> {
    let stream = jetstream.get_stream(stream).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}
