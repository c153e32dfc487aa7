//! Job endpoints: initiate, status, result, cancel.

use std::sync::Arc;

use common::store::{Change, StoreError};
use common::validation::dedupe_file_ids;
use common::{ErrorCode, JobId, JobRecord, JobStatus, telemetry};
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, OpenApi};

use super::json::SerdeJson;
use super::types::{ApiJobStatus, CancelBody, InitiateBody, InitiateRequest, JobStatusBody};
use super::{ApiTags, status_url};
use crate::auth::Tenant;
use crate::body::ValidatedJson;
use crate::idempotency::{self, Answer};
use crate::problem::{ApiError, Errors, answers};
use crate::{State, admission};

/// Seconds a poller should wait between status reads.
const POLL_AFTER_SECONDS: u64 = 2;

/// Job endpoints.
pub struct JobsApi {
    /// Shared state.
    pub state: Arc<State>,
}

/// Answer of `POST /v1/download/initiate`.
#[derive(ApiResponse)]
pub enum InitiateResponse {
    /// Accepted: the job is queued. `Location` is its status URL. A request repeating an
    /// earlier one's `Idempotency-Key` gets that answer again, with `Idempotent-Replayed: true`.
    #[oai(status = 202)]
    Accepted(
        SerdeJson<InitiateBody>,
        #[oai(header = "Location")] String,
        #[oai(header = "Retry-After")] u64,
        #[oai(header = "Idempotent-Replayed")] Option<bool>,
    ),
}

/// Answer of `GET /v1/download/status/{jobId}`.
#[derive(ApiResponse)]
pub enum StatusResponse {
    /// The job's status; completed jobs carry a presigned `downloadUrl` (at least 95 % of its lifetime left). While the job
    /// is queued or processing, `Retry-After` says when to poll again (better: follow
    /// `streamUrl`).
    #[oai(status = 200)]
    Ok(
        SerdeJson<JobStatusBody>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
}

/// Answer of `GET /v1/download/{jobId}`.
#[derive(ApiResponse)]
pub enum ResultResponse {
    /// Completed: redirect to a presigned URL of the result (at least 95 % of its lifetime left).
    #[oai(status = 302)]
    Found(
        #[oai(header = "Location")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// Not completed: the status; while the job is queued or processing, `Retry-After` says
    /// when to ask again (a failed or cancelled job has no result to wait for).
    #[oai(status = 200)]
    Pending(
        SerdeJson<JobStatusBody>,
        #[oai(header = "Retry-After")] Option<u64>,
        #[oai(header = "Cache-Control")] String,
    ),
}

/// Answer of `DELETE /v1/download/{jobId}`.
#[derive(ApiResponse)]
pub enum CancelResponse {
    /// Cancelled now: a queued job never runs; a running one stops within a second.
    #[oai(status = 202)]
    Accepted(Json<CancelBody>),
    /// Was already cancelled.
    #[oai(status = 200)]
    AlreadyCancelled(Json<CancelBody>),
}

fn no_store() -> String {
    "no-store".to_string()
}

impl JobsApi {
    /// Reads a job, answering 404 for a missing one and for another tenant's.
    async fn owned_job(&self, user: &str, job_id: JobId) -> Result<JobRecord, ApiError> {
        Ok(self.owned_job_versioned(user, job_id).await?.0)
    }

