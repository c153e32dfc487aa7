//! The HTTP contract: validation problems, API keys, tenant isolation, rate limits, headers,
//! redirects.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::stack::Stack;

use crate::init_logs;

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().unwrap().starts_with("urn:problem:"));
    assert!(body["title"].is_string() && body["detail"].is_string() && body["code"].is_string());
    body
}

/// `POST /v1/download/initiate` of `body` as the tenant `val`.
async fn initiate(stack: &Stack, body: &str) -> reqwest::RequestBuilder {
    stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .header("Authorization", stack.bearer("val").await.unwrap())
        .header("Content-Type", "application/json")
        .body(body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_request_answers_a_problem_naming_its_field() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let long_url = format!("https://example.com/{}", "a".repeat(2048));
    let too_many: Vec<u64> = (10_000..11_001).collect();
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("{\"file_ids\": [10000".into(), None, "malformed JSON"),
        ("".into(), None, "body is required"),
        ("{}".into(), Some("file_ids"), "missing field"),
        ("{\"file_ids\": 10000}".into(), Some("file_ids"), "invalid type"),
        (
            "{\"file_ids\": [\"10000\"]}".into(),
            Some("file_ids[0]"),
            "invalid type",
        ),
        (
            "{\"file_ids\": [10000, 1.5]}".into(),
            Some("file_ids[1]"),
            "invalid type",
        ),
        ("{\"file_ids\": [9999]}".into(), Some("file_ids[0]"), "out of range"),
        (
            "{\"file_ids\": [10000, 100000001]}".into(),
            Some("file_ids[1]"),
            "out of range",
        ),
        ("{\"file_ids\": [-5]}".into(), Some("file_ids[0]"), "out of range"),
        ("{\"file_ids\": []}".into(), Some("file_ids"), "1 to 1000"),
        (
            json!({ "file_ids": too_many }).to_string(),
            Some("file_ids"),
            "got 1001",
        ),
        (
            "{\"file_ids\": [10000], \"callbackUrl\": \"ftp://x.example\"}".into(),
            Some("callbackUrl"),
            "http or https",
        ),
        (
            "{\"file_ids\": [10000], \"callbackUrl\": \"/relative\"}".into(),
            Some("callbackUrl"),
            "absolute",
        ),
        (
            json!({ "file_ids": [10000], "callbackUrl": long_url }).to_string(),
            Some("callbackUrl"),
            "2048",
        ),
        (
            "{\"file_ids\": [10000], \"callbackUrl\": 5}".into(),
            Some("callbackUrl"),
            "invalid type",
        ),
    ];
    for (body, field, detail) in cases {
        let response = initiate(&stack, &body).await.send().await.unwrap();
        let answer = problem(response, 400).await;
        assert_eq!(answer["code"], "VALIDATION_FAILED", "{body}");
        assert_eq!(answer["field"].as_str(), field, "field of {body}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(detail),
            "detail of {body}: {answer}"
        );
    }

    let wrong_type = stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .header("Authorization", stack.bearer("val").await.unwrap())
        .header("Content-Type", "text/plain")
        .body("{\"file_ids\": [10000]}")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(wrong_type, 400).await["field"], "Content-Type");

    let check = stack
        .http
        .post(stack.url("/v1/download/check"))
        .json(&json!({"file_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(check, 400).await["field"], "file_id");
    let check = stack
        .http
        .post(stack.url("/v1/download/check"))
        .json(&json!({"file_id": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(check, 400).await["field"], "file_id");

    let bad_job_id = stack
        .http
        .get(stack.url("/v1/download/status/not-a-uuid"))
        .header("Authorization", stack.bearer("val").await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(problem(bad_job_id, 400).await["field"], "jobId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_answer_413_whether_announced_or_streamed() {
    init_logs();
    let stack = Stack::start(&[("MAX_BODY_BYTES", "2048")]).await.unwrap();
    let big = format!("{{\"file_ids\": [{}]}}", vec!["10000"; 1000].join(","));
    let announced = initiate(&stack, &big).await.send().await.unwrap();
    assert_eq!(problem(announced, 413).await["code"], "PAYLOAD_TOO_LARGE");

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(100).map(|chunk| Ok(chunk.to_vec())).collect();
    let streamed = stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .header("Authorization", stack.bearer("val").await.unwrap())
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(streamed, 413).await["code"], "PAYLOAD_TOO_LARGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_endpoints_need_an_api_key_and_hide_other_tenants_jobs() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    stack.put_file(40_000, 10).await.unwrap();
    let job_id = stack.initiate("owner", &[40_000]).await.unwrap();
    stack.wait_for_terminal("owner", &job_id).await.unwrap();

    let paths = [
        format!("/v1/download/status/{job_id}"),
        format!("/v1/download/{job_id}"),
    ];
    let intruder_key = stack.bearer("intruder").await.unwrap();
    for path in &paths {
        let anonymous = stack.http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(problem(anonymous, 401).await["code"], "UNAUTHENTICATED");
        // Naming the owner is no credential.
        let claimed = stack
            .http
            .get(stack.url(path))
            .header("X-User-Id", "owner")
            .send()
            .await
            .unwrap();
        assert_eq!(problem(claimed, 401).await["code"], "UNAUTHENTICATED");
        let malformed = stack
            .http
            .get(stack.url(path))
            .header("Authorization", "Bearer a b")
            .send()
            .await
            .unwrap();
        assert_eq!(problem(malformed, 401).await["code"], "INVALID_CREDENTIALS");
        let intruder = stack
            .http
            .get(stack.url(path))
            .header("Authorization", &intruder_key)
            .send()
            .await
            .unwrap();
        assert_eq!(problem(intruder, 404).await["code"], "NOT_FOUND");
    }
    let anonymous_initiate = stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .json(&json!({"file_ids": [40000]}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(anonymous_initiate, 401).await["code"], "UNAUTHENTICATED");
    let anonymous_cancel = stack
        .http
        .delete(stack.url(&format!("/v1/download/{job_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(anonymous_cancel, 401).await["code"], "UNAUTHENTICATED");
    let unknown = stack
        .http
        .get(stack.url(&format!("/v1/download/status/{}", uuid::Uuid::now_v7())))
        .header("Authorization", stack.bearer("owner").await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(problem(unknown, 404).await["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_are_problems_too() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let missing = stack.http.get(stack.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(problem(missing, 404).await["code"], "NOT_FOUND");
    let wrong_method = stack
        .http
        .put(stack.url("/v1/download/initiate"))
        .header("Authorization", stack.bearer("u").await.unwrap())
        .send()
        .await
        .unwrap();
    // A 405 names the methods the route has (RFC 9110 `Allow`).
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_eq!(problem(wrong_method, 405).await["code"], "METHOD_NOT_ALLOWED");
    let job_route = stack
        .http
        .put(stack.url(&format!("/v1/download/{}", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(job_route.headers()["allow"], "DELETE, GET");
    assert_eq!(problem(job_route, 405).await["code"], "METHOD_NOT_ALLOWED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_endpoint_redirects_when_ready_and_says_when_to_retry_before() {
    init_logs();
    let stack = Stack::start(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "1500"),
        ("DOWNLOAD_DELAY_MAX_MS", "1500"),
    ])
    .await
    .unwrap();
    let content = stack.put_file(40_001, 5000).await.unwrap();
    let job_id = stack.initiate("hank", &[40_001]).await.unwrap();
    let hank = stack.bearer("hank").await.unwrap();
    let pending = stack
        .http
        .get(stack.url(&format!("/v1/download/{job_id}")))
        .header("Authorization", &hank)
        .send()
        .await
        .unwrap();
    assert_eq!(pending.status(), 200);
    assert!(pending.headers().contains_key("retry-after"));
    assert_eq!(pending.headers()["cache-control"], "no-store");
    let body: Value = pending.json().await.unwrap();
    assert!(
        matches!(body["status"].as_str(), Some("queued" | "processing")),
        "{body}"
    );
    assert!(body["estimatedCompletion"].is_string(), "{body}");

    stack.wait_for_terminal("hank", &job_id).await.unwrap();
    let ready = stack
        .http
        .get(stack.url(&format!("/v1/download/{job_id}")))
        .header("Authorization", &hank)
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::FOUND);
    let location = ready.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        reqwest::get(&location).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_while_the_simulated_delay_runs() {
    init_logs();
    let stack = Stack::start(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "3000"),
        ("DOWNLOAD_DELAY_MAX_MS", "3000"),
    ])
    .await
    .unwrap();
    stack.put_file(40_002, 10).await.unwrap();
    let job_id = stack.initiate("ivy", &[40_002]).await.unwrap();
    let midway = stack
        .wait_for_status("ivy", &job_id, Duration::from_secs(10), |status| {
            let progress = status["progress"].as_u64().unwrap_or(0);
            status["status"] == "processing" && (20..90).contains(&progress)
        })
        .await
        .unwrap();
    assert!(midway["startedAt"].is_string());
    // A running job's status says when to poll again; an ended job's does not.
    let status_of = || async {
        stack
            .http
            .get(stack.url(&format!("/v1/download/status/{job_id}")))
            .header("Authorization", stack.bearer("ivy").await.unwrap())
            .send()
            .await
            .unwrap()
    };
    let running = status_of().await;
    assert_eq!(running.headers()["retry-after"], "2");
    assert_eq!(stack.wait_for_terminal("ivy", &job_id).await.unwrap()["progress"], 100);
    assert!(status_of().await.headers().get("retry-after").is_none());
    let events = stack.events(&job_id).await.unwrap();
    let progress: Vec<u64> = events.iter().map(|event| event["progress"].as_u64().unwrap()).collect();
    assert!(
        progress.windows(2).all(|pair| pair[0] <= pair[1]),
        "progress never goes back: {progress:?}"
    );
    assert!(events.len() >= 5, "progress is published as it moves: {progress:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_gets_its_own_budget_and_429_says_when_to_retry() {
    init_logs();
    let stack = Stack::start(&[("RATE_LIMIT_MAX_REQUESTS", "3")]).await.unwrap();
    let (busy, calm) = (stack.bearer("busy").await.unwrap(), stack.bearer("calm").await.unwrap());
    for remaining in [2, 1, 0] {
        let response = stack
            .http
            .get(stack.url("/"))
            .header("Authorization", &busy)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert!(response.headers().contains_key("ratelimit-reset"));
    }
    let refused = stack
        .http
        .get(stack.url("/"))
        .header("Authorization", &busy)
        .send()
        .await
        .unwrap();
    assert!(
        refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(problem(refused, 429).await["code"], "RATE_LIMITED");
    let other = stack
        .http
        .get(stack.url("/"))
        .header("Authorization", &calm)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "another tenant has its own budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_an_anonymous_client_is_counted_by_the_rightmost_untrusted_hop() {
    init_logs();
    // The test's requests come from 127.0.0.1, here the proxy in front of the intake.
    let stack = Stack::start(&[("RATE_LIMIT_MAX_REQUESTS", "2"), ("TRUSTED_PROXIES", "127.0.0.1/32")])
        .await
        .unwrap();
    let from = |forwarded_for: &str| {
        stack
            .http
            .get(stack.url("/"))
            .header("X-Forwarded-For", forwarded_for.to_string())
            .send()
    };
    // The proxy appended the client's address; whatever the client wrote before it is not
    // believed, so rewriting it buys no fresh budget.
    for spoofed in ["6.6.6.6", "7.7.7.7"] {
        let response = from(&format!("{spoofed}, 203.0.113.9")).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let refused = from("8.8.8.8, 203.0.113.9").await.unwrap();
    assert_eq!(problem(refused, 429).await["code"], "RATE_LIMITED");
    // Another client behind the same proxy has its own budget.
    assert_eq!(from("203.0.113.10").await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_request_id_security_and_cors_headers() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let echoed = stack
        .http
        .get(stack.url("/"))
        .header("X-Request-ID", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");
    let body: Value = echoed.json().await.unwrap();
    assert!(body["message"].is_string());

    let problem_response = stack
        .http
        .get(stack.url("/nowhere"))
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let headers = problem_response.headers();
    assert!(
        uuid::Uuid::parse_str(headers["x-request-id"].to_str().unwrap()).is_ok(),
        "a fresh id is minted"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers.contains_key("x-frame-options"));
    assert!(headers.contains_key("strict-transport-security"));
    assert!(headers.contains_key("referrer-policy"));
    assert!(headers.contains_key("access-control-allow-origin"));
    // With `CORS_ORIGINS=*` (the default), as the old service: also without an `Origin`.
    let no_origin = stack.http.get(stack.url("/health")).send().await.unwrap();
    assert_eq!(no_origin.headers()["access-control-allow-origin"], "*");

    let preflight = stack
        .http
        .request(reqwest::Method::OPTIONS, stack.url("/v1/download/initiate"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type,authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert!(preflight.headers().contains_key("access-control-allow-methods"));

    for path in ["/openapi.json", "/openapi.yaml", "/docs/"] {
        let response = stack.http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}
