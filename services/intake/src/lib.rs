//! The intake: accepts download jobs over HTTP and answers 202 at once; serves status, results
//! (fresh presigned URLs) and cancellation; keeps the old service's endpoints working.
//! Generated OpenAPI document at `/openapi.json` and `/openapi.yaml`, Swagger UI at `/docs`.

// Problems and response enums are built once per request on the way out; boxing them would add
// allocations and noise for no measurable gain.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

pub mod active_jobs;
pub mod admission;
pub mod api;
pub mod auth;
pub mod backlog;
pub mod body;
pub mod contract;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod page;
pub mod problem;
pub mod rate_limit;
pub mod settings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::storage::Storage;
use common::store::JobStore;
use common::{ErrorCode, JobRecord, names};
use futures::StreamExt;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::middleware::Cors;
use poem::{EndpointExt, IntoEndpoint, Route, get};
use poem_openapi::OpenApiService;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use settings::Settings;

use crate::problem::ApiError;

/// What every request handler shares.
pub struct State {
    /// Settings.
    pub settings: Settings,
    /// What `/readyz` answers.
    pub readiness: common::readiness::Readiness,
    /// Job records and the work queue.
    pub store: JobStore,
    /// Object storage (health and `/check`).
    pub storage: Storage,
    /// NATS.
    pub nats: async_nats::Client,
    /// Presigned URLs of results, each handed out while it keeps 95 % of its lifetime.
    pub presigner: common::presign::Presigner,
    /// Records of finished jobs, which never change again, kept for [`FINISHED_RECORD_REUSE`]:
    /// a client polling a finished job reads it from memory.
    pub finished: common::expiring::ExpiringMap<common::JobId, JobRecord>,
    /// Per-client request budgets, shared by every intake (`None`: `RATE_LIMIT_MAX_REQUESTS=0`).
    pub rate_limiter: Option<Arc<rate_limit::RateLimiter>>,
    /// The budget of API-key lookups per client address (keys not in memory cost a read of the
    /// key bucket): the request budget, or its default when rate limiting is off.
    pub lookup_limiter: Arc<rate_limit::RateLimiter>,
    /// `Idempotency-Key` claims and answers.
    pub idempotency: idempotency::Idempotency,
    /// Active jobs per tenant, shared by every intake.
    pub active_jobs: Arc<active_jobs::ActiveJobs>,
    /// The job backlog, read in the background.
    pub backlog: Arc<backlog::Backlog>,
    /// Mean duration of recent jobs in ms as published by processors (0 = unknown).
    pub recent_job_ms: AtomicU64,
    /// API keys, held in memory and kept current.
    pub keys: common::identity::KeyDirectory,
    /// Issues the stream tokens of `streamUrl`.
    pub tokens: common::identity::token::TokenSigner,
}

impl State {
    /// Expected duration of a new job in whole seconds: recent jobs' mean when known, else the
    /// configured delay's mean plus a second of work.
    pub fn estimated_job_seconds(&self) -> u64 {
        match self.recent_job_ms.load(Ordering::Relaxed) {
            0 => self.settings.delay.mean().as_secs() + 1,
            milliseconds => milliseconds.div_ceil(1000),
        }
    }

    /// The job's SSE stream URL (relative to the API's base URL), carrying a token that opens
    /// this job's stream for `tenant` until `STREAM_TOKEN_TTL_SECONDS` from now.
    pub fn stream_url(&self, job_id: &str, tenant: &str) -> String {
        let expires_at = chrono::Utc::now().timestamp() + self.settings.auth.stream_token_ttl.as_secs() as i64;
        let token = self.tokens.issue(tenant, job_id, expires_at);
        api::stream_url_with_token(job_id, &token)
    }

    /// Cancels a job unless it ended, on a task of its own: once its record says cancelled, its
    /// event is published even if the client goes away or the request times out.
    ///
    /// The change is tried first on `known`, the record as the request read it (a queued job's
    /// from its message, so the cancellation creates the record without reading it again).
    ///
    /// The change and its event belong to the job's trace (`job_trace`, the record's
    /// `traceparent`), linked to the cancelling request's.
    pub async fn cancel_job(
        &self,
        job_id: common::JobId,
        known: Option<common::store::Versioned>,
        job_trace: Option<&str>,
    ) -> Result<common::store::Change, common::store::StoreError> {
        let store = self.store.clone();
        let span = common::telemetry::span::job_step("cancel job", &job_id.to_string());
        common::telemetry::set_parent_from_traceparent(&span, job_trace);
        common::telemetry::link_to_current(&span);
        to_the_end(async move {
            store
                .update_from(job_id, known, |current| {
                    if current.status.is_terminal() {
                        return false;
                    }
                    current.cancel();
                    true
                })
                .instrument(span)
                .await
        })
        .await
    }