    /// [`owned_job`](Self::owned_job) with the revision it was read at (`None`: a finished job
    /// from memory), for a change that starts from it.
    async fn owned_job_versioned(&self, user: &str, job_id: JobId) -> Result<(JobRecord, Option<u64>), ApiError> {
        let found = match self.state.finished.get(&job_id) {
            Some(finished) => Some((finished, None)),
            None => {
                let loaded = self
                    .state
                    .store
                    .load(job_id)
                    .await
                    .map_err(|error| store_error("reading the job", error))?;
                if let Some(finished) = loaded.as_ref().filter(|loaded| loaded.record.status.is_terminal()) {
                    let until = tokio::time::Instant::now() + crate::FINISHED_RECORD_REUSE;
                    self.state.finished.insert(job_id, finished.record.clone(), until);
                }
                loaded.map(|loaded| (loaded.record, Some(loaded.revision)))
            }
        };
        match found {
            Some((record, revision)) if record.user_id == user => {
                // A read of a job is a trace of its own, linked to the job's.
                let span = tracing::Span::current();
                span.record("job_id", job_id.to_string().as_str());
                telemetry::link_to_traceparent(&span, record.traceparent.as_deref());
                Ok((record, revision))
            }
            _ => Err(ApiError::job_not_found()),
        }
    }
}

/// Maps a store failure to the answer the client sees.
pub fn store_error(context: &str, error: StoreError) -> ApiError {
    match error {
        StoreError::Missing(_) | StoreError::Removed(_) => ApiError::job_not_found(),
        StoreError::Kv(_) | StoreError::Publish(_) | StoreError::OutcomeUnknown(_) => {
            ApiError::unavailable(ErrorCode::QueueUnavailable, "the job queue", &error)
        }
        other => ApiError::internal(context, &other),
    }
}

crate::failures!(
    /// The error answers of `initiate`.
    InitiateFailures: answers::INVALID_BODY, answers::UNAUTHENTICATED, answers::KEY_IN_FLIGHT, answers::TOO_LARGE,
    answers::KEY_REUSED, answers::RATE_OR_ACTIVE_LIMITED, answers::INTERNAL, answers::QUEUE_UNAVAILABLE,
);
crate::failures!(
    /// The error answers of a job's status and result.
    ReadFailures: answers::INVALID_JOB_ID, answers::UNAUTHENTICATED, answers::NO_SUCH_JOB, answers::RATE_LIMITED,
    answers::INTERNAL, answers::READ_UNAVAILABLE,
);
crate::failures!(
    /// The error answers of a job's result.
    ResultFailures: answers::INVALID_JOB_ID, answers::UNAUTHENTICATED, answers::NO_SUCH_JOB,
    (410, "`RESULT_EXPIRED`: the job completed, but its result is gone (bundles are kept `RESULT_RETENTION_DAYS`); start the job again."),
    answers::RATE_LIMITED, answers::INTERNAL,
    (503, "`QUEUE_UNAVAILABLE` (job records), `STORAGE_UNAVAILABLE` (checking the result), `PRESIGNER_UNAVAILABLE` or `REQUEST_TIMEOUT`; retry after `Retry-After` seconds."),
);
crate::failures!(
    /// The error answers of a cancel.
    CancelFailures: answers::INVALID_JOB_ID, answers::UNAUTHENTICATED, answers::NO_SUCH_JOB, answers::JOB_FINISHED,
    answers::RATE_LIMITED, answers::INTERNAL, answers::READ_UNAVAILABLE,
);

/// An initiate's 202 is remembered under its `Idempotency-Key` without its stream URL.
impl admission::Reply for InitiateBody {
    fn remembered(&self) -> Answer {
        Answer {
            status: 202,
            body: self.to_json().unwrap_or_default(),
        }
    }

