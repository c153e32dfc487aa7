//! Observations of the work queue, for waiting on it in tests and the bench.

use std::collections::BTreeSet;

use async_nats::jetstream::{self, consumer::PullConsumer};
use common::names;
use futures::TryStreamExt;

/// Whether the processors' consumer has nothing pending and nothing in flight.
pub async fn job_consumer_idle(jetstream: &jetstream::Context) -> bool {
    consumer_idle(jetstream, names::JOBS_STREAM, names::PROCESSOR_CONSUMER).await
}

/// Whether a durable consumer has nothing pending and nothing in flight (nor waiting for a
/// redelivery).
pub async fn consumer_idle(jetstream: &jetstream::Context, stream: &str, name: &str) -> bool {
    let consumer: Result<PullConsumer, _> = jetstream.get_consumer_from_stream(name, stream).await;
    let Ok(mut consumer) = consumer else { return false };
    match consumer.info().await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
        Err(_) => false,
    }
}

/// Whether the work-queue stream holds no message at all (acknowledged, terminated or removed).
pub async fn work_queue_empty(jetstream: &jetstream::Context) -> bool {
    let Ok(mut stream) = jetstream.get_stream(names::JOBS_STREAM).await else {
        return false;
    };
    stream
        .info()
        .await
        .map(|info| info.state.messages == 0)
        .unwrap_or(false)
}

/// The ids of the jobs waiting in the work queue as `job.submitted.v2` messages (from the
/// stream's subjects): jobs not claimed yet, whose records are in their messages.
pub async fn queued_job_ids(jetstream: &jetstream::Context) -> anyhow::Result<BTreeSet<String>> {
    let stream = jetstream.get_stream(names::JOBS_STREAM).await?;
    let prefix = names::job_submitted_subject("");
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(names::job_submitted_subject("*"))
        .await?
        .try_collect()
        .await?;
    Ok(subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(String::from))
        .collect())
}

/// The record a job's `job.submitted.v2` message holds (read through the stream's leader, as
/// `nats stream get DOWNLOAD_JOBS --last-for downloads.jobs.submitted.<jobId>` does).
pub async fn queued_record(jetstream: &jetstream::Context, job_id: &str) -> anyhow::Result<common::JobRecord> {
    let message = jetstream
        .get_stream(names::JOBS_STREAM)
        .await?
        .get_last_raw_message_by_subject(&names::job_submitted_subject(job_id))
        .await?;
    let message: common::messages::JobMessage = serde_json::from_slice(&message.payload)?;
    message
        .queued_record()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the message of {job_id} is not a v2 message"))
}
