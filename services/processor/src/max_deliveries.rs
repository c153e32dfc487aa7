//! Records the failure of a job whose message reached the consumer's max deliveries without the
//! processor recording it (the worker died on its last attempt), then removes the message from
//! the work queue. The server's advisories are captured by the `DOWNLOAD_ADVISORIES` stream, so
//! they wait for a processor even when none is running. The record's compare-and-set makes the
//! failure exactly-once even if an advisory is handled twice.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use async_nats::jetstream::{AckKind, consumer};
use common::messages::JobMessage;
use common::{ErrorCode, names};
use tokio_util::sync::CancellationToken;

use crate::Context;

#[derive(serde::Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: u64,
}

/// Handles advisories until `stop`, re-subscribing after errors.
pub async fn listen(context: Arc<Context>, stop: CancellationToken) {
    let jetstream = context.store.jetstream().clone();
    let open = || {
        let jetstream = jetstream.clone();
        async move {
            let consumer: consumer::PullConsumer = jetstream
                .get_consumer_from_stream(names::ADVISORIES_CONSUMER, names::ADVISORIES_STREAM)
                .await?;
            Ok::<_, async_nats::Error>(consumer.messages().await?)
        }
    };
    let handle = |message: async_nats::jetstream::Message| {
        let context = context.clone();
        async move {
            let decision = match serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) {
                Err(error) => {
                    tracing::warn!(%error, "malformed max-deliveries advisory terminated");
                    AckKind::Term
                }
                Ok(advisory) => match record_exhausted(&context, advisory.stream_seq, advisory.deliveries).await {
                    Ok(()) => AckKind::Ack,
                    Err(error) => {
                        tracing::warn!(%error, stream_seq = advisory.stream_seq, "exhausted job not recorded yet, retrying");
                        AckKind::Nak(Some(Duration::from_secs(1)))
                    }
                },
            };
            if let Err(error) = message.ack_with(decision).await {
                tracing::warn!(%error, "advisory acknowledgement not sent");
            }
        }
    };
    common::consume::consume_forever("max-deliveries advisories", open, handle, None, stop).await;
}

async fn record_exhausted(context: &Context, stream_seq: u64, deliveries: u64) -> Result<(), async_nats::Error> {
    let stream = context.store.jetstream().get_stream(names::JOBS_STREAM).await?;
    let message = match stream.get_raw_message(stream_seq).await {
        Ok(message) => message,
        Err(error) if error.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            // Already removed (advisory handled before, or the job was acknowledged after all).
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    match serde_json::from_slice::<JobMessage>(&message.payload) {
        Ok(job) => {
            let job_id = job.job_id();
            // The job's trace gets the step that failed it, a child of the job's publish.
            let span = common::telemetry::span::job_step("retries exhausted", &job_id.to_string());
            common::telemetry::set_parent_from_headers(&span, Some(&message.headers));
            // A job never claimed has its record only in this message.
            let queued = common::store::Versioned::of_queued(&job);
            let change = context
                .store
                .update_from(job_id, queued, |record| {
                    if record.status.is_terminal() {
                        return false;
                    }
                    record.fail(
                        ErrorCode::RetriesExhausted,
                        format!("the job was delivered {deliveries} times without finishing"),
                    );
                    true
                })
                .instrument(span.clone())
                .await;
            match change {
                Ok(common::store::Change::Written(_)) => {
                    common::telemetry::span::failed(&span, ErrorCode::RetriesExhausted.as_str());
                    tracing::warn!(parent: &span, %job_id, deliveries, "job failed after its last delivery")
                }
                Ok(common::store::Change::Unchanged(_)) => {}
                Err(common::store::StoreError::Missing(_) | common::store::StoreError::Removed(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(error) => tracing::warn!(%error, stream_seq, "exhausted message is not a job; removing it"),
    }
    stream.delete_message(stream_seq).await?;
    Ok(())
}
