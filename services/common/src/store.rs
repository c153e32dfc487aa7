//! Job records in the KV bucket and the events that follow each change.
//!
//! Every change is a compare-and-set on the record's revision, so concurrent writers (a processor
//! reporting progress, an owner cancelling) never overwrite each other: the loser re-reads and
//! decides again. Each successful change bumps `eventSeq` and publishes that numbered event.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::Utc;
use tracing::Instrument;

use crate::messages::{JobEvent, JobMessage};
use crate::retry::Patience;
use crate::{JobId, JobRecord, names, telemetry};

/// How many compare-and-set rounds a change may lose before giving up.
const MAX_CONFLICTS: usize = 32;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The KV bucket refused or did not answer.
    #[error("job store unavailable")]
    Kv(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The job stream refused the publish or did not acknowledge it.
    #[error("job queue unavailable")]
    Publish(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record is not valid JSON of the current schema.
    #[error("job record {job_id} is corrupt")]
    Corrupt {
        /// The job.
        job_id: JobId,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The job does not exist (never created, or expired).
    #[error("job {0} not found")]
    Missing(JobId),
    /// Too many concurrent writers kept winning.
    #[error("job {0} kept changing under this update")]
    Contended(JobId),
    /// A job with this id already exists.
    #[error("job {0} already exists")]
    AlreadyExists(JobId),
    /// The job stream is full (`max_msgs` with discard-new): the job was not queued.
    #[error("job queue is full")]
    QueueFull,
    /// Accepting failed, and whether the job was left behind could not be checked: it may run.
    #[error("job queue unavailable; whether the job was stored is unknown")]
    OutcomeUnknown(#[source] Box<StoreError>),
}

/// A record with the KV revision it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The record.
    pub record: JobRecord,
    /// Its revision, for compare-and-set.
    pub revision: u64,
}

/// Outcome of [`JobStore::update`].
#[derive(Debug, Clone)]
pub enum Change {
    /// The change was written (and its event published), at this revision.
    Written(Versioned),
    /// The closure chose not to change the record, shown as it is.
    Unchanged(JobRecord),
}

/// Job records, submissions and events. Every call rides out a cluster that cannot answer for a
/// while (a leader election) with [`Patience`], and only then reports the failure.
#[derive(Clone)]
pub struct JobStore {
    jetstream: jetstream::Context,
    kv: kv::Store,
    patience: Patience,
    /// Jobs whose latest record change this instance wrote without getting its event published
    /// (the events stream stayed unavailable): the next change of the job publishes it first, so
    /// no event number is skipped. Bounded by [`MAX_UNPUBLISHED`].
    unpublished: Arc<Mutex<HashMap<JobId, u64>>>,
}

/// How many unpublished events a store remembers (beyond, the redelivery's re-publication of
/// the current event is the only repair).
const MAX_UNPUBLISHED: usize = 10_000;

/// A write whose answer was lost (a timeout): it may have been stored.
struct Unanswered {
    before: JobRecord,
    after: JobRecord,
}

impl JobStore {
    /// Wraps provisioned handles, with the default patience.
    pub fn new(jetstream: jetstream::Context, kv: kv::Store) -> Self {
        JobStore {
            jetstream,
            kv,
            patience: Patience::default(),
            unpublished: Arc::default(),
        }
    }

    /// The same store with another patience (`NATS_RETRY_WINDOW_SECONDS`).
    pub fn with_patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// How long calls are retried while the cluster cannot answer.
    pub fn patience(&self) -> Patience {
        self.patience
    }

    /// The KV bucket, for watches.
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    fn unpublished_lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, u64>> {
        self.unpublished.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a failure is the cluster's (worth retrying) rather than the data's.
    pub fn is_transient(error: &StoreError) -> bool {
        matches!(error, StoreError::Kv(_) | StoreError::Publish(_))
    }

    /// Stores a new record; fails if its id exists. A create whose answer was lost and that
    /// finds its own record on the retry succeeds.
    pub async fn create(&self, record: &JobRecord) -> Result<u64, StoreError> {
        self.create_with(record, self.patience).await
    }

    async fn create_with(&self, record: &JobRecord, patience: Patience) -> Result<u64, StoreError> {
        patience
            .retry(
                "creating a job record",
                || async move {
                    match self.kv.create(record.job_id.to_string(), record.to_json_bytes()).await {
                        Ok(revision) => Ok(revision),
                        // A create whose answer was lost (in this call: the client retries a
                        // publish itself, or in an earlier one) finds its own record: the same
                        // owner and creation time, however a processor changed it since.
                        Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                            match self.load(record.job_id).await? {
                                Some(found)
                                    if found.record.user_id == record.user_id
                                        && found.record.created_at == record.created_at =>
                                {
                                    Ok(found.revision)
                                }
                                _ => Err(StoreError::AlreadyExists(record.job_id)),
                            }
                        }
                        Err(error) => Err(StoreError::Kv(Box::new(error))),
                    }
                },
                Self::is_transient,
            )
            .await
    }

    /// Reads a record and its revision. A miss is confirmed with the stream's leader, since a
    /// replica answering a direct get may not have applied the latest writes yet; and since
    /// right after a leader change even that answer can be a write behind (seen on a 3-node
    /// cluster), a job created in the last minute (its id says when) is looked for again for up
    /// to [`YOUNG_MISS_WAIT`] before it counts as missing.
    pub async fn load(&self, job_id: JobId) -> Result<Option<Versioned>, StoreError> {
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        loop {
            let found = self.load_once(job_id).await?;
            if found.is_some() || !job_id.created_within(YOUNG_JOB) {
                return Ok(found);
            }
            tries += 1;
            let pause = Patience::pause(tries, rand::random());
            if started.elapsed() + pause > YOUNG_MISS_WAIT {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads a record, a miss confirmed with the stream's leader, without waiting for a young
    /// job's record to arrive: for a job whose writer is known to be done (or dead).
    pub async fn load_once(&self, job_id: JobId) -> Result<Option<Versioned>, StoreError> {
        self.patience
            .retry(
                "reading a job record",
                || async move {
                    match self.read(job_id, false).await? {
                        Some(found) => Ok(Some(found)),
                        None => {
                            let confirmed = self.read(job_id, true).await?;
                            if confirmed.is_some() {
                                tracing::info!(%job_id, "a replica had not applied the record yet; the leader had it");
                            }
                            Ok(confirmed)
                        }
                    }
                },
                Self::is_transient,
            )
            .await
    }

    /// One read: a direct get (any replica), or through the stream's leader.
    async fn read(&self, job_id: JobId, from_leader: bool) -> Result<Option<Versioned>, StoreError> {
        let key = job_id.to_string();
        let (value, revision) = if from_leader {
            match crate::kv_cas::leader_entry(&self.kv, &key).await {
                Ok(Some((Some(value), revision))) => (value, revision),
                Ok(_) => return Ok(None),
                Err(error) => return Err(StoreError::Kv(Box::new(error))),
            }
        } else {
            let entry = self
                .kv
                .entry(key)
                .await
                .map_err(|error| StoreError::Kv(Box::new(error)))?;
            match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (entry.value, entry.revision),
                _ => return Ok(None),
            }
        };
        let record = JobRecord::from_json_bytes(&value).map_err(|source| StoreError::Corrupt { job_id, source })?;
        Ok(Some(Versioned { record, revision }))
    }

    /// Applies `change` to the current record with compare-and-set, re-reading and re-applying
    /// when another writer got there first. `change` returns `false` to leave the record alone.
    /// A write whose answer was lost is recognised when the record turns out to be it, and its
    /// event is then published as if the answer had come. `Written` means the record and its
    /// event are stored; an error after the write (the event could not be published within the
    /// patience window) leaves the record changed and the event to be re-published by whoever
    /// next finds the record ([`publish_current`](Self::publish_current)).
    pub async fn update<F>(&self, job_id: JobId, change: F) -> Result<Change, StoreError>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        self.update_from(job_id, None, change).await
    }

    /// [`update`](Self::update) of a record this caller read or wrote last (`known`, such as the
    /// record a processor's claim wrote): the first compare-and-set is tried on it without
    /// reading the record again; if another writer changed it since, the record is read and the
    /// change decided again, as `update` does.
    pub async fn update_from<F>(
        &self,
        job_id: JobId,
        known: Option<Versioned>,
        mut change: F,
    ) -> Result<Change, StoreError>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        let mut known = known.filter(|known| known.record.job_id == job_id);
        let started = tokio::time::Instant::now();
        let mut unanswered: Vec<Unanswered> = Vec::new();
        let mut conflicts = 0;
        let mut failures = 0;
        loop {
            let round = self
                .update_round(job_id, known.take(), &mut change, conflicts > 0, &mut unanswered)
                .await;
            match round {
                Ok(Some(change)) => return Ok(change),
                Ok(None) => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(StoreError::Contended(job_id));
                    }
                }
                Err(error) if Self::is_transient(&error) => {
                    failures += 1;
                    let pause = Patience::pause(failures, rand::random());
                    if started.elapsed() + pause > self.patience.window {
                        return Err(error);
                    }
                    if failures == 1 {
                        tracing::warn!(%job_id, error = %error, "job store unavailable, retrying");
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One round of [`update`](Self::update): the change, or `None` when another writer won the
    /// compare-and-set.
    async fn update_round<F>(
        &self,
        job_id: JobId,
        known: Option<Versioned>,
        change: &mut F,
        from_leader: bool,
        unanswered: &mut Vec<Unanswered>,
    ) -> Result<Option<Change>, StoreError>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        let given = known.is_some();
        let current = match known {
            Some(known) => known,
            None => match self.read(job_id, from_leader).await? {
                Some(current) => current,
                // A miss is confirmed (by the leader, and for a young job a little later).
                None => self.load(job_id).await?.ok_or(StoreError::Missing(job_id))?,
            },
        };
        if let Some(landed) = unanswered.iter().find(|write| write.after == current.record) {
            tracing::info!(%job_id, seq = landed.after.event_seq, "a write whose answer was lost was stored");
            count_if_finished(&landed.before, &landed.after);
            if let Err(error) = self
                .publish_event(&JobEvent::of_change(&landed.before, &landed.after))
                .await
            {
                self.unpublished_lock().insert(job_id, landed.after.event_seq);
                return Err(error);
            }
            return Ok(Some(Change::Written(Versioned {
                record: landed.after.clone(),
                revision: current.revision,
            })));
        }
        let unpublished = self.unpublished_lock().get(&job_id).copied();
        if unpublished == Some(current.record.event_seq) {
            // The event of the change this store wrote last is still missing: publish it first.
            self.publish_event(&JobEvent::of_record(&current.record)).await?;
            self.unpublished_lock().remove(&job_id);
        }
        let mut next = current.record.clone();
        if !change(&mut next) {
            // A change declined on the caller's copy is decided again on the record as stored:
            // the copy may be behind (the next round reads it from the leader).
            if given {
                return Ok(None);
            }
            return Ok(Some(Change::Unchanged(current.record)));
        }
        next.event_seq = current.record.event_seq + 1;
        next.updated_at = Utc::now();
        match self
            .kv
            .update(job_id.to_string(), next.to_json_bytes(), current.revision)
            .await
        {
            Ok(revision) => {
                count_if_finished(&current.record, &next);
                if let Err(error) = self.publish_event(&JobEvent::of_change(&current.record, &next)).await {
                    let mut unpublished = self.unpublished_lock();
                    if unpublished.len() < MAX_UNPUBLISHED {
                        unpublished.insert(job_id, next.event_seq);
                    }
                    return Err(error);
                }
                Ok(Some(Change::Written(Versioned { record: next, revision })))
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(error) => {
                unanswered.push(Unanswered {
                    before: current.record,
                    after: next,
                });
                Err(StoreError::Kv(Box::new(error)))
            }
        }
    }

    /// Re-publishes the event of a record's current state under its own `Nats-Msg-Id`, for a
    /// writer that may have died between its KV write and its event: the duplicate window drops
    /// it if it was published, and consumers de-duplicate by event number after that.
    pub async fn publish_current(&self, record: &JobRecord) -> Result<(), StoreError> {
        if record.event_seq == 0 {
            return Ok(());
        }
        self.publish_event(&JobEvent::of_record(record)).await
    }

    /// Publishes the event of a written record, numbered by its `eventSeq`, de-duplicated by
    /// `Nats-Msg-Id` so a retried publish is stored once.
    async fn publish_event(&self, event: &JobEvent) -> Result<(), StoreError> {
        let (job_id, seq) = (event.job_id(), event.seq());
        let subject = names::event_subject(&job_id.to_string(), event.kind());
        let payload = Bytes::from(serde_json::to_vec(event).expect("events serialize"));
        let message_id = format!("{job_id}:{seq}");
        let span = telemetry::span::publish("downloads.events", &subject);
        let published = self
            .patience
            .retry(
                "publishing a job event",
                || {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(names::MSG_ID_HEADER, message_id.as_str());
                    telemetry::inject_current(&mut headers);
                    let (subject, payload) = (subject.clone(), payload.clone());
                    async move {
                        self.jetstream
                            .publish_with_headers(subject, headers, payload)
                            .await
                            .map_err(|error| StoreError::Publish(Box::new(error)))?
                            .await
                            .map_err(|error| StoreError::Publish(Box::new(error)))
                    }
                },
                Self::is_transient,
            )
            .instrument(span.clone())
            .await;
        if let Err(error) = &published {
            telemetry::span::failed(&span, "event not published");
            tracing::error!(%job_id, seq, error = %error, "event not published; the record is current and whoever finds it next re-publishes it");
        }
        published.map(|_| ())
    }

    /// The events of a job numbered above `after_seq`, in order of their numbers and each once
    /// (a re-published event can be stored twice, and two writers' events can land out of
    /// order), as the events stream holds them now.
    pub async fn events_after(&self, job_id: JobId, after_seq: u64) -> Result<Vec<JobEvent>, StoreError> {
        let mut events = self
            .patience
            .retry(
                "reading job events",
                || self.stored_events_after(job_id, after_seq),
                Self::is_transient,
            )
            .await?;
        events.sort_by_key(JobEvent::seq);
        events.dedup_by_key(|event| event.seq());
        Ok(events)
    }

    /// One read of the events with a short-lived ordered consumer filtered to the job's subjects.
    async fn stored_events_after(&self, job_id: JobId, after_seq: u64) -> Result<Vec<JobEvent>, StoreError> {
        use async_nats::jetstream::consumer;
        use futures::StreamExt;
        let unavailable = |error: async_nats::Error| StoreError::Kv(error);
        let stream = self
            .jetstream
            .get_stream(names::EVENTS_STREAM)
            .await
            .map_err(|error| unavailable(error.into()))?;
        let mut ordered = stream
            .create_consumer(consumer::pull::OrderedConfig {
                name: Some(crate::nats::ordered_consumer_name()),
                filter_subject: format!("downloads.events.{job_id}.*"),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|error| unavailable(error.into()))?;
        let mut remaining = ordered
            .info()
            .await
            .map_err(|error| unavailable(error.into()))?
            .num_pending;
        let mut events = Vec::new();
        if remaining == 0 {
            return Ok(events);
        }
        let mut messages = ordered.messages().await.map_err(|error| unavailable(error.into()))?;
        while remaining > 0 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next())
                .await
                .map_err(|elapsed| unavailable(elapsed.into()))?;
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(unavailable(error.into())),
                None => break,
            };
            remaining = message.info().map(|info| info.pending).unwrap_or(0);
            match serde_json::from_slice::<JobEvent>(&message.payload) {
                Ok(event) if event.seq() > after_seq => events.push(event),
                Ok(_) => {}
                Err(error) => tracing::warn!(%job_id, %error, "unreadable job event skipped"),
            }
        }
        Ok(events)
    }

    /// Puts a job on the work queue and waits for the stream's acknowledgement. The job id is the
    /// `Nats-Msg-Id`, so a submission retried after a lost answer is stored once.
    pub async fn submit(&self, message: &JobMessage) -> Result<u64, StoreError> {
        self.submit_with(message, self.patience).await
    }

    /// Queues a job; its message's sequence in the stream.
    async fn submit_with(&self, message: &JobMessage, patience: Patience) -> Result<u64, StoreError> {
        let payload = Bytes::from(serde_json::to_vec(message).expect("messages serialize"));
        let message_id = message.job_id().to_string();
        let span = telemetry::span::publish("downloads.jobs", names::JOB_SUBMITTED_SUBJECT);
        let submitted = patience
            .retry(
                "queueing a job",
                || {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(names::MSG_ID_HEADER, message_id.as_str());
                    telemetry::inject_current(&mut headers);
                    let payload = payload.clone();
                    async move {
                        self.jetstream
                            .publish_with_headers(names::JOB_SUBMITTED_SUBJECT, headers, payload)
                            .await
                            .map_err(|error| StoreError::Publish(Box::new(error)))?
                            .await
                            .map_err(|error| {
                                if is_stream_full(&error) {
                                    StoreError::QueueFull
                                } else {
                                    StoreError::Publish(Box::new(error))
                                }
                            })
                    }
                },
                Self::is_transient,
            )
            .instrument(span.clone())
            .await;
        if submitted.is_err() {
            telemetry::span::failed(&span, "job not queued");
        }
        submitted.map(|ack| ack.sequence)
    }

    /// Accepts a job within `budget`: queues its message, then stores its record, riding out an
    /// unavailable cluster for two thirds of the budget (each call bounded by that deadline).
    ///
    /// The message goes first because a message without a record never runs: a processor looks
    /// for a young job's record for a minute, then drops the message. So whatever fails or dies
    /// half-way (this intake included, killed between its two writes), nothing is left behind but
    /// a message that is dropped. A record whose create was stored although its answer was lost is
    /// removed again in the last third of the budget, unless a processor claimed it meanwhile
    /// (then the job runs, and counts as accepted). Run it on a task of its own, so a caller that
    /// goes away cannot stop it half-way. Returns the job message's sequence in the stream.
    pub async fn accept(&self, record: &JobRecord, message: &JobMessage, budget: Duration) -> Result<u64, StoreError> {
        let started = tokio::time::Instant::now();
        // The record must be stored well within the processors' grace for it, or a message could
        // be dropped before its record arrives.
        let storing = started + (budget * 2 / 3).min(RECORD_GRACE / 2);
        let sequence = within(storing, self.submit_with(message, Patience::until(storing))).await?;
        let Err(failure) = within(storing, self.create_with(record, Patience::until(storing))).await else {
            return Ok(sequence);
        };
        match self.remove_unclaimed(record, started + budget).await {
            Ok(true) => Err(failure),
            Ok(false) => {
                tracing::info!(job_id = %record.job_id, "job claimed although storing its record seemed to fail: accepted");
                Ok(sequence)
            }
            Err(error) => {
                tracing::error!(job_id = %record.job_id, error = %error, "a record stored without an answer could not be checked; it may run although the client was refused");
                Err(StoreError::OutcomeUnknown(Box::new(failure)))
            }
        }
    }

    /// Removes `record` if it was stored and is still as created, until `deadline`. `Ok(true)`:
    /// not there (any more), nor can a create still in flight land; `Ok(false)`: a processor
    /// changed it, the job runs.
    async fn remove_unclaimed(&self, record: &JobRecord, deadline: tokio::time::Instant) -> Result<bool, StoreError> {
        let job_id = record.job_id;
        let patience = Patience::until(deadline);
        let removing = patience.retry(
            "removing a record stored without an answer",
            || async move {
                match self.read(job_id, true).await? {
                    // Not there, but the create may still be on its way to the server: a delete
                    // marker expecting no record makes it fail when it lands (if the create
                    // landed first, the marker fails and the next round finds the record).
                    None => self
                        .kv
                        .delete_expect_revision(job_id.to_string(), Some(0))
                        .await
                        .map(|()| true)
                        .map_err(|error| StoreError::Kv(Box::new(error))),
                    Some(found) if found.record != *record => Ok(false),
                    Some(found) => self
                        .kv
                        .delete_expect_revision(job_id.to_string(), Some(found.revision))
                        .await
                        .map(|()| true)
                        .map_err(|error| StoreError::Kv(Box::new(error))),
                }
            },
            Self::is_transient,
        );
        within(deadline, removing).await
    }
}

/// Whether a publish was refused because its stream is full (`max_msgs` with discard-new):
/// JetStream error 10077 ("maximum messages exceeded", or bytes). Final, not transient: a retry
/// would only wait out the patience window.
fn is_stream_full(error: &async_nats::jetstream::context::PublishError) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(refusal) = current.downcast_ref::<async_nats::jetstream::Error>() {
            return refusal.error_code() == async_nats::jetstream::ErrorCode::STREAM_STORE_FAILED;
        }
        cause = current.source();
    }
    false
}

/// `call`, or a store failure when `deadline` passes first (its outcome is then unknown).
async fn within<T>(
    deadline: tokio::time::Instant,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(outcome) => outcome,
        Err(elapsed) => Err(StoreError::Kv(Box::new(elapsed))),
    }
}

/// How long after a job's creation (its id's time) its record may still be on its way: a
/// lagging replica or a new leader has not applied it yet, or the intake is still storing it
/// (it queues the message first, and stores the record within half of this). Processors hold a
/// message this long before dropping it for want of a record.
pub const RECORD_GRACE: Duration = Duration::from_secs(60);
/// A job younger than this whose record is not found may be on its way.
const YOUNG_JOB: Duration = RECORD_GRACE;
/// How long such a job is looked for before it counts as missing.
const YOUNG_MISS_WAIT: Duration = Duration::from_secs(3);

/// Counts a write that made a job terminal (`download_jobs_finished_total`): once per job, since
/// only one compare-and-set can make that change.
fn count_if_finished(before: &JobRecord, after: &JobRecord) {
    if after.status.is_terminal() && !before.status.is_terminal() {
        crate::metrics::JOBS.finished(after);
    }
}
