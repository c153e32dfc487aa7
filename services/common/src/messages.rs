//! Messages on subjects. Each is a serde-tagged enum whose variant names carry the version, so a
//! new version can live beside the old one while producers and consumers roll over.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, JobId, JobStatus};

/// Published when a job is accepted: v2 on `downloads.jobs.submitted.{jobId}`, v1 (from intakes
/// not yet upgraded) on `downloads.jobs.submitted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum JobMessage {
    /// First version of a job submission. The KV record holds the full job; this names it.
    #[serde(rename = "job.submitted.v1", rename_all = "camelCase")]
    SubmittedV1 {
        /// The job's id, also its KV key.
        job_id: JobId,
        /// The owner of the job.
        user_id: String,
        /// Requested file ids, validated and de-duplicated.
        file_ids: Vec<u64>,
    },
    /// Second version: the job's record as accepted (status `queued`, `eventSeq` 0), the only
    /// write of an accept. The processor's claim stores it in the KV bucket (a create, so a
    /// cancellation or a refusal written there first wins); until then, readers of the job read
    /// it from this message.
    #[serde(rename = "job.submitted.v2")]
    SubmittedV2(Box<crate::JobRecord>),
}

impl JobMessage {
    /// The v2 message of a job just accepted.
    pub fn submitted(record: crate::JobRecord) -> Self {
        JobMessage::SubmittedV2(Box::new(record))
    }

    /// The job this message is about.
    pub fn job_id(&self) -> JobId {
        match self {
            JobMessage::SubmittedV1 { job_id, .. } => *job_id,
            JobMessage::SubmittedV2(record) => record.job_id,
        }
    }

    /// The subject it is published on.
    pub fn subject(&self) -> String {
        match self {
            JobMessage::SubmittedV1 { .. } => crate::names::JOB_SUBMITTED_SUBJECT.to_string(),
            JobMessage::SubmittedV2(record) => crate::names::job_submitted_subject(&record.job_id.to_string()),
        }
    }

    /// The record as accepted, which the bucket does not hold before the claim (v2); `None` for
    /// v1, whose record the intake stored itself.
    pub fn queued_record(&self) -> Option<&crate::JobRecord> {
        match self {
            JobMessage::SubmittedV1 { .. } => None,
            JobMessage::SubmittedV2(record) => Some(record.as_ref()),
        }
    }

    /// Its wire form: compact JSON.
    pub fn to_json_bytes(&self) -> bytes::Bytes {
        let mut json = Vec::with_capacity(768);
        serde_json::to_writer(&mut json, self).expect("messages serialize");
        bytes::Bytes::from(json)
    }
}

/// Published on `downloads.events.{jobId}.{kind}` after every change of a job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum JobEvent {
    /// First version of a job event.
    #[serde(rename = "job.event.v1", rename_all = "camelCase")]
    V1 {
        /// The job.
        job_id: JobId,
        /// Per-job event number, starting at 1, without gaps.
        seq: u64,
        /// Status after the change.
        status: JobStatus,
        /// Progress after the change, 0-100.
        progress: u8,
        /// Progress before the change, when the event comes from a change (absent on an event
        /// built from a record's current state). Lets a consumer tell which thresholds this
        /// change crossed without any state of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_progress: Option<u8>,
        /// Failure reason, for failed jobs (and retries).
        error: Option<String>,
        /// Stable failure code.
        error_code: Option<ErrorCode>,
        /// Attempt number.
        attempt: u32,
        /// When the change happened.
        at: DateTime<Utc>,
        /// Completed events: the S3 key of the result, so a consumer can have it presigned
        /// without reading the record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result_key: Option<String>,
        /// Terminal events: the job's owner, so an intake frees the owner's active-job slot
        /// without reading the record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// Terminal events: whether the job has a `callbackUrl`, so a notifier skips the record
        /// of a job that has no webhook to send (absent: not known, read the record).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook: Option<bool>,
    },
}

impl JobEvent {
    /// The job this event is about.
    pub fn job_id(&self) -> JobId {
        match self {
            JobEvent::V1 { job_id, .. } => *job_id,
        }
    }

    /// The per-job event number.
    pub fn seq(&self) -> u64 {
        match self {
            JobEvent::V1 { seq, .. } => *seq,
        }
    }

    /// The status after the change.
    pub fn status(&self) -> JobStatus {
        match self {
            JobEvent::V1 { status, .. } => *status,
        }
    }