    /// A presigned URL of a completed job's result (at least 95 % of its lifetime left).
    pub async fn download_url(&self, record: &JobRecord) -> Result<String, ApiError> {
        self.presigner.result_url(record).await.map_err(|error| match error {
            common::presign::PresignError::NoResult(_) => ApiError::internal("presigning a completed job", &error),
            other => ApiError::unavailable(ErrorCode::PresignerUnavailable, "the presigner", &other),
        })
    }
}

/// Runs a store change on a task of its own, continuing the request's span (so its messages
/// carry the trace): neither a client going away nor the request timeout can stop it half-way.
async fn to_the_end<T: Send + 'static>(
    change: impl Future<Output = Result<T, common::store::StoreError>> + Send + 'static,
) -> Result<T, common::store::StoreError> {
    match tokio::spawn(change.instrument(tracing::Span::current())).await {
        Ok(outcome) => outcome,
        Err(panicked) => Err(common::store::StoreError::Kv(Box::new(panicked))),
    }
}

/// The OpenAPI service of the intake, with the given server URL.
pub fn openapi(
    state: Arc<State>,
    server_url: &str,
) -> OpenApiService<
    (api::jobs::JobsApi, api::stream::StreamApi, api::legacy::LegacyApi),
    &'static dyn api::webhooks::DownloadWebhooks,
> {
    OpenApiService::new(
        (
            api::jobs::JobsApi { state: state.clone() },
            api::stream::StreamApi,
            api::legacy::LegacyApi { state },
        ),
        "Download service",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Asynchronous downloads: `POST /v1/download/initiate` answers 202 at once; poll the status or \
         follow the SSE stream; fetch the result through a short-lived presigned URL. Errors are RFC 9457 \
         `application/problem+json` with a stable `code`.",
    )
    .server(server_url)
    .webhooks::<&dyn api::webhooks::DownloadWebhooks>()
}

/// An endpoint answering `body` as `content_type` (each answer shares the one copy).
fn served(body: bytes::Bytes, content_type: &'static str) -> impl poem::Endpoint<Output = poem::Response> {
    poem::endpoint::make_sync(move |_| poem::Response::builder().content_type(content_type).body(body.clone()))
}

/// Swagger UI's page, made on its first request and kept: it embeds Swagger UI's whole script
/// (about 1.3 MB), which an intake nobody browses never holds in memory.
fn swagger_ui_page(state: Arc<State>, json: bytes::Bytes) -> impl poem::Endpoint<Output = poem::Response> {
    let page = Arc::new(std::sync::OnceLock::<bytes::Bytes>::new());
    poem::endpoint::make_sync(move |_| {
        let body = page.get_or_init(|| {
            let published = std::str::from_utf8(&json).expect("the document is UTF-8");
            contract::swagger_ui(&openapi(state.clone(), "/"), published).into()
        });
        poem::Response::builder()
            .content_type("text/html; charset=utf-8")
            .body(body.clone())
    })
}

