//! Signed webhooks: one POST per terminal job event to the job's `callbackUrl` (and, when
//! `WEBHOOK_PROGRESS_MILESTONES` is set, one per milestone crossed), durable and at-least-once. A
//! durable consumer of events drives deliveries; each attempt's outcome becomes its
//! acknowledgement: 2xx delivered (Ack), 410 stop (Ack), anything else retried with exponential
//! backoff and jitter (Nak with delay; `Retry-After` honoured on 429/503), until the last attempt
//! or the end of the delivery's time window, after which it goes to the dead-letter bucket for an
//! operator to list and replay. Deliveries run concurrently, so a slow or dead receiver never
//! delays the others.

pub mod dead_letters;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use common::config::{ConfigError, Env};
use common::identity::TenantRecord;
use common::identity::directory::Directory;
use common::messages::JobEvent;
use common::store::JobStore;
use common::wire::WebhookType;
use common::{JobStatus, telemetry, webhook};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Webhook configuration.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `WEBHOOK_SECRETS`: comma-separated `whsec_` secrets for owners that are not tenants in
    /// the tenants bucket (jobs of a gateway's users, `AUTH_MODE=gateway`). A tenant's jobs are
    /// always signed with the tenant's own secrets, never these. Empty (the default): such jobs'
    /// webhooks are retried, then dead-lettered, until the owner is a tenant.
    pub secrets: Vec<SecretString>,
    /// `WEBHOOK_TIMEOUT_MS`: per-attempt timeout (default 15000).
    pub timeout: Duration,
    /// `WEBHOOK_MAX_ATTEMPTS` (default 15).
    pub max_attempts: u32,
    /// `WEBHOOK_MAX_WINDOW_SECONDS`: time from the event to the last attempt (default 21600, 6 h;
    /// under the 24 h the events stream keeps events).
    pub max_window: Duration,
    /// `WEBHOOK_INITIAL_DELAY_MS`: delay before the first retry (default 1000), doubling.
    pub initial_delay: Duration,
    /// `WEBHOOK_MAX_DELAY_MS`: longest delay between attempts (default 3600000, 1 h).
    pub max_delay: Duration,
    /// `WEBHOOK_PROGRESS_MILESTONES`: comma-separated percentages (1-99) at which a
    /// `download.progress` webhook is sent (default none: outcomes only).
    pub progress_milestones: Vec<u8>,
    /// `WEBHOOK_ALLOWED_NETWORKS`: CIDRs allowed although private (default none).
    pub allowed_networks: Vec<ssrf::Network>,
    /// `WEBHOOK_CONCURRENCY`: deliveries in flight per instance (default 256).
    pub concurrency: usize,
}

