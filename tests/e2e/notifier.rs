//! Server-Sent Events from the notifier: order, resumption, heartbeats, credentials (API keys
//! and the stream tokens of `streamUrl`), fan-out.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use system_tests::sse::{SseItem, SseReader};
use system_tests::stack::Stack;

use crate::init_logs;

const QUIET: Duration = Duration::from_secs(20);

async fn stack_with_notifier(overrides: &[(&str, &str)]) -> Stack {
    let mut stack = Stack::start(overrides).await.unwrap();
    stack.start_notifier().await.unwrap();
    stack
}

/// Opens a job's stream as a programmatic client does: with `user`'s API key, resuming after
/// `last_event_id`.
async fn open(stack: &Stack, user: &str, job_id: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut request = stack
        .http
        .get(stack.stream_url(job_id))
        .header("Authorization", stack.bearer(user).await.unwrap());
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    request.send().await.unwrap()
}

/// The job's `streamUrl` as its status gives it to `user` (with the token a browser's
/// `EventSource` opens it with), on the notifier.
async fn browser_stream_url(stack: &Stack, user: &str, job_id: &str) -> String {
    let status = stack.status(user, job_id).await.unwrap();
    let stream_url = status["streamUrl"].as_str().expect("the status carries a streamUrl");
    format!("http://{}{stream_url}", stack.notifier_address())
}