/// The whole HTTP application: API, spec, docs and middleware.
pub fn app(state: Arc<State>) -> impl poem::Endpoint<Output = poem::Response> {
    let service = openapi(state.clone(), "/");
    let published = contract::publish(&service);
    let json = bytes::Bytes::from(published.json);
    let docs = Arc::new(swagger_ui_page(state.clone(), json.clone()));
    let methods = Arc::new(published.methods);
    let any_origin = state.settings.cors_origins.iter().any(|origin| origin == "*");
    let mut cors = Cors::new()
        .allow_methods(["GET", "POST", "DELETE", "OPTIONS"])
        .allow_headers([
            "Content-Type",
            "Authorization",
            "X-Request-ID",
            "traceparent",
            "Last-Event-ID",
            idempotency::HEADER,
        ])
        .expose_headers([
            "Location",
            "Retry-After",
            "X-Request-ID",
            "RateLimit",
            "RateLimit-Policy",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            idempotency::REPLAYED_HEADER,
        ]);
    if !state.settings.cors_origins.iter().any(|origin| origin == "*") {
        cors = cors.allow_origins(state.settings.cors_origins.clone());
    }
    let rate_state = state.clone();
    let bound_state = state.clone();
    let auth_state = state.clone();
    Route::new()
        .nest("/", service)
        .at("/openapi.json", get(served(json, "application/json")))
        .at("/openapi.yaml", get(served(published.yaml.into(), "application/yaml")))
        .at("/docs", get(docs.clone()))
        .at("/docs/", get(docs))
        .at("/app", get(page::index))
        .at("/app/", get(page::index))
        .at("/app/app.js", get(page::script))
        .at("/app/app.css", get(page::style))
        .at("/metrics", get(common::metrics::endpoint))
        .at(common::readiness::LIVE_PATH, common::readiness::live_endpoint())
        .at(
            common::readiness::READY_PATH,
            common::readiness::ready_endpoint(state.readiness.clone()),
        )
        .around(move |endpoint, request| middleware::bound_request(endpoint, request, bound_state.clone()))
        .around(move |endpoint, request| middleware::rate_limit(endpoint, request, rate_state.clone()))
        .around(move |endpoint, request| auth::authenticate(endpoint, request, auth_state.clone()))
        .with(cors)
        .around(move |endpoint, request| middleware::route_headers(endpoint, request, methods.clone(), any_origin))
        .around(middleware::request_context)
        .into_endpoint()
        .map_to_response()
}

/// The JetStream resources the intake owns: it queues jobs, writes records, publishes
/// cancellations, reads API keys, and keeps the shared limits and idempotency keys; the
/// consumers are the processors' and the notifiers'.
pub const NATS_RESOURCES: &[common::nats::Resource] = &[
    common::nats::Resource::JobsStream,
    common::nats::Resource::EventsStream,
    common::nats::Resource::ApiKeysBucket,
    common::nats::Resource::IdempotencyBucket,
    common::nats::Resource::LimitsBucket,
    common::nats::Resource::RateLimitsBucket,
];

/// The definitions of the intake's resources under its settings.
fn topology(settings: &Settings) -> common::nats::Topology {
    common::nats::Topology {
        idempotency_ttl: settings.idempotency_ttl,
        ..common::nats::Topology::streams(&settings.nats)
    }
}

/// Creates or updates the intake's JetStream resources (`intake provision`, run by a NATS user
/// allowed to, before intakes that run with `NATS_PROVISION=false`).
pub async fn provision(settings: &Settings) -> anyhow::Result<()> {
    let nats = common::nats::connect(&settings.nats, "download-intake-provision").await?;
    common::nats::provision(&nats, &topology(settings), NATS_RESOURCES).await?;
    nats.flush().await?;
    Ok(())
}

/// How long a finished job's record is read from memory. A finished record never changes; it only
/// expires with the bucket's age (24 h), so a read can be this much late to see it gone.
pub const FINISHED_RECORD_REUSE: Duration = Duration::from_secs(10);

/// How many finished records an intake keeps (about 1 KB each).
const FINISHED_RECORDS: usize = 4096;

/// The wait for one request to the limits' buckets (claims, slots, rate budgets).
const LIMITS_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A built intake: connected, provisioned, bound to its port.
pub struct Application {
    state: Arc<State>,
    acceptor: poem::listener::TcpAcceptor,
    local_addr: SocketAddr,
    keys: Arc<common::identity::directory::Directory<common::identity::ApiKeyRecord>>,
}

