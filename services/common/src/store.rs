//! Job records in the KV bucket and the events that follow each change.
//!
//! Every change is a compare-and-set on the record's revision, so concurrent writers (a processor
//! reporting progress, an owner cancelling) never overwrite each other: the loser re-reads and
//! decides again. Each successful change bumps `eventSeq` and publishes that numbered event.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::Utc;

use crate::messages::{JobEvent, JobMessage};
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
    /// The change was written (and its event published).
    Written(JobRecord),
    /// The closure chose not to change the record, shown as it is.
    Unchanged(JobRecord),
}

/// Job records, submissions and events.
#[derive(Clone)]
pub struct JobStore {
    jetstream: jetstream::Context,
    kv: kv::Store,
}

impl JobStore {
    /// Wraps provisioned handles.
    pub fn new(jetstream: jetstream::Context, kv: kv::Store) -> Self {
        JobStore { jetstream, kv }
    }

    /// The KV bucket, for watches.
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Stores a new record; fails if its id exists.
    pub async fn create(&self, record: &JobRecord) -> Result<u64, StoreError> {
        self.kv
            .create(record.job_id.to_string(), record.to_json_bytes())
            .await
            .map_err(|error| match error.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::AlreadyExists(record.job_id),
                _ => StoreError::Kv(Box::new(error)),
            })
    }

    /// Reads a record and its revision.
    pub async fn load(&self, job_id: JobId) -> Result<Option<Versioned>, StoreError> {
        let entry = self
            .kv
            .entry(job_id.to_string())
            .await
            .map_err(|error| StoreError::Kv(Box::new(error)))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record =
            JobRecord::from_json_bytes(&entry.value).map_err(|source| StoreError::Corrupt { job_id, source })?;
        Ok(Some(Versioned {
            record,
            revision: entry.revision,
        }))
    }

    /// Applies `change` to the current record with compare-and-set, re-reading and re-applying
    /// when another writer got there first. `change` returns `false` to leave the record alone.
    pub async fn update<F>(&self, job_id: JobId, mut change: F) -> Result<Change, StoreError>
    where
        F: FnMut(&mut JobRecord) -> bool,
    {
        for _ in 0..MAX_CONFLICTS {
            let Some(current) = self.load(job_id).await? else {
                return Err(StoreError::Missing(job_id));
            };
            let mut next = current.record.clone();
            if !change(&mut next) {
                return Ok(Change::Unchanged(current.record));
            }
            next.event_seq = current.record.event_seq + 1;
            next.updated_at = Utc::now();
            match self
                .kv
                .update(job_id.to_string(), next.to_json_bytes(), current.revision)
                .await
            {
                Ok(_) => {
                    self.publish_event(&JobEvent::of_change(&current.record, &next)).await;
                    return Ok(Change::Written(next));
                }
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(StoreError::Kv(Box::new(error))),
            }
        }
        Err(StoreError::Contended(job_id))
    }

    /// Publishes the event of a written record, numbered by its `eventSeq`, de-duplicated by
    /// `Nats-Msg-Id` so a retried publish is stored once. The KV record stays the source of
    /// truth: if the publish keeps failing the change is still visible by polling.
    async fn publish_event(&self, event: &JobEvent) {
        let (job_id, seq) = (event.job_id(), event.seq());
        let subject = names::event_subject(&job_id.to_string(), event.kind());
        let payload = Bytes::from(serde_json::to_vec(event).expect("events serialize"));
        let message_id = format!("{job_id}:{seq}");
        for attempt in 1..=3u64 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(names::MSG_ID_HEADER, message_id.as_str());
            telemetry::inject_current(&mut headers);
            let published = async {
                self.jetstream
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await?
                    .await
            }
            .await;
            match published {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%job_id, seq, attempt, error = %error, "event publish failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
            }
        }
        tracing::error!(%job_id, seq, "event not published; the record in KV is still current");
    }

    /// The events of a job numbered above `after_seq`, in order, as the events stream holds them
    /// now. Reads with a short-lived ordered consumer filtered to the job's subjects.
    pub async fn events_after(&self, job_id: JobId, after_seq: u64) -> Result<Vec<JobEvent>, StoreError> {
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
    /// `Nats-Msg-Id`, so a retried submission is stored once.
    pub async fn submit(&self, message: &JobMessage) -> Result<(), StoreError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(names::MSG_ID_HEADER, message.job_id().to_string().as_str());
        telemetry::inject_current(&mut headers);
        let payload = Bytes::from(serde_json::to_vec(message).expect("messages serialize"));
        let ack = self
            .jetstream
            .publish_with_headers(names::JOB_SUBMITTED_SUBJECT, headers, payload)
            .await
            .map_err(|error| StoreError::Publish(Box::new(error)))?;
        ack.await.map_err(|error| StoreError::Publish(Box::new(error)))?;
        Ok(())
    }
}