impl WebhookSettings {
    /// Reads and validates the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let secrets: Vec<SecretString> = env
            .string("WEBHOOK_SECRETS", "")
            .split(',')
            .map(|secret| secret.trim().to_string())
            .filter(|secret| !secret.is_empty())
            .map(SecretString::from)
            .collect();
        for secret in &secrets {
            if webhook::check_secret(secret.expose_secret()).is_err() {
                return Err(ConfigError {
                    key: "WEBHOOK_SECRETS".into(),
                    value: "(hidden)".into(),
                    reason: "every secret must look like whsec_<base64>".into(),
                });
            }
        }
        let mut allowed_networks = Vec::new();
        for text in env
            .string("WEBHOOK_ALLOWED_NETWORKS", "")
            .split(',')
            .filter(|text| !text.trim().is_empty())
        {
            allowed_networks.push(text.parse().map_err(|reason| ConfigError {
                key: "WEBHOOK_ALLOWED_NETWORKS".into(),
                value: text.into(),
                reason,
            })?);
        }
        let mut progress_milestones = Vec::new();
        for text in env
            .string("WEBHOOK_PROGRESS_MILESTONES", "")
            .split(',')
            .map(str::trim)
            .filter(|text| !text.is_empty())
        {
            match text.parse::<u8>() {
                Ok(percent) if (1..=99).contains(&percent) => progress_milestones.push(percent),
                _ => {
                    return Err(ConfigError {
                        key: "WEBHOOK_PROGRESS_MILESTONES".into(),
                        value: text.into(),
                        reason: "every milestone must be a percentage from 1 to 99".into(),
                    });
                }
            }
        }
        progress_milestones.sort_unstable();
        progress_milestones.dedup();
        let settings = WebhookSettings {
            secrets,
            timeout: env.millis("WEBHOOK_TIMEOUT_MS", 15_000)?,
            max_attempts: env.parse("WEBHOOK_MAX_ATTEMPTS", 15)?,
            max_window: env.seconds("WEBHOOK_MAX_WINDOW_SECONDS", 6 * 60 * 60)?,
            initial_delay: env.millis("WEBHOOK_INITIAL_DELAY_MS", 1_000)?,
            max_delay: env.millis("WEBHOOK_MAX_DELAY_MS", 3_600_000)?,
            progress_milestones,
            allowed_networks,
            concurrency: env.parse("WEBHOOK_CONCURRENCY", 256)?,
        };
        env.require(
            (1..=50).contains(&settings.max_attempts),
            "WEBHOOK_MAX_ATTEMPTS",
            "must be between 1 and 50",
        )?;
        env.require(!settings.timeout.is_zero(), "WEBHOOK_TIMEOUT_MS", "must be positive")?;
        env.require(
            !settings.max_window.is_zero() && settings.max_window < common::nats::EVENTS_MAX_AGE,
            "WEBHOOK_MAX_WINDOW_SECONDS",
            "must be positive and under 86400 (the events stream keeps events 24 h)",
        )?;
        env.require(settings.concurrency > 0, "WEBHOOK_CONCURRENCY", "must be positive")?;
        Ok(settings)
    }

    /// The consumers' settings.
    pub fn topology(&self) -> WebhookTopology {
        WebhookTopology {
            ack_wait: self.timeout + Duration::from_secs(15),
            progress_events: !self.progress_milestones.is_empty(),
        }
    }

    /// Delay before the attempt after `failed_attempt`: doubling from the initial delay, capped,
    /// with up to 25 % jitter so retries of many deliveries spread out.
    pub fn retry_delay(&self, failed_attempt: u32) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(30) as i32;
        let base = (self.initial_delay.as_secs_f64() * 2f64.powi(exponent)).min(self.max_delay.as_secs_f64());
        let jitter = 1.0 + rand::random_range(0.0..0.25);
        Duration::from_secs_f64((base * jitter).min(self.max_delay.as_secs_f64()))
    }
}

/// The JSON body of a webhook: the documented type, sent as it is defined.
pub use common::wire::DownloadWebhookBody as WebhookPayload;

/// A webhook ready to send: whose job, where to, what.
struct Prepared {
    owner: String,
    url: String,
    payload: WebhookPayload,
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// 410 Gone: the receiver wants no more for this job.
    Stopped,
    /// Worth another attempt after the delay.
    Retry {
        delay: Option<Duration>,
        reason: String,
        /// The receiver's status, when it answered.
        status: Option<u16>,
    },
    /// Never worth another attempt (refused target, no URL).
    Refused(String),
}

/// An attempt that sent no request (invalid or forbidden URL, no signing secret), counted as
/// `refused`.
fn refused(attempt: Attempt) -> Attempt {
    crate::metrics::webhook_attempt("refused", None);
    if let Attempt::Retry { reason, .. } | Attempt::Refused(reason) = &attempt {
        telemetry::span::failed(&tracing::Span::current(), reason);
    }
    attempt
}