    fn replayed(answer: Answer) -> Result<Self, ApiError> {
        super::remembered(answer.body)
    }
}

#[OpenApi(prefix_path = "/v1/download", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Start a download job
    ///
    /// Answers 202 at once with the job id; the job runs in the background. Poll `statusUrl`
    /// or follow `streamUrl`; when completed, `GET /v1/download/{jobId}` redirects to the file.
    #[oai(path = "/initiate", method = "post", operation_id = "initiateDownload")]
    async fn initiate(
        &self,
        http: &poem::Request,
        tenant: Tenant,
        body: ValidatedJson<InitiateRequest>,
        /// Makes a retried request safe: the same key with the same body within
        /// `IDEMPOTENCY_KEY_TTL_SECONDS` (default 24 h) answers the first request's job again
        /// (`Idempotent-Replayed: true`) instead of starting a second; with another body it is
        /// 422 `IDEMPOTENCY_KEY_REUSED`, while the first is still handled 409
        /// `IDEMPOTENCY_KEY_IN_FLIGHT`. Scoped per tenant; 1-255 printable ASCII characters.
        // Declared for the document (its pattern added by the contract); read from the raw
        // headers and checked by `checked_idempotency_key`.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        _idempotency_key: Header<Option<String>>,
    ) -> Result<InitiateResponse, Errors<InitiateFailures>> {
        let request = body.0;
        let key = super::checked_idempotency_key(http)?;
        // Only a request with a key is compared with an earlier one.
        let fingerprint = key
            .as_ref()
            .map(|_| idempotency::fingerprint(&(&request.file_ids, &request.callback_url)))
            .unwrap_or_default();
        let file_ids: Vec<u64> = dedupe_file_ids(&request.file_ids.iter().map(|id| *id as u64).collect::<Vec<_>>());
        let estimated_seconds = self.state.estimated_job_seconds();
        let traceparent = telemetry::current_traceparent();
        let owner = tenant.0.clone();
        let admitted = admission::admit(
            self.state.clone(),
            admission::Request {
                owner: tenant.0.clone(),
                scope: idempotency::tenant_scope(&tenant.0),
                capped: self.state.settings.max_active_jobs_per_tenant > 0,
                operation: "initiate",
                key,
                fingerprint,
            },
            move |job_id| {
                JobRecord::queued(
                    job_id,
                    owner,
                    file_ids,
                    request.callback_url,
                    estimated_seconds,
                    traceparent,
                )
            },
            move |record| {
                let job_id = record.job_id.to_string();
                InitiateBody {
                    status_url: status_url(&job_id),
                    job_id,
                    status: ApiJobStatus::Queued,
                    total_file_ids: record.file_ids.len() as u64,
                    estimated_time: estimated_seconds,
                    // Minted for each answer: never remembered.
                    stream_url: String::new(),
                }
            },
        )
        .await?;
        let mut body = admitted.answer;
        tracing::Span::current().record("job_id", body.job_id.as_str());
        body.stream_url = self.state.stream_url(&body.job_id, &tenant.0);
        if !admitted.replayed {
            crate::metrics::accepted("v1");
            tracing::info!(job_id = %body.job_id, files = body.total_file_ids, "job accepted");
        }
        let location = status_url(&body.job_id);
        Ok(InitiateResponse::Accepted(
            SerdeJson(body),
            location,
            POLL_AFTER_SECONDS,
            admitted.replayed.then_some(true),
        ))
    }

    /// Get a job's status
    ///
    /// Completed jobs carry a presigned `downloadUrl` with at least 95 % of its lifetime left
    /// (`PRESIGNED_URL_EXPIRY_SECONDS`): an intake hands the same URL out again for a twentieth
    /// of its lifetime, then presigns a new one. URLs are never stored.
    #[oai(path = "/status/:jobId", method = "get", operation_id = "getDownloadStatus")]
    async fn status(
        &self,
        tenant: Tenant,
        /// The job id returned by `initiate`.
        #[oai(name = "jobId")]
        job_id: Path<uuid::Uuid>,
    ) -> Result<StatusResponse, Errors<ReadFailures>> {
        let record = self.owned_job(&tenant.0, JobId(job_id.0)).await?;
        let download_url = match record.status {
            JobStatus::Completed => Some(self.state.download_url(&record).await?),
            _ => None,
        };
        Ok(StatusResponse::Ok(
            SerdeJson(JobStatusBody::from_record(
                &record,
                download_url,
                self.state.stream_url(&record.job_id.to_string(), &tenant.0),
            )),
            no_store(),
            (!record.status.is_terminal()).then_some(POLL_AFTER_SECONDS),
        ))
    }

