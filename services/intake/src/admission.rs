//! Admission of a new job, in the order that costs least when refusing: the `Idempotency-Key`
//! claim (a replay creates nothing), the backlog (a value in memory), the tenant's active-job
//! slot (a compare-and-set), then accepting the job (its message, which holds its record). A
//! refusal undoes what came before it: the slot is freed and the key released, so nothing is left
//! behind.
//!
//! It runs on a task of its own, so neither a client going away nor the request timeout can stop
//! it half-way: a job accepted is remembered under its key even if nobody hears the answer, and
//! the client's retry gets it.

use std::sync::Arc;

use common::kv_cas::CasError;
use common::retry::Patience;
use common::store::StoreError;
use common::{ErrorCode, JobId, JobRecord};
use poem_openapi::payload::Json;
use tokio::time::Instant;
use tracing::Instrument;

use crate::State;
use crate::idempotency::{Answer, Begun, Guard, IdempotencyError};
use crate::problem::{ApiError, Problem};

/// Who asks for a job, and under which key.
pub struct Request {
    /// The job's owner.
    pub owner: String,
    /// Whether the owner's active jobs are capped (tenants are; anonymous legacy callers have
    /// no tenant to count against).
    pub capped: bool,
    /// Whose keys these are: the tenant, or an anonymous caller's address.
    pub scope: String,
    /// `initiate` or `start`: keys are scoped per operation too.
    pub operation: &'static str,
    /// The request's `Idempotency-Key`.
    pub key: Option<String>,
    /// The request's fingerprint.
    pub fingerprint: String,
}

/// An answer to an admitted job, as its route builds it: remembered under the request's
/// `Idempotency-Key` as JSON, and made again from that JSON on a replay. A request without a key
/// keeps it as it was built (no JSON made and read back).
pub trait Reply: Sized + Send + 'static {
    /// The answer as a key remembers it.
    fn remembered(&self) -> Answer;
    /// A remembered answer as this type.
    fn replayed(answer: Answer) -> Result<Self, ApiError>;
}

impl Reply for Answer {
    fn remembered(&self) -> Answer {
        self.clone()
    }

    fn replayed(answer: Answer) -> Result<Self, ApiError> {
        Ok(answer)
    }
}

/// A job admitted, or a request answered before.
#[derive(Debug)]
pub struct Admitted<A> {
    /// The job.
    pub job_id: JobId,
    /// The answer (remembered under the key, if any).
    pub answer: A,
    /// Whether the answer was given before (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// The claim, for a request whose answer may still change (the legacy `/start`).
    pub guard: Option<Guard>,
}

