//! The notifier: pushes job progress to browsers and other clients over Server-Sent Events.
//!
//! `GET /v1/download/{jobId}/stream` answers `text/event-stream` with events `progress`,
//! `completed` (with a presigned `downloadUrl`, at least 95 % of its lifetime left), `failed` and `cancelled`. Every event's
//! `id:` is the job's event number: a client reconnecting with `Last-Event-ID` gets every event it
//! missed, then live ones, without gap or duplicate. Comment heartbeats keep idle proxies from
//! cutting quiet streams; the stream ends after a terminal event.

pub mod front;
pub mod hub;
pub mod limits;
pub mod metrics;
mod stream;
pub mod webhooks;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::config::{ConfigError, Env, NatsSettings};
use common::store::JobStore;
use poem::{EndpointExt, get};
use tokio_util::sync::CancellationToken;

/// Notifier configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST` and `PORT` (default 127.0.0.1:3001).
    pub listen: SocketAddr,
    /// NATS connection.
    pub nats: NatsSettings,
    /// `SSE_HEARTBEAT_SECONDS`: comment heartbeat interval (default 15).
    pub heartbeat: Duration,
    /// `SSE_RETRY_MS`: reconnection delay suggested to clients (default 3000).
    pub retry: Duration,
    /// `SSE_MAX_STREAMS_PER_USER`: open streams per user across all instances (default 20).
    pub max_streams_per_user: usize,
    /// `SSE_STREAM_LEASE_SECONDS`: how long a stream's slot outlives a crashed instance
    /// (default 30; renewed every third of it while the stream is open).
    pub stream_lease: Duration,
    /// `SSE_CLIENT_BUFFER`: events buffered per stream before a slow client is disconnected
    /// (default 64).
    pub client_buffer: usize,
    /// `PRESIGN_TIMEOUT_MS`: how long to wait for the presigner (default 2000).
    pub presign_timeout: Duration,
    /// Webhook delivery.
    pub webhooks: webhooks::WebhookSettings,
    /// Identity: `AUTH_MODE`, `AUTH_GATEWAY_HEADER`, `STREAM_TOKEN_SECRET`.
    pub auth: common::config::AuthSettings,
}

impl Settings {
    /// Reads and validates the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let host: IpAddr = env.parse("HOST", IpAddr::from([127, 0, 0, 1]))?;
        let port: u16 = env.parse("PORT", 3001)?;
        let settings = Settings {
            listen: SocketAddr::new(host, port),
            nats: NatsSettings::from_env(env)?,
            heartbeat: env.seconds("SSE_HEARTBEAT_SECONDS", 15)?,
            retry: env.millis("SSE_RETRY_MS", 3000)?,
            max_streams_per_user: env.parse("SSE_MAX_STREAMS_PER_USER", 20)?,
            stream_lease: env.seconds("SSE_STREAM_LEASE_SECONDS", 30)?,
            client_buffer: env.parse("SSE_CLIENT_BUFFER", 64)?,
            presign_timeout: env.millis("PRESIGN_TIMEOUT_MS", 2000)?,
            webhooks: webhooks::WebhookSettings::from_env(env)?,
            auth: common::config::AuthSettings::from_env(env)?,
        };
        env.require(
            !settings.heartbeat.is_zero(),
            "SSE_HEARTBEAT_SECONDS",
            "must be at least 1",
        )?;
        env.require(
            settings.max_streams_per_user > 0,
            "SSE_MAX_STREAMS_PER_USER",
            "must be at least 1",
        )?;
        env.require(
            settings.stream_lease >= Duration::from_secs(3),
            "SSE_STREAM_LEASE_SECONDS",
            "must be at least 3",
        )?;
        env.require(
            (1..=10_000).contains(&settings.client_buffer),
            "SSE_CLIENT_BUFFER",
            "must be between 1 and 10000",
        )?;
        Ok(settings)
    }
}

/// The JetStream resources notifiers own (besides the webhook consumers, made from the webhook
/// settings): events they follow, webhook replays, dead letters, stream leases, and the
/// identity buckets they read.
pub const NATS_RESOURCES: &[common::nats::Resource] = &[
    common::nats::Resource::EventsStream,
    common::nats::Resource::WebhookReplaysStream,
    common::nats::Resource::DeadLettersBucket,
    common::nats::Resource::StreamLeasesBucket,
    common::nats::Resource::ApiKeysBucket,
    common::nats::Resource::TenantsBucket,
];