/// Shared by deliveries.
pub struct Deliverer {
    /// Settings.
    pub settings: WebhookSettings,
    /// Job records.
    pub store: JobStore,
    /// Presigned URLs of results.
    pub presigner: Arc<common::presign::Presigner>,
    /// The SSRF policy.
    pub policy: ssrf::TargetPolicy,
    /// The guarded HTTP client (no redirects, resolver that refuses forbidden addresses).
    pub http: reqwest::Client,
    /// Dead letters.
    pub dead_letters: async_nats::jetstream::kv::Store,
    /// Tenants and their webhook secrets, held in memory and kept current.
    pub tenants: Arc<Directory<TenantRecord>>,
    /// `AUTH_MODE=gateway`: owners that are not tenants are the gateway's users, signed with
    /// `WEBHOOK_SECRETS`. With API keys every owner is a tenant (or anonymous, with no webhook).
    pub gateway_users: bool,
}

impl Deliverer {
    /// Builds the guarded client.
    pub fn new(
        settings: WebhookSettings,
        store: JobStore,
        presigner: Arc<common::presign::Presigner>,
        dead_letters: async_nats::jetstream::kv::Store,
        tenants: Arc<Directory<TenantRecord>>,
        gateway_users: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let policy = ssrf::TargetPolicy::new(settings.allowed_networks.clone());
        let http = ssrf::guarded_client(policy.clone(), settings.timeout, ssrf::Lookup::System)?;
        Ok(Arc::new(Deliverer {
            settings,
            store,
            presigner,
            policy,
            http,
            dead_letters,
            tenants,
            gateway_users,
        }))
    }

    /// The webhook of an event, or `None` when its job has no callback URL (or, for a progress
    /// milestone, when the job has ended since: its outcome's webhook says more).
    async fn payload_of(&self, event: &JobEvent) -> Result<Option<Prepared>, String> {
        let record = match self.store.load(event.job_id()).await {
            Ok(Some(versioned)) => versioned.record,
            Ok(None) => return Ok(None),
            Err(error) => return Err(format!("job store unavailable: {error}")),
        };
        let Some(url) = record.callback_url.clone() else {
            return Ok(None);
        };
        let JobEvent::V1 {
            job_id,
            status,
            progress,
            error,
            error_code,
            at,
            ..
        } = event;
        let milestone = !status.is_terminal();
        if milestone && record.status.is_terminal() {
            return Ok(None);
        }
        let download_url = match status {
            JobStatus::Completed => match self.presigner.result_url(&record).await {
                Ok(url) => Some(url),
                Err(error) => return Err(format!("presigner unavailable: {error}")),
            },
            _ => None,
        };
        Ok(Some(Prepared {
            owner: record.user_id.clone(),
            url,
            payload: WebhookPayload {
                event_type: WebhookType::of(*status),
                job_id: job_id.to_string(),
                status: (*status).into(),
                progress: milestone.then_some(*progress),
                download_url,
                error: error.clone(),
                error_code: error_code.map(|code| code.as_str().to_string()),
                timestamp: common::wire::Timestamp(*at),
            },
        }))
    }

    /// The secrets that sign `owner`'s webhooks: the tenant's own, or in gateway mode, for an
    /// owner that is no tenant (a gateway's user), the configured `WEBHOOK_SECRETS`, which all
    /// such users share (make the users that receive webhooks tenants to give them their own).
    pub async fn secrets_of(&self, owner: &str) -> Result<Vec<String>, String> {
        match self.tenants.get(owner).await {
            Ok(Some(tenant)) => Ok(tenant.signing_secrets(chrono::Utc::now())),
            Ok(None) if !self.gateway_users => Ok(Vec::new()),
            Ok(None) => Ok(self
                .settings
                .secrets
                .iter()
                .map(|secret| secret.expose_secret().to_string())
                .collect()),
            Err(error) => Err(format!("tenants unavailable: {error}")),
        }
    }

