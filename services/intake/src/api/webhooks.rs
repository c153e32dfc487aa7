//! The webhook a job's `callbackUrl` receives, described in the published OpenAPI document
//! (`webhooks` section). The notifier sends it; a contract test checks that what it sends has
//! exactly these fields.

use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, Webhook};

use super::types::ApiJobStatus;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum WebhookType {
    /// The job completed; `downloadUrl` is a fresh presigned URL.
    #[oai(rename = "download.completed")]
    Completed,
    /// The job failed; see `error` and `errorCode`.
    #[oai(rename = "download.failed")]
    Failed,
    /// The job was cancelled by its owner.
    #[oai(rename = "download.cancelled")]
    Cancelled,
}

/// Body of the webhook sent when a job ends.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DownloadWebhookBody {
    /// `download.completed`, `download.failed` or `download.cancelled`.
    #[oai(rename = "type")]
    pub event_type: WebhookType,
    /// The job.
    pub job_id: String,
    /// Its final status.
    pub status: ApiJobStatus,
    /// Presigned URL of the result (completed jobs), valid for `PRESIGNED_URL_EXPIRY_SECONDS`.
    pub download_url: Option<String>,
    /// Why the job failed.
    pub error: Option<String>,
    /// Stable code of the failure.
    pub error_code: Option<String>,
    /// When the job reached this state (ISO 8601 UTC).
    pub timestamp: String,
}

/// Webhooks of the download service.
#[Webhook]
pub trait DownloadWebhooks {
    /// A job ended
    ///
    /// POSTed to the job's `callbackUrl` once per outcome, at least once (retried with backoff
    /// until a 2xx; 410 stops). Signed per Standard Webhooks: verify `webhook-signature` over
    /// `{webhook-id}.{webhook-timestamp}.{body}` with your `whsec_` secret, and reject timestamps
    /// more than 5 minutes off.
    #[oai(name = "downloadFinished", method = "post")]
    fn download_finished(
        &self,
        /// Stable across retries of one delivery: use it to de-duplicate.
        #[oai(name = "webhook-id")]
        id: Header<String>,
        /// Unix seconds when this attempt was signed.
        #[oai(name = "webhook-timestamp")]
        timestamp: Header<i64>,
        /// `v1,<base64 signature>`, several space-separated during secret rotation.
        #[oai(name = "webhook-signature")]
        signature: Header<String>,
        body: Json<DownloadWebhookBody>,
    );
}
