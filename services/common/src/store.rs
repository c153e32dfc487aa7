//! Job records in the KV bucket and the events that follow each change.
//!
//! Every change is a compare-and-set on the record's revision, so concurrent writers (a processor
//! reporting progress, an owner cancelling) never overwrite each other: the loser re-reads and
//! decides again. Each successful change bumps `eventSeq` and publishes that numbered event.
//!
//! Accepting a job is one write: its `job.submitted.v2` message, which holds the record as
//! accepted. The bucket gets the record at the job's first change (the processor's claim, or a
//! cancellation), written as a compare-and-set on "no entry yet" (revision 0), so only one of
//! them creates it. Until then, a read of the job finds its message: the bucket first, then the
//! message by its subject, and, when both miss, the bucket again through its leader, since a
//! claim writes the record before its message is acknowledged away.

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
    /// A delete marker stands under the job's key: its accept was refused (fenced off after a
    /// publish without a certain answer) or an operator removed it. Its message never runs.
    #[error("job {0} was refused or removed")]
    Removed(JobId),
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

impl Versioned {
    /// The record a `job.submitted.v2` message holds, not in the bucket before its claim: at
    /// revision 0, so the first change creates it (and fails should anything have been written
    /// under its key). `None` for a v1 message, whose record the intake stored itself.
    pub fn of_queued(message: &JobMessage) -> Option<Self> {
        message.queued_record().map(|record| Versioned {
            record: record.clone(),
            revision: 0,
        })
    }
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

/// What a read of a job found: in the bucket, or (a lookup) in the bucket or the queued message.
#[expect(
    clippy::large_enum_variant,
    reason = "a read's answer, moved once: a box would cost more"
)]
enum Stored {
    /// Its record (from a lookup, possibly the queued message's, at revision 0).
    Record(Versioned),
    /// A delete marker: the job was refused (an accept whose answer was lost, fenced off) or
    /// removed by an operator. Its message, if one landed, is terminated at its claim.
    Removed,
    /// Nothing: in the bucket, not claimed yet (its record is in its message) or no such job;
    /// from a lookup, no such job.
    Absent,
}

