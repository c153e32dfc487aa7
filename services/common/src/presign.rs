//! Client side of the presigner micro-service: ask for a fresh presigned URL over NATS.

use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::messages::{PresignRequest, PresignResponse};
use crate::{names, telemetry};

/// Why no URL came back.
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// No presigner answered in time (none running, or overloaded).
    #[error("presigner did not answer")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The presigner refused the request.
    #[error("presigner refused: {0}")]
    Refused(String),
    /// The reply was not a presign response.
    #[error("presigner reply is malformed")]
    Malformed(#[source] serde_json::Error),
    /// The job has no result to sign (not completed).
    #[error("job {0} has no result")]
    NoResult(crate::JobId),
}

/// The file name a job's result downloads as: `{fileId}.zip` for a single file, else
/// `download-{jobId}.zip` for a bundle.
pub fn result_filename(record: &crate::JobRecord) -> Option<String> {
    Some(filename_of(record.job_id, record.result_key.as_deref()?))
}

/// The download name of result `key` of `job_id`: a single file's result is the source object
/// itself (`downloads/{fileId}.zip`), a bundle's is `bundles/{jobId}.zip`.
pub fn filename_of(job_id: crate::JobId, key: &str) -> String {
    match key.strip_prefix("downloads/") {
        Some(name) if names::is_result_key(key) => name.to_string(),
        _ => format!("download-{job_id}.zip"),
    }
}

/// A fresh presigned URL of a completed job's result.
pub async fn result_url(
    client: &async_nats::Client,
    record: &crate::JobRecord,
    timeout: Duration,
) -> Result<String, PresignError> {
    let Some(key) = record.result_key.as_deref() else {
        return Err(PresignError::NoResult(record.job_id));
    };
    key_url(client, record.job_id, key, timeout).await
}

/// A fresh presigned URL of result `key` of `job_id` (as a completed event carries it).
pub async fn key_url(
    client: &async_nats::Client,
    job_id: crate::JobId,
    key: &str,
    timeout: Duration,
) -> Result<String, PresignError> {
    request_url(client, key, &filename_of(job_id, key), timeout)
        .await
        .map(|(url, _)| url)
}

/// Asks the presigner for a GET URL of `key` that saves as `filename`.
pub async fn request_url(
    client: &async_nats::Client,
    key: &str,
    filename: &str,
    timeout: Duration,
) -> Result<(String, DateTime<Utc>), PresignError> {
    let request = PresignRequest::V1 {
        key: key.to_string(),
        filename: filename.to_string(),
    };
    let payload = Bytes::from(serde_json::to_vec(&request).expect("requests serialize"));
    let span = telemetry::span::request(names::PRESIGN_SUBJECT, false);
    let asked = async {
        let mut headers = async_nats::HeaderMap::new();
        telemetry::inject_current(&mut headers);
        let reply = tokio::time::timeout(
            timeout,
            client.request_with_headers(names::PRESIGN_SUBJECT, headers, payload),
        )
        .await
        .map_err(|elapsed| PresignError::Unavailable(Box::new(elapsed)))?
        .map_err(|error| PresignError::Unavailable(Box::new(error)))?;
        if let Some(service_error) = reply
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Service-Error"))
        {
            return Err(PresignError::Refused(service_error.as_str().to_string()));
        }
        match serde_json::from_slice(&reply.payload).map_err(PresignError::Malformed)? {
            PresignResponse::V1 { url, expires_at } => Ok((url, expires_at)),
        }
    }
    .instrument(span.clone())
    .await;
    if let Err(error) = &asked {
        telemetry::span::failed(&span, &error.to_string());
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_files_keep_their_name_and_bundles_are_named_after_the_job() {
        let job_id = crate::JobId::new();
        let mut record = crate::JobRecord::queued(job_id, "u".into(), vec![70000], None, 1, None);
        assert_eq!(result_filename(&record), None);
        record.result_key = Some(names::source_key(70000));
        assert_eq!(result_filename(&record).as_deref(), Some("70000.zip"));
        record.file_ids = vec![70000, 70001];
        record.result_key = Some(names::bundle_key(&job_id.to_string()));
        assert_eq!(result_filename(&record), Some(format!("download-{job_id}.zip")));
    }
}
