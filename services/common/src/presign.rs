//! Client side of the presigner micro-service: ask for a fresh presigned URL over NATS.

use std::time::Duration;

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