impl Stored {
    /// The record, if one was found (a delete marker reads as none).
    fn into_record(self) -> Option<Versioned> {
        match self {
            Stored::Record(found) => Some(found),
            Stored::Removed | Stored::Absent => None,
        }
    }
}

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

    /// Stores a new record in the bucket (for tools and the benchmark: jobs get theirs at their
    /// claim); fails if anything is stored under its key, a delete marker included. A
    /// create whose answer was lost and that finds its own record on the retry succeeds.
    pub async fn create(&self, record: &JobRecord) -> Result<u64, StoreError> {
        self.patience
            .retry(
                "creating a job record",
                || async move {
                    match self
                        .kv
                        .update(record.job_id.to_string(), record.to_json_bytes(), 0)
                        .await
                    {
                        Ok(revision) => Ok(revision),
                        // A create whose answer was lost (in this call: the client retries a
                        // publish itself, or in an earlier one) finds its own record: the same
                        // owner and creation time, however a processor changed it since.
                        Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            match self.load_record(record.job_id).await? {
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

    /// Reads a record and its revision, from the bucket or, before its claim, from the job's
    /// message (at revision 0). A miss is confirmed with the streams' leaders, since a replica
    /// answering a direct get may not have applied the latest writes yet; and since right after a
    /// leader change even that answer can be a write behind (seen on a 3-node cluster), a job
    /// created in the last minute (its id says when) is looked for again for up to
    /// [`YOUNG_MISS_WAIT`] before it counts as missing.
    pub async fn load(&self, job_id: JobId) -> Result<Option<Versioned>, StoreError> {
        Ok(self.look_patiently(job_id).await?.into_record())
    }

    /// [`load`](Self::load), telling a job refused or removed (a delete marker) from one not
    /// found.
    async fn look_patiently(&self, job_id: JobId) -> Result<Stored, StoreError> {
        let started = tokio::time::Instant::now();
        let mut tries = 0;
        loop {
            match self.lookup(job_id).await? {
                Stored::Absent if job_id.created_within(YOUNG_JOB) => {}
                settled => return Ok(settled),
            }
            tries += 1;
            let pause = Patience::pause(tries, rand::random());
            if started.elapsed() + pause > YOUNG_MISS_WAIT {
                return Ok(Stored::Absent);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The job's record as the bucket's leader holds it (`None`: not claimed yet, refused or
    /// removed, or no such job), never the queued message's copy: for a processor re-publishing
    /// the current event of a job it holds the message of, where a lagging replica's miss would
    /// find that copy.
    pub async fn load_record(&self, job_id: JobId) -> Result<Option<Versioned>, StoreError> {
        self.patience
            .retry(
                "reading a job record",
                || async move { Ok(self.read(job_id, true).await?.into_record()) },
                Self::is_transient,
            )
            .await
    }

    /// [`load`](Self::load) without waiting for a young job's record to arrive: for a job whose
    /// writer is known to be done (or dead).
    pub async fn load_once(&self, job_id: JobId) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lookup(job_id).await?.into_record())
    }

    /// One lookup of a job, riding out an unavailable cluster: the bucket (any replica), the
    /// queued message (any replica, then the leader), and after missing both the bucket's leader,
    /// which holds the record of any claim made before the message went.
    async fn lookup(&self, job_id: JobId) -> Result<Stored, StoreError> {
        self.patience
            .retry(
                "reading a job record",
                || async move {
                    match self.read(job_id, false).await? {
                        Stored::Absent => {}
                        settled => return Ok(settled),
                    }
                    for from_leader in [false, true] {
                        if let Some(queued) = self.read_queued(job_id, from_leader).await? {
                            return Ok(Stored::Record(queued));
                        }
                    }
                    let confirmed = self.read(job_id, true).await?;
                    if matches!(confirmed, Stored::Record(_)) {
                        tracing::info!(%job_id, "a replica had not applied the record yet; the leader had it");
                    }
                    Ok(confirmed)
                },
                Self::is_transient,
            )
            .await
    }

    /// One read of the bucket: a direct get (any replica), or through the stream's leader.
    async fn read(&self, job_id: JobId, from_leader: bool) -> Result<Stored, StoreError> {
        let key = job_id.to_string();
        let (value, revision) = if from_leader {
            match crate::kv_cas::leader_entry(&self.kv, &key).await {
                Ok(Some((Some(value), revision))) => (value, revision),
                Ok(Some((None, _))) => return Ok(Stored::Removed),
                Ok(None) => return Ok(Stored::Absent),
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
                Some(_) => return Ok(Stored::Removed),
                None => return Ok(Stored::Absent),
            }
        };
        let record = JobRecord::from_json_bytes(&value).map_err(|source| StoreError::Corrupt { job_id, source })?;
        Ok(Stored::Record(Versioned { record, revision }))
    }

    /// One read of a job's queued `job.submitted.v2` message (a direct get by its subject, or
    /// through the stream's leader): its record at revision 0, as no bucket entry exists yet.
    async fn read_queued(&self, job_id: JobId, from_leader: bool) -> Result<Option<Versioned>, StoreError> {
        use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
        let stream = self
            .jetstream
            .get_stream_no_info(names::JOBS_STREAM)
            .await
            .map_err(|error| StoreError::Kv(Box::new(error)))?;
        let subject = names::job_submitted_subject(&job_id.to_string());
        let payload = if from_leader {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => message.payload,
                Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                Err(error) => return Err(StoreError::Kv(Box::new(error))),
            }
        } else {
            match stream.direct_get_last_for_subject(subject).await {
                Ok(message) => message.payload,
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(StoreError::Kv(Box::new(error))),
            }
        };
        let message: JobMessage =
            serde_json::from_slice(&payload).map_err(|source| StoreError::Corrupt { job_id, source })?;
        Ok(Versioned::of_queued(&message).filter(|queued| queued.record.job_id == job_id))
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
            None => {
                let stored = match self.read(job_id, from_leader).await? {
                    // Not claimed yet (its message holds it), or a miss to confirm (by the
                    // leader, and for a young job a little later).
                    Stored::Absent => self.look_patiently(job_id).await?,
                    stored => stored,
                };
                match stored {
                    Stored::Record(current) => current,
                    Stored::Removed => return Err(StoreError::Removed(job_id)),
                    Stored::Absent => return Err(StoreError::Missing(job_id)),
                }
            }
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
        // At revision 0 (a record read from its message) this creates the record, and fails if
        // anything was written under the key first: a claim, a cancellation or a refusal.
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

    /// Puts a job on the work queue and waits for the stream's acknowledgement; its message's
    /// sequence in the stream. The job id is the `Nats-Msg-Id`, so a submission retried after a
    /// lost answer is stored once.
    async fn submit_with(&self, message: &JobMessage, patience: Patience) -> Result<u64, StoreError> {
        let payload = message.to_json_bytes();
        let message_id = message.job_id().to_string();
        let subject = message.subject();
        let span = telemetry::span::publish("downloads.jobs", &subject);
        let submitted = patience
            .retry(
                "queueing a job",
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

    /// Accepts a job within `budget`: one write, its `job.submitted.v2` message (which holds
    /// `record`), riding out an unavailable cluster for two thirds of the budget. Returns the
    /// message's sequence in the stream (0 when the job turned out to be claimed already).
    ///
    /// A publish that failed without a certain answer may still have been stored, or still land:
    /// in the last third, a delete marker is written where the record would go, expecting no entry
    /// (revision 0). It makes the job's claim fail, so a message that landed or lands later is
    /// terminated unrun, and the refusal leaves nothing behind; should a processor have claimed the
    /// job first, the marker fails, and the job runs and counts as accepted. Run it on a task of its
    /// own, so a caller that goes away cannot stop it half-way.
    pub async fn accept(&self, record: &JobRecord, budget: Duration) -> Result<u64, StoreError> {
        let started = tokio::time::Instant::now();
        let publishing = started + budget * 2 / 3;
        let message = JobMessage::submitted(record.clone());
        let failure = match within(publishing, self.submit_with(&message, Patience::until(publishing))).await {
            Ok(sequence) => return Ok(sequence),
            Err(StoreError::QueueFull) => return Err(StoreError::QueueFull),
            Err(failure) => failure,
        };
        match self.fence_off(record.job_id, started + budget).await {
            Ok(true) => Err(failure),
            Ok(false) => {
                tracing::info!(job_id = %record.job_id, "job claimed although queueing it seemed to fail: accepted");
                Ok(0)
            }
            Err(error) => {
                tracing::error!(job_id = %record.job_id, error = %error, "whether a job whose queueing failed was stored could not be settled; it may run although the client was refused");
                Err(StoreError::OutcomeUnknown(Box::new(failure)))
            }
        }
    }

    /// Makes sure a job whose message may have been stored without an answer (or may still land)
    /// never runs, unless it runs already, until `deadline`. `Ok(true)`: a delete marker stands
    /// where its record would go, and its claim will fail; `Ok(false)`: a processor claimed it,
    /// the job runs.
    pub async fn fence_off(&self, job_id: JobId, deadline: tokio::time::Instant) -> Result<bool, StoreError> {
        let patience = Patience::until(deadline);
        let fencing = patience.retry(
            "fencing off a job whose queueing failed",
            || async move {
                match self.read(job_id, true).await? {
                    // Expecting no entry: if a claim lands first, the marker fails and the next
                    // round finds the record.
                    Stored::Absent => self
                        .kv
                        .delete_expect_revision(job_id.to_string(), Some(0))
                        .await
                        .map(|()| true)
                        .map_err(|error| StoreError::Kv(Box::new(error))),
                    Stored::Removed => Ok(true),
                    Stored::Record(_) => Ok(false),
                }
            },
            Self::is_transient,
        );
        within(deadline, fencing).await
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
/// lagging replica or a new leader has not applied it yet, or (a `job.submitted.v1` message) an
/// intake not yet upgraded is still storing it after queueing the message. Processors hold a v1
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
