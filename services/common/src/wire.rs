//! What clients receive over HTTP from more than one service, defined once: problem bodies
//! (RFC 9457, from the intake and the notifier), stream event data (the notifier's SSE) and
//! webhook bodies (the notifier's deliveries), documented by the intake's OpenAPI document. The
//! poem-openapi derives put them in that document, the schemars derives in `schemas/`, and the
//! services send them with serde: one definition, so the document, the schemas and the bytes on
//! the wire cannot drift apart (a test checks that both derives agree).

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem_openapi::{Enum, Object};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, JobStatus};

/// Media type of problem bodies.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize, JsonSchema)]
#[oai(example)]
pub struct Problem {
    /// A URI naming the problem type (`urn:problem:<code>`).
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    #[oai(validator(minimum(value = "400"), maximum(value = "599")))]
    #[schemars(range(min = 400, max = 599))]
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The offending field, parameter or header, when one is to blame.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Problem::new(
            ErrorCode::ValidationFailed,
            "file_ids[0] must be between 10000 and 100000000",
        )
        .with_field("file_ids[0]")
    }
}

impl Problem {
    /// A problem for `code` with `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        let status = status_of(code);
        Problem {
            problem_type: code.problem_type(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.as_str().to_string(),
            field: None,
        }
    }

    /// Names the field to blame.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The HTTP status.
    pub fn http_status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The problem as a bare response (outside a documented operation).
    pub fn into_response(self) -> poem::Response {
        let status = self.http_status();
        poem::Response::builder()
            .status(status)
            .content_type(PROBLEM_CONTENT_TYPE)
            .body(serde_json::to_string(&self).expect("problems serialize"))
    }
}

impl Problem {
    /// The problem of an error the HTTP framework raised by status (an unknown route, a wrong
    /// method, a body too large, another client error with its `message`, anything else as an
    /// internal error, whose cause is logged, never answered).
    pub fn of_framework_error(status: StatusCode, message: String) -> Self {
        match status {
            StatusCode::NOT_FOUND => Problem::new(ErrorCode::NotFound, "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                Problem::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
            }
            StatusCode::PAYLOAD_TOO_LARGE => Problem::new(ErrorCode::PayloadTooLarge, "request body is too large"),
            status if status.is_client_error() => Problem::new(ErrorCode::ValidationFailed, message),
            _ => {
                tracing::error!(error = %message, %status, "unhandled error");
                Problem::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

/// HTTP status of each code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Status of a job as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize, JsonSchema)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ApiJobStatus {
    /// Waiting for a processor (or for a retry).
    Queued,
    /// Being prepared.
    Processing,
    /// Ready to download.
    Completed,
    /// Ended without a result.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl From<JobStatus> for ApiJobStatus {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Queued => ApiJobStatus::Queued,
            JobStatus::Processing => ApiJobStatus::Processing,
            JobStatus::Completed => ApiJobStatus::Completed,
            JobStatus::Failed => ApiJobStatus::Failed,
            JobStatus::Cancelled => ApiJobStatus::Cancelled,
        }
    }
}

/// A time as every body gives it: ISO 8601 UTC with milliseconds and a `Z`.
pub fn iso8601(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A moment in a body: written as [`iso8601`] gives it, documented as `format: date-time` (so
/// generated clients hand their users a date, not a string), read from any RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&iso8601(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| Timestamp(time.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date-time" })
    }
}

impl poem_openapi::types::Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        poem_openapi::registry::MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema::new_with_format(
            "string",
            "date-time",
        )))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl poem_openapi::types::ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<serde_json::Value>) -> poem_openapi::types::ParseResult<Self> {
        let value = value.unwrap_or_default();
        serde_json::from_value(value.clone()).map_err(|_| poem_openapi::types::ParseError::expected_type(value))
    }
}

impl poem_openapi::types::ToJSON for Timestamp {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(iso8601(self.0)))
    }
}

impl Timestamp {
    /// A fixed moment for the document's examples (RFC 3339).
    pub fn example(text: &str) -> Self {
        Timestamp(
            DateTime::parse_from_rfc3339(text)
                .expect("examples are RFC 3339")
                .with_timezone(&Utc),
        )
    }
}