    /// Attempt `attempt_number` to deliver `payload` to `url` as webhook `webhook_id`, signed
    /// with `secrets`, in an HTTP client span (whose `traceparent` the receiver gets).
    pub async fn attempt(
        &self,
        webhook_id: &str,
        url: &str,
        payload: &WebhookPayload,
        secrets: &[String],
        attempt_number: u32,
    ) -> Attempt {
        let parsed = match url::Url::parse(url) {
            Ok(parsed) => parsed,
            Err(error) => return refused(Attempt::Refused(format!("invalid callback URL: {error}"))),
        };
        if let Err(reason) = self.policy.check_url(&parsed) {
            return refused(Attempt::Refused(reason));
        }
        if secrets.is_empty() {
            return refused(Attempt::Retry {
                delay: None,
                reason:
                    "the job's owner has no webhook secret (not a tenant; WEBHOOK_SECRETS serves gateway users only)"
                        .into(),
                status: None,
            });
        }
        let body = serde_json::to_vec(payload).expect("payloads serialize");
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match webhook::signature_header(secrets, webhook_id, timestamp, &body) {
            Ok(signature) => signature,
            Err(error) => return Attempt::Refused(error.to_string()),
        };
        let span = telemetry::span::http_client("POST", &parsed);
        span.record("http.request.resend_count", i64::from(attempt_number.saturating_sub(1)));
        let started = std::time::Instant::now();
        let attempt = self
            .send(parsed, webhook_id, timestamp, signature, body)
            .instrument(span.clone())
            .await;
        let outcome = match &attempt {
            Attempt::Delivered => "delivered",
            Attempt::Stopped | Attempt::Retry { status: Some(_), .. } => "rejected",
            // A resolved address the SSRF policy refuses: no request went out.
            Attempt::Refused(_) => "refused",
            Attempt::Retry { .. } => "failed",
        };
        if let Attempt::Retry { reason, .. } | Attempt::Refused(reason) = &attempt {
            telemetry::span::failed(&span, reason);
        }
        crate::metrics::webhook_attempt(outcome, Some(started.elapsed()));
        attempt
    }

    /// The POST of one attempt, in its client span.
    async fn send(
        &self,
        parsed: url::Url,
        webhook_id: &str,
        timestamp: i64,
        signature: String,
        body: Vec<u8>,
    ) -> Attempt {
        let mut request = self
            .http
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if let Some(traceparent) = telemetry::current_traceparent() {
            // The job's trace continues at the receiver.
            request = request.header("traceparent", traceparent);
        }
        let response = request.body(body).send().await;
        if let Ok(response) = &response {
            telemetry::span::http_status(&tracing::Span::current(), response.status().as_u16(), true);
        }
        match response {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) if response.status() == reqwest::StatusCode::GONE => Attempt::Stopped,
            Ok(response) => {
                let status = response.status();
                let retry_after = matches!(status.as_u16(), 429 | 503)
                    .then(|| {
                        response
                            .headers()
                            .get("retry-after")?
                            .to_str()
                            .ok()?
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
                    .flatten()
                    .map(|seconds| Duration::from_secs(seconds.min(self.settings.max_delay.as_secs())));
                Attempt::Retry {
                    delay: retry_after,
                    reason: format!("receiver answered {status}"),
                    status: Some(status.as_u16()),
                }
            }
            Err(error) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
                while let Some(cause) = source {
                    if let Some(refused) = cause.downcast_ref::<ssrf::Refused>() {
                        return Attempt::Refused(refused.to_string());
                    }
                    source = cause.source();
                }
                let kind = if error.is_timeout() {
                    "timed out"
                } else if error.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                // Without the URL: its query may carry the receiver's credentials.
                Attempt::Retry {
                    delay: None,
                    reason: format!("{kind}: {}", error.without_url()),
                    status: None,
                }
            }
        }
    }