/// Creates or updates the notifiers' JetStream resources and webhook consumers from these
/// settings (`notifier provision`, run by a NATS user allowed to, before notifiers with
/// `NATS_PROVISION=false`).
pub async fn provision(settings: &Settings) -> anyhow::Result<()> {
    let nats = common::nats::connect(&settings.nats, "download-notifier-provision").await?;
    let handles =
        common::nats::provision(&nats, &common::nats::Topology::streams(&settings.nats), NATS_RESOURCES).await?;
    webhooks::provision_consumers(&handles.jetstream, &settings.webhooks.topology()).await?;
    nats.flush().await?;
    Ok(())
}

/// What every stream shares.
pub struct State {
    /// Settings.
    pub settings: Settings,
    /// What `/readyz` answers (the notifier uses no object storage).
    pub readiness: common::readiness::Readiness,
    /// Job records and event history.
    pub store: JobStore,
    /// NATS.
    pub nats: async_nats::Client,
    /// Presigned URLs of results (shared with webhook deliveries).
    pub presigner: Arc<common::presign::Presigner>,
    /// Open streams by job.
    pub hub: Arc<hub::Hub>,
    /// Open streams by user.
    pub limits: Arc<limits::StreamLimits>,
    /// API keys, held in memory and kept current.
    pub keys: common::identity::KeyDirectory,
    /// Verifies the stream tokens of `streamUrl`.
    pub tokens: common::identity::token::TokenSigner,
    /// Turns of the stream requests being answered ([`stream::OPENING_AT_ONCE`]).
    pub opening: tokio::sync::Semaphore,
}

/// The HTTP application.
pub fn app(state: Arc<State>) -> impl poem::Endpoint<Output = poem::Response> {
    let turns = state.clone();
    common::readiness::routes(state.readiness.clone())
        .at("/v1/download/:job_id/stream", get(stream::stream))
        .at("/health", get(stream::health))
        .at("/metrics", get(common::metrics::endpoint))
        .data(state)
        .around(observe)
        .around(move |endpoint, request| stream::in_turn(turns.clone(), endpoint, request))
        .map_to_response()
}

/// The notifier's route templates, for span names and metric labels.
const ROUTES: &[&str] = &[
    "/health",
    "/livez",
    "/readyz",
    "/metrics",
    "/v1/download/{jobId}/stream",
];

/// Each request in an HTTP server span, counted by route template and status; for a stream,
/// until its response head.
async fn observe<E: poem::Endpoint>(endpoint: Arc<E>, request: poem::Request) -> poem::Result<poem::Response> {
    Ok(common::metrics::observe_http(endpoint.as_ref(), request, ROUTES, None, framework_problem).await)
}

/// An error of the framework (an unknown route, a wrong method) as a problem, like every other
/// answer; every notifier route is GET only.
fn framework_problem(error: poem::Error) -> poem::Response {
    use poem::http::StatusCode;
    let status = error.status();
    let mut response = common::wire::Problem::of_framework_error(status, error.to_string()).into_response();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(poem::http::header::ALLOW, poem::http::HeaderValue::from_static("GET"));
    }
    response
}

/// How long open streams may run on after shutdown before they are closed (their clients resume
/// elsewhere with `Last-Event-ID`).
const STREAMS_GRACE: Duration = Duration::from_secs(1);

/// A built notifier: connected, following events, bound to its port.
pub struct Application {
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    background: tokio_util::task::TaskTracker,
    background_stop: CancellationToken,
}

