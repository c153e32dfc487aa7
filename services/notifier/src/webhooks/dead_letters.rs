//! Dead-lettered webhook deliveries: listed and replayed by an operator with
//! `notifier dead-letters list` and `notifier dead-letters replay <webhookId>|--all`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::messages::JobEvent;
use common::names;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

/// A delivery that ran out of attempts (or whose target was refused).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The stable `webhook-id`.
    pub webhook_id: String,
    /// Where it was going.
    pub url: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: String,
    /// When it was given up.
    pub failed_at: DateTime<Utc>,
    /// The event it carries.
    pub event: JobEvent,
    /// The `traceparent` of its last attempt: a replay continues the job's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Every dead letter.
pub async fn list(jetstream: &async_nats::jetstream::Context) -> anyhow::Result<Vec<DeadLetter>> {
    let bucket = jetstream.get_key_value(names::WEBHOOK_DEAD_LETTERS_BUCKET).await?;
    let keys: Vec<String> = bucket.keys().await?.try_collect().await?;
    let mut letters = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(value) = bucket.get(&key).await? {
            letters.push(serde_json::from_slice(&value)?);
        }
    }
    Ok(letters)
}

/// Queues dead letters for delivery again (all, or those named) and removes them from the
/// bucket; a delivery that fails again comes back as a new dead letter. Returns how many.
pub async fn replay(
    jetstream: &async_nats::jetstream::Context,
    webhook_ids: Option<&[String]>,
) -> anyhow::Result<usize> {
    let bucket = jetstream.get_key_value(names::WEBHOOK_DEAD_LETTERS_BUCKET).await?;
    let mut replayed = 0;
    for letter in list(jetstream).await? {
        if webhook_ids.is_some_and(|ids| !ids.contains(&letter.webhook_id)) {
            continue;
        }
        let payload = Bytes::from(serde_json::to_vec(&letter.event)?);
        let mut headers = async_nats::HeaderMap::new();
        if let Some(traceparent) = &letter.traceparent {
            headers.insert("traceparent", traceparent.as_str());
        }
        jetstream
            .publish_with_headers(names::WEBHOOK_REPLAY_SUBJECT, headers, payload)
            .await?
            .await?;
        bucket.purge(&letter.webhook_id).await?;
        replayed += 1;
    }
    Ok(replayed)
}
