//! The SSRF guard of webhook deliveries against a table of tricky callback URLs. Each URL goes the
//! way a delivery does (`TargetPolicy::check_url`, then a POST with `ssrf::guarded_client`), while
//! a sink on loopback (127.0.0.1 and, where there is IPv6, ::1, on the port every loopback URL
//! names) counts each connection that gets through. A failure names the case and its URL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use notifier::webhooks::ssrf::{self, Lookup, TargetPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A tiny HTTP/1.1 server that answers every request with one fixed response and counts the
/// connections it accepts. Its accept loops stop when it is dropped.
struct CountingServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    accept_loops: Vec<JoinHandle<()>>,
}

impl CountingServer {
    /// Listens on `primary` (port 0 picks a free one), then on each of `also_on` with the same
    /// port when that can be bound (e.g. `::1` on a host without IPv6 cannot).
    async fn start(primary: IpAddr, also_on: &[IpAddr], response: String) -> CountingServer {
        let first_listener = TcpListener::bind((primary, 0))
            .await
            .expect("binding the first listener");
        let port = first_listener.local_addr().expect("the listener has an address").port();
        let mut listeners = vec![first_listener];
        for address in also_on {
            if let Ok(listener) = TcpListener::bind((*address, port)).await {
                listeners.push(listener);
            }
        }
        let connections = Arc::new(AtomicUsize::new(0));
        let response = Arc::new(response);
        let accept_loops = listeners
            .into_iter()
            .map(|listener| tokio::spawn(answer_forever(listener, connections.clone(), response.clone())))
            .collect();
        CountingServer {
            port,
            connections,
            accept_loops,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        for accept_loop in &self.accept_loops {
            accept_loop.abort();
        }
    }
}

/// Counts a connection as soon as it is accepted (before answering, so a client that got an
/// answer has been counted), reads the request head and writes `response`.
async fn answer_forever(listener: TcpListener, connections: Arc<AtomicUsize>, response: Arc<String>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        let response = response.clone();
        tokio::spawn(async move {
            let mut request_head = Vec::new();
            let mut buffer = [0_u8; 4096];
            // A TLS handshake (first byte 0x16) gets the plain answer at once and fails.
            while !request_head.windows(4).any(|window| window == b"\r\n\r\n") && request_head.first() != Some(&0x16) {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => request_head.extend_from_slice(&buffer[..read]),
                }
            }
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The URL does not parse (a delivery refuses it as invalid).
    RefusedAsInvalid,
    /// `TargetPolicy::check_url` refused it: nothing was sent.
    RefusedByUrlCheck,
    /// The guarded resolver refused the name: nothing was sent.
    RefusedByResolver,
    /// A server answered with this status.
    Answered(u16),
    /// The request failed some other way (connection refused, unknown name, ...).
    Failed(String),
}

/// One delivery attempt, the way `Deliverer::attempt` makes it.
async fn deliver(policy: &TargetPolicy, client: &reqwest::Client, url_text: &str) -> Outcome {
    let Ok(url) = url::Url::parse(url_text) else {
        return Outcome::RefusedAsInvalid;
    };
    if policy.check_url(&url).is_err() {
        return Outcome::RefusedByUrlCheck;
    }
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"type":"download.completed"}"#)
        .send()
        .await;
    match response {
        Ok(response) => Outcome::Answered(response.status().as_u16()),
        Err(error) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
            while let Some(cause) = source {
                if cause.downcast_ref::<ssrf::Refused>().is_some() {
                    return Outcome::RefusedByResolver;
                }
                source = cause.source();
            }
            Outcome::Failed(format!("{error:?}"))
        }
    }
}

/// A callback URL and what must become of it.
struct Case {
    what: &'static str,
    url: String,
    expected: Outcome,
}

fn case(what: &'static str, url: impl Into<String>, expected: Outcome) -> Case {
    Case {
        what,
        url: url.into(),
        expected,
    }
}

fn addresses(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| text.parse().expect("a test address")).collect()
}

/// The test resolver: names that lead to forbidden addresses, and one that leads to the
/// allowlisted redirecting receiver.
fn test_lookup() -> Lookup {
    Lookup::fixed([
        ("localhost", addresses(&["127.0.0.1", "::1"])),
        ("internal.test", addresses(&["10.0.0.5"])),
        ("rebind.test", addresses(&["127.0.0.1"])),
        ("mapped.test", addresses(&["::ffff:127.0.0.1"])),
        ("nat64.test", addresses(&["64:ff9b::7f00:1"])),
        ("local-nat64.test", addresses(&["64:ff9b:1::7f00:1"])),
        ("sixtofour.test", addresses(&["2002:7f00:1::1"])),
        ("teredo.test", addresses(&["2001:0:4136:e378:8000:63bf:80ff:fffe"])),
        ("compatible.test", addresses(&["::7f00:1"])),
        ("site-local.test", addresses(&["fec0::1"])),
        ("metadata.test", addresses(&["169.254.169.254", "fd00:ec2::254"])),
        (
            "many-private.test",
            addresses(&["10.1.1.1", "172.16.1.1", "192.168.1.1", "fd12::1", "::1"]),
        ),
        ("redirector.test", addresses(&["127.0.0.2"])),
    ])
}