/// Admits a job whose record (as accepted) `build` makes from its id, answering with
/// `answer_of` its record; on a task of its own.
pub async fn admit<A: Reply>(
    state: Arc<State>,
    request: Request,
    build: impl FnOnce(JobId) -> JobRecord + Send + 'static,
    answer_of: impl FnOnce(&JobRecord) -> A + Send + 'static,
) -> Result<Admitted<A>, ApiError> {
    let admitting = async move {
        // Everything fits the request's accept budget, so the client hears the outcome: the
        // claim and the slot may ride out an election until three quarters of it, accepting
        // has the rest (an election that stalled the checks has usually ended for the job
        // stream too: a killed node's streams elect together).
        let budget = state.settings.accept_budget();
        let deadline = Instant::now() + budget;
        let checks = deadline - budget / 4;
        let mut job_id = JobId::new();
        let mut guard = None;
        if let Some(key) = &request.key {
            let begun = within(
                checks,
                state.idempotency.begin(
                    &request.scope,
                    request.operation,
                    key,
                    &request.fingerprint,
                    job_id,
                    Patience::until(checks),
                ),
            )
            .await
            .map_err(idempotency_problem)?;
            match begun {
                Begun::Replay { job_id, answer } => {
                    crate::metrics::replayed();
                    return Ok(Admitted {
                        job_id,
                        answer: A::replayed(answer)?,
                        replayed: true,
                        guard: None,
                    });
                }
                Begun::Fresh(mut claimed) => {
                    if claimed.resumed {
                        // The request that claimed the key died: was its job accepted? Its
                        // message may also still land (a publish in flight when it died): a
                        // job not found is fenced off first, so that only the job made now
                        // runs, unless a processor claimed it meanwhile (then it is the job).
                        let dead = claimed.job_id();
                        let found = within(checks, async {
                            let unavailable =
                                |error: StoreError| IdempotencyError::Unavailable(common::kv_cas::cause_chain(&error));
                            let found = state.store.load_once(dead).await.map_err(unavailable)?;
                            if found.is_some() || state.store.fence_off(dead, checks).await.map_err(unavailable)? {
                                return Ok(found);
                            }
                            state.store.load_once(dead).await.map_err(unavailable)
                        })
                        .await
                        .map_err(idempotency_problem)?;
                        if let Some(found) = found {
                            let answer = answer_of(&found.record);
                            let remembering = state.idempotency.remember(
                                &mut claimed,
                                answer.remembered(),
                                Patience::until(deadline),
                            );
                            let _ = tokio::time::timeout_at(deadline, remembering).await;
                            return Ok(Admitted {
                                job_id: found.record.job_id,
                                answer,
                                replayed: true,
                                guard: Some(claimed),
                            });
                        }
                        // Not accepted, and fenced off: the job is made now, under a new id
                        // (the dead request's id is refused for good).
                        within(
                            checks,
                            state.idempotency.rebind(&mut claimed, job_id, Patience::until(checks)),
                        )
                        .await
                        .map_err(idempotency_problem)?;
                    }
                    job_id = claimed.job_id();
                    guard = Some(claimed);
                }
            }
        }
        let record = build(job_id);
        if let Err(refused) = create(&state, &request, &record, checks, deadline).await {
            if let (Some(guard), true) = (guard, refused.nothing_left) {
                // Before the answer, so the client's retry finds the key free (one round trip,
                // within the budget; otherwise the claim is taken over once abandoned).
                let release = state.idempotency.release(guard, Patience::until(deadline));
                let _ = tokio::time::timeout_at(deadline, release).await;
            }
            return Err(refused.error);
        }
        let answer = answer_of(&record);
        if let Some(guard) = guard.as_mut() {
            // Within the budget, so the client hears the 202; should the cluster not take it by
            // then, the claim is later taken over and the answer rebuilt from the job.
            let remembering = state
                .idempotency
                .remember(guard, answer.remembered(), Patience::until(deadline));
            if tokio::time::timeout_at(deadline, remembering).await.is_err() {
                tracing::warn!(%job_id, "idempotent answer not remembered in time; a retry rebuilds it from the job");
            }
        }
        Ok(Admitted {
            job_id,
            answer,
            replayed: false,
            guard,
        })
    };
    // Boxed: the task then holds a pointer, not the whole state machine, which would otherwise
    // be copied on its way into the task and again as the task's stage changes.
    match tokio::spawn(Box::pin(admitting.instrument(tracing::Span::current()))).await {
        Ok(admitted) => admitted,
        Err(panicked) => Err(ApiError::internal("admitting a job", &panicked)),
    }
}

/// `call`, or `Unavailable` when `deadline` passes first.
async fn within<T>(
    deadline: Instant,
    call: impl Future<Output = Result<T, IdempotencyError>>,
) -> Result<T, IdempotencyError> {
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| Err(IdempotencyError::Unavailable("no answer in time".into())))
}

/// A refused job.
struct Refused {
    /// The answer.
    error: ApiError,
    /// Whether the refusal certainly left no job (else the job may run: its key and slot stay
    /// held, for the claim's takeover and the slot's lease to settle).
    nothing_left: bool,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Refused {
            error,
            nothing_left: true,
        }
    }
}

