//! The old service's endpoints, with their contract unchanged: `/`, `/health`, `/check`, and
//! `/start` as a compatibility shim that no longer holds a request past `START_WAIT_MS`.

use std::sync::Arc;
use std::time::Duration;

use common::messages::JobMessage;
use common::{ErrorCode, JobId, JobRecord, JobStatus, names, telemetry};
use futures::StreamExt;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::jobs::store_error;
use super::types::{
    ApiJobStatus, CheckBody, CheckRequest, CheckState, HealthBody, HealthChecks, HealthState, RootBody,
    StartAcceptedBody, StartFinishedBody, StartRequest, StartStatus,
};
use super::{ApiTags, status_url};
use crate::State;
use crate::auth::{Caller, OptionalTenant};
use crate::body::ValidatedJson;
use crate::problem::{ApiError, Problem};

/// Owner of jobs started through `/start` without credentials.
pub const ANONYMOUS_USER: &str = common::identity::ANONYMOUS_TENANT;

/// How long a health check may take per dependency.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Legacy endpoints.
pub struct LegacyApi {
    /// Shared state.
    pub state: Arc<State>,
}

/// Answer of `GET /health`.
#[derive(ApiResponse)]
pub enum HealthResponse {
    /// Every dependency answers.
    #[oai(status = 200)]
    Healthy(Json<HealthBody>),
    /// A dependency failed; its check says `error`.
    #[oai(status = 503)]
    Unhealthy(Json<HealthBody>),
}

/// Answer of `POST /v1/download/start`.
#[derive(ApiResponse)]
pub enum StartResponse {
    /// The job ended within the wait: the old service's answer.
    #[oai(status = 200)]
    Finished(Json<StartFinishedBody>),
    /// The job is still running: poll `statusUrl` instead of waiting on this request.
    #[oai(status = 202)]
    Accepted(
        Json<StartAcceptedBody>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] u64,
    ),
}

#[OpenApi]
impl LegacyApi {
    /// Service banner
    #[oai(path = "/", method = "get", tag = "ApiTags::Health", operation_id = "root")]
    async fn root(&self) -> Json<RootBody> {
        Json(RootBody {
            message: "Download service is running. API documentation: /docs".into(),
        })
    }

    /// Health of the service and its dependencies
    ///
    /// Storage is checked with a signed HEAD on the bucket, the queue through the JetStream job
    /// stream. 503 names the failing check.
    #[oai(path = "/health", method = "get", tag = "ApiTags::Health", operation_id = "health")]
    async fn health(&self) -> HealthResponse {
        let (storage, queue) = tokio::join!(self.check_storage(), self.check_queue());
        let body = HealthBody {
            status: if storage == CheckState::Ok && queue == CheckState::Ok {
                HealthState::Healthy
            } else {
                HealthState::Unhealthy
            },
            checks: HealthChecks { storage, queue },
        };
        match body.status {
            HealthState::Healthy => HealthResponse::Healthy(Json(body)),
            HealthState::Unhealthy => HealthResponse::Unhealthy(Json(body)),
        }
    }

