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
    /// The job crossed a progress milestone (`WEBHOOK_PROGRESS_MILESTONES`); see `progress`.
    #[oai(rename = "download.progress")]
    Progress,
}

/// Body of the webhook sent when a job ends (or crosses a configured progress milestone).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DownloadWebhookBody {
    /// `download.completed`, `download.failed`, `download.cancelled` or `download.progress`.
    #[oai(rename = "type")]
    pub event_type: WebhookType,
    /// The job.
    pub job_id: String,
    /// Its final status (for progress webhooks, its status then).
    pub status: ApiJobStatus,
    /// Progress webhooks only: the job's progress when it crossed the milestone (at least the
    /// milestone, 1-99).
    pub progress: Option<u8>,
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
    /// A job ended (or crossed a progress milestone)
    ///
    /// POSTed to the job's `callbackUrl` once per outcome, at least once (retried with backoff
    /// until a 2xx or the attempts and time window run out; 410 stops). With
    /// `WEBHOOK_PROGRESS_MILESTONES` configured, also once per milestone crossed
    /// (`download.progress`, webhook id `{jobId}-p{milestone}`); a milestone reached after the
    /// job ended is not sent, and milestones may arrive after the outcome when retried. Signed per Standard Webhooks: verify `webhook-signature` over
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