/// Reads a stream to its end: (event ids, event names, data), heartbeats seen.
async fn read_all(reader: &mut SseReader) -> (Vec<u64>, Vec<String>, Vec<Value>, usize) {
    let (mut ids, mut names, mut data, mut heartbeats) = (Vec::new(), Vec::new(), Vec::new(), 0);
    while let Some((id, event, body)) = reader.next_event(QUIET, &mut heartbeats).await.unwrap() {
        ids.push(id.unwrap().parse().unwrap());
        names.push(event.unwrap());
        data.push(body);
    }
    (ids, names, data, heartbeats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_every_change_in_order_with_heartbeats_then_the_completion_and_closes() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("SSE_HEARTBEAT_SECONDS", "1"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "2500"),
        ("DOWNLOAD_DELAY_MAX_MS", "2500"),
        ("PROGRESS_INTERVAL_MS", "1000"),
    ])
    .await;
    let content = stack.put_file(91_000, 3000).await.unwrap();
    let job_id = stack.initiate("sara", &[91_000]).await.unwrap();
    let response = open(&stack, "sara", &job_id, None).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut reader = SseReader::new(response);
    assert!(
        matches!(reader.next(QUIET).await.unwrap(), Some(SseItem::Retry(_))),
        "the stream opens with a retry hint"
    );

    let (ids, names, data, heartbeats) = read_all(&mut reader).await;
    assert!(heartbeats >= 1, "a quiet stream carries heartbeats");
    assert_eq!(names.last().unwrap(), "completed");
    assert!(
        names[..names.len() - 1].iter().all(|name| name == "progress"),
        "{names:?}"
    );
    assert!(
        ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "ids count up without gaps: {ids:?}"
    );
    let progress: Vec<u64> = data.iter().map(|event| event["progress"].as_u64().unwrap()).collect();
    assert!(progress.windows(2).all(|pair| pair[0] <= pair[1]), "{progress:?}");
    let history: Vec<u64> = stack
        .events(&job_id)
        .await
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect();
    let first = ids[0];
    assert_eq!(
        &ids[usize::from(first == 0)..],
        &history[history.iter().position(|seq| *seq >= first.max(1)).unwrap()..]
    );
    let url = data.last().unwrap()["downloadUrl"].as_str().unwrap();
    assert_eq!(
        reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_with_last_event_id_misses_nothing_and_sees_nothing_twice() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "3000"),
        ("DOWNLOAD_DELAY_MAX_MS", "3000"),
        ("PROGRESS_INTERVAL_MS", "200"),
    ])
    .await;
    stack.put_file(91_001, 100).await.unwrap();
    let job_id = stack.initiate("rory", &[91_001]).await.unwrap();
    let mut reader = SseReader::new(open(&stack, "rory", &job_id, None).await);
    let mut seen = Vec::new();
    let mut heartbeats = 0;
    while seen.len() < 3 {
        let (id, _, _) = reader.next_event(QUIET, &mut heartbeats).await.unwrap().unwrap();
        seen.push(id.unwrap().parse::<u64>().unwrap());
    }
    drop(reader);
    // Let events pass while the client is away.
    stack
        .wait_for_status("rory", &job_id, QUIET, |status| {
            status["progress"].as_u64().unwrap_or(0) >= 60
        })
        .await
        .unwrap();

    let last = *seen.last().unwrap();
    let mut resumed = SseReader::new(open(&stack, "rory", &job_id, Some(last)).await);
    let (ids, names, _, _) = read_all(&mut resumed).await;
    assert_eq!(ids[0], last + 1, "the first resumed event follows the last one seen");
    seen.extend(ids.iter().copied());
    let unique: HashSet<&u64> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice: {seen:?}");
    assert!(seen.windows(2).all(|pair| pair[1] == pair[0] + 1), "no gap: {seen:?}");
    assert_eq!(names.last().unwrap(), "completed");
    let history = stack.events(&job_id).await.unwrap();
    assert_eq!(*seen.last().unwrap(), history.last().unwrap()["seq"].as_u64().unwrap());

    // A reloaded page opens a new EventSource, which cannot send Last-Event-ID: the same resume
    // through the streamUrl's query.
    let reloaded = format!(
        "{}&lastEventId={last}",
        browser_stream_url(&stack, "rory", &job_id).await
    );
    let reloaded = stack.http.get(&reloaded).send().await.unwrap();
    assert_eq!(reloaded.status(), 200);
    let (reloaded_ids, _, _, _) = read_all(&mut SseReader::new(reloaded)).await;
    assert_eq!(reloaded_ids, ids, "the query resumes as the header does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_beyond_the_jobs_events_or_empty_still_ends_with_the_terminal_event() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "1500"),
        ("DOWNLOAD_DELAY_MAX_MS", "1500"),
        ("PROGRESS_INTERVAL_MS", "200"),
    ])
    .await;
    stack.put_file(91_002, 100).await.unwrap();
    let job_id = stack.initiate("lea", &[91_002]).await.unwrap();

    // An id no event of this job has reached (another job's, or a client's bug) resumes from the
    // job's latest event instead of skipping every event to come.
    let mut beyond = SseReader::new(open(&stack, "lea", &job_id, Some(1_000)).await);
    // An empty Last-Event-ID is what EventSource sends before any event had an id: "none".
    let empty = stack
        .http
        .get(stack.stream_url(&job_id))
        .header("Authorization", stack.bearer("lea").await.unwrap())
        .header("Last-Event-ID", "")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200);
    let mut empty = SseReader::new(empty);
    let (beyond_ids, beyond_names, _, _) = read_all(&mut beyond).await;
    let (empty_ids, empty_names, _, _) = read_all(&mut empty).await;
    assert_eq!(
        beyond_names.last().map(String::as_str),
        Some("completed"),
        "{beyond_names:?}"
    );
    assert_eq!(
        empty_names.last().map(String::as_str),
        Some("completed"),
        "{empty_names:?}"
    );
    assert_eq!(beyond_ids.last(), empty_ids.last());
    let junk = stack
        .http
        .get(stack.stream_url(&job_id))
        .header("Authorization", stack.bearer("lea").await.unwrap())
        .header("Last-Event-ID", "seven")
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), 400);
    let problem: Value = junk.json().await.unwrap();
    assert_eq!(problem["field"], "Last-Event-ID");
    let junk_query = format!("{}&lastEventId=seven", browser_stream_url(&stack, "lea", &job_id).await);
    let junk_query = stack.http.get(&junk_query).send().await.unwrap();
    assert_eq!(junk_query.status(), 400);
    assert_eq!(junk_query.json::<Value>().await.unwrap()["field"], "lastEventId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_yields_its_terminal_event_at_once_and_nothing_after_it() {
    init_logs();
    let stack = stack_with_notifier(&[]).await;
    let job_id = stack.initiate("fin", &[91_404]).await.unwrap();
    let status = stack.wait_for_terminal("fin", &job_id).await.unwrap();
    assert_eq!(status["status"], "failed");
    let mut reader = SseReader::new(open(&stack, "fin", &job_id, None).await);
    let (ids, names, data, _) = read_all(&mut reader).await;
    assert_eq!(names, vec!["failed"]);
    assert_eq!(data[0]["errorCode"], "FILE_NOT_FOUND");
    let resumed = open(&stack, "fin", &job_id, Some(ids[0])).await;
    assert_eq!(
        resumed.status(),
        204,
        "a client that saw the end is told not to reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_need_credentials_and_belong_to_the_jobs_owner() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("SSE_MAX_STREAMS_PER_USER", "2"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "20000"),
        ("DOWNLOAD_DELAY_MAX_MS", "20000"),
    ])
    .await;
    stack.put_file(91_002, 10).await.unwrap();
    let job_id = stack.initiate("olga", &[91_002]).await.unwrap();
    let anonymous = stack.http.get(stack.stream_url(&job_id)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["content-type"], "application/problem+json");
    let claimed = stack
        .http
        .get(stack.stream_url(&job_id))
        .header("X-User-Id", "olga")
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status(), 401, "naming a user is no credential");
    assert_eq!(open(&stack, "intruder", &job_id, None).await.status(), 404);
    assert_eq!(
        open(&stack, "olga", &uuid::Uuid::now_v7().to_string(), None)
            .await
            .status(),
        404
    );
    assert_eq!(open(&stack, "olga", "not-a-job", None).await.status(), 400);
    // EventSource cannot send headers: the streamUrl of initiate and status carries a token
    // that opens that one job's stream.
    let pia_job = stack.initiate("pia", &[91_002]).await.unwrap();
    let pia_url = browser_stream_url(&stack, "pia", &pia_job).await;
    let browser = stack.http.get(&pia_url).send().await.unwrap();
    assert_eq!(browser.status(), 200);
    let mut browser = SseReader::new(browser);
    assert!(matches!(browser.next(QUIET).await.unwrap(), Some(SseItem::Retry(_))));
    drop(browser);
    let by_token = |token: &str| {
        let mut url = reqwest::Url::parse(&stack.stream_url(&pia_job)).unwrap();
        url.query_pairs_mut().append_pair("token", token);
        stack.http.get(url).send()
    };
    let olga_url = reqwest::Url::parse(&browser_stream_url(&stack, "olga", &job_id).await).unwrap();
    let (_, olga_token) = olga_url
        .query_pairs()
        .find(|(name, _)| name == "token")
        .expect("the streamUrl has a token");
    let crossed = by_token(&olga_token).await.unwrap();
    assert_eq!(
        crossed.status(),
        401,
        "another user's job: the token opens its own job only"
    );
    assert_eq!(crossed.json::<Value>().await.unwrap()["field"], "token");
    let forged = by_token("not.a.token").await.unwrap();
    assert_eq!(forged.status(), 401);
    assert_eq!(forged.json::<Value>().await.unwrap()["code"], "INVALID_CREDENTIALS");
    let bad_resume = stack
        .http
        .get(stack.stream_url(&job_id))
        .header("Authorization", stack.bearer("olga").await.unwrap())
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_resume.status(), 400);

    let first = open(&stack, "olga", &job_id, None).await;
    let second = open(&stack, "olga", &job_id, None).await;
    assert_eq!(
        (first.status(), second.status()),
        (reqwest::StatusCode::OK, reqwest::StatusCode::OK)
    );
    let third = open(&stack, "olga", &job_id, None).await;
    assert_eq!(third.status(), 429, "a third open stream is over the per-user cap");
    drop(first);
    system_tests::wait::wait_for("a slot to free up", QUIET, || async {
        (open(&stack, "olga", &job_id, None).await.status() == 200).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_stream_cap_holds_across_notifiers_and_a_crashed_instances_leases_lapse() {
    init_logs();
    let stack = Stack::start(&[
        ("SSE_MAX_STREAMS_PER_USER", "2"),
        ("SSE_HEARTBEAT_SECONDS", "1"),
        ("SSE_STREAM_LEASE_SECONDS", "3"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "30000"),
        ("DOWNLOAD_DELAY_MAX_MS", "30000"),
    ])
    .await
    .unwrap();
    let (first_notifier, _first) = stack.spawn_notifier(&[]).await.unwrap();
    let (second_notifier, _second) = stack.spawn_notifier(&[]).await.unwrap();
    stack.put_file(91_010, 10).await.unwrap();
    let job_id = stack.initiate("capped", &[91_010]).await.unwrap();
    let capped = stack.bearer("capped").await.unwrap();
    let open_on = |notifier: std::net::SocketAddr| {
        stack
            .http
            .get(format!("http://{notifier}/v1/download/{job_id}/stream"))
            .header("Authorization", &capped)
            .send()
    };

    let on_first = open_on(first_notifier).await.unwrap();
    let on_second = open_on(second_notifier).await.unwrap();
    assert_eq!(
        (on_first.status(), on_second.status()),
        (200.try_into().unwrap(), 200.try_into().unwrap())
    );
    for notifier in [first_notifier, second_notifier] {
        let over = open_on(notifier).await.unwrap();
        assert_eq!(over.status(), 429, "the cap counts the streams of every notifier");
        assert_eq!(over.headers()["retry-after"], "2");
        assert_eq!(over.json::<Value>().await.unwrap()["code"], "RATE_LIMITED");
    }
    // Streams open longer than a lease stay counted: their notifiers renew the leases.
    let mut reader = SseReader::new(on_first);
    let mut heartbeats = 0;
    while heartbeats < 5 {
        let item = reader.next(QUIET).await.unwrap();
        if matches!(item, Some(SseItem::Comment)) {
            heartbeats += 1;
        }
    }
    assert_eq!(
        open_on(second_notifier).await.unwrap().status(),
        429,
        "leases were renewed"
    );
    // A closed stream gives its slot back, to any notifier.
    drop(reader);
    system_tests::wait::wait_for("the closed stream's slot", QUIET, || async {
        (open_on(second_notifier).await.ok()?.status() == 200).then_some(())
    })
    .await
    .unwrap();
    drop(on_second);

    // A crashed instance's leases: one already expired, one still running. Only the running one
    // counts, until it lapses by itself.
    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    let leases = jetstream
        .get_key_value(common::names::STREAM_LEASES_BUCKET)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let crashed = serde_json::json!({"leases": {"crashed-1": now - 1_000, "crashed-2": now + 4_000}});
    let other = "crash-victim";
    let job_of_other = stack.initiate(other, &[91_010]).await.unwrap();
    let other_bearer = stack.bearer(other).await.unwrap();
    leases
        .put(notifier::limits::key_of(other), crashed.to_string().into())
        .await
        .unwrap();
    let open_other = || {
        stack
            .http
            .get(format!("http://{first_notifier}/v1/download/{job_of_other}/stream"))
            .header("Authorization", &other_bearer)
            .send()
    };
    let kept = open_other().await.unwrap();
    assert_eq!(kept.status(), 200, "the expired lease does not count");
    assert_eq!(open_other().await.unwrap().status(), 429, "the running lease does");
    system_tests::wait::wait_for("the crashed instance's lease to lapse", QUIET, || async {
        (open_other().await.ok()?.status() == 200).then_some(())
    })
    .await
    .unwrap();
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_survives_a_broker_restart_without_a_gap_in_its_events() {
    init_logs();
    let mut stack = stack_with_notifier(&[
        ("SSE_HEARTBEAT_SECONDS", "1"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "8000"),
        ("DOWNLOAD_DELAY_MAX_MS", "8000"),
        ("PROGRESS_INTERVAL_MS", "250"),
    ])
    .await;
    stack.put_file(91_020, 100).await.unwrap();
    let job_id = stack.initiate("steady", &[91_020]).await.unwrap();
    let mut reader = SseReader::new(open(&stack, "steady", &job_id, None).await);
    let mut heartbeats = 0;
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let (id, _, _) = reader.next_event(QUIET, &mut heartbeats).await.unwrap().unwrap();
        ids.push(id.unwrap().parse::<u64>().unwrap());
    }

    // The broker goes away for a moment (the outage itself is the fault, not a wait), and comes
    // back with its store; the job goes on and the stream picks up where it was.
    stack.nats.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.nats.restart().await.unwrap();

    let mut names = Vec::new();
    let rest = async {
        while let Some((id, event, _)) = reader.next_event(QUIET, &mut heartbeats).await.unwrap() {
            ids.push(id.unwrap().parse().unwrap());
            names.push(event.unwrap());
        }
    };
    // Heartbeats keep a stream that lost its events alive: bound the whole wait.
    tokio::time::timeout(Duration::from_secs(60), rest)
        .await
        .unwrap_or_else(|_| panic!("the stream never ended; events after the restart: {names:?}"));
    assert_eq!(names.last().map(String::as_str), Some("completed"), "{names:?}");
    assert!(
        ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "no event lost or repeated across the restart: {ids:?}"
    );
    let stored: Vec<u64> = stack
        .events(&job_id)
        .await
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.last(), stored.last(), "the stream reached the job's last event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notifier_delivers_the_completion_to_a_thousand_concurrent_streams() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "4000"),
        ("DOWNLOAD_DELAY_MAX_MS", "4000"),
        ("SSE_MAX_STREAMS_PER_USER", "1000"),
    ])
    .await;
    stack.put_file(92_000, 100).await.unwrap();
    // A thousand browsers, each opening the streamUrl its page got.
    let mut stream_urls = Vec::new();
    for _ in 0..50 {
        let job_id = stack.initiate("crowd", &[92_000]).await.unwrap();
        stream_urls.push(browser_stream_url(&stack, "crowd", &job_id).await);
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut streams = Vec::new();
    for index in 0..1000 {
        let request = client.get(&stream_urls[index % stream_urls.len()]);
        streams.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut reader = SseReader::new(response);
            let mut heartbeats = 0;
            let mut last = None;
            while let Some((_, event, data)) = reader
                .next_event(Duration::from_secs(60), &mut heartbeats)
                .await
                .unwrap()
            {
                last = Some((event.unwrap(), data));
            }
            last
        }));
    }
    let mut completed = 0;
    for stream in streams {
        let (event, data) = stream.await.unwrap().expect("every stream ends with an event");
        assert_eq!(event, "completed");
        assert!(data["downloadUrl"].is_string());
        completed += 1;
    }
    assert_eq!(completed, 1000);
}