/// The JSON `data` of one stream event. The event's name is `progress` (while queued or
/// processing), `completed`, `failed` or `cancelled`; its `id` is `seq`.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize, JsonSchema)]
#[oai(rename_all = "camelCase", example)]
#[serde(rename_all = "camelCase")]
pub struct StreamEventData {
    /// The job.
    pub job_id: String,
    /// The job's event number (also the event's `id`), from 1, without gaps; 0 when a stream
    /// opens on a job so new that its first event is not out yet (its current state).
    pub seq: u64,
    /// Status after this event.
    pub status: ApiJobStatus,
    /// 0-100.
    #[oai(validator(maximum(value = "100")))]
    #[schemars(range(max = 100))]
    pub progress: u8,
    /// Processing attempt.
    pub attempt: u32,
    /// When the change happened (ISO 8601 UTC).
    pub at: Timestamp,
    /// `completed` only: a presigned URL of the result with at least 95 % of its lifetime left (absent if the presigner was
    /// unavailable; `GET /v1/download/{jobId}` then mints one).
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// `failed` only: why.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `failed` only: stable code of `error`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl poem_openapi::types::Example for StreamEventData {
    fn example() -> Self {
        StreamEventData {
            job_id: EXAMPLE_JOB_ID.to_string(),
            seq: 4,
            status: ApiJobStatus::Completed,
            progress: 100,
            attempt: 1,
            at: Timestamp::example("2026-11-28T10:15:32.120Z"),
            download_url: Some(EXAMPLE_DOWNLOAD_URL.to_string()),
            error: None,
            error_code: None,
        }
    }
}

/// The job id the document's examples use.
pub const EXAMPLE_JOB_ID: &str = "019ac9a4-5c1e-7b3a-9f2d-3c4b5a697e81";
/// The presigned URL the document's examples use.
pub const EXAMPLE_DOWNLOAD_URL: &str = "https://s3.example.com/downloads/results/019ac9a4-5c1e-7b3a-9f2d-3c4b5a697e81.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=900&X-Amz-Signature=…";

/// What a webhook says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize, JsonSchema)]
pub enum WebhookType {
    /// The job completed; `downloadUrl` is a presigned URL with at least 95 % of its lifetime left.
    #[oai(rename = "download.completed")]
    #[serde(rename = "download.completed")]
    Completed,
    /// The job failed; see `error` and `errorCode`.
    #[oai(rename = "download.failed")]
    #[serde(rename = "download.failed")]
    Failed,
    /// The job was cancelled by its owner.
    #[oai(rename = "download.cancelled")]
    #[serde(rename = "download.cancelled")]
    Cancelled,
    /// The job crossed a progress milestone (`WEBHOOK_PROGRESS_MILESTONES`); see `progress`.
    #[oai(rename = "download.progress")]
    #[serde(rename = "download.progress")]
    Progress,
}

impl WebhookType {
    /// The webhook of a terminal status, `Progress` for any other.
    pub fn of(status: JobStatus) -> Self {
        match status {
            JobStatus::Completed => WebhookType::Completed,
            JobStatus::Failed => WebhookType::Failed,
            JobStatus::Cancelled => WebhookType::Cancelled,
            JobStatus::Queued | JobStatus::Processing => WebhookType::Progress,
        }
    }

    /// Its name on the wire (`download.completed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookType::Completed => "download.completed",
            WebhookType::Failed => "download.failed",
            WebhookType::Cancelled => "download.cancelled",
            WebhookType::Progress => "download.progress",
        }
    }
}

/// Body of the webhook sent when a job ends (or crosses a configured progress milestone).
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize, JsonSchema)]
#[oai(rename_all = "camelCase", example)]
#[serde(rename_all = "camelCase")]
pub struct DownloadWebhookBody {
    /// `download.completed`, `download.failed`, `download.cancelled` or `download.progress`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: WebhookType,
    /// The job.
    pub job_id: String,
    /// Its final status (for progress webhooks, its status then).
    pub status: ApiJobStatus,
    /// Progress webhooks only: the job's progress when it crossed the milestone (at least the
    /// milestone, 1-99).
    #[oai(skip_serializing_if_is_none, validator(maximum(value = "100")))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub progress: Option<u8>,
    /// Presigned URL of the result (completed jobs), valid for `PRESIGNED_URL_EXPIRY_SECONDS`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// Why the job failed.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Stable code of the failure.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// When the job reached this state (ISO 8601 UTC).
    pub timestamp: Timestamp,
}