/// Every case, with `sink` the port of the loopback sink and `redirector` the port of the
/// allowlisted receiver on 127.0.0.2 that redirects to the sink.
fn tricky_callback_urls(sink: u16, redirector: u16) -> Vec<Case> {
    use Outcome::{Answered, RefusedByResolver, RefusedByUrlCheck};
    vec![
        // IPv4 loopback, spelled every way the URL parser accepts.
        case("plain loopback", format!("http://127.0.0.1:{sink}/"), RefusedByUrlCheck),
        case(
            "https loopback",
            format!("https://127.0.0.1:{sink}/"),
            RefusedByUrlCheck,
        ),
        case("decimal", format!("http://2130706433:{sink}/"), RefusedByUrlCheck),
        case("hex", format!("http://0x7f000001:{sink}/"), RefusedByUrlCheck),
        case("dotted hex", format!("http://0x7f.0.0.1:{sink}/"), RefusedByUrlCheck),
        case("dotted octal", format!("http://0177.0.0.1:{sink}/"), RefusedByUrlCheck),
        case("octal", format!("http://017700000001:{sink}/"), RefusedByUrlCheck),
        case(
            "zero-padded",
            format!("http://127.000.000.001:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "two-part short form",
            format!("http://127.1:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "three-part short form",
            format!("http://127.0.1:{sink}/"),
            RefusedByUrlCheck,
        ),
        case("hex short form", format!("http://0x7F.1:{sink}/"), RefusedByUrlCheck),
        case(
            "trailing dot literal",
            format!("http://127.0.0.1.:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "fullwidth digits",
            format!("http://１２７．０．０．１:{sink}/"),
            RefusedByUrlCheck,
        ),
        case("circled digits", format!("http://①②⑦.⓪.⓪.①:{sink}/"), RefusedByUrlCheck),
        case(
            "allowlist neighbour",
            format!("http://127.0.0.3:{sink}/"),
            RefusedByUrlCheck,
        ),
        case("zero", format!("http://0:{sink}/"), RefusedByUrlCheck),
        case("unspecified", format!("http://0.0.0.0:{sink}/"), RefusedByUrlCheck),
        // IPv6 loopback and IPv6 forms that carry an IPv4 address.
        case("ipv6 loopback", format!("http://[::1]:{sink}/"), RefusedByUrlCheck),
        case(
            "ipv6 loopback in full",
            format!("http://[0:0:0:0:0:0:0:1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case("ipv6 unspecified", format!("http://[::]:{sink}/"), RefusedByUrlCheck),
        case(
            "ipv4-mapped dotted",
            format!("http://[::ffff:127.0.0.1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "ipv4-mapped hex",
            format!("http://[::ffff:7f00:1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "ipv4-mapped in full",
            format!("http://[0:0:0:0:0:ffff:127.0.0.1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "ipv4-compatible",
            format!("http://[::127.0.0.1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "ipv4-translated",
            format!("http://[::ffff:0:127.0.0.1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "nat64",
            format!("http://[64:ff9b::127.0.0.1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "nat64 of a public address",
            "http://[64:ff9b::808:808]/",
            RefusedByUrlCheck,
        ),
        case(
            "local-use nat64",
            format!("http://[64:ff9b:1::7f00:1]:{sink}/"),
            RefusedByUrlCheck,
        ),
        case("6to4", format!("http://[2002:7f00:1::1]:{sink}/"), RefusedByUrlCheck),
        case(
            "teredo",
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            RefusedByUrlCheck,
        ),
        case("site-local", "http://[fec0::1]/", RefusedByUrlCheck),
        case("unique local", "http://[fd00::1]/", RefusedByUrlCheck),
        case("ipv6 link-local", "http://[fe80::1]/", RefusedByUrlCheck),
        case("ipv6 multicast", "http://[ff02::1]/", RefusedByUrlCheck),
        case("ipv6 documentation", "http://[2001:db8::1]/", RefusedByUrlCheck),
        // IPv4 private and reserved ranges.
        case(
            "cloud metadata",
            "http://169.254.169.254/latest/meta-data/",
            RefusedByUrlCheck,
        ),
        case(
            "cloud metadata in decimal",
            "http://2852039166/latest/meta-data/",
            RefusedByUrlCheck,
        ),
        case("shared address space", "http://100.64.0.1/", RefusedByUrlCheck),
        case("benchmarking", "http://198.18.0.1/", RefusedByUrlCheck),
        case("ietf protocol assignments", "http://192.0.0.1/", RefusedByUrlCheck),
        case("private 10", "http://10.0.0.1/", RefusedByUrlCheck),
        case("private 172.16", "http://172.16.0.1/", RefusedByUrlCheck),
        case("private 192.168", "https://192.168.1.1/", RefusedByUrlCheck),
        case("ipv4 documentation", "http://192.0.2.1/", RefusedByUrlCheck),
        case("ipv4 multicast", "http://224.0.0.1/", RefusedByUrlCheck),
        case("broadcast", "http://255.255.255.255/", RefusedByUrlCheck),
        // Tricks on the rest of the URL.
        case(
            "userinfo",
            format!("http://user:pass@127.0.0.1:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "userinfo looking like a host",
            format!("http://example.com@127.0.0.1:{sink}/"),
            RefusedByUrlCheck,
        ),
        case(
            "backslash before @",
            format!("http://127.0.0.1:{sink}\\@example.com/"),
            RefusedByUrlCheck,
        ),
        case(
            "fragment before @",
            format!("http://127.0.0.1:{sink}#@example.com/"),
            RefusedByUrlCheck,
        ),
        // Other schemes.
        case("file", "file:///etc/passwd", RefusedByUrlCheck),
        case("gopher", format!("gopher://127.0.0.1:{sink}/_POST"), RefusedByUrlCheck),
        case("ftp", format!("ftp://127.0.0.1:{sink}/"), RefusedByUrlCheck),
        case("dict", format!("dict://127.0.0.1:{sink}/info"), RefusedByUrlCheck),
        case("data", "data:text/plain,hello", RefusedByUrlCheck),
        // Names that resolve to forbidden addresses.
        case("localhost", format!("http://localhost:{sink}/"), RefusedByResolver),
        case(
            "localhost in capitals",
            format!("http://LOCALHOST:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "localhost with a trailing dot",
            format!("http://localhost.:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "fullwidth localhost",
            format!("http://ｌｏｃａｌｈｏｓｔ:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of a private address",
            format!("http://internal.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name rebound to loopback",
            format!("https://rebind.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of an ipv4-mapped address",
            format!("http://mapped.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of a nat64 address",
            format!("http://nat64.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of a local nat64 address",
            format!("http://local-nat64.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of a 6to4 address",
            format!("http://sixtofour.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of a teredo address",
            format!("http://teredo.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of an ipv4-compatible address",
            format!("http://compatible.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of a site-local address",
            format!("http://site-local.test:{sink}/"),
            RefusedByResolver,
        ),
        case(
            "name of the metadata service",
            "http://metadata.test/latest/",
            RefusedByResolver,
        ),
        case(
            "name of many private addresses",
            format!("http://many-private.test:{sink}/"),
            RefusedByResolver,
        ),
        // An allowed receiver that redirects to the sink: its 302 is the outcome, not followed.
        case(
            "redirect to loopback",
            format!("http://127.0.0.2:{redirector}/hook"),
            Answered(302),
        ),
        case(
            "redirect by name",
            format!("http://redirector.test:{redirector}/hook"),
            Answered(302),
        ),
    ]
}

/// The table runs with `127.0.0.2/32` allowlisted, for the redirecting receiver: an allowlist
/// only adds permitted addresses, so what is refused here is refused by the default policy too.
#[tokio::test]
async fn no_tricky_callback_url_reaches_loopback_and_each_is_refused_or_not_followed() {
    let sink = CountingServer::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[IpAddr::V6(Ipv6Addr::LOCALHOST)],
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
    )
    .await;
    let redirect_response = format!(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{}/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        sink.port
    );
    let redirector = CountingServer::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), &[], redirect_response).await;
    let policy = TargetPolicy::new(vec!["127.0.0.2/32".parse().expect("a network")]);
    let client =
        ssrf::guarded_client(policy.clone(), Duration::from_secs(5), test_lookup()).expect("the client builds");

    let cases = tricky_callback_urls(sink.port, redirector.port);
    let mut failures = Vec::new();
    for Case { what, url, expected } in &cases {
        let sink_connections_before = sink.connections();
        let outcome = deliver(&policy, &client, url).await;
        if sink.connections() != sink_connections_before {
            failures.push(format!("{what} ({url}) reached the loopback sink, outcome {outcome:?}"));
        } else if outcome != *expected {
            failures.push(format!("{what} ({url}): expected {expected:?}, got {outcome:?}"));
        }
    }

    assert!(cases.len() >= 30, "the table has {} cases", cases.len());
    assert!(failures.is_empty(), "bypasses or surprises:\n{}", failures.join("\n"));
    assert_eq!(sink.connections(), 0, "the loopback sink saw no connection");
    assert_eq!(
        redirector.connections(),
        2,
        "both redirect cases reached the allowed receiver"
    );
}

/// Without this, a sink that cannot be reached would make the table pass by itself.
#[tokio::test]
async fn the_sink_counts_a_request_that_is_not_guarded() {
    let sink = CountingServer::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[],
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
    )
    .await;
    let unguarded_client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("the client builds");
    let response = unguarded_client
        .post(format!("http://2130706433:{}/", sink.port))
        .send()
        .await
        .expect("the sink answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(sink.connections(), 1);
}