/// Backlog, slot (until `checks`), then the job itself (by `deadline`); frees the slot when the
/// job is certainly refused.
async fn create(
    state: &Arc<State>,
    request: &Request,
    record: &JobRecord,
    checks: Instant,
    deadline: Instant,
) -> Result<(), Refused> {
    if let Err(retry_after) = state.backlog.admit() {
        crate::metrics::refused("queue_full");
        return Err(queue_full(retry_after).into());
    }
    if request.capped {
        let slot = tokio::time::timeout_at(
            checks,
            state.active_jobs.acquire(
                &request.owner,
                record.job_id,
                state.estimated_job_seconds(),
                Patience::until(checks),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(CasError::Unavailable("no answer in time".into())))
        .map_err(|error| {
            // The slot may have been written although its answer was lost: free it, harmless
            // if it is not there.
            free_slot_in_background(state, &request.owner, record.job_id);
            ApiError::unavailable(ErrorCode::QueueUnavailable, "the job limits", &error)
        })?;
        if let Err(refusal) = slot {
            crate::metrics::refused("too_many_active_jobs");
            let problem = Problem::new(
                ErrorCode::TooManyActiveJobs,
                format!(
                    "{} jobs are queued or processing, the most allowed at once; retry after {} s",
                    refusal.max, refusal.retry_after_seconds
                ),
            );
            return Err(ApiError::TooManyRequests(Json(problem), refusal.retry_after_seconds).into());
        }
    }
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_ACCEPT_BUDGET);
    let accepted = state.store.accept(record, budget).await;
    let error = match accepted {
        Ok(sequence) => {
            state.backlog.accepted(sequence);
            return Ok(());
        }
        Err(error) => error,
    };
    let nothing_left = !matches!(error, StoreError::OutcomeUnknown(_));
    if request.capped && nothing_left {
        free_slot_in_background(state, &request.owner, record.job_id);
    }
    let error = match error {
        StoreError::QueueFull => {
            crate::metrics::refused("queue_full");
            queue_full(state.backlog.retry_after_when_full())
        }
        other => crate::api::jobs::store_error("accepting the job", other),
    };
    Err(Refused { error, nothing_left })
}

/// Frees the slot a refused job may hold, in the background: the refusal is answered at once.
fn free_slot_in_background(state: &Arc<State>, owner: &str, job_id: JobId) {
    let (state, owner) = (state.clone(), owner.to_string());
    tokio::spawn(async move {
        if let Err(error) = state.active_jobs.release(&owner, job_id).await {
            tracing::warn!(%job_id, %error, "refused job's slot not freed; it lapses with its lease");
        }
    });
}

/// The least time accepting is given, however long the checks took.
const MIN_ACCEPT_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);

/// 503 `QUEUE_FULL`.
fn queue_full(retry_after: u64) -> ApiError {
    let problem = Problem::new(
        ErrorCode::QueueFull,
        format!("the job queue is full; retry after {retry_after} s"),
    );
    ApiError::Unavailable(Json(problem), retry_after)
}

/// `Retry-After` of a 409 `IDEMPOTENCY_KEY_IN_FLIGHT`.
const IN_FLIGHT_RETRY_AFTER_SECONDS: u64 = 1;

/// The answer to a key that cannot be used now.
fn idempotency_problem(error: IdempotencyError) -> ApiError {
    match error {
        IdempotencyError::Reused => {
            crate::metrics::refused("idempotency_key_reused");
            ApiError::from_problem(
                Problem::new(ErrorCode::IdempotencyKeyReused, error.to_string()).with_field(crate::idempotency::HEADER),
            )
        }
        IdempotencyError::InFlight => {
            crate::metrics::refused("idempotency_key_in_flight");
            ApiError::Conflict(
                Json(Problem::new(ErrorCode::IdempotencyKeyInFlight, error.to_string())),
                Some(IN_FLIGHT_RETRY_AFTER_SECONDS),
            )
        }
        IdempotencyError::Unavailable(_) => {
            ApiError::unavailable(ErrorCode::QueueUnavailable, "idempotency keys", &error)
        }
    }
}
