//! The job record kept in the KV bucket: one human-readable JSON document per job.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// A job id: a UUID (v7, so ids sort by creation time), always in its hyphenated lowercase form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh, time-ordered job id.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7())
    }

    /// Parses a job id from untrusted text; only the canonical hyphenated form is accepted,
    /// so an id can be used as a KV key and subject token without escaping.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 36 {
            return None;
        }
        let parsed = uuid::Uuid::try_parse(text).ok()?;
        let canonical = parsed.hyphenated().to_string();
        (canonical == text.to_ascii_lowercase()).then_some(JobId(parsed))
    }
}

impl JobId {
    /// Whether the id was minted within `window` of now (ids are UUIDv7: they carry their
    /// creation time). An id without a time, or from the future, is not "within".
    pub fn created_within(&self, window: std::time::Duration) -> bool {
        let Some(timestamp) = self.0.get_timestamp() else {
            return false;
        };
        let (seconds, nanos) = timestamp.to_unix();
        let created = std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanos);
        std::time::SystemTime::now()
            .duration_since(created)
            .is_ok_and(|age| age <= window)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0.hyphenated())
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted and waiting for a processor (also while waiting for a retry).
    Queued,
    /// A processor is working on it.
    Processing,
    /// Finished; the result can be downloaded.
    Completed,
    /// Finished without a result; see `error` and `errorCode`.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl JobStatus {
    /// Whether the job can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }

    /// The status as it appears on the wire and in event subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// What storage said about one requested file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileStatus {
    /// The requested file id.
    pub file_id: u64,
    /// Whether `downloads/{fileId}.zip` exists.
    pub available: bool,
    /// Its size in bytes, when available.
    pub size: Option<u64>,
}

/// The job record stored under the job id in the `download-jobs` KV bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The job's id (also its KV key).
    pub job_id: JobId,
    /// Who created the job; only this user can see it.
    pub user_id: String,
    /// Current status.
    pub status: JobStatus,
    /// 0-100.
    pub progress: u8,
    /// Requested file ids, de-duplicated, in request order.
    pub file_ids: Vec<u64>,
    /// Per-file availability, known once a processor checked storage.
    #[serde(default)]
    pub files: Vec<FileStatus>,
    /// S3 key of the result, once completed.
    pub result_key: Option<String>,
    /// Size of the result in bytes, once completed.
    pub result_size: Option<u64>,
    /// Human-readable reason of a failure (or of the last transient failure while retrying).
    pub error: Option<String>,
    /// Stable code of `error`.
    pub error_code: Option<ErrorCode>,
    /// The delivery of the job that ran the latest attempt (1 on the first; a delivery cut short
    /// by a dead processor or a takeover counts too).
    pub attempt: u32,
    /// Attempts that failed transiently so far (storage down); only these count towards
    /// `JOB_MAX_ATTEMPTS`.
    #[serde(default)]
    pub failed_attempts: u32,
    /// The processor instance that ran the latest attempt.
    #[serde(default)]
    pub processed_by: Option<String>,
    /// Where webhooks go, when set.
    pub callback_url: Option<String>,
    /// When the job was accepted.
    pub created_at: DateTime<Utc>,
    /// When a processor first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub completed_at: Option<DateTime<Utc>>,
    /// Best current guess of when it will be done.
    pub estimated_completion: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Number of the last event published for this job (0 before the first change).
    pub event_seq: u64,
    /// W3C `traceparent` of the request that created the job, so later hops join its trace.
    pub traceparent: Option<String>,
}

impl JobRecord {
    /// A freshly accepted job.
    pub fn queued(
        job_id: JobId,
        user_id: String,
        file_ids: Vec<u64>,
        callback_url: Option<String>,
        estimated_seconds: u64,
        traceparent: Option<String>,
    ) -> Self {
        let now = Utc::now();
        JobRecord {
            job_id,
            user_id,
            status: JobStatus::Queued,
            progress: 0,
            file_ids,
            files: Vec::new(),
            result_key: None,
            result_size: None,
            error: None,
            error_code: None,
            attempt: 0,
            failed_attempts: 0,
            processed_by: None,
            callback_url,
            created_at: now,
            started_at: None,
            completed_at: None,
            estimated_completion: Some(now + chrono::Duration::seconds(estimated_seconds as i64)),
            updated_at: now,
            event_seq: 0,
            traceparent,
        }
    }

    /// Serializes the record as it is stored: pretty JSON, so `nats kv get` is readable.
    pub fn to_json_bytes(&self) -> bytes::Bytes {
        // Sized for a typical record at once rather than grown from empty, doubling as it goes.
        let mut json = Vec::with_capacity(1024);
        serde_json::to_writer_pretty(&mut json, self).expect("a job record always serializes");
        bytes::Bytes::from(json)
    }

    /// Parses a stored record.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Moves the record to a terminal failure.
    pub fn fail(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.status = JobStatus::Failed;
        self.error = Some(message.into());
        self.error_code = Some(code);
        self.completed_at = Some(Utc::now());
        self.estimated_completion = None;
    }

    /// Moves the record to cancelled.
    pub fn cancel(&mut self) {
        self.status = JobStatus::Cancelled;
        self.completed_at = Some(Utc::now());
        self.estimated_completion = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_accepts_only_the_canonical_form() {
        let id = JobId::new();
        assert_eq!(JobId::parse(&id.to_string()), Some(id));
        assert_eq!(JobId::parse(&id.to_string().to_uppercase()), Some(id));
        assert_eq!(JobId::parse(&id.0.simple().to_string()), None);
        assert_eq!(JobId::parse("../../etc/passwd"), None);
        assert_eq!(JobId::parse("downloads.events.>"), None);
        assert_eq!(JobId::parse(""), None);
    }

    #[test]
    fn a_fresh_id_tells_it_was_just_minted_and_an_old_or_random_one_does_not() {
        let window = std::time::Duration::from_secs(60);
        assert!(JobId::new().created_within(window));
        let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_600_000_000, 0));
        assert!(!JobId(old).created_within(window));
        assert!(!JobId(uuid::Uuid::new_v4()).created_within(window));
    }

    #[test]
    fn terminal_states_are_exactly_completed_failed_cancelled() {
        assert!(!JobStatus::Queued.is_terminal());
        assert!(!JobStatus::Processing.is_terminal());
        assert!(JobStatus::Completed.is_terminal());
        assert!(JobStatus::Failed.is_terminal());
        assert!(JobStatus::Cancelled.is_terminal());
    }

    #[test]
    fn record_round_trips_as_camel_case_json() {
        let record = JobRecord::queued(JobId::new(), "alice".into(), vec![70000], None, 12, None);
        let bytes = record.to_json_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"jobId\""));
        assert!(text.contains("\"status\": \"queued\""));
        assert_eq!(JobRecord::from_json_bytes(&bytes).unwrap(), record);
    }
}
