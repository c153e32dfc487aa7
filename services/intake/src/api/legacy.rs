//! The old service's endpoints, with their contract unchanged: `/`, `/health`, `/check`, and
//! `/start` as a compatibility shim that no longer holds a request past `START_WAIT_MS`.

use std::sync::Arc;
use std::time::Duration;

use common::{ErrorCode, JobId, JobRecord, JobStatus, names, telemetry};
use futures::StreamExt;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, OpenApi};

use super::jobs::store_error;
use super::types::{
    ApiJobStatus, CheckBody, CheckRequest, CheckState, HealthBody, HealthChecks, HealthState, RootBody,
    StartAcceptedBody, StartFinishedBody, StartRequest, StartStatus,
};
use super::{ApiTags, status_url};
use crate::auth::{Caller, OptionalTenant};
use crate::body::ValidatedJson;
use crate::idempotency::{self, Answer};
use crate::problem::{ApiError, Errors, Problem, answers};
use crate::{State, admission};

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
    /// The job ended within the wait: the old service's answer. A request repeating an earlier
    /// one's `Idempotency-Key` gets that answer again, with `Idempotent-Replayed: true`.
    #[oai(status = 200)]
    Finished(
        Json<StartFinishedBody>,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
    /// The job is still running: poll `statusUrl` instead of waiting on this request.
    #[oai(status = 202)]
    Accepted(
        Json<StartAcceptedBody>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] u64,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
}

crate::failures!(
    /// The error answers of the service banner.
    RootFailures: answers::RATE_LIMITED, answers::INTERNAL,
);
crate::failures!(
    /// The error answers of the legacy check.
    CheckFailures: answers::INVALID_BODY, answers::TOO_LARGE, answers::RATE_LIMITED, answers::INTERNAL,
    answers::STORAGE_UNAVAILABLE,
);
crate::failures!(
    /// The error answers of the legacy start.
    StartFailures: answers::INVALID_BODY, answers::UNAUTHENTICATED, answers::KEY_IN_FLIGHT, answers::TOO_LARGE,
    answers::KEY_REUSED, answers::RATE_OR_ACTIVE_LIMITED, answers::INTERNAL, answers::QUEUE_UNAVAILABLE,
);

