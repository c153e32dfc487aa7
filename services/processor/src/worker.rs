//! The consume loop and the life of one job message: claim the record, run the job while
//! renewing the lease and writing progress, then turn the outcome into exactly one record change
//! and one acknowledgement (done → Ack, transient → Nak with backoff, malformed → Term).

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use common::messages::JobMessage;
use common::store::{Change, RECORD_GRACE, StoreError, Versioned};
use common::{ErrorCode, JobId, JobStatus, names, telemetry};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::Context;
use crate::bundle::UploadInFlight;
use crate::execute::{self, JobError, JobHooks, JobResult, Progress};

/// Pulls job messages until `shutdown`, running up to `concurrency` jobs at once.
///
/// A pull asks for exactly as many jobs as there are free slots, so no job ever waits in this
/// process's buffer while its lease runs out (which would hand it to a second processor).
pub async fn consume(
    context: Arc<Context>,
    jetstream: &jetstream::Context,
    jobs: &TaskTracker,
    shutdown: CancellationToken,
) {
    let handle = |message: jetstream::Message| {
        let context = context.clone();
        async move { handle(&context, message).await }
    };
    common::consume::pull_into_slots(
        "jobs",
        jetstream,
        names::JOBS_STREAM,
        names::PROCESSOR_CONSUMER,
        context.settings.concurrency,
        handle,
        jobs,
        shutdown,
    )
    .await;
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
    // Each delivery is an attempt span, a child of the job's publish: a redelivered job shows
    // one per attempt in its trace.
    let span = telemetry::span::process(
        "downloads.jobs",
        &message.subject,
        names::PROCESSOR_CONSUMER,
        u64::from(delivered),
    );
    span.record("job_id", job.job_id().to_string().as_str());
    telemetry::set_parent_from_headers(&span, message.headers.as_ref());
    let _slot = crate::metrics::BusySlot::take();
    // The lease is renewed for as long as this delivery is handled, including while a claim or
    // an outcome waits for an unavailable cluster.
    let decision = tokio::select! {
        decision = process(context, &job, delivered).instrument(span.clone()) => decision,
        never = common::consume::keep_lease(&message, context.settings.progress_interval) => match never {},
    };
    // Outcomes are recorded where they are decided (a termination's too: refused, expired or
    // terminated); this one has no other place.
    if decision.is_none() {
        span.record("outcome", "taken_over");
    }
    if let Some(decision) = decision {
        acknowledge(&message, decision).instrument(span).await;
    }
}

/// A short wait before a delivery that could not be handled comes back, jittered so deliveries
/// that failed together do not return together.
fn soon() -> Duration {
    Duration::from_millis(rand::random_range(2_000..5_000))
}

/// [`soon`], for a delivery NATS or the job store could not serve: counted as a retry
/// (`reason="unavailable"`) and so noted on the attempt's span.
fn unavailable() -> Duration {
    crate::metrics::retried("unavailable");
    tracing::Span::current().record("outcome", "unavailable");
    soon()
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
    TakenOver,
    TimedOut,
    Abandoned,
}

/// What a progress write found.
enum Ownership {
    Held,
    Cancelled,
    TakenOver,
}