    /// The webhook id of an event: `{jobId}-{seq}` for outcomes, `{jobId}-p{milestone}` for
    /// progress milestones (the same milestone reached again by a retried attempt keeps its id,
    /// so receivers de-duplicating by id see it once). `None`: the event calls for no webhook.
    pub fn webhook_id(&self, event: &JobEvent) -> Option<String> {
        if event.status().is_terminal() {
            return Some(format!("{}-{}", event.job_id(), event.seq()));
        }
        let milestone = event.crossed(&self.settings.progress_milestones)?;
        Some(format!("{}-p{milestone}", event.job_id()))
    }

    /// Handles one delivery message (an event, or a replay) and decides its acknowledgement.
    /// `age` is the time since the message was published: deliveries end at
    /// `WEBHOOK_MAX_WINDOW_SECONDS` as they end at `WEBHOOK_MAX_ATTEMPTS`.
    async fn handle(&self, event: JobEvent, delivered: u32, age: Duration) -> AckKind {
        let Some(webhook_id) = self.webhook_id(&event) else {
            return AckKind::Ack;
        };
        let JobEvent::V1 { webhook, .. } = &event;
        if *webhook == Some(false) {
            // The event says the job has no callback: no record to read, nothing to send.
            return AckKind::Ack;
        }
        let prepared = match self.payload_of(&event).await {
            Ok(Some(found)) => self.secrets_of(&found.owner).await.map(|secrets| (found, secrets)),
            Ok(None) => return AckKind::Ack,
            Err(reason) => Err(reason),
        };
        let (Prepared { url, payload, .. }, secrets) = match prepared {
            Ok(found) => found,
            Err(reason) => {
                let wait = self.settings.retry_delay(delivered);
                if age + wait > self.settings.max_window {
                    // Nothing to post yet, but the window is over: keep the event for a replay.
                    tracing::warn!(webhook_id, reason, "webhook not prepared within its window");
                    let url = String::new();
                    return self.dead_letter(&webhook_id, &url, &event, delivered, &reason).await;
                }
                tracing::warn!(webhook_id, reason, "webhook not prepared, retrying");
                return AckKind::Nak(Some(wait));
            }
        };
        let outcome = self.attempt(&webhook_id, &url, &payload, &secrets, delivered).await;
        match outcome {
            Attempt::Delivered => {
                tracing::info!(webhook_id, attempt = delivered, "webhook delivered");
                AckKind::Ack
            }
            Attempt::Stopped => {
                tracing::info!(webhook_id, "receiver answered 410, no more deliveries for this job");
                AckKind::Ack
            }
            Attempt::Refused(reason) => {
                tracing::warn!(webhook_id, reason, "webhook target refused");
                self.dead_letter(&webhook_id, &url, &event, delivered, &reason).await
            }
            Attempt::Retry { delay, reason, .. } => {
                let wait = self.retry_wait(delivered, delay);
                if delivered < self.settings.max_attempts && age + wait <= self.settings.max_window {
                    tracing::info!(
                        webhook_id,
                        attempt = delivered,
                        reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "webhook not delivered, retrying"
                    );
                    return AckKind::Nak(Some(wait));
                }
                let reason = format!("{reason} (gave up after {delivered} attempts over {}s)", age.as_secs());
                tracing::warn!(webhook_id, attempts = delivered, reason, "webhook attempts exhausted");
                self.dead_letter(&webhook_id, &url, &event, delivered, &reason).await
            }
        }
    }

    /// The wait before the next attempt: the backoff, or longer if the receiver asked for it.
    fn retry_wait(&self, failed_attempt: u32, asked: Option<Duration>) -> Duration {
        let backoff = self.settings.retry_delay(failed_attempt);
        asked.map_or(backoff, |asked| asked.max(backoff))
    }

