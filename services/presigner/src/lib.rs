//! The presigner: a NATS micro-service (`download-presigner`) that answers
//! `downloads.presign.url` with a short-lived presigned GET URL for a result key.
//!
//! URLs are never stored: the intake asks for a fresh one whenever a completed job is read.
//! Signing is pure computation, so instances scale out behind the service's queue group.

pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use bytes::Bytes;
use chrono::Utc;
use common::config::{ConfigError, Env, NatsSettings, S3Settings};
use common::messages::{PresignRequest, PresignResponse};
use common::storage::Storage;
use common::{names, telemetry};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Presigner configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS connection.
    pub nats: NatsSettings,
    /// Object storage.
    pub s3: S3Settings,
    /// `PRESIGNED_URL_EXPIRY_SECONDS`: lifetime of a URL (default 3600).
    pub url_expiry: Duration,
    /// `METRICS_PORT` (on `HOST`): where `/metrics` and `/health` are served; unset: nowhere.
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Settings {
    /// Reads and validates the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url_expiry = env.seconds("PRESIGNED_URL_EXPIRY_SECONDS", 3600)?;
        env.require(
            (1..=604_800).contains(&url_expiry.as_secs()),
            "PRESIGNED_URL_EXPIRY_SECONDS",
            "must be between 1 and 604800 (7 days, the S3 maximum)",
        )?;
        Ok(Settings {
            nats: NatsSettings::from_env(env)?,
            s3: S3Settings::from_env(env)?,
            url_expiry,
            metrics_address: common::config::metrics_address(env)?,
        })
    }
}

/// Requests signed at once; signing takes microseconds, so this only bounds a burst's memory.
const MAX_IN_FLIGHT: usize = 1024;

/// Service-error codes in the `Nats-Service-Error-Code` header.
const BAD_REQUEST: usize = 400;
const SIGNING_FAILED: usize = 500;

/// How long `presigner provision` waits for NATS to answer.
const PROVISION_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `presigner provision`: the presigner owns no JetStream resource (it answers core NATS
/// requests), so its provisioning step only proves that its settings parse and NATS answers;
/// deployments can run every service's step alike.
pub async fn provision(settings: &Settings) -> anyhow::Result<()> {
    let client = common::nats::connect(&settings.nats, "download-presigner-provision").await?;
    // The connection retries in the background: bounded, so a step that cannot reach NATS fails
    // (and its Job or compose service retries it) instead of hanging.
    tokio::time::timeout(PROVISION_CHECK_TIMEOUT, client.flush())
        .await
        .map_err(|_| anyhow::anyhow!("NATS did not answer within {PROVISION_CHECK_TIMEOUT:?}"))??;
    tracing::info!("the presigner owns no JetStream resources: nothing to provision");
    Ok(())
}

/// Runs the presigner until `shutdown` is cancelled.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    metrics::init();
    let storage = Storage::new(&settings.s3)?;
    let client = common::nats::connect(&settings.nats, names::PRESIGNER_SERVICE).await?;
    // Signing needs no call to storage: ready while connected to NATS and serving.
    let readiness = common::readiness::Readiness::new(client.clone(), None);
    // Stopped when this function returns, however it returns.
    let _metrics = common::metrics::serve_for(settings.metrics_address, &client, &readiness).await?;
    let service = client
        .service_builder()
        .description("Presigned S3 GET URLs for completed download jobs")
        .start(names::PRESIGNER_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|error| anyhow::anyhow!("cannot start the presigner service: {error}"))?;
    let mut endpoint = service
        .group(names::PRESIGN_GROUP)
        .endpoint(names::PRESIGN_ENDPOINT)
        .await
        .map_err(|error| anyhow::anyhow!("cannot add the presign endpoint: {error}"))?;
    tracing::info!(subject = names::PRESIGN_SUBJECT, "presigner ready");
    readiness.started();
    readiness.drain_on(shutdown.clone());
    let in_flight = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            request = endpoint.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        // Signing is pure computation: answer each request on its own task, so a burst of
        // completions is signed on every core instead of one after another; at most
        // MAX_IN_FLIGHT at once, the next request waiting in the subscription meanwhile.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let storage = storage.clone();
        let expiry = settings.url_expiry;
        in_flight.spawn(async move {
            let span = telemetry::span::request(names::PRESIGN_SUBJECT, true);
            telemetry::set_parent_from_headers(&span, request.message.headers.as_ref());
            let started = std::time::Instant::now();
            let response = answer(&storage, expiry, &request.message.payload)
                .instrument(span.clone())
                .await;
            let outcome = match &response {
                Ok(_) => "ok",
                Err(error) => {
                    telemetry::span::failed(&span, &error.status);
                    if error.code == BAD_REQUEST { "invalid" } else { "error" }
                }
            };
            metrics::answered(outcome, started.elapsed());
            if let Err(error) = request.respond(response).await {
                tracing::warn!(%error, "presign reply not sent");
            }
            drop(slot);
        });
    }
    // Stop taking requests first (other instances answer them), then finish those in flight.
    endpoint.stop().await.ok();
    in_flight.close();
    in_flight.wait().await;
    service.stop().await.ok();
    client.drain().await.ok();
    tracing::info!("presigner stopped");
    Ok(())
}

async fn answer(
    storage: &Storage,
    expiry: Duration,
    payload: &[u8],
) -> Result<Bytes, async_nats::service::error::Error> {
    let refuse = |code: usize, status: String| async_nats::service::error::Error { status, code };
    let PresignRequest::V1 { key, filename } = serde_json::from_slice(payload)
        .map_err(|error| refuse(BAD_REQUEST, format!("malformed presign request: {error}")))?;
    if !names::is_result_key(&key) {
        return Err(refuse(BAD_REQUEST, "key is not a download result key".into()));
    }
    let url = storage.presign_get(&key, &filename, expiry).await.map_err(|error| {
        tracing::error!(error = %error, cause = ?std::error::Error::source(&error), key, "presigning failed");
        refuse(SIGNING_FAILED, "presigning failed".into())
    })?;
    let response = PresignResponse::V1 {
        url,
        expires_at: Utc::now() + expiry,
    };
    Ok(Bytes::from(serde_json::to_vec(&response).expect("responses serialize")))
}
