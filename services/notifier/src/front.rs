//! The notifier's listener: serves event streams on lean connections, hands everything else to
//! poem's HTTP server.
//!
//! An open stream spends nearly all of its life waiting. Served by hyper, each one held a 16 KiB
//! read buffer and an 8 KiB write buffer (two thirds of its ~31 KiB), for a connection that reads
//! nothing after its request head and writes an event now and then. So the front reads each
//! connection's request head itself into a small buffer it then frees. A `GET` of a stream route
//! (HTTP/1.1, no body) is answered by the same poem application as any other request (the same
//! checks, problems, metrics and spans), and its response is written straight to the socket:
//! the head, then each event as one chunk. Anything else (another route or method, HTTP/1.0, a
//! request with a body, a head that does not parse or is too large, a connection kept alive
//! after its stream ended, the preface of cleartext HTTP/2) is handed, with the bytes read so
//! far, to poem's server, which answers as it always did (over HTTP/2, every stream of the
//! connection, at about the same memory per stream).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use poem::http::{Method, StatusCode, Version, header};
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest request head the front reads; a larger one goes to the HTTP server, which refuses
/// it as it would have.
const MAX_HEAD: usize = 8 * 1024;
/// How much of a head is read at a time (most stream requests fit).
const HEAD_CHUNK: usize = 1024;
/// Headers the front parses; a request with more goes to the HTTP server.
const MAX_HEADERS: usize = 48;
/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one write may wait for a client that reads nothing: a stream whose client stopped
/// reading is closed then (it resumes with `Last-Event-ID`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes a client may send while its stream is open (a pipelined request, kept for the HTTP
/// server); beyond this it is disconnected.
const MAX_PIPELINED: usize = 8 * 1024;
/// Connections waiting for the HTTP server to take them.
const HANDOFF_QUEUE: usize = 1024;

/// Whether a request's path is an event stream's (`/v1/download/{jobId}/stream`, any query).
pub(crate) fn is_stream_path(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    path.strip_prefix("/v1/download/")
        .and_then(|rest| rest.strip_suffix("/stream"))
        .is_some_and(|job| !job.is_empty() && !job.contains('/'))
}

/// A connection handed to the HTTP server with what the front already read from it.
pub struct Handoff {
    io: Rewound,
    local: SocketAddr,
    remote: SocketAddr,
}

/// Connections for poem's server, as the front hands them over.
pub struct HandoffAcceptor {
    local: SocketAddr,
    receiver: mpsc::Receiver<Handoff>,
}

impl Acceptor for HandoffAcceptor {
    type Io = Rewound;

    fn local_addr(&self) -> Vec<LocalAddr> {
        vec![LocalAddr(Addr::SocketAddr(self.local))]
    }

    async fn accept(&mut self) -> io::Result<(Rewound, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        match self.receiver.recv().await {
            Some(handoff) => Ok((
                handoff.io,
                LocalAddr(Addr::SocketAddr(handoff.local)),
                RemoteAddr(Addr::SocketAddr(handoff.remote)),
                poem::http::uri::Scheme::HTTP,
            )),
            // The front stopped: the server stops on its own shutdown signal.
            None => std::future::pending().await,
        }
    }
}