    async fn dead_letter(&self, webhook_id: &str, url: &str, event: &JobEvent, attempts: u32, reason: &str) -> AckKind {
        let letter = dead_letters::DeadLetter {
            webhook_id: webhook_id.to_string(),
            url: url.to_string(),
            attempts,
            last_error: reason.to_string(),
            failed_at: chrono::Utc::now(),
            event: event.clone(),
            traceparent: telemetry::current_traceparent(),
        };
        telemetry::span::failed(&tracing::Span::current(), "dead letter");
        match self
            .dead_letters
            .put(
                webhook_id,
                serde_json::to_vec_pretty(&letter).expect("letters serialize").into(),
            )
            .await
        {
            Ok(_) => {
                crate::metrics::dead_letter();
                AckKind::Ack
            }
            Err(error) => {
                tracing::warn!(%error, webhook_id, "dead letter not stored, retrying later");
                AckKind::Nak(Some(self.settings.retry_delay(attempts)))
            }
        }
    }
}

/// The webhook consumers' settings, owned by the notifier.
#[derive(Debug, Clone, Copy)]
pub struct WebhookTopology {
    /// Lease of one delivery attempt (its timeout plus a margin).
    pub ack_wait: Duration,
    /// Whether progress events are delivered too (progress milestones are configured).
    pub progress_events: bool,
}

impl Default for WebhookTopology {
    fn default() -> Self {
        WebhookTopology {
            ack_wait: Duration::from_secs(30),
            progress_events: false,
        }
    }
}