    /// The event a record's current state corresponds to (its latest event).
    pub fn of_record(record: &crate::JobRecord) -> Self {
        JobEvent::V1 {
            job_id: record.job_id,
            seq: record.event_seq,
            status: record.status,
            progress: record.progress,
            previous_progress: None,
            error: record.error.clone(),
            error_code: record.error_code,
            attempt: record.attempt,
            at: record.updated_at,
            result_key: record
                .result_key
                .clone()
                .filter(|_| record.status == crate::JobStatus::Completed),
            owner: record.status.is_terminal().then(|| record.user_id.clone()),
            webhook: record.status.is_terminal().then_some(record.callback_url.is_some()),
        }
    }

    /// The event of a change from `before` to `after`.
    pub fn of_change(before: &crate::JobRecord, after: &crate::JobRecord) -> Self {
        let mut event = Self::of_record(after);
        let JobEvent::V1 { previous_progress, .. } = &mut event;
        *previous_progress = Some(before.progress);
        event
    }

    /// The highest of `thresholds` (percentages) this event's change crossed upwards: above the
    /// progress before it, at most the progress after it. `None` for events of records and for
    /// changes that crossed none.
    pub fn crossed(&self, thresholds: &[u8]) -> Option<u8> {
        let JobEvent::V1 {
            progress,
            previous_progress,
            ..
        } = self;
        let before = (*previous_progress)?;
        thresholds
            .iter()
            .copied()
            .filter(|threshold| before < *threshold && *threshold <= *progress)
            .max()
    }

    /// The kind token used in the event's subject.
    pub fn kind(&self) -> &'static str {
        match self {
            JobEvent::V1 { status, .. } => match status {
                JobStatus::Queued | JobStatus::Processing => "progress",
                terminal => terminal.as_str(),
            },
        }
    }
}

/// Request to the presigner (`downloads.presign.url`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum PresignRequest {
    /// First version.
    #[serde(rename = "presign.request.v1", rename_all = "camelCase")]
    V1 {
        /// The S3 key to sign a GET for (`downloads/...` or `bundles/...`).
        key: String,
        /// File name the browser should save the download as.
        filename: String,
    },
}

/// Reply of the presigner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum PresignResponse {
    /// First version.
    #[serde(rename = "presign.response.v1", rename_all = "camelCase")]
    V1 {
        /// The presigned GET URL.
        url: String,
        /// When the URL stops working.
        expires_at: DateTime<Utc>,
    },
}

