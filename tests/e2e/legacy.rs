//! The old service's endpoints keep their contract: `/check` needs no credentials; `/start`
//! works without them where the operator allows anonymous starts (`LEGACY_ANONYMOUS_START`, as
//! old clients send none), and with an API key the job belongs to the key's tenant.

use serde_json::{Value, json};
use system_tests::stack::Stack;

use crate::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_availability_key_and_size_without_identity() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    stack.put_file(60_000, 1234).await.unwrap();
    let present: Value = stack
        .http
        .post(stack.url("/v1/download/check"))
        .json(&json!({"file_id": 60000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        present,
        json!({"file_id": 60000, "available": true, "s3Key": "downloads/60000.zip", "size": 1234})
    );
    let absent: Value = stack
        .http
        .post(stack.url("/v1/download/check"))
        .json(&json!({"file_id": 60001}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        absent,
        json!({"file_id": 60001, "available": false, "s3Key": null, "size": null})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_answers_like_the_old_service_when_the_job_ends_within_the_wait() {
    init_logs();
    // An old client sends no credentials.
    let stack = Stack::start(&[("LEGACY_ANONYMOUS_START", "true")]).await.unwrap();
    let content = stack.put_file(60_002, 777).await.unwrap();
    let response = stack
        .http
        .post(stack.url("/v1/download/start"))
        .json(&json!({"file_id": 60002}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["file_id"], 60002);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["size"], 777);
    assert!(body["processingTimeMs"].is_u64());
    assert!(body["message"].is_string());
    let url = body["downloadUrl"].as_str().unwrap();
    assert_eq!(
        reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );

    let missing = stack
        .http
        .post(stack.url("/v1/download/start"))
        .json(&json!({"file_id": 60003}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 200);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["status"], "failed");
    assert!(body["downloadUrl"].is_null());
    assert!(body["message"].as_str().unwrap().contains("does not exist"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_hands_back_a_job_to_poll_instead_of_timing_out() {
    init_logs();
    let stack = Stack::start(&[
        ("START_WAIT_MS", "300"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "1500"),
        ("DOWNLOAD_DELAY_MAX_MS", "1500"),
    ])
    .await
    .unwrap();
    stack.put_file(60_004, 10).await.unwrap();
    let response = stack
        .http
        .post(stack.url("/v1/download/start"))
        .header("Authorization", stack.bearer("legacy-client").await.unwrap())
        .json(&json!({"file_id": 60004}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    let job_id = body["jobId"].as_str().unwrap();
    assert_eq!(location, format!("/v1/download/status/{job_id}"));
    assert_eq!(body["statusUrl"], location);
    let stream_url = body["streamUrl"].as_str().unwrap();
    assert!(
        stream_url.starts_with(&format!("/v1/download/{job_id}/stream?token=")),
        "{stream_url}"
    );
    assert_eq!(
        stack.wait_for_terminal("legacy-client", job_id).await.unwrap()["status"],
        "completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_start_that_outlasts_the_wait_is_followed_through_its_stream_url() {
    init_logs();
    let mut stack = Stack::start(&[
        ("LEGACY_ANONYMOUS_START", "true"),
        ("START_WAIT_MS", "300"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "1500"),
        ("DOWNLOAD_DELAY_MAX_MS", "1500"),
    ])
    .await
    .unwrap();
    stack.start_notifier().await.unwrap();
    let content = stack.put_file(60_005, 10).await.unwrap();
    let response = stack
        .http
        .post(stack.url("/v1/download/start"))
        .json(&json!({"file_id": 60005}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let job_id = body["jobId"].as_str().unwrap();

    // The job belongs to nobody who holds a key: its status is no one's to read.
    let status = stack.status_response("legacy-neighbour", job_id).await.unwrap();
    assert_eq!(status.status(), 404);

    // Its streamUrl's token is the way to it.
    let stream_url = format!(
        "http://{}{}",
        stack.notifier_address(),
        body["streamUrl"].as_str().unwrap()
    );
    let stream = stack.http.get(&stream_url).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut reader = system_tests::sse::SseReader::new(stream);
    let mut heartbeats = 0;
    let mut last = None;
    while let Some((_, event, data)) = reader
        .next_event(std::time::Duration::from_secs(20), &mut heartbeats)
        .await
        .unwrap()
    {
        last = Some((event.unwrap_or_default(), data));
    }
    let (event, data) = last.expect("the stream carries the job's events");
    assert_eq!(event, "completed");
    let url = data["downloadUrl"].as_str().unwrap();
    assert_eq!(
        reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );
}