/// The durable consumer of job events that drives webhook deliveries: terminal events, and
/// progress events when milestones are configured. It delivers from the first event the stream
/// holds, so events published before the first notifier created it are delivered too (the
/// notifier creates it at startup, with or without signing secrets). No `max_deliver`: the notifier decides when a
/// delivery is exhausted (attempts and time window) and dead-letters it, so a notifier crashing
/// during the last attempts cannot make the server drop a delivery silently.
pub fn webhook_consumer_config(webhooks: &WebhookTopology) -> jetstream::consumer::pull::Config {
    let mut filter_subjects: Vec<String> = common::names::WEBHOOK_EVENT_FILTERS
        .iter()
        .map(|subject| subject.to_string())
        .collect();
    if webhooks.progress_events {
        filter_subjects.push(common::names::WEBHOOK_PROGRESS_FILTER.to_string());
    }
    jetstream::consumer::pull::Config {
        durable_name: Some(common::names::WEBHOOK_CONSUMER.into()),
        description: Some("Notifiers deliver signed webhooks of job outcomes (and progress milestones)".into()),
        filter_subjects,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: webhooks.ack_wait,
        max_deliver: -1,
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// The durable consumer of replayed webhook deliveries, filtered to the replay subject (as the
/// advisories' consumer, so nothing delivered into the stream under another subject counts).
pub fn webhook_replay_consumer_config(webhooks: &WebhookTopology) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(common::names::WEBHOOK_REPLAY_CONSUMER.into()),
        filter_subject: common::names::WEBHOOK_REPLAY_SUBJECT.into(),
        description: Some("Notifiers deliver webhooks replayed from the dead letters".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: webhooks.ack_wait,
        max_deliver: -1,
        ..Default::default()
    }
}

/// Creates or updates the webhook consumers, riding out a cluster that is still electing
/// leaders. A consumer created by an older version with another delivery policy (which the
/// server cannot change in place) is kept as it is, with a warning.
pub async fn provision_consumers(jetstream: &jetstream::Context, topology: &WebhookTopology) -> anyhow::Result<()> {
    let patience = common::retry::Patience {
        window: common::nats::PROVISION_WINDOW,
    };
    let consumers = [
        (webhook_consumer_config(topology), common::names::EVENTS_STREAM),
        (
            webhook_replay_consumer_config(topology),
            common::names::WEBHOOK_REPLAYS_STREAM,
        ),
    ];
    for (config, stream) in consumers {
        let name = config.durable_name.clone().unwrap_or_default();
        let created = patience
            .retry(
                "provisioning a webhook consumer",
                || async {
                    match jetstream.create_consumer_on_stream(config.clone(), stream).await {
                        Ok(_) => Ok(()),
                        Err(error) => match jetstream.get_consumer_from_stream::<consumer::pull::Config, _, _>(&name, stream).await {
                            Ok(_) => {
                                tracing::warn!(%error, consumer = name, "existing webhook consumer kept with its settings");
                                Ok(())
                            }
                            Err(_) => Err(error),
                        },
                    }
                },
                |_| true,
            )
            .await;
        created.map_err(|error| anyhow::anyhow!("cannot provision the webhook consumer {name}: {error}"))?;
    }
    Ok(())
}

/// Waits (for the provisioning window) until the webhook consumers exist, as `notifier
/// provision` creates them for notifiers that may not (`NATS_PROVISION=false`).
pub async fn wait_for_consumers(jetstream: &jetstream::Context) -> anyhow::Result<()> {
    let patience = common::retry::Patience {
        window: common::nats::PROVISION_WINDOW,
    };
    for (name, stream) in [
        (common::names::WEBHOOK_CONSUMER, common::names::EVENTS_STREAM),
        (
            common::names::WEBHOOK_REPLAY_CONSUMER,
            common::names::WEBHOOK_REPLAYS_STREAM,
        ),
    ] {
        patience
            .retry(
                "waiting for a webhook consumer",
                || jetstream.get_consumer_from_stream::<consumer::pull::Config, _, _>(name, stream),
                |_| true,
            )
            .await
            .map_err(|error| {
                anyhow::anyhow!("the webhook consumer {name} does not exist (run `notifier provision`): {error}")
            })?;
    }
    Ok(())
}

/// Delivers webhooks from `consumer` (events or replays) until `stop`, each delivery on its own
/// task (at most `WEBHOOK_CONCURRENCY` at once, and no more pulled than there are free slots, so
/// no delivery waits in a buffer while its ack wait runs), and waits for those in flight.
pub async fn run(
    deliverer: Arc<Deliverer>,
    jetstream: jetstream::Context,
    stream: &'static str,
    consumer_name: &'static str,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let dispatch = |message: jetstream::Message| {
        let deliverer = deliverer.clone();
        async move {
            let (delivered, age) = message
                .info()
                .map(|info| {
                    let published = info.published.unix_timestamp_nanos();
                    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX) as i128;
                    let age = Duration::from_nanos((now - published).clamp(0, u64::MAX as i128) as u64);
                    (info.delivered.max(1) as u32, age)
                })
                .unwrap_or((1, Duration::ZERO));
            // The delivery is a span of the job's trace, carried in the event's headers.
            let destination = if stream == common::names::WEBHOOK_REPLAYS_STREAM {
                common::names::WEBHOOK_REPLAY_SUBJECT
            } else {
                "downloads.events"
            };
            let span = telemetry::span::process(destination, &message.subject, consumer_name, u64::from(delivered));
            telemetry::set_parent_from_headers(&span, message.headers.as_ref());
            let decision = match serde_json::from_slice::<JobEvent>(&message.payload) {
                Ok(event) => {
                    // The lease is renewed while the delivery waits (a store riding out an
                    // election, a slow receiver), so it is never attempted twice at once.
                    let lease = deliverer.settings.topology().ack_wait / 3;
                    tokio::select! {
                        decision = deliverer.handle(event, delivered, age).instrument(span) => decision,
                        never = common::consume::keep_lease(&message, lease) => match never {},
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, subject = %message.subject, "malformed webhook message terminated");
                    AckKind::Term
                }
            };
            if let Err(error) = message.ack_with(decision).await {
                tracing::warn!(%error, "webhook acknowledgement not sent");
            }
        }
    };
    common::consume::pull_into_slots(
        consumer_name,
        &jetstream,
        stream,
        consumer_name,
        deliverer.settings.concurrency,
        dispatch,
        &tasks,
        stop,
    )
    .await;
    tasks.close();
    tasks.wait().await;
}