/// Runs one delivery of a job; returns how to acknowledge it (`None`: not at all, because a newer
/// delivery owns the job now and acknowledging this one would remove the message under it).
async fn process(context: &Context, job: &JobMessage, delivered: u32) -> Option<AckKind> {
    let job_id = job.job_id();
    // A v2 message holds the record as accepted: the claim creates it in the bucket without a
    // read (and, should a cancellation or a refusal have written the key first, reads and decides
    // again). A v1 message's record is in the bucket already.
    let mut queued = Versioned::of_queued(job);
    if queued.is_some() && !job_id.created_within(common::nats::JOB_RECORD_TTL) {
        // Older than a record lives: whatever was written under its key before the claim (a
        // cancellation, a refusal's marker) may have expired, so a claim at revision 0 could no
        // longer tell. A job claimed before (a redelivery) goes on from its record; one never
        // claimed (no processor for a day) is dropped, as a v1 message whose record expired
        // always was.
        match context.store.load_record(job_id).await {
            Ok(Some(claimed)) => queued = Some(claimed),
            Ok(None) => {
                tracing::warn!("job queued longer than its record lives, message terminated");
                tracing::Span::current().record("outcome", "expired");
                return Some(AckKind::Term);
            }
            Err(error) => {
                tracing::warn!(error = %error, "old job's record not read, retrying soon");
                return Some(AckKind::Nak(Some(unavailable())));
            }
        }
    }
    let registration = context.in_flight.register(job_id);
    if delivered > 1 {
        // An earlier delivery may have died between a record write and its event: publish the
        // record's current event again (the duplicate window drops it if it was published).
        if let Ok(Some(current)) = context.store.load_record(job_id).await {
            let _ = context.store.publish_current(&current.record).await;
        }
    }
    let delay = context.settings.pick_delay();
    let attempt_started = tokio::time::Instant::now();
    let mut first_start = false;
    let claimed = context
        .store
        .update_from(job_id, queued.clone(), |record| {
            if record.status.is_terminal() {
                return false;
            }
            let now = Utc::now();
            first_start = record.started_at.is_none();
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
    // The record as this attempt last wrote it: its next write is tried on it without a read.
    let mut latest = match claimed {
        Ok(Change::Written(claimed)) => {
            if first_start && let Some(started) = claimed.record.started_at {
                let waited = (started - claimed.record.created_at).to_std().unwrap_or_default();
                crate::metrics::METRICS.queue_wait.observe(waited.as_secs_f64());
            }
            claimed
        }
        Ok(Change::Unchanged(record)) => {
            // Its terminal event may be missing if the writer died after the record: publish it
            // again before the message goes.
            tracing::info!(status = record.status.as_str(), "job already finished, acknowledging");
            tracing::Span::current().record("outcome", "already_finished");
            return publish_then_ack(context, &record).await;
        }
        Err(StoreError::Removed(_)) => {
            // The key holds a delete marker: the intake refused the job (its queueing had no
            // certain answer, and it fenced the job off), or an operator removed it.
            tracing::warn!("job refused or removed before its claim, message terminated");
            tracing::Span::current().record("outcome", "refused");
            return Some(AckKind::Term);
        }
        Err(StoreError::Missing(_)) if queued.is_some() || job_id.created_within(RECORD_GRACE) => {
            // v2: the claim's create found an entry that no read then found (a store behind
            // after an election): try again soon. v1 (an intake not yet upgraded) queues the
            // message just before it stores the record, and a replica can lag: a young job's
            // record may still come. Without one, the job was refused (its record could not be
            // stored) and its message is dropped once the job is older.
            tracing::warn!("job record not found yet, retrying soon");
            tracing::Span::current().record("outcome", "record_pending");
            return Some(AckKind::Nak(Some(soon())));
        }
        Err(StoreError::Missing(_)) => {
            tracing::warn!("job record missing (expired, or removed when its queueing failed), message terminated");
            tracing::Span::current().record("outcome", "terminated");
            return Some(AckKind::Term);
        }
        Err(error @ StoreError::Corrupt { .. }) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "job record unreadable, message terminated");
            tracing::Span::current().record("outcome", "terminated");
            return Some(AckKind::Term);
        }
        Err(error) => {
            tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "cannot claim job, retrying soon");
            return Some(AckKind::Nak(Some(unavailable())));
        }
    };
    let record = latest.record.clone();
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
    let attempt = Attempt {
        processor: context.settings.instance_id.clone(),
        number: delivered,
    };
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
                match write_progress(context, &mut latest, &attempt, current, Some(files)).await {
                    Ownership::Held => progress_written = current,
                    Ownership::Cancelled => break Outcome::Cancelled,
                    Ownership::TakenOver => break Outcome::TakenOver,
                }
            }
            _ = ticker.tick() => {
                let current = progress.get();
                if current != progress_written {
                    match write_progress(context, &mut latest, &attempt, current, None).await {
                        Ownership::Held => progress_written = current,
                        Ownership::Cancelled => break Outcome::Cancelled,
                        Ownership::TakenOver => break Outcome::TakenOver,
                    }
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
            let finished = finish(context, &latest, &attempt, |record| {
                with_files(record);
                record.status = JobStatus::Completed;
                record.progress = 100;
                record.result_key = Some(result.result_key.clone());
                record.result_size = Some(result.result_size);
                record.completed_at = Some(Utc::now());
                record.estimated_completion = None;
            })
            .await;
            if matches!(finished, Some(AckKind::Ack)) {
                tracing::Span::current().record("outcome", "completed");
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
            failed_span("failed", code);
            finish(context, &latest, &attempt, |record| {
                with_files(record);
                record.fail(code, message.clone());
            })
            .await
        }
        Outcome::Finished(Err(JobError::Transient { code, message })) => {
            // Only attempts that failed count towards the job's attempts, not deliveries cut short
            // by a dead processor or an unavailable broker.
            let failed = record.failed_attempts + 1;
            match context.settings.retry.jittered_delay_after(failed, rand::random()) {
                Some(retry_in) => {
                    tracing::warn!(%code, message, failed, retry_in_ms = retry_in.as_millis() as u64, "transient failure, retrying");
                    let requeued = finish(context, &latest, &attempt, |record| {
                        with_files(record);
                        record.status = JobStatus::Queued;
                        record.progress = 0;
                        record.failed_attempts = failed;
                        record.error = Some(format!(
                            "{message}; retrying (attempt {failed} of {})",
                            context.settings.retry.max_attempts
                        ));
                        record.error_code = Some(code);
                        record.estimated_completion = Some(Utc::now() + retry_in);
                    })
                    .await;
                    if matches!(requeued, Some(AckKind::Ack)) {
                        crate::metrics::retried("transient");
                        failed_span("retry", code);
                        Some(AckKind::Nak(Some(retry_in)))
                    } else {
                        requeued
                    }
                }
                None => {
                    tracing::warn!(%code, message, "transient failure on the last attempt, job failed");
                    failed_span("failed", code);
                    let attempts = context.settings.retry.max_attempts;
                    finish(context, &latest, &attempt, |record| {
                        record.failed_attempts = failed;
                        record.fail(code, format!("{message} (gave up after {attempts} attempts)"))
                    })
                    .await
                }
            }
        }
        Outcome::TimedOut => {
            let limit = context.settings.job_timeout.as_secs();
            tracing::warn!(limit_seconds = limit, "job timed out");
            failed_span("timed_out", ErrorCode::Timeout);
            finish(context, &latest, &attempt, |record| {
                record.fail(ErrorCode::Timeout, format!("job ran longer than {limit} s"))
            })
            .await
        }
        Outcome::Cancelled => {
            tracing::info!("job cancelled by its owner, stopped");
            tracing::Span::current().record("outcome", "cancelled");
            // The canceller may have died between its record write and its event: make sure the
            // cancellation is published before the message goes (a duplicate is dropped).
            ended_meanwhile(context, job_id).await
        }
        Outcome::TakenOver => {
            tracing::warn!("job taken over by a newer delivery, stopped without acknowledging");
            None
        }
        Outcome::Abandoned => {
            tracing::warn!("processor shutting down, job handed back to the queue");
            tracing::Span::current().record("outcome", "handed_back");
            let requeued = finish(context, &latest, &attempt, |record| {
                record.status = JobStatus::Queued;
                record.progress = 0;
            })
            .await;
            if matches!(requeued, Some(AckKind::Ack)) {
                Some(AckKind::Nak(None))
            } else {
                requeued
            }
        }
    }
}

