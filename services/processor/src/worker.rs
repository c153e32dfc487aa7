//! The consume loop and the life of one job message: claim the record, run the job while
//! renewing the lease and writing progress, then turn the outcome into exactly one record change
//! and one acknowledgement (done → Ack, transient → Nak with backoff, malformed → Term).

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use chrono::Utc;
use common::messages::JobMessage;
use common::store::{Change, StoreError};
use common::{ErrorCode, JobId, JobStatus, names, telemetry};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Context;
use crate::bundle::UploadInFlight;
use crate::execute::{self, JobError, JobHooks, JobResult, Progress};

/// Pulls job messages until `shutdown`, running up to `concurrency` jobs at once.
pub async fn consume(
    context: Arc<Context>,
    jetstream: &jetstream::Context,
    jobs: &TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(context.settings.concurrency));
    'subscribe: while !shutdown.is_cancelled() {
        let messages = async {
            let consumer: consumer::PullConsumer = jetstream
                .get_consumer_from_stream(names::PROCESSOR_CONSUMER, names::JOBS_STREAM)
                .await?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(context.settings.concurrency.min(1000))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await?;
            Ok::<_, async_nats::Error>(messages)
        }
        .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "cannot pull jobs, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        tracing::info!(consumer = names::PROCESSOR_CONSUMER, "pulling jobs");
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break 'subscribe,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'subscribe,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let context = context.clone();
                    jobs.spawn(async move {
                        handle(&context, message).await;
                        drop(slot);
                    });
                }
                Some(Err(error)) => {
                    // Heartbeat and no-responder errors can leave the stream stalled: start over.
                    tracing::warn!(%error, "job pull interrupted, re-subscribing");
                    continue 'subscribe;
                }
                None => continue 'subscribe,
            }
        }
    }
    tracing::info!("stopped pulling jobs");
}

/// Handles one message; never panics on its content.
async fn handle(context: &Context, message: jetstream::Message) {
    let delivered = message.info().map(|info| info.delivered.max(1) as u32).unwrap_or(1);
    let job = match serde_json::from_slice::<JobMessage>(&message.payload) {
        Ok(job) => job,
        Err(error) => {
            tracing::warn!(subject = %message.subject, %error, bytes = message.payload.len(), "malformed job message terminated");
            acknowledge(&message, AckKind::Term).await;
            return;
        }
    };
    let span = tracing::info_span!("job", job_id = %job.job_id(), attempt = delivered);
    telemetry::set_parent_from_headers(&span, message.headers.as_ref());
    let decision = process(context, job.job_id(), delivered, &message)
        .instrument(span.clone())
        .await;
    acknowledge(&message, decision).instrument(span).await;
}

async fn acknowledge(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        // The message comes back after the ack wait and is then recognised as already handled.
        tracing::warn!(%error, "acknowledgement not sent");
    }
}

enum Outcome {
    Finished(Result<JobResult, JobError>),
    Cancelled,
    TimedOut,
    Abandoned,
}

