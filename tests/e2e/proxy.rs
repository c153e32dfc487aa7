//! The production nginx front (deploy/nginx) with its read timeout cut to two seconds: streams
//! survive far longer thanks to heartbeats, and polling works through it. The client is a
//! browser page: its API calls carry a key, its stream is the `streamUrl` it was given, resolved
//! against the proxy's base URL.

use std::time::Duration;

use system_tests::servers::NginxServer;
use system_tests::sse::SseReader;
use system_tests::stack::Stack;

use crate::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_a_short_proxy_timeout_thanks_to_heartbeats_and_polling_works_through_the_proxy() {
    init_logs();
    let mut stack = Stack::servers_only(&[("SSE_HEARTBEAT_SECONDS", "1")]).await.unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    stack.start_notifier().await.unwrap();
    // A second notifier whose heartbeats are slower than the proxy timeout: the control.
    let (quiet_notifier, _quiet) = stack.spawn_notifier(&[("SSE_HEARTBEAT_SECONDS", "30")]).await.unwrap();
    let proxy = NginxServer::start(0, stack.intake_address(), stack.notifier_address(), "2s", "2s")
        .await
        .unwrap();
    let quiet_proxy = NginxServer::start(0, stack.intake_address(), quiet_notifier, "2s", "2s")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let content = stack.put_file(94_000, 2048).await.unwrap();

    // Initiate and poll through the proxy.
    let bearer = stack.bearer("proxied").await.unwrap();
    let initiated = http
        .post(format!("{}/v1/download/initiate", proxy.base_url()))
        .header("Authorization", &bearer)
        .json(&serde_json::json!({"file_ids": [94000]}))
        .send()
        .await
        .unwrap();
    assert_eq!(initiated.status(), 202);
    let accepted: serde_json::Value = initiated.json().await.unwrap();
    let stream_path = accepted["streamUrl"].as_str().unwrap().to_string();
    let job_id = accepted["jobId"].as_str().unwrap();
    let status = http
        .get(format!("{}/v1/download/status/{job_id}", proxy.base_url()))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    assert_eq!(status.json::<serde_json::Value>().await.unwrap()["status"], "queued");
    let health = http.get(format!("{}/health", proxy.base_url())).send().await.unwrap();
    assert_eq!(health.status(), 200, "health is served through the proxy");

    // No processor runs yet: the job stays queued and its stream is silent but for heartbeats.
    let stream_url = |base: String| format!("{base}{stream_path}");
    let response = http.get(stream_url(proxy.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let quiet = http.get(stream_url(quiet_proxy.base_url())).send().await.unwrap();
    assert_eq!(quiet.status(), 200);
    let mut quiet_reader = SseReader::new(quiet);

    let mut heartbeats = 0;
    let (_, first, _) = reader
        .next_event(Duration::from_secs(10), &mut heartbeats)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("progress"));
    let mut quiet_heartbeats = 0;
    let quiet_first = quiet_reader
        .next_event(Duration::from_secs(10), &mut quiet_heartbeats)
        .await
        .unwrap();
    assert!(quiet_first.is_some(), "the quiet stream starts with the current state");
    // Three times the proxy's timeout: the quiet stream is cut, the heartbeating one is not.
    while heartbeats < 6 {
        match reader.next(Duration::from_secs(5)).await.unwrap() {
            Some(system_tests::sse::SseItem::Comment) => heartbeats += 1,
            Some(other) => panic!("only heartbeats while the job is queued, got {other:?}"),
            None => panic!("the proxy cut a stream that had heartbeats"),
        }
    }
    // nginx ends a timed-out response mid-chunk: the client sees the body break off.
    match quiet_reader
        .next_event(Duration::from_secs(10), &mut quiet_heartbeats)
        .await
    {
        Ok(None) => {}
        Ok(Some(event)) => panic!("the quiet stream should carry nothing more, got {event:?}"),
        Err(error) => assert!(
            !error.to_string().starts_with("no event stream data"),
            "without heartbeats the proxy cuts the stream, but it stayed open: {error}"
        ),
    }

    stack.start_processor(&[]).await.unwrap();
    let mut last = None;
    while let Some((_, event, data)) = reader
        .next_event(Duration::from_secs(20), &mut heartbeats)
        .await
        .unwrap()
    {
        last = Some((event.unwrap(), data));
    }
    let (event, data) = last.unwrap();
    assert_eq!(event, "completed");
    let url = data["downloadUrl"].as_str().unwrap();
    assert_eq!(
        reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_keeps_stream_paths_without_their_tokens() {
    init_logs();
    let mut stack = Stack::start(&[]).await.unwrap();
    stack.start_notifier().await.unwrap();
    stack.put_file(94_001, 1024).await.unwrap();
    let proxy = NginxServer::start(0, stack.intake_address(), stack.notifier_address(), "10s", "1h")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let initiated: serde_json::Value = http
        .post(format!("{}/v1/download/initiate", proxy.base_url()))
        .header("Authorization", stack.bearer("logged").await.unwrap())
        .json(&serde_json::json!({"file_ids": [94001]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stream_path = initiated["streamUrl"].as_str().unwrap();
    let token = stream_path.split("token=").nth(1).unwrap();
    let stream = http
        .get(format!("{}{stream_path}&lastEventId=0", proxy.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // The stream ends after the job's terminal event; nginx logs a request when it ends.
    let _ = stream.bytes().await.unwrap();
    let job_id = initiated["jobId"].as_str().unwrap();
    let path = format!("/v1/download/{job_id}/stream");
    system_tests::wait::wait_until("nginx to log the stream", Duration::from_secs(10), || async {
        proxy.access_log().iter().any(|line| line.contains(&path))
    })
    .await
    .unwrap();
    let log = proxy.access_log().join("\n");
    assert!(log.contains("POST /v1/download/initiate"), "{log}");
    assert!(!log.contains(token), "the token reached the access log: {log}");
    assert!(!log.contains("token="), "{log}");
    assert!(!log.contains("dk_"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_gateway_mode_nginx_sets_the_tenant_header_and_a_clients_own_value_never_passes() {
    init_logs();
    let mut stack = Stack::start(&[("AUTH_MODE", "gateway")]).await.unwrap();
    stack.start_notifier().await.unwrap();
    stack.put_file(94_002, 1024).await.unwrap();
    // A gateway that authenticated every client of this test as carol.
    let gateway = NginxServer::start_as_gateway(stack.intake_address(), stack.notifier_address(), "carol")
        .await
        .unwrap();
    // API-key mode's proxy: no tenant header passes at all.
    let plain = NginxServer::start(0, stack.intake_address(), stack.notifier_address(), "10s", "1h")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let initiate = |base: String| {
        http.post(format!("{base}/v1/download/initiate"))
            .header("X-User-Id", "mallory")
            .json(&serde_json::json!({"file_ids": [94002]}))
            .send()
    };
    let accepted = initiate(gateway.base_url()).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let job_id = accepted.json::<serde_json::Value>().await.unwrap()["jobId"]
        .as_str()
        .unwrap()
        .to_string();
    let status_as = |user: &'static str| {
        http.get(stack.url(&format!("/v1/download/status/{job_id}")))
            .header("X-User-Id", user)
            .send()
    };
    assert_eq!(status_as("carol").await.unwrap().status(), 200, "the job is carol's");
    assert_eq!(
        status_as("mallory").await.unwrap().status(),
        404,
        "not the client's claim"
    );
    assert_eq!(
        initiate(plain.base_url()).await.unwrap().status(),
        401,
        "through the key-mode proxy a client's X-User-Id never arrives"
    );
}

/// A wrong method on any documented path, through nginx, is a problem+json 405 whose `Allow`
/// is the path's methods in the published document: whether the intake or the notifier answers
/// (PUT), or nginx itself (TRACE, which it never passes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_any_documented_path_names_the_paths_methods() {
    init_logs();
    let mut stack = Stack::start(&[]).await.unwrap();
    stack.start_notifier().await.unwrap();
    let proxy = NginxServer::start(0, stack.intake_address(), stack.notifier_address(), "10s", "1h")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let document: serde_json::Value = http
        .get(format!("{}/openapi.json", proxy.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = uuid::Uuid::new_v4().to_string();
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 8);
    for (template, operations) in paths {
        let mut methods: Vec<String> = operations
            .as_object()
            .unwrap()
            .keys()
            .map(|method| method.to_ascii_uppercase())
            .collect();
        methods.sort();
        let expected = methods.join(", ");
        let path = template.replace("{jobId}", &job_id);
        for method in ["PUT", "TRACE"] {
            let answer = http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", proxy.base_url()),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 405, "{method} {path}");
            assert_eq!(answer.headers()["allow"], expected.as_str(), "{method} {path}");
            assert!(
                answer.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/problem+json"),
                "{method} {path}"
            );
            let problem: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(problem["code"], "METHOD_NOT_ALLOWED", "{method} {path}");
        }
    }
}
