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

/// How much of a presigned URL's lifetime may pass while it is handed out again: a twentieth,
/// so every URL a client gets keeps at least 95 % of its lifetime.
const REUSE_SHARE: u32 = 20;

/// How many URLs a [`Presigner`] keeps for reuse.
const REUSED_URLS: usize = 4096;

/// Asks the presigner for URLs of results, handing a URL out again while it keeps at least 95 %
/// of its lifetime: the readers of one result (a polling client, the streams of one job) cost one
/// presign request per twentieth of the lifetime instead of one each, and no credential leaves
/// the presigner.
pub struct Presigner {
    nats: async_nats::Client,
    timeout: Duration,
    fresh: crate::expiring::ExpiringMap<(String, String), String>,
}

impl Presigner {
    /// A client of the presigner waiting `timeout` for each answer.
    pub fn new(nats: async_nats::Client, timeout: Duration) -> Self {
        Presigner {
            nats,
            timeout,
            fresh: crate::expiring::ExpiringMap::new(REUSED_URLS),
        }
    }

    /// A presigned URL of a completed job's result.
    pub async fn result_url(&self, record: &crate::JobRecord) -> Result<String, PresignError> {
        let Some(key) = record.result_key.as_deref() else {
            return Err(PresignError::NoResult(record.job_id));
        };
        self.key_url(record.job_id, key).await
    }

    /// A presigned URL of result `key` of `job_id` (as a completed event carries it).
    pub async fn key_url(&self, job_id: crate::JobId, key: &str) -> Result<String, PresignError> {
        let name = (key.to_string(), filename_of(job_id, key));
        if let Some(url) = self.fresh.get(&name) {
            return Ok(url);
        }
        let (url, expires_at) = request_url(&self.nats, &name.0, &name.1, self.timeout).await?;
        self.fresh
            .insert(name, url.clone(), reusable_until(Utc::now(), expires_at));
        Ok(url)
    }
}

/// What the reuse window leaves out for the URL's signing time, which S3 counts from
/// `X-Amz-Date` (whole seconds, so up to a second before `expires_at - lifetime`), and for the
/// presign round trip.
const SIGNING_SLACK: Duration = Duration::from_secs(2);

/// Until when a URL received at `now` (wall clock) and expiring at `expires_at` may be handed
/// out again: a twentieth of its remaining lifetime from now, less [`SIGNING_SLACK`], so it keeps
/// at least 95 % of its lifetime as S3 counts it (a URL of under 40 s is not reused at all).
fn reusable_until(now: DateTime<Utc>, expires_at: DateTime<Utc>) -> tokio::time::Instant {
    let lifetime = (expires_at - now).to_std().unwrap_or_default();
    tokio::time::Instant::now() + (lifetime / REUSE_SHARE).saturating_sub(SIGNING_SLACK)
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

    #[tokio::test(start_paused = true)]
    async fn a_url_is_reused_for_a_twentieth_of_its_lifetime_so_it_keeps_95_percent() {
        let now = Utc::now();
        let until = reusable_until(now, now + chrono::Duration::seconds(3600));
        assert_eq!(until - tokio::time::Instant::now(), Duration::from_secs(178));
        // Too short to reuse and keep 95 % counting from a whole-second signing time.
        let until = reusable_until(now, now + chrono::Duration::seconds(30));
        assert_eq!(until, tokio::time::Instant::now());
        // An answer already expired (clocks apart) is not reused at all.
        let until = reusable_until(now, now - chrono::Duration::seconds(1));
        assert_eq!(until, tokio::time::Instant::now());
    }

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