impl poem_openapi::types::Example for DownloadWebhookBody {
    fn example() -> Self {
        DownloadWebhookBody {
            event_type: WebhookType::Completed,
            job_id: EXAMPLE_JOB_ID.to_string(),
            status: ApiJobStatus::Completed,
            progress: None,
            download_url: Some(EXAMPLE_DOWNLOAD_URL.to_string()),
            error: None,
            error_code: None,
            timestamp: Timestamp::example("2026-11-28T10:15:32.120Z"),
        }
    }
}

/// The JSON Schemas of the wire types, as committed in `schemas/`.
pub fn schema_documents() -> Vec<(&'static str, serde_json::Value)> {
    fn schema_of<T: JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).expect("schemas serialize")
    }
    vec![
        ("problem.schema.json", schema_of::<Problem>()),
        ("stream-event-data.schema.json", schema_of::<StreamEventData>()),
        ("download-webhook-body.schema.json", schema_of::<DownloadWebhookBody>()),
    ]
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::{Example, ToJSON};

    use super::*;

    /// serde (what the services send) and poem-openapi (what the document describes) write
    /// the same JSON for each type.
    fn same_json<T: Serialize + ToJSON>(value: &T) {
        assert_eq!(serde_json::to_value(value).unwrap(), value.to_json().unwrap());
    }

    #[test]
    fn both_derives_write_the_same_json() {
        same_json(&Problem::example());
        same_json(&Problem::new(ErrorCode::NotFound, "no such job"));
        same_json(&StreamEventData::example());
        same_json(&DownloadWebhookBody::example());
        let failed = DownloadWebhookBody {
            event_type: WebhookType::Failed,
            status: ApiJobStatus::Failed,
            download_url: None,
            error: Some("file 10001 does not exist".into()),
            error_code: Some("FILE_NOT_FOUND".into()),
            ..DownloadWebhookBody::example()
        };
        same_json(&failed);
        let json = serde_json::to_value(&failed).unwrap();
        assert!(json.get("downloadUrl").is_none(), "absent, not null: {json}");
        assert_eq!(json["timestamp"], "2026-11-28T10:15:32.120Z");
        let read: DownloadWebhookBody = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(read, failed);
        assert_eq!(json["type"], "download.failed");
    }

    /// The two descriptions of a type, the document's (poem-openapi) and `schemas/`'s
    /// (schemars): the same properties, the same required ones, the same upper bounds.
    fn same_schema<T: poem_openapi::types::Type + JsonSchema>() {
        let mut registry = poem_openapi::registry::Registry::new();
        T::register(&mut registry);
        let documented = serde_json::to_value(&registry.schemas[&*T::name()]).unwrap();
        let generated = serde_json::to_value(schemars::schema_for!(T)).unwrap();
        let keys = |schema: &serde_json::Value| -> std::collections::BTreeSet<String> {
            schema["properties"].as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(keys(&documented), keys(&generated), "{}", T::name());
        let required = |schema: &serde_json::Value| -> std::collections::BTreeSet<String> {
            serde_json::from_value(schema["required"].clone()).unwrap_or_default()
        };
        assert_eq!(required(&documented), required(&generated), "{}", T::name());
        for key in keys(&documented) {
            let bound = |schema: &serde_json::Value| schema["properties"][&key]["maximum"].as_f64();
            assert_eq!(bound(&documented), bound(&generated), "{}.{key}", T::name());
        }
    }

    #[test]
    fn the_document_and_the_json_schemas_describe_the_same_types() {
        same_schema::<Problem>();
        same_schema::<StreamEventData>();
        same_schema::<DownloadWebhookBody>();
    }

    #[test]
    fn webhook_types_follow_the_status() {
        assert_eq!(WebhookType::of(JobStatus::Completed).as_str(), "download.completed");
        assert_eq!(WebhookType::of(JobStatus::Processing), WebhookType::Progress);
        for kind in [
            WebhookType::Completed,
            WebhookType::Failed,
            WebhookType::Cancelled,
            WebhookType::Progress,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