/// A socket whose first bytes were already read: they are read again first.
pub struct Rewound {
    read: BytesMut,
    socket: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let length = self.read.len().min(buffer.remaining());
            buffer.put_slice(&self.read[..length]);
            self.read.advance(length);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(context, buffer)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(context, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

/// The front: accepts connections until `shutdown`, serving streams with `app` and handing the
/// rest to the acceptor it returns. Streams it serves end `grace` after `shutdown`.
pub struct Front<E> {
    listener: TcpListener,
    local: SocketAddr,
    app: Arc<E>,
    handoff: mpsc::Sender<Handoff>,
}

impl<E: Endpoint<Output = poem::Response> + 'static> Front<E> {
    /// A front on `listener` serving streams with `app`, and the acceptor of poem's server.
    pub fn new(listener: TcpListener, app: E) -> io::Result<(Self, HandoffAcceptor)> {
        let (handoff, receiver) = mpsc::channel(HANDOFF_QUEUE);
        let local = listener.local_addr()?;
        Ok((
            Front {
                listener,
                local,
                app: Arc::new(app),
                handoff,
            },
            HandoffAcceptor { local, receiver },
        ))
    }

    /// Accepts until `shutdown`; then gives its streams `grace` to end before closing them, and
    /// returns once they are closed.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let connections = TaskTracker::new();
        let closing = CancellationToken::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((socket, remote)) => {
                    let connection = Connection {
                        app: self.app.clone(),
                        handoff: self.handoff.clone(),
                        local: self.local,
                        remote,
                        closing: closing.clone(),
                    };
                    connections.spawn(connection.serve(socket));
                }
                Err(error) => {
                    // Out of descriptors or a connection reset before it was accepted: the
                    // listener stays; a short pause keeps a persistent error from spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        connections.close();
        if tokio::time::timeout(grace, connections.wait()).await.is_err() {
            closing.cancel();
            connections.wait().await;
        }
    }
}

/// What a connection needs besides its socket.
struct Connection<E> {
    app: Arc<E>,
    handoff: mpsc::Sender<Handoff>,
    local: SocketAddr,
    remote: SocketAddr,
    closing: CancellationToken,
}

/// What the front makes of a request head.
enum Head {
    /// A stream request, as poem's request, and whether to keep the connection after it.
    Stream(Box<poem::Request>, bool),
    /// For the HTTP server.
    Other,
}

/// Parses a complete head: a stream request, something for the HTTP server, or `None` when more
/// bytes are needed.
fn parse_head(bytes: &[u8]) -> Option<(Head, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let length = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some((Head::Other, 0)),
    };
    let (Some("GET"), Some(target), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Some((Head::Other, length));
    };
    if !is_stream_path(target) {
        return Some((Head::Other, length));
    }
    // httparse lets through bytes a URI may not hold (`<`, `"`, non-ASCII): those go to the HTTP
    // server, which refuses them as it always did.
    let Ok(uri) = poem::http::Uri::try_from(target) else {
        return Some((Head::Other, length));
    };
    let mut keep_alive = true;
    let mut builder = poem::Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_11)
        .uri(uri);
    for header in parsed.headers.iter() {
        let name = header.name;
        // A body, an upgrade or an expectation: the HTTP server knows what to do with them.
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Some((Head::Other, length));
        }
        if name.eq_ignore_ascii_case("connection")
            && header
                .value
                .split(|byte| *byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
        let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_bytes(header.value),
        ) else {
            return Some((Head::Other, length));
        };
        builder = builder.header(name, value);
    }
    Some((Head::Stream(Box::new(builder.finish()), keep_alive), length))
}

