//! The webhook receiver of the chaos run: on one loopback port for the whole run, it can be
//! taken down (connections refused) and brought back, and made to answer an error status for a
//! while. Every delivery is kept as it arrived, with the status it got; its signature is checked
//! after the run ([`check_signatures`]), against the secrets of its job's owner, once the owner
//! of every job is known.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::listener::{Listener, TcpListener};
use poem::{EndpointExt, Request, Response, Route, handler, http::StatusCode, post, web::Data};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::receiver::Delivery;

/// `Retry-After` sent with 429 answers, in seconds.
const RETRY_AFTER_SECONDS: &str = "2";

/// One delivery attempt as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: serde_json::Value,
    /// The delivery as it arrived (headers and raw body).
    pub delivery: Delivery,
    /// The signature check with the secrets of the job's owner, as of its arrival: `None` when
    /// valid, else why not. Set by [`check_signatures`].
    pub signature_error: Option<String>,
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// The status it was answered with.
    pub answered: u16,
}

struct State {
    /// The status answered now (200 normally).
    answer: AtomicU16,
    received: Mutex<Vec<Received>>,
}

#[handler]
async fn hook(request: &Request, body: Vec<u8>, Data(state): Data<&Arc<State>>) -> Response {
    let delivery = Delivery::from_request(request, body);
    let answer = state.answer.load(Ordering::SeqCst);
    let received = Received {
        id: delivery.id.clone(),
        body: serde_json::from_slice(&delivery.body).unwrap_or(serde_json::Value::Null),
        signature_error: Some("not checked".into()),
        delivery,
        at: Utc::now(),
        answered: answer,
    };
    state.received.lock().expect("receiver lock").push(received);
    let mut response = Response::builder().status(StatusCode::from_u16(answer).expect("valid status"));
    if answer == 429 {
        response = response.header("Retry-After", RETRY_AFTER_SECONDS);
    }
    response.finish()
}

/// Checks every delivery's signature as its receiver would have on its arrival, holding the
/// secrets `secrets_of` gives for its job (the job id that starts its `webhook-id`): those of
/// the job's owner. A job without a known owner fails the check.
pub fn check_signatures(received: &mut [Received], secrets_of: impl Fn(&str) -> Option<Vec<String>>) {
    for delivery in received {
        let secrets = delivery.id.get(..36).and_then(&secrets_of);
        delivery.signature_error = match secrets {
            None => Some("no owner known for the job, so no secret to check with".into()),
            Some(secrets) => delivery
                .delivery
                .verify_at(&secrets, delivery.at.timestamp())
                .err()
                .map(|error| error.to_string()),
        };
    }
}

/// The receiver; stops when dropped.
pub struct HookReceiver {
    port: u16,
    state: Arc<State>,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl HookReceiver {
    /// Starts on a free loopback port, answering 200.
    pub async fn start() -> anyhow::Result<Self> {
        let mut receiver = HookReceiver {
            port: crate::servers::free_port(),
            state: Arc::new(State {
                answer: AtomicU16::new(200),
                received: Mutex::new(Vec::new()),
            }),
            running: None,
        };
        receiver.up().await?;
        Ok(receiver)
    }

    /// The URL to give as `callbackUrl`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answers `status` to every delivery from now on (200: normal again).
    pub fn answer(&self, status: u16) {
        self.state.answer.store(status, Ordering::SeqCst);
    }

    /// Closes the port: deliveries are refused until [`Self::up`].
    pub async fn down(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let acceptor = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .into_acceptor()
            .await?;
        let stop = CancellationToken::new();
        let app = Route::new().at("/hook", post(hook)).data(self.state.clone());
        let server_stop = stop.clone();
        let task = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, server_stop.cancelled_owned(), Some(Duration::from_millis(500)))
                .await;
        });
        self.running = Some((stop, task));
        Ok(())
    }

    /// Every delivery so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("receiver lock").clone()
    }

    /// A shared view of the deliveries, for waiting without holding the receiver.
    pub fn view(&self) -> HookView {
        HookView {
            state: self.state.clone(),
        }
    }
}

/// Read access to the deliveries.
#[derive(Clone)]
pub struct HookView {
    state: Arc<State>,
}

impl HookView {
    /// Every delivery so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("receiver lock").clone()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.running.take() {
            stop.cancel();
        }
    }
}