#[OpenApi]
impl LegacyApi {
    /// Service banner
    #[oai(path = "/", method = "get", tag = "ApiTags::Health", operation_id = "root")]
    async fn root(&self) -> Result<Json<RootBody>, Errors<RootFailures>> {
        Ok(Json(RootBody {
            message: "Download service is running. API documentation: /docs".into(),
        }))
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
    async fn check(&self, body: ValidatedJson<CheckRequest>) -> Result<Json<CheckBody>, Errors<CheckFailures>> {
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
        request: &poem::Request,
        body: ValidatedJson<StartRequest>,
        caller: OptionalTenant,
        /// Makes a retried request safe, as on `initiate`: the same key with the same body
        /// answers the first request's answer again instead of starting a second job.
        /// Anonymous callers' keys are scoped by their address.
        // Declared for the document (its pattern added by the contract); read from the raw
        // headers and checked by `checked_idempotency_key`.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        _idempotency_key: Header<Option<String>>,
    ) -> Result<StartResponse, Errors<StartFailures>> {
        let (user_id, capped, scope) = match caller.0 {
            Caller::Tenant(tenant) => (
                tenant.clone(),
                self.state.settings.max_active_jobs_per_tenant > 0,
                idempotency::tenant_scope(&tenant),
            ),
            Caller::Anonymous if self.state.settings.legacy_anonymous_start => (
                ANONYMOUS_USER.to_string(),
                false,
                idempotency::anonymous_scope(&crate::middleware::client_address_key(
                    request,
                    &self.state.settings.trusted_proxies,
                )),
            ),
            other => {
                let problem = other
                    .problem()
                    .unwrap_or_else(|| Problem::new(common::ErrorCode::Unauthenticated, "authentication is required"));
                return Err(ApiError::from_problem(problem).into());
            }
        };
        let key = super::checked_idempotency_key(request)?;
        let file_id = body.0.file_id;
        let estimated_seconds = self.state.estimated_job_seconds();
        let traceparent = telemetry::current_traceparent();
        let owner = user_id.clone();
        let accepting = tokio::time::Instant::now();
        // Only a request with a key is compared with an earlier one.
        let fingerprint = key
            .as_ref()
            .map(|_| idempotency::fingerprint(&file_id))
            .unwrap_or_default();
        let admitted = admission::admit(
            self.state.clone(),
            admission::Request {
                owner: user_id.clone(),
                scope,
                capped,
                operation: "start",
                key,
                fingerprint,
            },
            move |job_id| {
                JobRecord::queued(
                    job_id,
                    owner,
                    vec![file_id as u64],
                    None,
                    estimated_seconds,
                    traceparent,
                )
            },
            // Remembered until the wait below gives the final answer.
            move |record| accepted_answer(file_id, record),
        )
        .await?;
        let job_id = admitted.job_id;
        tracing::Span::current().record("job_id", job_id.to_string().as_str());
        if admitted.replayed {
            return Ok(self.replay(admitted.answer, job_id, &user_id).await?);
        }
        crate::metrics::accepted("legacy");
        let latest = self.wait_for_end(job_id, accepting).await;
        let processing_time_ms = latest.as_ref().map_or(0, |latest| {
            (chrono::Utc::now() - latest.created_at).num_milliseconds().max(0) as u64
        });
        let answer = match latest.as_ref().map(|latest| latest.status) {
            Some(JobStatus::Completed) => {
                let latest = latest.as_ref().expect("matched");
                Answer {
                    status: 200,
                    body: StartFinishedBody {
                        file_id,
                        status: StartStatus::Completed,
                        download_url: None,
                        size: latest.result_size,
                        processing_time_ms,
                        message: "Download ready".into(),
                    }
                    .to_json()
                    .unwrap_or_default(),
                }
            }
            Some(JobStatus::Failed | JobStatus::Cancelled) => {
                let latest = latest.as_ref().expect("matched");
                Answer {
                    status: 200,
                    body: StartFinishedBody {
                        file_id,
                        status: StartStatus::Failed,
                        download_url: None,
                        size: None,
                        processing_time_ms,
                        message: latest
                            .error
                            .clone()
                            .unwrap_or_else(|| format!("job {}", latest.status.as_str())),
                    }
                    .to_json()
                    .unwrap_or_default(),
                }
            }
            _ => match &latest {
                Some(latest) => accepted_answer(file_id, latest),
                None => admitted.answer.clone(),
            },
        };
        if let Some(mut guard) = admitted.guard {
            // In the background: the answer is due now, and the 202 is remembered already.
            let (state, final_answer) = (self.state.clone(), answer.clone());
            tokio::spawn(async move {
                let patience = state.store.patience();
                state.idempotency.remember(&mut guard, final_answer, patience).await;
            });
        }
        Ok(self.answer(answer, job_id, &user_id, None).await?)
    }
}

/// The 202 of a job still running, without its stream URL (minted for each answer).
fn accepted_answer(file_id: i64, record: &JobRecord) -> Answer {
    let job_id = record.job_id.to_string();
    Answer {
        status: 202,
        body: StartAcceptedBody {
            file_id,
            status_url: status_url(&job_id),
            job_id,
            status: ApiJobStatus::from(record.status),
            stream_url: String::new(),
            message: "Still preparing; follow streamUrl or poll statusUrl (with the same API key) instead of waiting"
                .into(),
        }
        .to_json()
        .unwrap_or_default(),
    }
}

impl LegacyApi {
    /// Waits for the job to end, at most `START_WAIT_MS` (less what accepting took, so the
    /// answer stays within the request timeout); the job's latest record (`None`: not watched).
    /// The job is accepted by now: if it cannot be watched, the answer is the job to poll (202),
    /// never an error that would hide a job that runs.
    async fn wait_for_end(&self, job_id: JobId, accepting: tokio::time::Instant) -> Option<JobRecord> {
        // The watch starts with the record's current value, so no outcome slips past.
        let mut watch = match self.state.store.kv().watch_with_history(job_id.to_string()).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(%job_id, %error, "accepted job not watched; answering with the job to poll");
                return None;
            }
        };
        let settings = &self.state.settings;
        let wait_left = settings
            .start_wait
            .min(settings.request_timeout.saturating_sub(Duration::from_secs(1)))
            .saturating_sub(accepting.elapsed());
        let wait = tokio::time::sleep(wait_left);
        tokio::pin!(wait);
        let mut latest = None;
        loop {
            tokio::select! {
                _ = &mut wait => return latest,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        if let Ok(record) = JobRecord::from_json_bytes(&entry.value) {
                            let ended = record.status.is_terminal();
                            latest = Some(record);
                            if ended {
                                return latest;
                            }
                        }
                    }
                    _ => return latest,
                },
            }
        }
    }

    /// A remembered answer again, with fresh URLs.
    async fn replay(&self, answer: Answer, job_id: JobId, user_id: &str) -> Result<StartResponse, ApiError> {
        self.answer(answer, job_id, user_id, Some(true)).await
    }

    /// The response of an answer: its stream URL or (completed) download URL minted now.
    async fn answer(
        &self,
        answer: Answer,
        job_id: JobId,
        user_id: &str,
        replayed: Option<bool>,
    ) -> Result<StartResponse, ApiError> {
        let job_id_text = job_id.to_string();
        if answer.status == 202 {
            let mut body: StartAcceptedBody = super::remembered(answer.body)?;
            body.stream_url = self.state.stream_url(&job_id_text, user_id);
            return Ok(StartResponse::Accepted(
                Json(body),
                status_url(&job_id_text),
                2,
                replayed,
            ));
        }
        let mut body: StartFinishedBody = super::remembered(answer.body)?;
        if body.status == StartStatus::Completed {
            let record = self
                .state
                .store
                .load(job_id)
                .await
                .map_err(|error| store_error("reading the job", error))?
                .ok_or_else(ApiError::job_not_found)?;
            body.download_url = Some(self.state.download_url(&record.record).await?);
        }
        Ok(StartResponse::Finished(Json(body), replayed))
    }

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
