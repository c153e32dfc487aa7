//! Request and response bodies of the HTTP API.

use common::validation::{self, FILE_IDS_PER_JOB};
use common::{ErrorCode, JobRecord};
use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};

use crate::body::Validate;
use crate::problem::Problem;

use common::wire::EXAMPLE_JOB_ID;
pub use common::wire::{Timestamp, iso8601};

/// A JSON number that is whole, as an `i64`: JSON Schema's `integer` (what the document says)
/// takes `10000.0` as well as `10000`, so the server does too.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = i64;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a whole number")
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<i64, E> {
            // Within ±2^53 every whole float is exact.
            if value.fract() == 0.0 && value.abs() <= 9_007_199_254_740_992.0 {
                Ok(value as i64)
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
            }
        }
    }
    deserializer.deserialize_any(Whole)
}

/// A list of [`whole_number`]s; an element's error names its position.
fn whole_numbers<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] i64);
    Ok(Vec::<Whole>::deserialize(deserializer)?
        .into_iter()
        .map(|whole| whole.0)
        .collect())
}

fn check_file_id(field: String, file_id: i64) -> Result<(), Problem> {
    validation::check_file_id(file_id)
        .map(|_| ())
        .map_err(|detail| Problem::new(ErrorCode::ValidationFailed, format!("{field}: {detail}")).with_field(field))
}

/// `GET /` answer.
#[derive(Debug, Object)]
#[oai(example)]
pub struct RootBody {
    /// A greeting naming the service.
    pub message: String,
}

/// Result of one health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum CheckState {
    /// The dependency answered.
    Ok,
    /// The dependency failed or did not answer.
    Error,
}

/// Individual health checks.
#[derive(Debug, Object)]
pub struct HealthChecks {
    /// Object storage: a signed HEAD on the bucket.
    pub storage: CheckState,
    /// The queue: JetStream account and the job stream.
    pub queue: CheckState,
}

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HealthState {
    /// Every check passed.
    Healthy,
    /// At least one check failed.
    Unhealthy,
}

/// `GET /health` answer.
#[derive(Debug, Object)]
#[oai(example)]
pub struct HealthBody {
    /// `healthy` or `unhealthy`.
    pub status: HealthState,
    /// Each dependency.
    pub checks: HealthChecks,
}

/// `POST /v1/download/check` request (legacy).
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct CheckRequest {
    /// File id, 10000..=100000000.
    #[oai(validator(minimum(value = "10000"), maximum(value = "100000000")))]
    #[serde(deserialize_with = "whole_number")]
    pub file_id: i64,
}

impl Validate for CheckRequest {
    fn validate(&self) -> Result<(), Problem> {
        check_file_id("file_id".into(), self.file_id)
    }
}

/// `POST /v1/download/check` answer (legacy contract).
#[derive(Debug, Object)]
#[oai(example)]
pub struct CheckBody {
    /// The file id asked about.
    pub file_id: i64,
    /// Whether the file exists.
    pub available: bool,
    /// Its S3 key, when available (`null` otherwise, as the old service answered).
    #[oai(rename = "s3Key", nullable)]
    pub s3_key: Option<String>,
    /// Its size in bytes, when available (`null` otherwise).
    #[oai(nullable)]
    pub size: Option<u64>,
}

/// `POST /v1/download/initiate` request.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct InitiateRequest {
    /// 1 to 1000 file ids, each 10000..=100000000; duplicates count once.
    #[oai(validator(
        min_items = 1,
        max_items = 1000,
        minimum(value = "10000"),
        maximum(value = "100000000")
    ))]
    #[serde(deserialize_with = "whole_numbers")]
    pub file_ids: Vec<i64>,
    /// Absolute http(s) URL (at most 2048 bytes) that receives a signed webhook when the job ends.
    // The document's pattern is `common::validation::CALLBACK_URL_PATTERN` (a test holds them
    // equal): a subset of what is accepted, so whatever a client generates from it is accepted.
    #[oai(
        rename = "callbackUrl",
        nullable,
        validator(
            max_length = 2048,
            pattern = "^https?://[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:\\.[a-z][a-z0-9]*(?:-[a-z0-9]+)*)*(?::[1-9][0-9]{0,3})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$"
        )
    )]
    #[serde(rename = "callbackUrl", default)]
    pub callback_url: Option<String>,
}

