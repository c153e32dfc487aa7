//! What an orchestrator probes on every service: liveness (`GET /livez`: the process answers)
//! and readiness (`GET /readyz`: started, connected to NATS, object storage answering where the
//! service uses it, and not draining after SIGTERM). A service that is alive but not ready is
//! taken out of rotation, not restarted; one that is not alive is restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::storage::Storage;

/// The liveness probe's path.
pub const LIVE_PATH: &str = "/livez";
/// The readiness probe's path.
pub const READY_PATH: &str = "/readyz";

/// The longest a readiness probe waits for object storage: under the probes' own 2 s timeout,
/// so a slow store answers 503 naming it, not a probe timeout.
const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// The service's readiness, shared by its probe endpoints and its lifecycle.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    storage: Option<Storage>,
    started: AtomicBool,
    draining: AtomicBool,
}

/// One readiness check's outcome, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether the service takes work.
    pub ready: bool,
    /// The checks by name: `ok`, or why not.
    pub checks: Vec<(&'static str, &'static str)>,
}

impl Readiness {
    /// A service on `nats` (and `storage`, if it uses object storage), not started yet.
    pub fn new(nats: async_nats::Client, storage: Option<Storage>) -> Self {
        Readiness {
            inner: Arc::new(Inner {
                nats,
                storage,
                started: AtomicBool::new(false),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Its resources are open: it takes work from now on.
    pub fn started(&self) {
        self.inner.started.store(true, Ordering::Relaxed);
    }

    /// It was told to stop: it takes no new work (and says so until it exits).
    pub fn draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Marks the service draining once `shutdown` fires.
    pub fn drain_on(&self, shutdown: tokio_util::sync::CancellationToken) {
        let readiness = self.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            readiness.draining();
        });
    }

    /// Checks every condition now.
    pub async fn check(&self) -> Report {
        let inner = &self.inner;
        let mut checks = vec![
            (
                "started",
                if inner.started.load(Ordering::Relaxed) {
                    "ok"
                } else {
                    "starting"
                },
            ),
            (
                "draining",
                if inner.draining.load(Ordering::Relaxed) {
                    "draining"
                } else {
                    "ok"
                },
            ),
            (
                "nats",
                match inner.nats.connection_state() {
                    async_nats::connection::State::Connected => "ok",
                    _ => "disconnected",
                },
            ),
        ];
        if let Some(storage) = &inner.storage {
            let answer = tokio::time::timeout(STORAGE_CHECK_TIMEOUT, storage.check_bucket()).await;
            checks.push((
                "storage",
                if matches!(answer, Ok(Ok(()))) {
                    "ok"
                } else {
                    "unavailable"
                },
            ));
        }
        Report {
            ready: checks.iter().all(|(_, state)| *state == "ok"),
            checks,
        }
    }
}

/// `GET /livez`: the process answers.
pub fn live() -> poem::Response {
    probe_answer(poem::http::StatusCode::OK, json!({ "status": "alive" }))
}

/// `GET /readyz`: 200 when ready, else 503 naming the checks that failed.
pub async fn ready(readiness: &Readiness) -> poem::Response {
    let report = readiness.check().await;
    let checks: serde_json::Map<String, serde_json::Value> = report
        .checks
        .iter()
        .map(|(name, state)| ((*name).to_string(), json!(state)))
        .collect();
    let (status, word) = if report.ready {
        (poem::http::StatusCode::OK, "ready")
    } else {
        (poem::http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    probe_answer(status, json!({ "status": word, "checks": checks }))
}

fn probe_answer(status: poem::http::StatusCode, body: serde_json::Value) -> poem::Response {
    poem::Response::builder()
        .status(status)
        .content_type("application/json")
        .header("Cache-Control", "no-store")
        .body(body.to_string())
}

/// `GET /livez`, as an endpoint.
pub fn live_endpoint() -> impl poem::Endpoint<Output = poem::Response> {
    poem::get(poem::endpoint::make_sync(|_| live()))
}

/// `GET /readyz` of `readiness`, as an endpoint.
pub fn ready_endpoint(readiness: Readiness) -> impl poem::Endpoint<Output = poem::Response> {
    poem::get(poem::endpoint::make(move |_| {
        let readiness = readiness.clone();
        async move { ready(&readiness).await }
    }))
}

/// `/livez` and `/readyz` as routes of a service's own HTTP app.
pub fn routes(readiness: Readiness) -> poem::Route {
    poem::Route::new()
        .at(LIVE_PATH, live_endpoint())
        .at(READY_PATH, ready_endpoint(readiness))
}