/// The `SETTINGS_MAX_CONCURRENT_STREAMS` of the server's first SETTINGS frame, after a
/// cleartext HTTP/2 client's preface.
async fn http2_max_concurrent_streams(address: std::net::SocketAddr) -> Option<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    // The preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(QUIET, socket.read_exact(&mut header))
        .await
        .expect("the server answers the preface")
        .unwrap();
    assert_eq!(header[3], 4, "the server's first frame is its SETTINGS: {header:?}");
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; length];
    socket.read_exact(&mut payload).await.unwrap();
    payload.chunks_exact(6).find_map(|setting| {
        (u16::from_be_bytes([setting[0], setting[1]]) == 3)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    })
}

/// A proxy that speaks HTTP/2 to the notifier (cleartext, prior knowledge) multiplexes many
/// streams on its connection; they are open at once, each gets its own job's events, and the
/// connection serves plain requests between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_multiplexed_over_http2_each_get_their_jobs_events_at_once() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "3000"),
        ("DOWNLOAD_DELAY_MAX_MS", "3000"),
        ("SSE_MAX_STREAMS_PER_USER", "300"),
    ])
    .await;
    stack.put_file(93_000, 100).await.unwrap();
    stack.put_file(93_001, 100).await.unwrap();
    let mut stream_urls = Vec::new();
    for index in 0..10 {
        let job_id = stack.initiate("multiplexed", &[93_000 + index % 2]).await.unwrap();
        stream_urls.push((job_id.clone(), browser_stream_url(&stack, "multiplexed", &job_id).await));
    }
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut streams = Vec::new();
    for index in 0..300 {
        let (job_id, url) = stream_urls[index % stream_urls.len()].clone();
        let request = client.get(url);
        streams.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            let (_, names, data, _) = read_all(&mut SseReader::new(response)).await;
            (job_id, names.into_iter().zip(data).collect::<Vec<_>>())
        }));
    }
    let health = client
        .get(format!("http://{}/health", stack.notifier_address()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert_eq!(health.status(), 200);
    // What the notifier tells an HTTP/2 client it may open at once on one connection.
    assert_eq!(
        http2_max_concurrent_streams(stack.notifier_address()).await,
        Some(common::net::HTTP2_STREAMS_PER_CONNECTION)
    );
    for stream in streams {
        let (job_id, events) = stream.await.unwrap();
        let (last, data) = events.last().expect("every stream ends with an event");
        assert_eq!(last, "completed", "{job_id}: {events:?}");
        assert!(data["downloadUrl"].is_string(), "{data}");
        // Open while its job ran (3 s), not served after another stream ended.
        assert_eq!(events[0].0, "progress", "{job_id}: {events:?}");
        assert!(
            events.iter().all(|(_, data)| data["jobId"] == job_id.as_str()),
            "a stream got another job's events: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_feed_can_tell_whether_an_event_on_its_filter_waits_for_it() {
    init_logs();
    // What a live feed looks at when it has been quiet, to notice it was frozen (its consumer
    // lost with a node) rather than idle: the first event on its filter after the last handled.
    let stack = Stack::start(&[]).await.unwrap();
    stack.put_file(91_003, 10).await.unwrap();
    let job_id = stack.initiate("quiet", &[91_003]).await.unwrap();
    stack.wait_for_terminal("quiet", &job_id).await.unwrap();
    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    let stream = common::names::EVENTS_STREAM;
    let every = common::names::EVENTS_STREAM_SUBJECTS;
    let waiting = common::consume::unhandled_for(&jetstream, stream, every, 0).await;
    assert!(
        waiting.is_some(),
        "the job's events wait for a feed that handled nothing"
    );
    let mut events = jetstream.get_stream(stream).await.unwrap();
    let last = events.info().await.unwrap().state.last_sequence;
    assert_eq!(
        common::consume::unhandled_for(&jetstream, stream, every, last).await,
        None
    );
    // A wildcard filter matching none of them (no job was cancelled): nothing waits.
    let cancelled = common::names::CANCELLED_EVENTS_FILTER;
    assert_eq!(
        common::consume::unhandled_for(&jetstream, stream, cancelled, 0).await,
        None
    );
    let per_job = format!("downloads.events.{job_id}.*");
    let age = common::consume::unhandled_for(&jetstream, stream, &per_job, 0)
        .await
        .unwrap();
    assert!(age < Duration::from_secs(60), "{age:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_a_terminal_state_whose_event_was_never_published() {
    init_logs();
    // No processor: the job stays queued, and only the record can tell the stream it ended.
    let mut stack = Stack::servers_only(&[("SSE_HEARTBEAT_SECONDS", "1")]).await.unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    stack.start_notifier().await.unwrap();
    let job_id = stack.initiate("lost", &[91_004]).await.unwrap();
    let mut reader = SseReader::new(open(&stack, "lost", &job_id, None).await);
    let mut heartbeats = 0;
    let (first, _, _) = reader.next_event(QUIET, &mut heartbeats).await.unwrap().unwrap();

    // A writer that dies between its record write and its event: the record says cancelled, the
    // events stream never hears of it.
    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    // (The job is not claimed: its record is in its message, and the write creates it.)
    let kv = jetstream.get_key_value(common::names::JOBS_BUCKET).await.unwrap();
    assert!(kv.entry(job_id.as_str()).await.unwrap().is_none());
    let mut record = system_tests::queue::queued_record(&jetstream, &job_id).await.unwrap();
    record.cancel();
    record.event_seq += 1;
    kv.update(job_id.as_str(), record.to_json_bytes(), 0).await.unwrap();

    let (ids, names, _, _) = read_all(&mut reader).await;
    assert_eq!(names.last().map(String::as_str), Some("cancelled"), "{names:?}");
    assert_eq!(*ids.last().unwrap(), record.event_seq);
    assert!(
        ids.iter()
            .all(|id| *id > first.as_deref().unwrap().parse::<u64>().unwrap())
    );
}

/// What the notifier answers on one raw connection to `request` (sent as is), read until the
/// notifier closes it.
async fn raw_exchange(stack: &Stack, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(stack.notifier_address()).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut answer))
        .await
        .expect("the notifier closes the connection when done")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

/// Streams are written by the notifier's own lean front, the rest by its HTTP server: a stream
/// ends with its last chunk and the same connection then serves the next requests (pipelined
/// here: another stream, then a plain request); a client that asked to close is closed; an HTTP/1.0 client gets the stream too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_the_request_after_its_stream_and_closes_when_asked() {
    init_logs();
    let stack = stack_with_notifier(&[]).await;
    stack.put_file(71_000, 100).await.unwrap();
    let job_id = stack.initiate("olga", &[71_000]).await.unwrap();
    assert_eq!(
        stack.wait_for_terminal("olga", &job_id).await.unwrap()["status"],
        "completed"
    );
    let url = browser_stream_url(&stack, "olga", &job_id).await;
    let target = &url[url.find("/v1/").unwrap()..];

    let answer = raw_exchange(
        &stack,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: notifier\r\n\r\nGET {target} HTTP/1.1\r\nHost: notifier\r\n\r\nGET /health HTTP/1.1\r\nHost: notifier\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    let (stream, after) = answer
        .split_once("\r\n0\r\n\r\n")
        .expect("the stream ends with its last chunk");
    // The same connection then serves a second stream, and after it a plain request.
    let (second, after) = after
        .split_once("\r\n0\r\n\r\n")
        .expect("a second stream on the connection");
    assert!(
        second.starts_with("HTTP/1.1 200 OK\r\n") && second.contains("event: completed"),
        "{second}"
    );
    assert!(stream.starts_with("HTTP/1.1 200 OK\r\n"), "{stream}");
    let head = stream.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{stream}");
    assert!(head.contains("transfer-encoding: chunked"), "{stream}");
    assert!(!head.contains("connection: close"), "{stream}");
    assert!(stream.contains("event: completed"), "{stream}");
    assert!(
        after.starts_with("HTTP/1.1 200 OK\r\n"),
        "the next request is answered: {after}"
    );
    assert!(after.contains(r#""status":"healthy""#), "{after}");

    let closed = raw_exchange(
        &stack,
        &format!("GET {target} HTTP/1.1\r\nHost: notifier\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(closed.to_ascii_lowercase().contains("connection: close"), "{closed}");
    assert!(
        closed.contains("event: completed") && closed.ends_with("\r\n0\r\n\r\n"),
        "{closed}"
    );

    let old = raw_exchange(&stack, &format!("GET {target} HTTP/1.0\r\nHost: notifier\r\n\r\n")).await;
    assert!(old.starts_with("HTTP/1.0 200 OK\r\n"), "{old}");
    assert!(old.contains("event: completed"), "{old}");
}