impl Validate for InitiateRequest {
    fn validate(&self) -> Result<(), Problem> {
        if !FILE_IDS_PER_JOB.contains(&self.file_ids.len()) {
            return Err(Problem::new(
                ErrorCode::ValidationFailed,
                format!(
                    "file_ids must hold {} to {} ids, got {}",
                    FILE_IDS_PER_JOB.start(),
                    FILE_IDS_PER_JOB.end(),
                    self.file_ids.len()
                ),
            )
            .with_field("file_ids"));
        }
        for (index, file_id) in self.file_ids.iter().enumerate() {
            check_file_id(format!("file_ids[{index}]"), *file_id)?;
        }
        if let Some(url) = &self.callback_url {
            validation::check_callback_url(url)
                .map_err(|detail| Problem::new(ErrorCode::ValidationFailed, detail).with_field("callbackUrl"))?;
        }
        Ok(())
    }
}

pub use common::wire::ApiJobStatus;

/// `202` answer of `POST /v1/download/initiate`.
// Written by serde (`SerdeJson`) as documented (`Object`); a test holds the two equal.
#[derive(Debug, Object, Serialize)]
#[oai(rename_all = "camelCase", example)]
#[serde(rename_all = "camelCase")]
pub struct InitiateBody {
    /// The new job's id.
    pub job_id: String,
    /// Always `queued`.
    pub status: ApiJobStatus,
    /// Number of distinct file ids in the job.
    pub total_file_ids: u64,
    /// Expected duration in seconds, from recent jobs when known.
    pub estimated_time: u64,
    /// Where to poll the job's status.
    pub status_url: String,
    /// Where to follow the job's progress as Server-Sent Events; its token opens this job's
    /// stream for `STREAM_TOKEN_TTL_SECONDS` (the status carries a fresh one).
    pub stream_url: String,
}

/// Availability of one file of a job.
#[derive(Debug, Object, Serialize)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none)]
#[serde(rename_all = "camelCase")]
pub struct FileBody {
    /// File id.
    pub file_id: u64,
    /// Whether it exists.
    pub available: bool,
    /// Its size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A job's status.
// Written by serde (`SerdeJson`) as documented (`Object`); a test holds the two equal.
#[derive(Debug, Object, Serialize)]
#[oai(rename_all = "camelCase", skip_serializing_if_is_none, example)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusBody {
    /// Job id.
    pub job_id: String,
    /// Current status.
    pub status: ApiJobStatus,
    /// 0-100.
    pub progress: u8,
    /// Availability of each requested file (once checked).
    pub files: Vec<FileBody>,
    /// A presigned URL of the result with at least 95 % of its lifetime left, only when completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// Why the job failed (or why it is waiting for a retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Stable code of `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Processing attempts so far.
    pub attempt: u32,
    /// When the job was accepted (ISO 8601 UTC).
    pub created_at: Timestamp,
    /// When processing started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the job ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// Best guess of when it will end, while not ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_completion: Option<Timestamp>,
    /// Where to follow the job's progress as Server-Sent Events: a fresh URL whose token opens
    /// this job's stream for `STREAM_TOKEN_TTL_SECONDS` (ask again for a new one when it expires).
    pub stream_url: String,
}

impl JobStatusBody {
    /// The body of a record, with the URL (if any) minted for this read.
    pub fn from_record(record: &JobRecord, download_url: Option<String>, stream_url: String) -> Self {
        let files = if record.files.is_empty() {
            Vec::new()
        } else {
            record
                .files
                .iter()
                .map(|file| FileBody {
                    file_id: file.file_id,
                    available: file.available,
                    size: file.size,
                })
                .collect()
        };
        JobStatusBody {
            job_id: record.job_id.to_string(),
            status: record.status.into(),
            progress: record.progress,
            files,
            download_url,
            error: record.error.clone(),
            error_code: record.error_code.map(|code| code.as_str().to_string()),
            attempt: record.attempt,
            created_at: Timestamp(record.created_at),
            started_at: record.started_at.map(Timestamp),
            completed_at: record.completed_at.map(Timestamp),
            estimated_completion: record
                .estimated_completion
                .filter(|_| !record.status.is_terminal())
                .map(Timestamp),
            stream_url,
        }
    }
}

/// Answer of `DELETE /v1/download/{jobId}`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct CancelBody {
    /// Job id.
    pub job_id: String,
    /// Always `cancelled`.
    pub status: ApiJobStatus,
}