    /// Check whether a file exists (legacy)
    #[oai(
        path = "/v1/download/check",
        method = "post",
        tag = "ApiTags::Legacy",
        operation_id = "checkFile"
    )]
    async fn check(&self, body: ValidatedJson<CheckRequest>) -> Result<Json<CheckBody>, ApiError> {
        let file_id = body.0.file_id;
        let key = names::source_key(file_id as u64);
        let size = self
            .state
            .storage
            .object_size(&key)
            .await
            .map_err(|error| ApiError::unavailable(ErrorCode::StorageUnavailable, "storage", &error))?;
        Ok(Json(CheckBody {
            file_id,
            available: size.is_some(),
            s3_key: size.map(|_| key),
            size,
        }))
    }

    /// Start a download and wait for it (legacy compatibility shim)
    ///
    /// Starts a job and waits at most `START_WAIT_MS` (well under the proxy timeout). If the job
    /// ended, answers as the old service did (200); otherwise 202 with the job to poll, instead
    /// of timing out. Takes an API key like every job endpoint; without one it works only where
    /// the operator enabled `LEGACY_ANONYMOUS_START` (as old clients sent none), and the job
    /// belongs to nobody: follow its `streamUrl`, whose token is the only way to it.
    #[oai(
        path = "/v1/download/start",
        method = "post",
        tag = "ApiTags::Legacy",
        operation_id = "startDownload"
    )]
    async fn start(
        &self,
        body: ValidatedJson<StartRequest>,
        caller: OptionalTenant,
    ) -> Result<StartResponse, ApiError> {
        let user_id = match caller.0 {
            Caller::Tenant(tenant) => tenant,
            Caller::Anonymous if self.state.settings.legacy_anonymous_start => ANONYMOUS_USER.to_string(),
            other => {
                let problem = other
                    .problem()
                    .unwrap_or_else(|| Problem::new(common::ErrorCode::Unauthenticated, "authentication is required"));
                return Err(ApiError::from_problem(problem));
            }
        };
        let file_id = body.0.file_id;
        let job_id = JobId::new();
        tracing::Span::current().record("job_id", job_id.to_string().as_str());
        let record = JobRecord::queued(
            job_id,
            user_id.clone(),
            vec![file_id as u64],
            None,
            self.state.estimated_job_seconds(),
            telemetry::current_traceparent(),
        );
        let user_id_owner = user_id.clone();
        let accepting = tokio::time::Instant::now();
        self.state
            .accept_job(
                record.clone(),
                JobMessage::SubmittedV1 {
                    job_id,
                    user_id,
                    file_ids: vec![file_id as u64],
                },
            )
            .await
            .map_err(|error| store_error("accepting the job", error))?;
        crate::metrics::accepted("legacy");
        // The watch starts with the record's current value, so no outcome slips past.
        // The job is accepted now: if it cannot be watched, the answer is the job to poll (202),
        // never an error that would hide a job that runs.
        let mut watch = match self.state.store.kv().watch_with_history(job_id.to_string()).await {
            Ok(watch) => Some(watch),
            Err(error) => {
                tracing::warn!(%job_id, %error, "accepted job not watched; answering with the job to poll");
                None
            }
        };
        // Whatever accepting took comes off the wait, so the answer stays within the request timeout.
        let wait_left = self
            .state
            .settings
            .start_wait
            .min(
                self.state
                    .settings
                    .request_timeout
                    .saturating_sub(Duration::from_secs(1)),
            )
            .saturating_sub(accepting.elapsed());
        let wait = tokio::time::sleep(wait_left);
        tokio::pin!(wait);
        let mut latest = record;
        while let Some(watching) = watch.as_mut() {
            tokio::select! {
                _ = &mut wait => break,
                entry = watching.next() => match entry {
                    Some(Ok(entry)) => {
                        if let Ok(record) = JobRecord::from_json_bytes(&entry.value) {
                            latest = record;
                            if latest.status.is_terminal() {
                                break;
                            }
                        }
                    }
                    _ => break,
                },
            }
        }
        let job_id_text = job_id.to_string();
        let processing_time_ms = (chrono::Utc::now() - latest.created_at).num_milliseconds().max(0) as u64;
        match latest.status {
            JobStatus::Completed => {
                let url = self.state.download_url(&latest).await?;
                Ok(StartResponse::Finished(Json(StartFinishedBody {
                    file_id,
                    status: StartStatus::Completed,
                    download_url: Some(url),
                    size: latest.result_size,
                    processing_time_ms,
                    message: "Download ready".into(),
                })))
            }
            JobStatus::Failed | JobStatus::Cancelled => Ok(StartResponse::Finished(Json(StartFinishedBody {
                file_id,
                status: StartStatus::Failed,
                download_url: None,
                size: None,
                processing_time_ms,
                message: latest
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("job {}", latest.status.as_str())),
            }))),
            JobStatus::Queued | JobStatus::Processing => Ok(StartResponse::Accepted(
                Json(StartAcceptedBody {
                    file_id,
                    job_id: job_id_text.clone(),
                    status: ApiJobStatus::from(latest.status),
                    status_url: status_url(&job_id_text),
                    stream_url: self.state.stream_url(&job_id_text, &user_id_owner),
                    message:
                        "Still preparing; follow streamUrl or poll statusUrl (with the same API key) instead of waiting"
                            .into(),
                }),
                status_url(&job_id_text),
                2,
            )),
        }
    }
}

impl LegacyApi {
    async fn check_storage(&self) -> CheckState {
        match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, self.state.storage.check_bucket()).await {
            Ok(Ok(())) => CheckState::Ok,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "storage health check failed");
                CheckState::Error
            }
            Err(_) => {
                tracing::warn!("storage health check timed out");
                CheckState::Error
            }
        }
    }

    async fn check_queue(&self) -> CheckState {
        let check = async {
            let jetstream = self.state.store.jetstream();
            jetstream.query_account().await?;
            jetstream.get_stream(names::JOBS_STREAM).await?;
            Ok::<_, async_nats::Error>(())
        };
        match tokio::time::timeout(HEALTH_CHECK_TIMEOUT, check).await {
            Ok(Ok(())) => CheckState::Ok,
            Ok(Err(error)) => {
                tracing::warn!(%error, "queue health check failed");
                CheckState::Error
            }
            Err(_) => {
                tracing::warn!("queue health check timed out");
                CheckState::Error
            }
        }
    }
}
