//! The webhook a job's `callbackUrl` receives, described in the published OpenAPI document
//! (`webhooks` section). Its body is `common::wire::DownloadWebhookBody`, the type the notifier
//! sends.

use poem_openapi::Webhook;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;

pub use common::wire::{DownloadWebhookBody, WebhookType};

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