    /// Download a job's result
    ///
    /// Redirects (302) to a presigned URL (at least 95 % of its lifetime left) once completed; before that, answers the status
    /// with `Retry-After`.
    #[oai(path = "/:jobId", method = "get", operation_id = "getDownloadResult")]
    async fn result(
        &self,
        tenant: Tenant,
        /// The job id returned by `initiate`.
        #[oai(name = "jobId")]
        job_id: Path<uuid::Uuid>,
    ) -> Result<ResultResponse, Errors<ResultFailures>> {
        let record = self.owned_job(&tenant.0, JobId(job_id.0)).await?;
        if record.status == JobStatus::Completed {
            // A result past its retention (or removed) is said to be gone, not presigned into a
            // URL that answers 404: one HEAD, as the download that follows reads it anyway.
            if let Some(key) = record.result_key.as_deref() {
                let size = self
                    .state
                    .storage
                    .object_size(key)
                    .await
                    .map_err(|error| ApiError::unavailable(ErrorCode::StorageUnavailable, "storage", &error))?;
                if size.is_none() {
                    return Err(ApiError::new(
                        ErrorCode::ResultExpired,
                        format!(
                            "the job's result is gone (results are kept {} day(s)); start the job again",
                            self.state.settings.s3.result_retention_days
                        ),
                    )
                    .into());
                }
            }
            let url = self.state.download_url(&record).await?;
            return Ok(ResultResponse::Found(url, no_store()));
        }
        Ok(ResultResponse::Pending(
            SerdeJson(JobStatusBody::from_record(
                &record,
                None,
                self.state.stream_url(&record.job_id.to_string(), &tenant.0),
            )),
            (!record.status.is_terminal()).then_some(POLL_AFTER_SECONDS),
            no_store(),
        ))
    }

    /// Cancel a job
    ///
    /// A queued job never runs; a processing job is stopped within a second and its partial
    /// upload aborted. Cancelling a completed or failed job is 409.
    #[oai(path = "/:jobId", method = "delete", operation_id = "cancelDownload")]
    async fn cancel(
        &self,
        tenant: Tenant,
        /// The job id returned by `initiate`.
        #[oai(name = "jobId")]
        job_id: Path<uuid::Uuid>,
    ) -> Result<CancelResponse, Errors<CancelFailures>> {
        let (record, revision) = self.owned_job_versioned(&tenant.0, JobId(job_id.0)).await?;
        // The change starts from the record as just read (a queued job's from its message), so
        // it is written without reading it again, unless another writer got there first.
        let known = revision.map(|revision| common::store::Versioned {
            record: record.clone(),
            revision,
        });
        let change = self
            .state
            .cancel_job(record.job_id, known, record.traceparent.as_deref())
            .await
            .map_err(|error| store_error("cancelling the job", error))?;
        let body = CancelBody {
            job_id: record.job_id.to_string(),
            status: ApiJobStatus::Cancelled,
        };
        match change {
            Change::Written(_) => {
                tracing::info!(job_id = %record.job_id, "job cancelled");
                Ok(CancelResponse::Accepted(Json(body)))
            }
            Change::Unchanged(current) if current.status == JobStatus::Cancelled => {
                // A cancel answered 503 after its record was written left its event to whoever
                // comes next: this retry publishes it (dropped as a duplicate if it was stored).
                if let Err(error) = self.state.store.publish_current(&current).await {
                    tracing::warn!(job_id = %record.job_id, error = %error, "cancelled event not re-published");
                }
                Ok(CancelResponse::AlreadyCancelled(Json(body)))
            }
            Change::Unchanged(current) => Err(ApiError::new(
                ErrorCode::JobFinished,
                format!("the job already {}; it cannot be cancelled", current.status.as_str()),
            )
            .into()),
        }
    }
}