/// Marks the attempt span failed with its outcome and error code.
fn failed_span(outcome: &'static str, code: ErrorCode) {
    let span = tracing::Span::current();
    span.record("outcome", outcome);
    telemetry::span::failed(&span, code.as_str());
}

/// The attempt this processor runs: its writes apply only while the record still names it, so a
/// processor that lost its lease (and whose job went to another) can never overwrite the other.
struct Attempt {
    processor: String,
    number: u32,
}

impl Attempt {
    fn owns(&self, record: &common::JobRecord) -> bool {
        record.status == JobStatus::Processing
            && record.attempt == self.number
            && record.processed_by.as_deref() == Some(self.processor.as_str())
    }
}

/// Writes a change that only applies while this attempt holds the job. Returns `Ack` when written
/// or when the job ended meanwhile (e.g. cancelled), nothing when another attempt took it over.
/// The store rides out an unavailable cluster first; a failure after that asks for a redelivery
/// soon, which finds the record as it is (and re-publishes its event if it was written).
async fn finish(
    context: &Context,
    latest: &Versioned,
    attempt: &Attempt,
    mut apply: impl FnMut(&mut common::JobRecord),
) -> Option<AckKind> {
    let change = context
        .store
        .update_from(latest.record.job_id, Some(latest.clone()), |record| {
            if !attempt.owns(record) {
                return false;
            }
            apply(record);
            true
        })
        .await;
    match change {
        Ok(Change::Written(_)) => Some(AckKind::Ack),
        Ok(Change::Unchanged(record)) if record.status.is_terminal() => {
            tracing::info!(status = record.status.as_str(), "job ended meanwhile, outcome dropped");
            publish_then_ack(context, &record).await
        }
        Ok(Change::Unchanged(record)) => {
            tracing::warn!(attempt = record.attempt, by = ?record.processed_by, "job taken over, outcome dropped without acknowledging");
            None
        }
        Err(error) => {
            tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "outcome not recorded, job will be redelivered");
            Some(AckKind::Nak(Some(unavailable())))
        }
    }
}

