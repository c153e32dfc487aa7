//! Identity end to end: API keys on every job endpoint and the stream, tenant isolation,
//! revocation across instances, stream tokens, per-tenant webhook signatures checked by the
//! independent `standardwebhooks` package, per-tenant rate limits, and the gateway mode.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use system_tests::receiver::Receiver;
use system_tests::servers::{NatsUser, venv_binary};
use system_tests::stack::Stack;
use system_tests::wait::wait_until;

use crate::init_logs;

async fn stack_with_notifier(overrides: &[(&str, &str)]) -> Stack {
    let mut stack = Stack::start(overrides).await.unwrap();
    stack.start_notifier().await.unwrap();
    stack.put_file(10_000, 1024).await.unwrap();
    stack
}

/// The status code, the problem's `code` and the `WWW-Authenticate` header of an answer.
async fn refusal(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_client_error() {
        assert_eq!(content_type, "application/problem+json", "{body}");
    }
    (status, body["code"].as_str().unwrap_or_default().to_string(), challenge)
}

/// Every job endpoint of `job_id`: method and absolute URL (the stream on the notifier).
fn job_endpoints(stack: &Stack, job_id: &str) -> Vec<(Method, String)> {
    vec![
        (Method::GET, stack.url(&format!("/v1/download/status/{job_id}"))),
        (Method::GET, stack.url(&format!("/v1/download/{job_id}"))),
        (Method::DELETE, stack.url(&format!("/v1/download/{job_id}"))),
        (Method::GET, stack.stream_url(job_id)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_every_job_endpoint_answers_401_and_a_forged_user_header_changes_nothing() {
    init_logs();
    let stack = stack_with_notifier(&[]).await;
    let job_id = stack.initiate("alice", &[10_000]).await.unwrap();
    let initiate = stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .json(&serde_json::json!({ "file_ids": [10_000] }));
    let (status, code, challenge) = refusal(initiate.send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"));
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    for (method, url) in job_endpoints(&stack, &job_id) {
        for forged in [None, Some("alice")] {
            let mut request = stack.http.request(method.clone(), &url);
            if let Some(user) = forged {
                request = request.header("X-User-Id", user);
            }
            let (status, code, challenge) = refusal(request.send().await.unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {url} with X-User-Id {forged:?}"
            );
            assert_eq!(code, "UNAUTHENTICATED", "{method} {url}");
            assert!(challenge.starts_with("Bearer"), "{method} {url}: {challenge}");
        }
    }
    // The job is untouched: the forged cancel did nothing.
    let record = stack.wait_for_terminal("alice", &job_id).await.unwrap();
    assert_eq!(record["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_job_is_404_on_status_result_cancel_and_stream() {
    init_logs();
    let stack = stack_with_notifier(&[]).await;
    let job_id = stack.initiate("alice", &[10_000]).await.unwrap();
    let bob = stack.bearer("bob").await.unwrap();
    for (method, url) in job_endpoints(&stack, &job_id) {
        let response = stack
            .http
            .request(method.clone(), &url)
            .header("Authorization", &bob)
            .header("X-User-Id", "alice")
            .send()
            .await
            .unwrap();
        let (status, code, _) = refusal(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "NOT_FOUND"),
            "{method} {url}"
        );
    }
    let record = stack.wait_for_terminal("alice", &job_id).await.unwrap();
    assert_eq!(record["status"], "completed", "bob's cancel did not reach alice's job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_an_unknown_or_a_non_bearer_key_is_refused_with_a_reason() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let key = stack.key("alice").await.unwrap();
    let position = key.len() - 10;
    let swapped = if &key[position..=position] == "a" { "b" } else { "a" };
    let typo = format!("{}{swapped}{}", &key[..position], &key[position + 1..]);
    let unknown = common::identity::key::generate();
    let unknown = secrecy::ExposeSecret::expose_secret(&unknown.text).to_string();
    let url = stack.url("/v1/download/initiate");
    let body = serde_json::json!({ "file_ids": [10_000] });
    for (authorization, expected_detail) in [
        (format!("Bearer {typo}"), "checksum"),
        (format!("Bearer {unknown}"), "not valid"),
        ("Bearer dk_short".to_string(), "malformed"),
        (format!("Basic {key}"), "Bearer"),
    ] {
        let response = stack
            .http
            .post(&url)
            .header("Authorization", &authorization)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{authorization}");
        assert!(response.headers().contains_key("www-authenticate"));
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "INVALID_CREDENTIALS");
        assert!(
            problem["detail"].as_str().unwrap().contains(expected_detail),
            "{authorization}: {problem}"
        );
        assert!(
            !problem.to_string().contains(&key[16..]),
            "the key's secret is not echoed"
        );
    }
    let accepted = stack
        .http
        .post(&url)
        .header("Authorization", format!("Bearer {key}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_on_two_intakes_within_five_seconds() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    stack.put_file(10_000, 1024).await.unwrap();
    let job_id = stack.initiate("alice", &[10_000]).await.unwrap();
    let second = intake::Application::build(intake::Settings::from_env(&stack.env_as(NatsUser::Intake)).unwrap())
        .await
        .unwrap();
    let second_address = second.local_addr();
    let stop_second = tokio_util::sync::CancellationToken::new();
    let second_task = tokio::spawn(second.run_until_stopped(stop_second.clone()));
    let key = stack.key("alice").await.unwrap();
    let status_urls = [
        stack.url(&format!("/v1/download/status/{job_id}")),
        format!("http://{second_address}/v1/download/status/{job_id}"),
    ];
    let answers = |key: String| {
        let stack = &stack;
        let status_urls = &status_urls;
        async move {
            let mut statuses = Vec::new();
            for url in status_urls {
                let response = stack.http.get(url).bearer_auth(&key).send().await.unwrap();
                statuses.push(response.status());
            }
            statuses
        }
    };
    assert_eq!(answers(key.clone()).await, [StatusCode::OK, StatusCode::OK]);
    let key_id = common::identity::key::PresentedKey::parse(&key)
        .unwrap()
        .id()
        .to_string();
    stack.identity().await.unwrap().revoke_key(&key_id).await.unwrap();
    let revoked_at = std::time::Instant::now();
    wait_until("both intakes to refuse the revoked key", Duration::from_secs(5), || {
        let answers = &answers;
        let key = key.clone();
        async move { answers(key).await == [StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED] }
    })
    .await
    .unwrap();
    eprintln!("revocation reached both intakes in {:?}", revoked_at.elapsed());
    let problem: Value = stack
        .http
        .get(&status_urls[1])
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("revoked"), "{problem}");
    // Another key of the same tenant still reads the job.
    let other = stack
        .identity()
        .await
        .unwrap()
        .create_key("alice", "second")
        .await
        .unwrap();
    let other = secrecy::ExposeSecret::expose_secret(&other.key).to_string();
    assert_eq!(answers(other).await, [StatusCode::OK, StatusCode::OK]);
    stop_second.cancel();
    second_task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_token_opens_its_own_job_only_until_it_expires_and_the_status_renews_it() {
    init_logs();
    let stack = stack_with_notifier(&[("STREAM_TOKEN_TTL_SECONDS", "3")]).await;
    let alice = stack.bearer("alice").await.unwrap();
    let initiate = || async {
        let response = stack
            .http
            .post(stack.url("/v1/download/initiate"))
            .header("Authorization", &alice)
            .json(&serde_json::json!({ "file_ids": [10_000] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json::<Value>().await.unwrap()
    };
    let (first, second) = (initiate().await, initiate().await);
    let notifier = format!("http://{}", stack.notifier_address());
    let stream_url = |body: &Value| format!("{notifier}{}", body["streamUrl"].as_str().unwrap());
    let first_url = stream_url(&first);
    assert!(first_url.contains("?token="), "{first_url}");
    let opened = stack.http.get(&first_url).send().await.unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    assert_eq!(opened.headers()["content-type"], "text/event-stream");
    drop(opened);
    // The token of the first job on the second job's stream.
    let token = first_url.split("?token=").nth(1).unwrap();
    let second_job = second["jobId"].as_str().unwrap();
    let misused = format!("{notifier}/v1/download/{second_job}/stream?token={token}");
    let (status, code, _) = refusal(stack.http.get(&misused).send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")
    );
    // A tampered token.
    let tampered = format!("{first_url}x");
    let (status, code, _) = refusal(stack.http.get(&tampered).send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")
    );
    // Once expired, 401 TOKEN_EXPIRED; the status hands out a fresh streamUrl that opens.
    wait_until("the stream token to expire", Duration::from_secs(10), || async {
        let response = stack.http.get(&first_url).send().await.unwrap();
        response.status() == StatusCode::UNAUTHORIZED
            && response.json::<Value>().await.unwrap()["code"] == "TOKEN_EXPIRED"
    })
    .await
    .unwrap();
    let first_job = first["jobId"].as_str().unwrap();
    let status = stack.status("alice", first_job).await.unwrap();
    let renewed = stream_url(&status);
    assert_ne!(renewed, first_url);
    let reopened = stack.http.get(format!("{renewed}&lastEventId=1")).send().await.unwrap();
    assert_eq!(reopened.status(), StatusCode::OK);
    // An API key opens a stream too (fetch-based SSE clients).
    let with_key = stack
        .http
        .get(stack.stream_url(first_job))
        .header("Authorization", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), StatusCode::OK);
}

/// Runs the `standardwebhooks` package (PyPI) on a delivery with `secret`: whether it verifies.
async fn standard_webhooks_verifies(delivery: &system_tests::receiver::Delivery, secret: &str) -> bool {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
delivery = json.load(sys.stdin)
headers = {"webhook-id": delivery["id"], "webhook-timestamp": delivery["timestamp"],
           "webhook-signature": delivery["signature"]}
try:
    Webhook(delivery["secret"]).verify(delivery["body"].encode(), headers)
except Exception as error:
    print(f"refused: {error!r}", file=sys.stderr)
    sys.exit(3)
"#;
    let input = serde_json::json!({
        "id": delivery.id,
        "timestamp": delivery.timestamp,
        "signature": delivery.signature,
        "body": String::from_utf8(delivery.body.clone()).unwrap(),
        "secret": secret,
    });
    let mut child = tokio::process::Command::new(venv_binary("python").unwrap())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let status = child.wait().await.unwrap();
    assert!(matches!(status.code(), Some(0 | 3)), "python failed: {status}");
    status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_with_their_owners_secret_as_the_standardwebhooks_package_verifies() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
        ("WEBHOOK_INITIAL_DELAY_MS", "200"),
    ])
    .await;
    let mut receiver = Receiver::start(0, &[200]).await.unwrap();
    let alice = stack.webhook_secrets("alice").await.unwrap();
    let bob = stack.webhook_secrets("bob").await.unwrap();
    assert_eq!((alice.len(), bob.len()), (1, 1));
    assert_ne!(alice, bob);
    stack
        .initiate_with_callback("alice", &[10_000], &receiver.url())
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), receiver.deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.json()["type"], "download.completed");
    assert!(
        standard_webhooks_verifies(&delivery, &alice[0]).await,
        "the owner's secret verifies"
    );
    assert!(
        !standard_webhooks_verifies(&delivery, &bob[0]).await,
        "another tenant's does not"
    );

    // Rotation: both secrets sign until the old one retires; receivers on either verify.
    let new_secret = stack
        .identity()
        .await
        .unwrap()
        .rotate_webhook_secret("alice", chrono::Duration::hours(1))
        .await
        .unwrap();
    // The notifier follows the tenants bucket: the next delivery carries both signatures (the
    // change reaches it within moments; a job started before that is signed once).
    let mut rotated = None;
    for _ in 0..10 {
        stack
            .initiate_with_callback("alice", &[10_000], &receiver.url())
            .await
            .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(30), receiver.deliveries.recv())
            .await
            .unwrap()
            .unwrap();
        if delivery.signature.split(' ').count() == 2 {
            rotated = Some(delivery);
            break;
        }
    }
    let rotated = rotated.expect("a delivery signed with both secrets");
    assert!(standard_webhooks_verifies(&rotated, &new_secret).await);
    assert!(standard_webhooks_verifies(&rotated, &alice[0]).await);
    assert!(!standard_webhooks_verifies(&rotated, &bob[0]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_per_tenant_and_never_count_health_checks() {
    init_logs();
    let stack = Stack::start(&[("RATE_LIMIT_MAX_REQUESTS", "3")]).await.unwrap();
    let (alice, bob) = (stack.bearer("alice").await.unwrap(), stack.bearer("bob").await.unwrap());
    let missing = stack.url("/v1/download/status/0192d0f6-4a4e-7cc0-8000-000000000000");
    let status_of = |authorization: &str| {
        stack
            .http
            .get(&missing)
            .header("Authorization", authorization)
            .header("X-Forwarded-For", "203.0.113.9")
            .send()
    };
    for _ in 0..3 {
        assert_eq!(status_of(&alice).await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    let limited = status_of(&alice).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        status_of(&bob).await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "bob has a budget of his own, though he shares alice's address"
    );
    for _ in 0..10 {
        let health = stack.http.get(stack.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        assert!(!health.headers().contains_key("ratelimit-remaining"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_start_needs_a_key_unless_the_operator_allows_anonymous_starts() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    stack.put_file(10_000, 1024).await.unwrap();
    let start = || {
        stack
            .http
            .post(stack.url("/v1/download/start"))
            .json(&serde_json::json!({ "file_id": 10_000 }))
    };
    let (status, code, challenge) = refusal(start().send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"));
    assert!(challenge.starts_with("Bearer"));
    let with_key = start()
        .header("Authorization", stack.bearer("alice").await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), StatusCode::OK, "the job ends within START_WAIT_MS");
    let body: Value = with_key.json().await.unwrap();
    assert_eq!(body["status"], "completed");
    assert!(body["downloadUrl"].as_str().unwrap().starts_with("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_gateway_mode_the_gateways_header_is_the_tenant_and_keys_are_not_consulted() {
    init_logs();
    let stack = stack_with_notifier(&[
        ("AUTH_MODE", "gateway"),
        ("AUTH_GATEWAY_HEADER", "X-Authenticated-User"),
    ])
    .await;
    let initiate = |user: Option<&str>| {
        let mut request = stack
            .http
            .post(stack.url("/v1/download/initiate"))
            .json(&serde_json::json!({ "file_ids": [10_000] }));
        if let Some(user) = user {
            request = request.header("X-Authenticated-User", user);
        }
        request.send()
    };
    let accepted = initiate(Some("carol")).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let body: Value = accepted.json().await.unwrap();
    let job_id = body["jobId"].as_str().unwrap();
    let status = |user: &str| {
        stack
            .http
            .get(stack.url(&format!("/v1/download/status/{job_id}")))
            .header("X-Authenticated-User", user)
            .send()
    };
    assert_eq!(status("carol").await.unwrap().status(), StatusCode::OK);
    assert_eq!(status("dave").await.unwrap().status(), StatusCode::NOT_FOUND);
    let (code, _, _) = refusal(initiate(None).await.unwrap()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, _) = refusal(initiate(Some("not a valid id")).await.unwrap()).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, _) = refusal(initiate(Some("anonymous")).await.unwrap()).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "the owner of anonymous legacy jobs is no gateway user"
    );
    let stream = format!(
        "http://{}{}",
        stack.notifier_address(),
        body["streamUrl"].as_str().unwrap()
    );
    assert_eq!(stack.http.get(&stream).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_every_forwarded_for_line_counts_and_the_rightmost_hop_is_the_client() {
    init_logs();
    let stack = Stack::start(&[("RATE_LIMIT_MAX_REQUESTS", "3"), ("TRUSTED_PROXIES", "127.0.0.1/32")])
        .await
        .unwrap();
    let url = stack.url("/v1/download/status/0192d0f6-4a4e-7cc0-8000-000000000000");
    // A proxy that adds its own X-Forwarded-For line after the client's: the client writes
    // whatever it likes in the first line, the proxy's line names the real client.
    let request = |claimed: String| {
        stack
            .http
            .get(&url)
            .header("X-Forwarded-For", claimed)
            .header("X-Forwarded-For", "203.0.113.9")
            .send()
    };
    for attempt in 0..3 {
        let answer = request(format!("6.6.6.{attempt}")).await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = request("6.6.6.99".to_string()).await.unwrap();
    assert_eq!(
        limited.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a fresh first line does not buy a fresh budget"
    );
    let other = stack
        .http
        .get(&url)
        .header("X-Forwarded-For", "203.0.113.10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        StatusCode::UNAUTHORIZED,
        "another client has its own budget"
    );
}
