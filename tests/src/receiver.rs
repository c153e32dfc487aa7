//! A local webhook receiver on a loopback port: answers with a scripted sequence of statuses and
//! hands every delivery (headers and body) to the test through a channel.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Request, Response, Route, handler, http::StatusCode, post, web::Data};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// `traceparent` (empty when absent).
    pub traceparent: String,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Delivery {
    /// A delivery as a receiver sees it: the Standard Webhooks headers (empty when absent) and
    /// the body.
    pub fn from_request(request: &Request, body: Vec<u8>) -> Self {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        Delivery {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            traceparent: header("traceparent"),
            body,
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }

    /// Verifies the signature as a receiver holding `secrets` would, now (a tenant's secrets
    /// come from `Stack::webhook_secrets`).
    pub fn verify<Secret: AsRef<str>>(&self, secrets: &[Secret]) -> Result<(), common::webhook::VerifyError> {
        self.verify_at(secrets, chrono::Utc::now().timestamp())
    }

    /// Verifies the signature as a receiver holding `secrets` would have at `now` (unix
    /// seconds): for a delivery checked after it arrived.
    pub fn verify_at<Secret: AsRef<str>>(
        &self,
        secrets: &[Secret],
        now: i64,
    ) -> Result<(), common::webhook::VerifyError> {
        let secrets: Vec<&str> = secrets.iter().map(AsRef::as_ref).collect();
        common::webhook::verify(&secrets, &self.id, &self.timestamp, &self.signature, &self.body, now)
    }
}

struct Script {
    statuses: Mutex<VecDeque<u16>>,
    last: u16,
    deliveries: mpsc::UnboundedSender<Delivery>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// Where it listens.
    pub address: SocketAddr,
    /// Deliveries in arrival order.
    pub deliveries: mpsc::UnboundedReceiver<Delivery>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[handler]
async fn hook(request: &Request, body: Vec<u8>, Data(script): Data<&Arc<Script>>) -> Response {
    let _ = script.deliveries.send(Delivery::from_request(request, body));
    let status = script
        .statuses
        .lock()
        .expect("script lock")
        .pop_front()
        .unwrap_or(script.last);
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .finish()
}

impl Receiver {
    /// Starts on `port` (0: any free port), answering `statuses` in turn, then the last of them.
    pub async fn start(port: u16, statuses: &[u16]) -> anyhow::Result<Self> {
        let (sender, deliveries) = mpsc::unbounded_channel();
        let script = Arc::new(Script {
            statuses: Mutex::new(statuses.iter().copied().collect()),
            last: *statuses.last().unwrap_or(&200),
            deliveries: sender,
        });
        let acceptor = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .into_acceptor()
            .await?;
        let address = *acceptor.local_addr()[0].as_socket_addr().expect("a socket address");
        let stop = CancellationToken::new();
        let app = Route::new().at("/hook", post(hook)).data(script);
        let server_stop = stop.clone();
        tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, server_stop.cancelled_owned(), None)
                .await;
        });
        Ok(Receiver {
            address,
            deliveries,
            stop,
        })
    }

    /// The URL to give as `callbackUrl`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }
}
