//! An SSE follower as `EventSource` behaves: it opens the job's `streamUrl` (its token is the
//! credential; a page cannot send headers) through nginx and, when the stream is cut or ends
//! early, reconnects to it with `Last-Event-ID` until it has seen the terminal event; a token
//! refused (expired) is replaced by the `streamUrl` of a fresh status, as a page would. It keeps
//! every event with the time it arrived and every connection with its span, so the checks can
//! tell a frozen feed from a dead one.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::load::{Load, is_terminal, status};
use crate::sse::{SseItem, SseReader};

/// One event as the follower got it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `id:` (the job's event number).
    pub seq: u64,
    /// `event:` (`progress`, `completed`, ...).
    pub kind: String,
    /// `status` of its data.
    pub status: String,
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// Which connection (index into [`FollowLog::connections`]).
    pub connection: usize,
}

/// One connection to the stream.
#[derive(Debug, Clone)]
pub struct Connection {
    /// When it was opened (request sent).
    pub opened: DateTime<Utc>,
    /// When it ended.
    pub closed: DateTime<Utc>,
    /// The answer's status (0: no answer).
    pub status: u16,
    /// `Last-Event-ID` sent.
    pub last_event_id: Option<u64>,
    /// How it ended.
    pub end: String,
}

/// Everything a follower saw.
#[derive(Debug, Clone, Default)]
pub struct FollowLog {
    /// Events in arrival order.
    pub events: Vec<Seen>,
    /// Connections in order.
    pub connections: Vec<Connection>,
    /// Whether it saw a terminal event.
    pub saw_terminal: bool,
    /// A 204 (the server says the terminal event was seen) before it was.
    pub premature_no_content: bool,
    /// Heartbeats received.
    pub heartbeats: usize,
}

impl FollowLog {
    /// Connections that answered 200 and were then cut before the terminal event.
    pub fn reconnects(&self) -> usize {
        self.connections.len().saturating_sub(1)
    }
}

/// Follows the job, starting from the `streamUrl` its initiate answered (`None`: read one from
/// its status as `user`), until its terminal event, a 204, or the load stops.
pub async fn follow(load: &Load, job_id: &str, user: &str, stream_url: Option<String>) -> FollowLog {
    let mut log = FollowLog::default();
    // Silence longer than three heartbeats means the connection is dead.
    let silence = load.heartbeat * 3 + Duration::from_secs(2);
    let client = reqwest::Client::new();
    let mut stream_url = stream_url;
    while !load.stop.is_cancelled() && !log.saw_terminal {
        let Some(url) = stream_url.clone() else {
            stream_url = fresh_stream_url(load, job_id, user).await;
            if stream_url.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = load.stop.cancelled() => {}
                }
            }
            continue;
        };
        let last_event_id = log.events.last().map(|seen| seen.seq);
        let opened = Utc::now();
        let mut request = client.get(format!("{}{url}", load.base_url));
        if let Some(seq) = last_event_id {
            request = request.header("Last-Event-ID", seq.to_string());
        }
        let connection = log.connections.len();
        log.connections.push(Connection {
            opened,
            closed: opened,
            status: 0,
            last_event_id,
            end: String::new(),
        });
        let (status, end, pause) = tokio::select! {
            outcome = async {
                match tokio::time::timeout(Duration::from_secs(20), request.send()).await {
                    Err(_) => (0, "no answer within 20 s".to_string(), Duration::from_secs(1)),
                    Ok(Err(error)) => (0, format!("request failed: {error}"), Duration::from_secs(1)),
                    Ok(Ok(response)) => {
                        let status = response.status().as_u16();
                        log.connections[connection].status = status;
                        match status {
                            200 => {
                                let end = read(response, &mut log, connection, silence).await;
                                (status, end, Duration::from_millis(200))
                            }
                            204 => {
                                log.premature_no_content = !log.saw_terminal;
                                (status, "204 no content".to_string(), Duration::ZERO)
                            }
                            _ => {
                                let wait = response
                                    .headers()
                                    .get("Retry-After")
                                    .and_then(|value| value.to_str().ok())
                                    .and_then(|value| value.parse().ok())
                                    .map(Duration::from_secs)
                                    .unwrap_or(Duration::from_secs(1));
                                (status, format!("answered {status}"), wait.min(Duration::from_secs(5)))
                            }
                        }
                    }
                }
            } => outcome,
            _ = load.stop.cancelled() => {
                (log.connections[connection].status, "stopped by the harness".to_string(), Duration::ZERO)
            }
        };
        let record = &mut log.connections[connection];
        record.closed = Utc::now();
        record.status = status;
        record.end = end;
        if status == 204 {
            break;
        }
        if status == 401 {
            // The token expired: the page reads the status again for a fresh streamUrl.
            stream_url = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = load.stop.cancelled() => {}
        }
    }
    log
}

/// The `streamUrl` of the job's status, with a fresh token; `None` when the status cannot be read.
async fn fresh_stream_url(load: &Load, job_id: &str, user: &str) -> Option<String> {
    let body = status(load, job_id, user).await.ok()?;
    body["streamUrl"].as_str().map(str::to_string)
}

/// Reads one connection until the terminal event, its end, or silence; returns how it ended.
async fn read(response: reqwest::Response, log: &mut FollowLog, connection: usize, silence: Duration) -> String {
    let mut reader = SseReader::new(response);
    loop {
        match reader.next(silence).await {
            Err(error) => return format!("cut: {error}"),
            Ok(None) => {
                return if log.saw_terminal {
                    "ended after the terminal event".into()
                } else {
                    "ended before the terminal event".into()
                };
            }
            Ok(Some(SseItem::Comment)) => log.heartbeats += 1,
            Ok(Some(SseItem::Retry(_))) => {}
            Ok(Some(SseItem::Event { id, event, data })) => {
                let data: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                let seq = id
                    .as_deref()
                    .and_then(|id| id.parse().ok())
                    .or_else(|| data["seq"].as_u64())
                    .unwrap_or(0);
                let status = data["status"].as_str().unwrap_or_default().to_string();
                let terminal = is_terminal(&status);
                log.events.push(Seen {
                    seq,
                    kind: event.unwrap_or_default(),
                    status,
                    at: Utc::now(),
                    connection,
                });
                if terminal {
                    log.saw_terminal = true;
                    return "terminal event".into();
                }
            }
        }
    }
}
