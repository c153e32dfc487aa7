//! The one loop every long-lived JetStream subscription of this system runs: open a consumer's
//! message stream, hand each message to a handler, and open it again after an error (a pull
//! stream can stall after `NoResponders`/`MissingHeartbeat`, and ordered consumers fail over
//! leader changes), until stopped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// How long a live feed may be quiet before it checks that it is not stalled.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Follows the messages of `stream` on `filter` published from now on, handing each to `handle`
/// until `stop`. After a failure (the server restarting, say) it resumes right after the last
/// message handled rather than "from now on", so an outage loses nothing the stream still holds.
///
/// A feed can also stall without an error: the ordered consumer behind it lived on a node that
/// died, and its replacement waits for messages that never come. So a feed quiet for
/// [`IDLE_CHECK`] looks into the stream itself: if a message on `filter` after the last one
/// handled has been waiting longer than that, the feed is re-opened from there.
pub async fn follow_new<Handle, Handling>(
    what: &'static str,
    jetstream: &jetstream::Context,
    stream: &str,
    filter: &str,
    mut handle: Handle,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
    stop: CancellationToken,
) where
    Handle: FnMut(jetstream::Message) -> Handling,
    Handling: Future<Output = ()>,
{
    let mut position: Option<u64> = None;
    while !stop.is_cancelled() {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = open_after(jetstream, stream, filter, position) => opened,
        };
        let (start, mut messages) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, what, "cannot subscribe, retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(REOPEN_DELAY) => continue,
                }
            }
        };
        let mut last_handled = *position.get_or_insert(start);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = tokio::time::timeout(IDLE_CHECK, messages.next()) => next,
            };
            match next {
                Ok(Some(Ok(message))) => {
                    if let Ok(info) = message.info() {
                        last_handled = info.stream_sequence;
                        position = Some(last_handled);
                    }
                    handle(message).await;
                }
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, what, "subscription failed, re-subscribing");
                    break;
                }
                Ok(None) => break,
                Err(_quiet) => {
                    if let Some(waiting) = unhandled_for(jetstream, stream, filter, last_handled).await
                        && waiting >= IDLE_CHECK
                    {
                        tracing::warn!(
                            what,
                            after = last_handled,
                            waiting_ms = waiting.as_millis() as u64,
                            "live feed stalled with messages waiting, re-subscribing"
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// How long the first message on `filter` (wildcards allowed) after stream sequence `after` has
/// been in the stream, `None` if there is none (or the stream cannot tell right now).
pub async fn unhandled_for(jetstream: &jetstream::Context, stream: &str, filter: &str, after: u64) -> Option<Duration> {
    let stream = jetstream.get_stream_no_info(stream).await.ok()?;
    let message = stream.direct_get_next_for_subject(filter, Some(after + 1)).await.ok()?;
    let now = chrono::Utc::now().timestamp_nanos_opt()? as i128;
    let age = now - message.time.unix_timestamp_nanos();
    Some(Duration::from_nanos(age.clamp(0, u64::MAX as i128) as u64))
}

/// An ordered consumer of `stream` on `filter` delivering the messages after stream sequence
/// `after`, or, when `after` is `None`, the messages published from now on; returns the sequence
/// it starts after.
async fn open_after(
    jetstream: &jetstream::Context,
    stream: &str,
    filter: &str,
    after: Option<u64>,
) -> Result<(u64, jetstream::consumer::pull::Ordered), async_nats::Error> {
    let stream = jetstream.get_stream(stream).await?;
    let after = match after {
        Some(after) => after,
        // `get_stream` just read the stream's info: its last sequence is "now".
        None => stream.cached_info().state.last_sequence,
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            name: Some(crate::nats::ordered_consumer_name()),
            filter_subject: filter.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await?;
    Ok((after, consumer.messages().await?))
}

/// Pulls from the durable consumer `consumer_name` of `stream` exactly as many messages as there
/// are free slots, and runs `handle` on each on its own task of `tasks`, until `stop`. No message
/// waits in this process's buffer while its ack wait runs out (which would redeliver it to
/// another instance and burn one of its deliveries). A message beyond the free slots, should the
/// server ever send one, goes back to the consumer at once.
#[allow(clippy::too_many_arguments)]
pub async fn pull_into_slots<Handle, Handling>(
    what: &'static str,
    jetstream: &jetstream::Context,
    stream: &'static str,
    consumer_name: &'static str,
    slots: usize,
    mut handle: Handle,
    tasks: &TaskTracker,
    stop: CancellationToken,
) where
    Handle: FnMut(jetstream::Message) -> Handling,
    Handling: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(slots));
    let mut consumer: Option<jetstream::consumer::PullConsumer> = None;
    while !stop.is_cancelled() {
        let first_slot = tokio::select! {
            _ = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let mut free_slots = vec![first_slot];
        while let Ok(slot) = slots.clone().try_acquire_owned() {
            free_slots.push(slot);
        }
        if consumer.is_none() {
            match jetstream.get_consumer_from_stream(consumer_name, stream).await {
                Ok(found) => consumer = Some(found),
                Err(error) => {
                    tracing::warn!(%error, what, "cannot reach the consumer, retrying");
                    pause(&stop).await;
                    continue;
                }
            }
        }
        let Some(pulling) = consumer.as_ref() else { continue };
        let pull = pulling
            .batch()
            .max_messages(free_slots.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match pull {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, what, "cannot pull, retrying");
                consumer = None;
                pause(&stop).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = batch.next() => next,
            };
            match next {
                Some(Ok(message)) => match free_slots.pop() {
                    Some(slot) => {
                        let handling = handle(message);
                        tasks.spawn(async move {
                            handling.await;
                            drop(slot);
                        });
                    }
                    None => {
                        tracing::warn!(what, "the server sent more messages than asked for; handing one back");
                        let _ = message.ack_with(jetstream::AckKind::Nak(Some(REOPEN_DELAY))).await;
                    }
                },
                Some(Err(error)) => {
                    tracing::warn!(%error, what, "pull interrupted");
                    consumer = None;
                    break;
                }
                None => break,
            }
        }
    }
}

/// Acknowledges progress on `message` every `interval`, forever: run it beside the handling of
/// a message (`select!`) so its lease stays held however long the handling waits, for instance
/// for a cluster electing a leader.
pub async fn keep_lease(message: &jetstream::Message, interval: Duration) -> std::convert::Infallible {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(error) = message.ack_with(jetstream::AckKind::Progress).await {
            tracing::debug!(%error, "lease not renewed this time");
        }
    }
}

/// How long one pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

async fn pause(stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(REOPEN_DELAY) => {}
    }
}