impl Application {
    /// Connects to NATS, provisions JetStream, binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        metrics::init();
        let storage = Storage::new(&settings.s3)?;
        let nats = common::nats::connect(&settings.nats, "download-intake").await?;
        let handles = common::nats::prepare(&nats, &settings.nats, &topology(&settings), NATS_RESOURCES).await?;
        let keys = common::identity::directory::Directory::new(
            common::nats::bucket(&handles.jetstream, names::API_KEYS_BUCKET).await?,
        );
        // The limits' buckets answer a request within milliseconds or, during their stream's
        // leader election, never: a short timeout resends sooner than the connection's 10 s, so
        // a request that lost one write to an election (and those queued behind it for the same
        // key) still fits its budget. Their changes are idempotent, so a write that timed out
        // but was stored is harmless when done again.
        let mut quick = handles.jetstream.clone();
        quick.set_timeout(LIMITS_REQUEST_TIMEOUT);
        let limits = common::nats::bucket(&quick, names::LIMITS_BUCKET).await?;
        let rate_limits = common::nats::bucket(&quick, names::RATE_LIMITS_BUCKET).await?;
        let idempotency = idempotency::Idempotency::new(
            common::nats::bucket(&quick, names::IDEMPOTENCY_BUCKET).await?,
            settings.idempotency_ttl,
            settings.idempotency_stale_after(),
        );
        let store = JobStore::new(handles.jetstream, handles.jobs).with_patience(settings.nats.patience);
        let active_jobs = active_jobs::ActiveJobs::new(
            limits.clone(),
            store.clone(),
            settings.max_active_jobs_per_tenant,
            settings.active_job_lease,
        );
        let policy = rate_limit::Policy {
            limit: settings.rate_limit_max_requests,
            window: settings.rate_limit_window,
        };
        let rate_limiter = (policy.limit > 0).then(|| rate_limit::RateLimiter::new(rate_limits.clone(), policy));
        let lookup_limiter = match &rate_limiter {
            Some(rate_limiter) => rate_limiter.clone(),
            None => rate_limit::RateLimiter::new(rate_limits, rate_limit::Policy::default()),
        };
        let acceptor = TcpListener::bind(settings.listen).into_acceptor().await?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|address| address.as_socket_addr().copied())
            .ok_or_else(|| anyhow::anyhow!("listener has no socket address"))?;
        let tokens = settings.auth.token_signer();
        let settings_presign_timeout = settings.presign_timeout;
        // Its resources are open: ready from now on, until told to stop.
        let readiness = common::readiness::Readiness::new(nats.clone(), Some(storage.clone()));
        readiness.started();
        let state = Arc::new(State {
            readiness,
            keys: common::identity::KeyDirectory::new(keys.clone()),
            tokens,
            rate_limiter,
            lookup_limiter,
            idempotency,
            active_jobs,
            backlog: Arc::new(backlog::Backlog::new(settings.queue_max_backlog)),
            settings,
            store,
            storage,
            presigner: common::presign::Presigner::new(nats.clone(), settings_presign_timeout),
            finished: common::expiring::ExpiringMap::new(FINISHED_RECORDS),
            nats,
            recent_job_ms: AtomicU64::new(0),
        });
        Ok(Application {
            state,
            acceptor,
            local_addr,
            keys,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`, then finishes in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let watcher = tokio::spawn(follow_job_duration(self.state.clone(), shutdown.clone()));
        let key_follower = tokio::spawn(self.keys.clone().follow(shutdown.clone()));
        // With no cap (`MAX_ACTIVE_JOBS_PER_TENANT=0`) no slot is taken, so none is freed.
        let ended_jobs = (self.state.settings.max_active_jobs_per_tenant > 0).then(|| {
            tokio::spawn(
                self.state
                    .active_jobs
                    .clone()
                    .follow_ended_jobs(self.state.nats.clone(), shutdown.clone()),
            )
        });
        let backlog = {
            let (backlog, jetstream) = (self.state.backlog.clone(), self.state.store.jetstream().clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move { backlog.follow(jetstream, shutdown).await })
        };
        self.state.readiness.drain_on(shutdown.clone());
        tracing::info!(address = %self.local_addr, "intake listening");
        let grace = self.state.settings.request_timeout;
        common::net::http_server(self.acceptor)
            .run_with_graceful_shutdown(app(self.state.clone()), shutdown.cancelled_owned(), Some(grace))
            .await?;
        watcher.abort();
        key_follower.abort();
        if let Some(ended_jobs) = ended_jobs {
            ended_jobs.abort();
        }
        backlog.abort();
        self.state.nats.drain().await.ok();
        tracing::info!("intake stopped");
        Ok(())
    }
}

/// Keeps `recent_job_ms` current from the processors' published mean.
async fn follow_job_duration(state: Arc<State>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match state.store.kv().watch_with_history(names::JOB_DURATION_STATS_KEY).await {
            Ok(mut watch) => loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    entry = watch.next() => entry,
                };
                match entry {
                    Some(Ok(entry)) => {
                        let parsed = std::str::from_utf8(&entry.value)
                            .ok()
                            .and_then(|text| text.trim().parse::<u64>().ok());
                        if let Some(milliseconds) = parsed {
                            state.recent_job_ms.store(milliseconds.max(1), Ordering::Relaxed);
                        }
                    }
                    _ => break,
                }
            },
            Err(error) => tracing::warn!(%error, "cannot watch job duration stats"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