/// `POST /v1/download/start` request (legacy).
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct StartRequest {
    /// File id, 10000..=100000000.
    #[oai(validator(minimum(value = "10000"), maximum(value = "100000000")))]
    #[serde(deserialize_with = "whole_number")]
    pub file_id: i64,
}

impl Validate for StartRequest {
    fn validate(&self) -> Result<(), Problem> {
        check_file_id("file_id".into(), self.file_id)
    }
}

/// Legacy outcome status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum StartStatus {
    /// The file is ready.
    Completed,
    /// The job failed.
    Failed,
}

/// `200` answer of the legacy `/start`, as the old service gave it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct StartFinishedBody {
    /// The requested file id.
    #[oai(rename = "file_id")]
    pub file_id: i64,
    /// `completed` or `failed`.
    pub status: StartStatus,
    /// Presigned URL when completed (`null` otherwise, as the old service answered).
    #[oai(nullable)]
    pub download_url: Option<String>,
    /// Size in bytes when completed (`null` otherwise).
    #[oai(nullable)]
    pub size: Option<u64>,
    /// Time from acceptance to the end of the job.
    pub processing_time_ms: u64,
    /// Human-readable outcome.
    pub message: String,
}

/// `202` answer of the legacy `/start` when the job outlasts the wait.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", example)]
pub struct StartAcceptedBody {
    /// The requested file id.
    #[oai(rename = "file_id")]
    pub file_id: i64,
    /// The job's id.
    pub job_id: String,
    /// `queued` or `processing`.
    pub status: ApiJobStatus,
    /// Where to poll.
    pub status_url: String,
    /// Where to follow progress.
    pub stream_url: String,
    /// Human-readable hint.
    pub message: String,
}

/// A stream URL as the examples show it.
const EXAMPLE_STREAM_URL: &str =
    "/v1/download/019ac9a4-5c1e-7b3a-9f2d-3c4b5a697e81/stream?token=eyJhbGciOiJIUzI1NiJ9.…";

impl poem_openapi::types::Example for RootBody {
    fn example() -> Self {
        RootBody {
            message: "Download service is running. API documentation: /docs".into(),
        }
    }
}

impl HealthBody {
    /// A failed check, as `/health` answers it with 503.
    pub fn unhealthy_example() -> Self {
        HealthBody {
            status: HealthState::Unhealthy,
            checks: HealthChecks {
                storage: CheckState::Ok,
                queue: CheckState::Error,
            },
        }
    }
}

impl poem_openapi::types::Example for HealthBody {
    fn example() -> Self {
        HealthBody {
            status: HealthState::Healthy,
            checks: HealthChecks {
                storage: CheckState::Ok,
                queue: CheckState::Ok,
            },
        }
    }
}

impl poem_openapi::types::Example for CheckRequest {
    fn example() -> Self {
        CheckRequest { file_id: 70000 }
    }
}

impl poem_openapi::types::Example for CheckBody {
    fn example() -> Self {
        CheckBody {
            file_id: 70000,
            available: true,
            s3_key: Some("downloads/70000.zip".into()),
            size: Some(1_048_576),
        }
    }
}

impl poem_openapi::types::Example for InitiateRequest {
    fn example() -> Self {
        InitiateRequest {
            file_ids: vec![10000, 70000],
            callback_url: Some("https://example.com/hooks/downloads".into()),
        }
    }
}

impl poem_openapi::types::Example for InitiateBody {
    fn example() -> Self {
        InitiateBody {
            job_id: EXAMPLE_JOB_ID.into(),
            status: ApiJobStatus::Queued,
            total_file_ids: 2,
            estimated_time: 12,
            status_url: format!("/v1/download/status/{EXAMPLE_JOB_ID}"),
            stream_url: EXAMPLE_STREAM_URL.into(),
        }
    }
}

impl poem_openapi::types::Example for JobStatusBody {
    fn example() -> Self {
        JobStatusBody {
            job_id: EXAMPLE_JOB_ID.into(),
            status: ApiJobStatus::Completed,
            progress: 100,
            files: vec![
                FileBody {
                    file_id: 10000,
                    available: true,
                    size: Some(4096),
                },
                FileBody {
                    file_id: 70000,
                    available: true,
                    size: Some(1_048_576),
                },
            ],
            download_url: Some(common::wire::EXAMPLE_DOWNLOAD_URL.into()),
            error: None,
            error_code: None,
            attempt: 1,
            created_at: Timestamp::example("2026-11-28T10:15:20.004Z"),
            started_at: Some(Timestamp::example("2026-11-28T10:15:20.031Z")),
            completed_at: Some(Timestamp::example("2026-11-28T10:15:32.118Z")),
            estimated_completion: None,
            stream_url: EXAMPLE_STREAM_URL.into(),
        }
    }
}