/// Every message and KV record type with the file name of its JSON Schema in `schemas/`.
pub fn schema_documents() -> Vec<(&'static str, serde_json::Value)> {
    fn schema_of<T: JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).expect("schemas serialize")
    }
    vec![
        ("job-message.schema.json", schema_of::<JobMessage>()),
        ("job-event.schema.json", schema_of::<JobEvent>()),
        ("job-record.schema.json", schema_of::<crate::JobRecord>()),
        ("presign-request.schema.json", schema_of::<PresignRequest>()),
        ("presign-response.schema.json", schema_of::<PresignResponse>()),
        (
            "api-key-record.schema.json",
            schema_of::<crate::identity::ApiKeyRecord>(),
        ),
        (
            "tenant-record.schema.json",
            schema_of::<crate::identity::TenantRecord>(),
        ),
    ]
    .into_iter()
    .chain(crate::wire::schema_documents())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_message_carries_its_version_in_the_type_tag() {
        let message = JobMessage::SubmittedV1 {
            job_id: JobId::new(),
            user_id: "u".into(),
            file_ids: vec![10000],
        };
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["type"], "job.submitted.v1");
        assert!(json.get("fileIds").is_some());
    }

    #[test]
    fn a_v2_message_is_the_record_as_accepted_on_a_subject_of_its_own() {
        let record = crate::JobRecord::queued(JobId::new(), "u".into(), vec![10000], None, 5, None);
        let message = JobMessage::submitted(record.clone());
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["type"], "job.submitted.v2");
        assert_eq!(json["status"], "queued");
        assert_eq!(json["jobId"], record.job_id.to_string());
        let back: JobMessage = serde_json::from_slice(&message.to_json_bytes()).unwrap();
        assert_eq!(back.queued_record(), Some(&record));
        assert_eq!(back.subject(), format!("downloads.jobs.submitted.{}", record.job_id));
        assert_eq!(back.job_id(), record.job_id);
        // The consumer's filters take both versions' subjects, and nothing else of the stream.
        let matches = |filter: &str, subject: &str| {
            let (filter, subject): (Vec<_>, Vec<_>) = (filter.split('.').collect(), subject.split('.').collect());
            filter.len() == subject.len() && filter.iter().zip(&subject).all(|(f, s)| *f == "*" || f == s)
        };
        for subject in [back.subject(), crate::names::JOB_SUBMITTED_SUBJECT.to_string()] {
            assert!(
                crate::names::JOB_SUBMITTED_FILTERS
                    .iter()
                    .any(|filter| matches(filter, &subject))
            );
        }
        let v1 = JobMessage::SubmittedV1 {
            job_id: record.job_id,
            user_id: "u".into(),
            file_ids: vec![10000],
        };
        assert_eq!(v1.queued_record(), None);
        assert_eq!(v1.subject(), "downloads.jobs.submitted");
    }

    #[test]
    fn unknown_message_versions_are_rejected_not_misread() {
        let json = r#"{"type":"job.submitted.v9","jobId":"0192d0f6-4a4e-7cc0-8000-000000000000"}"#;
        assert!(serde_json::from_str::<JobMessage>(json).is_err());
    }

    #[test]
    fn a_change_crosses_the_thresholds_between_its_progress_before_and_after() {
        let record = |progress| {
            let mut record = crate::JobRecord::queued(JobId::new(), "u".into(), vec![1], None, 1, None);
            record.progress = progress;
            record
        };
        let thresholds = [25, 50, 75];
        let crossed = |before, after| JobEvent::of_change(&record(before), &record(after)).crossed(&thresholds);
        assert_eq!(crossed(10, 30), Some(25));
        assert_eq!(crossed(10, 80), Some(75), "the highest of several");
        assert_eq!(crossed(25, 49), None, "25 was crossed before");
        assert_eq!(crossed(49, 50), Some(50), "reaching a threshold crosses it");
        assert_eq!(crossed(60, 60), None);
        assert_eq!(JobEvent::of_record(&record(90)).crossed(&thresholds), None);
    }

    #[test]
    fn only_completed_events_carry_the_result_key() {
        let mut record = crate::JobRecord::queued(JobId::new(), "u".into(), vec![1], None, 1, None);
        record.result_key = Some("downloads/1.zip".into());
        record.status = JobStatus::Processing;
        let JobEvent::V1 { result_key, .. } = JobEvent::of_record(&record);
        assert_eq!(result_key, None);
        record.status = JobStatus::Completed;
        let JobEvent::V1 { result_key, .. } = JobEvent::of_record(&record);
        assert_eq!(result_key.as_deref(), Some("downloads/1.zip"));
    }

    #[test]
    fn only_terminal_events_name_the_owner_and_whether_a_webhook_is_due() {
        let mut record = crate::JobRecord::queued(JobId::new(), "acme".into(), vec![10_000], None, 1, None);
        let JobEvent::V1 { owner, .. } = JobEvent::of_record(&record);
        assert_eq!(owner, None, "progress events stay small");
        record.cancel();
        let JobEvent::V1 { owner, webhook, .. } = JobEvent::of_record(&record);
        assert_eq!(owner.as_deref(), Some("acme"));
        assert_eq!(
            webhook,
            Some(false),
            "a job without a callbackUrl has no webhook to send"
        );
        record.callback_url = Some("https://hooks.example.com/x".into());
        let JobEvent::V1 { webhook, .. } = JobEvent::of_record(&record);
        assert_eq!(webhook, Some(true));
    }

    #[test]
    fn event_kind_is_progress_until_terminal() {
        let event = |status| JobEvent::V1 {
            job_id: JobId::new(),
            seq: 1,
            status,
            progress: 0,
            previous_progress: None,
            error: None,
            error_code: None,
            attempt: 1,
            at: Utc::now(),
            result_key: None,
            owner: None,
            webhook: None,
        };
        assert_eq!(event(JobStatus::Processing).kind(), "progress");
        assert_eq!(event(JobStatus::Queued).kind(), "progress");
        assert_eq!(event(JobStatus::Cancelled).kind(), "cancelled");
        assert_eq!(event(JobStatus::Completed).kind(), "completed");
    }
}