async fn process(context: &Context, job_id: JobId, delivered: u32, message: &jetstream::Message) -> AckKind {
    let registration = context.in_flight.register(job_id);
    let delay = context.settings.pick_delay();
    let attempt_started = tokio::time::Instant::now();
    let claimed = context
        .store
        .update(job_id, |record| {
            if record.status.is_terminal() {
                return false;
            }
            let now = Utc::now();
            record.status = JobStatus::Processing;
            record.attempt = delivered;
            record.processed_by = Some(context.settings.instance_id.clone());
            record.started_at.get_or_insert(now);
            record.error = None;
            record.error_code = None;
            record.progress = 0;
            record.estimated_completion = Some(now + delay + Duration::from_secs(1));
            true
        })
        .await;
    let record = match claimed {
        Ok(Change::Written(record)) => record,
        Ok(Change::Unchanged(record)) => {
            tracing::info!(status = record.status.as_str(), "job already finished, acknowledging");
            return AckKind::Ack;
        }
        Err(StoreError::Missing(_)) => {
            tracing::warn!("job record missing (expired or never written), message terminated");
            return AckKind::Term;
        }
        Err(error @ StoreError::Corrupt { .. }) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "job record unreadable, message terminated");
            return AckKind::Term;
        }
        Err(error) => {
            tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "cannot claim job, retrying soon");
            return AckKind::Nak(Some(Duration::from_secs(1)));
        }
    };
    tracing::info!(
        files = record.file_ids.len(),
        delay_ms = delay.as_millis() as u64,
        "job started"
    );

    let token = registration.token().clone();
    let progress = Progress::default();
    let upload = UploadInFlight::default();
    let (files_sender, mut files_receiver) = tokio::sync::mpsc::channel(1);
    let hooks = JobHooks {
        progress: progress.clone(),
        files_checked: files_sender,
        upload: upload.clone(),
    };
    let mut work = pin!(execute::run(context, job_id, &record.file_ids, delay, &hooks));
    let mut deadline = pin!(tokio::time::sleep(context.settings.job_timeout));
    let mut ticker = tokio::time::interval(context.settings.progress_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress_written = 0u8;
    let outcome = loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => break Outcome::Cancelled,
            _ = context.abandon.cancelled() => break Outcome::Abandoned,
            _ = &mut deadline => break Outcome::TimedOut,
            result = &mut work => break Outcome::Finished(result),
            Some(files) = files_receiver.recv() => {
                let current = progress.get();
                write_progress(context, job_id, &token, current, Some(files)).await;
                progress_written = current;
            }
            _ = ticker.tick() => {
                acknowledge(message, AckKind::Progress).await;
                let current = progress.get();
                if current != progress_written {
                    write_progress(context, job_id, &token, current, None).await;
                    progress_written = current;
                }
            }
        }
    };
    if !matches!(outcome, Outcome::Finished(Ok(_))) {
        upload.abort(&context.storage).await;
    }
    // Files checked just before the job ended have not been written yet: the outcome carries them.
    let late_files = files_receiver.try_recv().ok();
    let with_files = |record: &mut common::JobRecord| {
        if let Some(files) = &late_files {
            record.files = files.clone();
        }
    };
    let elapsed = attempt_started.elapsed();
    match outcome {
        Outcome::Finished(Ok(result)) => {
            let finished = finish(context, job_id, |record| {
                with_files(record);
                record.status = JobStatus::Completed;
                record.progress = 100;
                record.result_key = Some(result.result_key.clone());
                record.result_size = Some(result.result_size);
                record.completed_at = Some(Utc::now());
                record.estimated_completion = None;
            })
            .await;
            if matches!(finished, AckKind::Ack) {
                context.stats.record(elapsed);
                tracing::info!(
                    elapsed_ms = elapsed.as_millis() as u64,
                    key = result.result_key,
                    "job completed"
                );
            }
            finished
        }
        Outcome::Finished(Err(JobError::Permanent { code, message })) => {
            tracing::info!(%code, message, "job failed");
            finish(context, job_id, |record| {
                with_files(record);
                record.fail(code, message.clone());
            })
            .await
        }
        Outcome::Finished(Err(JobError::Transient { code, message })) => {
            match context.settings.retry.delay_after(delivered) {
                Some(retry_in) => {
                    tracing::warn!(%code, message, retry_in_ms = retry_in.as_millis() as u64, "transient failure, retrying");
                    let requeued = finish(context, job_id, |record| {
                        with_files(record);
                        record.status = JobStatus::Queued;
                        record.progress = 0;
                        record.error = Some(format!(
                            "{message}; retrying (attempt {delivered} of {})",
                            context.settings.retry.max_attempts
                        ));
                        record.error_code = Some(code);
                        record.estimated_completion = Some(Utc::now() + retry_in);
                    })
                    .await;
                    if matches!(requeued, AckKind::Ack) {
                        AckKind::Nak(Some(retry_in))
                    } else {
                        requeued
                    }
                }
                None => {
                    tracing::warn!(%code, message, "transient failure on the last attempt, job failed");
                    let attempts = context.settings.retry.max_attempts;
                    finish(context, job_id, |record| {
                        record.fail(code, format!("{message} (gave up after {attempts} attempts)"))
                    })
                    .await
                }
            }
        }
        Outcome::TimedOut => {
            let limit = context.settings.job_timeout.as_secs();
            tracing::warn!(limit_seconds = limit, "job timed out");
            finish(context, job_id, |record| {
                record.fail(ErrorCode::Timeout, format!("job ran longer than {limit} s"))
            })
            .await
        }
        Outcome::Cancelled => {
            tracing::info!("job cancelled by its owner, stopped");
            AckKind::Ack
        }
        Outcome::Abandoned => {
            tracing::warn!("processor shutting down, job handed back to the queue");
            let requeued = finish(context, job_id, |record| {
                record.status = JobStatus::Queued;
                record.progress = 0;
            })
            .await;
            if matches!(requeued, AckKind::Ack) {
                AckKind::Nak(None)
            } else {
                requeued
            }
        }
    }
}

/// Writes a change that only applies while this processor holds the job (status `processing`).
/// Returns `Ack` when written or when the job was meanwhile cancelled; a store failure asks for a
/// quick redelivery, and the next attempt finds the record as it is.
async fn finish(context: &Context, job_id: JobId, mut apply: impl FnMut(&mut common::JobRecord)) -> AckKind {
    let change = context
        .store
        .update(job_id, |record| {
            if record.status != JobStatus::Processing {
                return false;
            }
            apply(record);
            true
        })
        .await;
    match change {
        Ok(Change::Written(_)) => AckKind::Ack,
        Ok(Change::Unchanged(record)) => {
            tracing::info!(
                status = record.status.as_str(),
                "job changed meanwhile, outcome dropped"
            );
            AckKind::Ack
        }
        Err(error) => {
            tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "outcome not recorded, job will be redelivered");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    }
}

/// Writes progress (and the checked files) while the job is still ours; notices cancellation.
async fn write_progress(
    context: &Context,
    job_id: JobId,
    token: &CancellationToken,
    progress: u8,
    files: Option<Vec<common::FileStatus>>,
) {
    let change = context
        .store
        .update(job_id, |record| {
            if record.status != JobStatus::Processing {
                return false;
            }
            record.progress = progress.max(record.progress);
            if let Some(files) = &files {
                record.files = files.clone();
            }
            true
        })
        .await;
    match change {
        Ok(Change::Unchanged(record)) if record.status == JobStatus::Cancelled => token.cancel(),
        Ok(_) => {}
        Err(error) => tracing::warn!(error = %error, "progress not written"),
    }
}