/// The acknowledgement of a job that another writer ended (cancelled): its terminal event is
/// published again first, since that writer may have died before publishing it.
async fn ended_meanwhile(context: &Context, job_id: JobId) -> Option<AckKind> {
    match context.store.load_record(job_id).await {
        Ok(Some(current)) => publish_then_ack(context, &current.record).await,
        Ok(None) => Some(AckKind::Ack),
        Err(error) => {
            tracing::warn!(error = %error, "ended job not re-read, retrying soon");
            Some(AckKind::Nak(Some(unavailable())))
        }
    }
}

/// Acknowledges once the record's current event is published; asks for a redelivery (which
/// publishes it again) when it cannot be.
async fn publish_then_ack(context: &Context, record: &common::JobRecord) -> Option<AckKind> {
    match context.store.publish_current(record).await {
        Ok(()) => Some(AckKind::Ack),
        Err(error) => {
            tracing::warn!(error = %error, "event of an ended job not re-published, retrying soon");
            Some(AckKind::Nak(Some(unavailable())))
        }
    }
}

/// Writes progress (and the checked files) while the job is still ours; stops the job when it
/// was cancelled or taken over by another processor.
async fn write_progress(
    context: &Context,
    latest: &mut Versioned,
    attempt: &Attempt,
    progress: u8,
    files: Option<Vec<common::FileStatus>>,
) -> Ownership {
    let change = context
        .store
        .update_from(latest.record.job_id, Some(latest.clone()), |record| {
            if !attempt.owns(record) {
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
        Ok(Change::Unchanged(record)) if record.status == JobStatus::Cancelled => Ownership::Cancelled,
        Ok(Change::Unchanged(record)) => {
            tracing::warn!(status = record.status.as_str(), attempt = record.attempt, by = ?record.processed_by, "job taken over");
            Ownership::TakenOver
        }
        Ok(Change::Written(written)) => {
            *latest = written;
            Ownership::Held
        }
        Err(error) => {
            tracing::warn!(error = %error, "progress not written");
            Ownership::Held
        }
    }
}