/// Reads into `read` until it holds a complete request head: what it is and its length, or
/// `None` when the connection closed, broke or sent no head within [`HEAD_TIMEOUT`].
async fn read_head(socket: &mut TcpStream, read: &mut BytesMut) -> Option<(Head, usize)> {
    let reading = async {
        loop {
            if let Some(head) = parse_head(read) {
                return Some(head);
            }
            if read.len() >= MAX_HEAD {
                return Some((Head::Other, 0));
            }
            read.reserve(HEAD_CHUNK);
            match socket.read_buf(read).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, reading).await.ok().flatten()
}

/// A response's status line and headers, with `date` and, when the connection closes after it,
/// `connection: close`; the framing header and the blank line are the caller's.
fn response_head(parts: &poem::ResponseParts, keep_alive: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(
        chrono::Utc::now()
            .format("date: %a, %d %b %Y %H:%M:%S GMT\r\n")
            .to_string()
            .as_bytes(),
    );
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head
}

impl<E: Endpoint<Output = poem::Response> + 'static> Connection<E> {
    /// Serves the connection's stream requests, one after the other while it is kept alive, and
    /// hands it to the HTTP server at its first other request. Every step gives way to shutdown.
    async fn serve(self, mut socket: TcpStream) {
        let closing = self.closing.clone();
        let handoff = tokio::select! {
            _ = closing.cancelled() => return,
            handoff = self.requests(&mut socket) => handoff,
        };
        if let Some(read) = handoff {
            tokio::select! {
                _ = closing.cancelled() => {}
                _ = self.hand_over(socket, read) => {}
            }
        }
    }

    /// Answers stream requests until one is not (its bytes, for the HTTP server) or the
    /// connection ends (`None`).
    async fn requests(&self, socket: &mut TcpStream) -> Option<BytesMut> {
        // Each step but the stream itself is boxed while it runs: a connection then keeps, for
        // the life of its stream, only what writing the stream needs.
        let mut read = BytesMut::new();
        loop {
            let (head, length) = Box::pin(read_head(socket, &mut read)).await?;
            let Head::Stream(request, keep_alive) = head else {
                return Some(read);
            };
            // Only what follows the head is kept (a pipelined request), in a buffer of its size.
            let pipelined = BytesMut::from(&read[length..]);
            drop(std::mem::take(&mut read));
            let response = Box::pin(self.app.get_response(*request)).await;
            read = self.respond(socket, response, keep_alive, pipelined).await?;
        }
    }

    /// Gives the connection to the HTTP server.
    async fn hand_over(&self, socket: TcpStream, read: BytesMut) {
        let handoff = Handoff {
            io: Rewound { read, socket },
            local: self.local,
            remote: self.remote,
        };
        // The server only stops taking connections at shutdown: the connection closes then.
        let _ = self.handoff.send(handoff).await;
    }

    /// Writes `response`; an event stream as chunks while it lasts. Returns the bytes the client
    /// sent meanwhile when the connection can serve another request.
    async fn respond(
        &self,
        socket: &mut TcpStream,
        response: poem::Response,
        keep_alive: bool,
        pipelined: BytesMut,
    ) -> Option<BytesMut> {
        let streaming = response.status() == StatusCode::OK
            && response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
        let (parts, body) = response.into_parts();
        let mut head = response_head(&parts, keep_alive);
        let status = parts.status;
        drop(parts);
        if !streaming {
            let body = Box::pin(body.into_bytes()).await.unwrap_or_default();
            if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                head.extend_from_slice(b"\r\n");
            } else {
                head.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                head.extend_from_slice(&body);
            }
            self.write(socket, &head).await.ok()?;
            return keep_alive.then_some(pipelined);
        }
        head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        Box::pin(self.write(socket, &head)).await.ok()?;
        drop(head);
        let pipelined = self.stream(socket, body.into_bytes_stream(), pipelined).await?;
        Box::pin(self.write(socket, b"0\r\n\r\n")).await.ok()?;
        keep_alive.then_some(pipelined)
    }

    /// Writes each chunk of `chunks` as it comes, keeping what the client sends meanwhile;
    /// `None` when the client went away or the front is closing.
    async fn stream(
        &self,
        socket: &mut TcpStream,
        mut chunks: impl futures::Stream<Item = io::Result<bytes::Bytes>> + Unpin,
        mut pipelined: BytesMut,
    ) -> Option<BytesMut> {
        loop {
            tokio::select! {
                chunk = chunks.next() => match chunk {
                    Some(Ok(chunk)) if chunk.is_empty() => {}
                    Some(Ok(chunk)) => {
                        let mut framed = Vec::with_capacity(chunk.len() + 12);
                        framed.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        framed.extend_from_slice(&chunk);
                        framed.extend_from_slice(b"\r\n");
                        drop(chunk);
                        Box::pin(self.write(socket, &framed)).await.ok()?;
                    }
                    Some(Err(_)) => return None,
                    None => return Some(pipelined),
                },
                readable = socket.readable() => {
                    readable.ok()?;
                    let mut scratch = [0u8; 256];
                    match socket.try_read(&mut scratch) {
                        // The client went away: the stream ends (and its slot is freed) now.
                        Ok(0) => return None,
                        Ok(count) if pipelined.len() + count <= MAX_PIPELINED => {
                            pipelined.extend_from_slice(&scratch[..count]);
                        }
                        Ok(_) => return None,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return None,
                    }
                }
            }
        }
    }

    /// Writes `bytes` unless the client stopped reading for [`WRITE_TIMEOUT`].
    async fn write(&self, socket: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(bytes)).await {
            Ok(written) => written,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stream_paths_are_served_by_the_front() {
        assert!(is_stream_path(
            "/v1/download/0193b0e2-7c7e-7a59-9a1c-3b1f5d7f4b10/stream"
        ));
        assert!(is_stream_path("/v1/download/x/stream?token=a.b.c&lastEventId=3"));
        assert!(!is_stream_path("/v1/download//stream"));
        assert!(!is_stream_path("/v1/download/a/b/stream"));
        assert!(!is_stream_path("/v1/download/status/x"));
        assert!(!is_stream_path("/health"));
    }

    fn head(text: &str) -> Option<(Head, usize)> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn a_stream_get_is_taken_and_everything_else_goes_to_the_http_server() {
        let get = "GET /v1/download/j/stream?token=t HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 4\r\n\r\n";
        let Some((Head::Stream(request, true), length)) = head(get) else {
            panic!("a stream request is served by the front");
        };
        assert_eq!(length, get.len());
        assert_eq!(request.uri().query(), Some("token=t"));
        assert_eq!(request.header("last-event-id"), Some("4"));
        let closing = "GET /v1/download/j/stream HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n";
        assert!(matches!(head(closing), Some((Head::Stream(_, false), _))));
        for other in [
            "POST /v1/download/j/stream HTTP/1.1\r\n\r\n",
            "HEAD /v1/download/j/stream HTTP/1.1\r\n\r\n",
            "GET /v1/download/j/stream HTTP/1.0\r\n\r\n",
            "GET /health HTTP/1.1\r\n\r\n",
            "GET /v1/download/j/stream HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /v1/download/j/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/download/j/stream HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/download/j/stream HTTP/1.1\r\nBad Header\r\n\r\n",
            "\x16\x03\x01 TLS",
            // Bytes httparse lets through but a URI may not hold.
            "GET /v1/download/<x>/stream HTTP/1.1\r\n\r\n",
            "GET /v1/download/j/stream?t=\" HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(head(other), Some((Head::Other, _))), "{other:?}");
        }
        assert!(
            head("GET /v1/download/j/stream HTTP/1.1\r\nHost: x\r\n").is_none(),
            "incomplete"
        );
    }
}