impl poem_openapi::types::Example for CancelBody {
    fn example() -> Self {
        CancelBody {
            job_id: EXAMPLE_JOB_ID.into(),
            status: ApiJobStatus::Cancelled,
        }
    }
}

impl poem_openapi::types::Example for StartRequest {
    fn example() -> Self {
        StartRequest { file_id: 70000 }
    }
}

impl poem_openapi::types::Example for StartFinishedBody {
    fn example() -> Self {
        StartFinishedBody {
            file_id: 70000,
            status: StartStatus::Completed,
            download_url: Some(common::wire::EXAMPLE_DOWNLOAD_URL.into()),
            size: Some(1_048_576),
            processing_time_ms: 8_412,
            message: "Download ready".into(),
        }
    }
}

impl poem_openapi::types::Example for StartAcceptedBody {
    fn example() -> Self {
        StartAcceptedBody {
            file_id: 70000,
            job_id: EXAMPLE_JOB_ID.into(),
            status: ApiJobStatus::Processing,
            status_url: format!("/v1/download/status/{EXAMPLE_JOB_ID}"),
            stream_url: EXAMPLE_STREAM_URL.into(),
            message: "Still preparing; follow streamUrl or poll statusUrl (with the same API key) instead of waiting"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::body::parse;

    fn problem_of<T: serde::de::DeserializeOwned + Validate + std::fmt::Debug>(json: &str) -> Problem {
        let error = parse::<T>(json.as_bytes()).unwrap_err();
        error.downcast_ref::<crate::problem::ApiProblem>().unwrap().0.clone()
    }

    #[test]
    fn an_out_of_range_file_id_is_named_by_position() {
        let problem = problem_of::<InitiateRequest>(r#"{"file_ids": [10000, 5]}"#);
        assert_eq!(problem.field.as_deref(), Some("file_ids[1]"));
        assert_eq!(problem.status, 400);
    }

    #[test]
    fn empty_and_oversized_id_lists_are_refused() {
        assert_eq!(
            problem_of::<InitiateRequest>(r#"{"file_ids": []}"#).field.as_deref(),
            Some("file_ids")
        );
        let many: Vec<String> = (0..1001).map(|index| (10_000 + index).to_string()).collect();
        let json = format!(r#"{{"file_ids": [{}]}}"#, many.join(","));
        assert_eq!(problem_of::<InitiateRequest>(&json).field.as_deref(), Some("file_ids"));
    }

    #[test]
    fn a_bad_callback_url_is_named() {
        let problem = problem_of::<InitiateRequest>(r#"{"file_ids": [10000], "callbackUrl": "ftp://x"}"#);
        assert_eq!(problem.field.as_deref(), Some("callbackUrl"));
    }

    #[test]
    fn a_fractional_file_id_is_a_type_error_on_that_field() {
        let problem = problem_of::<CheckRequest>(r#"{"file_id": 10000.5}"#);
        assert_eq!(problem.field.as_deref(), Some("file_id"));
    }

    #[test]
    fn whole_floats_are_file_ids_and_fractions_are_refused_by_position() {
        let request = parse::<InitiateRequest>(br#"{"file_ids": [18993.0, 10000]}"#).unwrap();
        assert_eq!(request.file_ids, [18993, 10000]);
        assert_eq!(
            parse::<StartRequest>(br#"{"file_id": 31424.0}"#).unwrap().file_id,
            31424
        );
        let problem = problem_of::<InitiateRequest>(r#"{"file_ids": [10000, 10000.5]}"#);
        assert_eq!(problem.field.as_deref(), Some("file_ids[1]"));
        let problem = problem_of::<InitiateRequest>(r#"{"file_ids": ["10000"]}"#);
        assert_eq!(problem.field.as_deref(), Some("file_ids[0]"));
    }

    #[test]
    fn timestamps_are_utc_with_a_z() {
        let time = DateTime::parse_from_rfc3339("2026-11-28T10:15:30.123456+00:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(iso8601(time), "2026-11-28T10:15:30.123Z");
    }
}