impl Application {
    /// Connects, provisions, starts following events and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        metrics::init();
        let nats = common::nats::connect(&settings.nats, "download-notifier").await?;
        let handles = common::nats::prepare(
            &nats,
            &settings.nats,
            &common::nats::Topology::streams(&settings.nats),
            NATS_RESOURCES,
        )
        .await?;
        let keys = common::identity::directory::Directory::<common::identity::ApiKeyRecord>::new(
            common::nats::bucket(&handles.jetstream, common::names::API_KEYS_BUCKET).await?,
        );
        let tenants = common::identity::directory::Directory::<common::identity::TenantRecord>::new(
            common::nats::bucket(&handles.jetstream, common::names::TENANTS_BUCKET).await?,
        );
        let store = JobStore::new(handles.jetstream.clone(), handles.jobs).with_patience(settings.nats.patience);
        let hub = hub::Hub::new(settings.client_buffer);
        let background = tokio_util::task::TaskTracker::new();
        let background_stop = CancellationToken::new();
        let (ready, ready_receiver) = tokio::sync::oneshot::channel();
        background.spawn(hub::follow(
            handles.jetstream.clone(),
            hub.clone(),
            ready,
            background_stop.clone(),
        ));
        let limits = limits::StreamLimits::new(
            common::nats::bucket(&handles.jetstream, common::names::STREAM_LEASES_BUCKET).await?,
            settings.max_streams_per_user,
            settings.stream_lease,
        );
        background.spawn(limits.clone().renew_forever(background_stop.clone()));
        background.spawn(keys.clone().follow(background_stop.clone()));
        background.spawn(tenants.clone().follow(background_stop.clone()));
        tokio::time::timeout(common::nats::PROVISION_WINDOW, ready_receiver)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "could not follow job events within {:?}",
                    common::nats::PROVISION_WINDOW
                )
            })??;
        // The webhook consumers exist from the first notifier's start, so no event waits for a
        // consumer that does not exist yet.
        let topology = settings.webhooks.topology();
        let jetstream = handles.jetstream.clone();
        if settings.nats.provision {
            webhooks::provision_consumers(&jetstream, &topology).await?;
        } else {
            webhooks::wait_for_consumers(&jetstream).await?;
        }
        let dead_letters = common::nats::bucket(&jetstream, common::names::WEBHOOK_DEAD_LETTERS_BUCKET).await?;
        let presigner = Arc::new(common::presign::Presigner::new(nats.clone(), settings.presign_timeout));
        let deliverer = webhooks::Deliverer::new(
            settings.webhooks.clone(),
            store.clone(),
            presigner.clone(),
            dead_letters,
            tenants,
            matches!(settings.auth.mode, common::config::AuthMode::Gateway { .. }),
        )?;
        background.spawn(webhooks::run(
            deliverer.clone(),
            jetstream.clone(),
            common::names::EVENTS_STREAM,
            common::names::WEBHOOK_CONSUMER,
            background_stop.clone(),
        ));
        background.spawn(metrics::refresh_webhook_backlog(
            jetstream.clone(),
            vec![
                (common::names::EVENTS_STREAM, common::names::WEBHOOK_CONSUMER),
                (
                    common::names::WEBHOOK_REPLAYS_STREAM,
                    common::names::WEBHOOK_REPLAY_CONSUMER,
                ),
            ],
            background_stop.clone(),
        ));
        background.spawn(webhooks::run(
            deliverer,
            jetstream,
            common::names::WEBHOOK_REPLAYS_STREAM,
            common::names::WEBHOOK_REPLAY_CONSUMER,
            background_stop.clone(),
        ));
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        let local_addr = listener.local_addr()?;
        let tokens = settings.auth.token_signer();
        // Following events and delivering webhooks: ready from now on, until told to stop.
        let readiness = common::readiness::Readiness::new(nats.clone(), None);
        readiness.started();
        let state = Arc::new(State {
            readiness,
            keys: common::identity::KeyDirectory::new(keys),
            tokens,
            limits,
            settings,
            store,
            nats,
            presigner,
            hub,
            opening: tokio::sync::Semaphore::new(stream::OPENING_AT_ONCE),
        });
        Ok(Application {
            state,
            listener,
            local_addr,
            background,
            background_stop,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`. Open streams are closed at shutdown; clients resume elsewhere
    /// with `Last-Event-ID`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.state.readiness.drain_on(shutdown.clone());
        tracing::info!(address = %self.local_addr, "notifier listening");
        // Streams are served by the front; every other request by poem's server, both with the
        // same application.
        let (front, acceptor) = front::Front::new(self.listener, app(self.state.clone()))?;
        let front = tokio::spawn(front.run(shutdown.clone(), STREAMS_GRACE));
        common::net::http_server(acceptor)
            .run_with_graceful_shutdown(app(self.state.clone()), shutdown.cancelled_owned(), Some(STREAMS_GRACE))
            .await?;
        front.await?;
        self.background_stop.cancel();
        self.background.close();
        self.background.wait().await;
        self.state.nats.drain().await.ok();
        tracing::info!("notifier stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_never_print_webhook_token_or_nats_secrets() {
        let webhook_secret = "whsec_c2VjcmV0LWtleS1mb3Itd2ViaG9va3M=";
        let token_secret = "stream-token-secret-0123456789abcdef";
        let env = Env::from_pairs([
            ("WEBHOOK_SECRETS", webhook_secret),
            ("STREAM_TOKEN_SECRET", token_secret),
            ("NATS_USER", "notifier"),
            ("NATS_PASSWORD", "nats-password-hunter2"),
        ]);
        let shown = format!("{:?}", Settings::from_env(&env).unwrap());
        for secret in [webhook_secret, token_secret, "hunter2"] {
            assert!(!shown.contains(secret), "{secret} printed in {shown}");
        }
    }
}
