//! Records the failure of a job whose message reached the consumer's max deliveries without the
//! processor recording it (the worker died on the last attempt), then removes the message from
//! the work queue. The record's compare-and-set makes this exactly-once even if the advisory
//! arrives twice or a worker recorded the outcome after all.

use std::sync::Arc;

use common::messages::JobMessage;
use common::{ErrorCode, names};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(serde::Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: u64,
}

/// Listens for max-deliveries advisories (one processor of the queue group gets each).
pub async fn listen(client: async_nats::Client, context: Arc<Context>, stop: CancellationToken) {
    let subject = names::max_deliveries_advisory_subject();
    let mut advisories = match client
        .queue_subscribe(subject.clone(), names::PROCESSOR_CONSUMER.to_string())
        .await
    {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::error!(%error, subject, "cannot subscribe to max-deliveries advisories");
            return;
        }
    };
    loop {
        let advisory = tokio::select! {
            _ = stop.cancelled() => return,
            advisory = advisories.next() => match advisory {
                Some(advisory) => advisory,
                None => return,
            },
        };
        let parsed: MaxDeliveriesAdvisory = match serde_json::from_slice(&advisory.payload) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::warn!(%error, "malformed max-deliveries advisory ignored");
                continue;
            }
        };
        if let Err(error) = record_exhausted(&context, parsed.stream_seq, parsed.deliveries).await {
            tracing::error!(error = %error, stream_seq = parsed.stream_seq, "exhausted job not recorded");
        }
    }
}

async fn record_exhausted(context: &Context, stream_seq: u64, deliveries: u64) -> Result<(), async_nats::Error> {
    let stream = context.store.jetstream().get_stream(names::JOBS_STREAM).await?;
    let message = stream.get_raw_message(stream_seq).await?;
    if let Ok(job) = serde_json::from_slice::<JobMessage>(&message.payload) {
        let job_id = job.job_id();
        let change = context
            .store
            .update(job_id, |record| {
                if record.status.is_terminal() {
                    return false;
                }
                record.fail(
                    ErrorCode::RetriesExhausted,
                    format!("job was delivered {deliveries} times without finishing"),
                );
                true
            })
            .await;
        match change {
            Ok(_) => tracing::warn!(%job_id, deliveries, "job failed after its last delivery"),
            Err(error) => tracing::warn!(%job_id, error = %error, "exhausted job not updated"),
        }
    }
    stream.delete_message(stream_seq).await?;
    Ok(())
}
