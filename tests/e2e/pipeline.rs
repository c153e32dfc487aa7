//! The happy paths: single and multi-file jobs, presigned URLs, work sharing.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::time::Duration;

use system_tests::stack::Stack;

use crate::init_logs;

/// The claims of a stream token (a JWT), read without checking its signature.
fn stream_token_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("the payload is base64url");
    serde_json::from_slice(&json).expect("the payload is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_file_job_completes_and_its_presigned_url_serves_the_file() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let content = stack.put_file(70_000, 300_000).await.unwrap();

    let initiated = stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .header("Authorization", stack.bearer("alice").await.unwrap())
        .json(&serde_json::json!({ "file_ids": [70000] }))
        .send()
        .await
        .unwrap();
    assert_eq!(initiated.status(), 202);
    let location = initiated.headers()["location"].to_str().unwrap().to_string();
    assert!(initiated.headers().contains_key("retry-after"));
    let body: serde_json::Value = initiated.json().await.unwrap();
    let job_id = body["jobId"].as_str().unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["totalFileIds"], 1);
    assert_eq!(location, format!("/v1/download/status/{job_id}"));
    assert_eq!(body["statusUrl"], location);
    let stream_url = body["streamUrl"].as_str().unwrap();
    let token = stream_url
        .strip_prefix(&format!("/v1/download/{job_id}/stream?token="))
        .unwrap_or_else(|| panic!("the stream URL is the job's, with a token: {stream_url}"));
    let claims = stream_token_claims(token);
    assert_eq!(
        (claims["sub"].as_str(), claims["job"].as_str()),
        (Some("alice"), Some(job_id)),
        "the token opens this job's stream, for its owner: {claims}"
    );
    assert!(claims["exp"].as_i64().unwrap() > chrono::Utc::now().timestamp());

    let status = stack.wait_for_terminal("alice", job_id).await.unwrap();
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["progress"], 100);
    assert_eq!(status["attempt"], 1);
    assert_eq!(
        status["files"],
        serde_json::json!([{"fileId": 70000, "available": true, "size": 300000}])
    );
    assert!(status["completedAt"].as_str().unwrap().ends_with('Z'));

    let url = status["downloadUrl"].as_str().unwrap();
    let downloaded = reqwest::get(url).await.unwrap();
    assert_eq!(downloaded.status(), 200);
    let disposition = downloaded.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(disposition.contains("70000.zip"), "{disposition}");
    assert_eq!(downloaded.bytes().await.unwrap().to_vec(), content);

    let tampered = url.replace("70000.zip", "70001.zip");
    assert_eq!(
        reqwest::get(&tampered).await.unwrap().status(),
        403,
        "a URL signed for another key is refused"
    );
    let mut forged = url.to_string();
    let signature_start = forged.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &forged[signature_start..signature_start + 1] == "0" {
        "1"
    } else {
        "0"
    };
    forged.replace_range(signature_start..signature_start + 1, flipped);
    assert_eq!(
        reqwest::get(&forged).await.unwrap().status(),
        403,
        "a forged signature is refused"
    );

    // Reads within a twentieth of the URL's lifetime (3600 s here) get the same URL, which keeps
    // at least 95 % of its lifetime whenever it is handed out.
    let second = stack.status("alice", job_id).await.unwrap();
    assert_eq!(
        second["downloadUrl"], status["downloadUrl"],
        "a fresh URL is handed out again"
    );
    let (lifetime, left) = url_lifetime(second["downloadUrl"].as_str().unwrap());
    assert_eq!(lifetime, 3_600_000);
    assert!(left * 20 >= lifetime * 19, "{left} ms of {lifetime} ms left");
}

/// A presigned URL's lifetime (`X-Amz-Expires`) and what it has left now as S3 counts it (from
/// `X-Amz-Date`), both in milliseconds.
fn url_lifetime(url: &str) -> (i64, i64) {
    let url = reqwest::Url::parse(url).unwrap();
    let query = |name: &str| {
        url.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .unwrap()
    };
    let lifetime: i64 = query("X-Amz-Expires").parse().unwrap();
    let signed = chrono::NaiveDateTime::parse_from_str(&query("X-Amz-Date"), "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc();
    (
        lifetime * 1000,
        lifetime * 1000 - (chrono::Utc::now() - signed).num_milliseconds(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_is_handed_out_again_only_while_it_keeps_95_percent_of_its_lifetime() {
    init_logs();
    // A 60 s lifetime: each URL is handed out for 1 s (a twentieth less the signing slack), then
    // a new one is signed; every URL read meanwhile keeps 95 % of its lifetime as S3 counts it.
    let stack = Stack::start(&[("PRESIGNED_URL_EXPIRY_SECONDS", "60")]).await.unwrap();
    stack.put_file(70_020, 1000).await.unwrap();
    let job_id = stack.initiate("alice", &[70_020]).await.unwrap();
    let first = stack.wait_for_terminal("alice", &job_id).await.unwrap()["downloadUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let renewed = system_tests::wait::wait_for("a new URL", Duration::from_secs(10), || {
        let (stack, job_id, first) = (&stack, &job_id, &first);
        async move {
            let status = stack.status("alice", job_id).await.ok()?;
            let url = status["downloadUrl"].as_str()?.to_string();
            let (lifetime, left) = url_lifetime(&url);
            assert!(
                left * 20 >= lifetime * 19,
                "handed out with {left} ms of {lifetime} ms left"
            );
            (url != *first).then_some(url)
        }
    })
    .await
    .unwrap();
    assert_eq!(reqwest::get(&renewed).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_presigned_url_is_refused() {
    init_logs();
    let stack = Stack::start(&[("PRESIGNED_URL_EXPIRY_SECONDS", "1")]).await.unwrap();
    stack.put_file(70_010, 1000).await.unwrap();
    let job_id = stack.initiate("alice", &[70_010]).await.unwrap();
    let status = stack.wait_for_terminal("alice", &job_id).await.unwrap();
    let url = status["downloadUrl"].as_str().unwrap().to_string();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    system_tests::wait::wait_until("the URL to expire", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            reqwest::get(&url)
                .await
                .map(|response| response.status() == 403)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_file_job_bundles_the_available_files_byte_for_byte_and_lists_the_missing_one() {
    init_logs();
    // Parts of 5 MiB and a 12 MiB source: the bundle spans several multipart parts.
    let stack = Stack::start(&[("BUNDLE_PART_SIZE_MB", "5")]).await.unwrap();
    let first = stack.put_file(10_001, 12 * 1024 * 1024 + 17).await.unwrap();
    let second = stack.put_file(10_002, 4096).await.unwrap();
    let empty = stack.put_file(10_003, 0).await.unwrap();

    let job_id = stack
        .initiate("bob", &[10_001, 10_002, 10_002, 99_999, 10_003])
        .await
        .unwrap();
    let status = stack.wait_for_terminal("bob", &job_id).await.unwrap();
    assert_eq!(status["status"], "completed", "{status}");
    let files = status["files"].as_array().unwrap();
    assert_eq!(files.len(), 4, "duplicates count once: {status}");
    assert_eq!(files[2], serde_json::json!({"fileId": 99999, "available": false}));

    let bundle_key = format!("bundles/{job_id}.zip");
    let url = status["downloadUrl"].as_str().unwrap();
    assert!(url.contains(&bundle_key));
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    assert_eq!(archive.len(), 3, "{names:?}");
    for (name, expected) in [("10001.zip", &first), ("10002.zip", &second), ("10003.zip", &empty)] {
        let mut entry = archive.by_name(name).unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert!(content == *expected, "entry {name} differs from its source");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_no_existing_file_fails_at_once_with_file_not_found() {
    init_logs();
    let stack = Stack::start(&[("JOB_MAX_ATTEMPTS", "3")]).await.unwrap();
    let job_id = stack.initiate("carol", &[55_555, 55_556]).await.unwrap();
    let status = stack.wait_for_terminal("carol", &job_id).await.unwrap();
    assert_eq!(status["status"], "failed");
    assert_eq!(status["errorCode"], "FILE_NOT_FOUND");
    assert_eq!(status["attempt"], 1, "permanent errors are not retried");
    assert!(status["downloadUrl"].is_null());
    assert_eq!(
        status["files"],
        serde_json::json!([
            {"fileId": 55555, "available": false},
            {"fileId": 55556, "available": false}
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_share_the_work_and_no_job_runs_twice() {
    init_logs();
    let mut stack = Stack::servers_only(&[]).await.unwrap();
    stack.start_presigner().await.unwrap();
    let first = stack
        .start_processor(&[("PROCESSOR_CONCURRENCY", "2"), ("PROCESSOR_ID", "worker-a")])
        .await
        .unwrap();
    let second = stack
        .start_processor(&[("PROCESSOR_CONCURRENCY", "2"), ("PROCESSOR_ID", "worker-b")])
        .await
        .unwrap();
    stack.start_intake().await.unwrap();
    stack.put_file(20_000, 2000).await.unwrap();

    let mut job_ids = Vec::new();
    for _ in 0..40 {
        job_ids.push(stack.initiate("dave", &[20_000]).await.unwrap());
    }
    let mut handled_by: HashMap<String, usize> = HashMap::new();
    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    let kv = jetstream.get_key_value(common::names::JOBS_BUCKET).await.unwrap();
    for job_id in &job_ids {
        let status = stack.wait_for_terminal("dave", job_id).await.unwrap();
        assert_eq!(status["status"], "completed");
        assert_eq!(status["attempt"], 1, "job {job_id} was delivered more than once");
        let record: serde_json::Value = serde_json::from_slice(&kv.get(job_id).await.unwrap().unwrap()).unwrap();
        *handled_by
            .entry(record["processedBy"].as_str().unwrap().to_string())
            .or_default() += 1;
        let events = stack.events(job_id).await.unwrap();
        let claims = events
            .iter()
            .filter(|event| event["status"] == "processing" && event["progress"] == 0)
            .count();
        assert_eq!(claims, 1, "job {job_id} was claimed {claims} times");
        let sequence: Vec<u64> = events.iter().map(|event| event["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            sequence,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "events are numbered without gaps"
        );
    }
    let workers: HashSet<&String> = handled_by.keys().collect();
    assert_eq!(
        workers,
        HashSet::from([&first, &second]),
        "both processors took jobs: {handled_by:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_trace_follows_the_job_through_nats() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    stack.put_file(20_100, 100).await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .header("Authorization", stack.bearer("tracy").await.unwrap())
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "file_ids": [20100] }))
        .send()
        .await
        .unwrap();
    let job_id = system_tests::stack::accepted_job_id(response).await.unwrap();
    stack.wait_for_terminal("tracy", &job_id).await.unwrap();

    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    let stream = jetstream.get_stream(common::names::EVENTS_STREAM).await.unwrap();
    let subject = format!("downloads.events.{job_id}.completed");
    let completed = stream.get_last_raw_message_by_subject(&subject).await.unwrap();
    let traceparent = completed
        .headers
        .get("traceparent")
        .expect("events carry trace context")
        .as_str()
        .to_string();
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")), "{traceparent}");

    let kv = jetstream.get_key_value(common::names::JOBS_BUCKET).await.unwrap();
    let record: serde_json::Value = serde_json::from_slice(&kv.get(&job_id).await.unwrap().unwrap()).unwrap();
    assert!(record["traceparent"].as_str().unwrap().contains(trace_id), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_follow_the_durations_of_recent_jobs() {
    init_logs();
    let mut stack = Stack::servers_only(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "10000"),
        ("DOWNLOAD_DELAY_MAX_MS", "10000"),
    ])
    .await
    .unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    // This processor has no simulated delay: its jobs take milliseconds.
    stack
        .start_processor(&[("DOWNLOAD_DELAY_ENABLED", "false")])
        .await
        .unwrap();
    stack.put_file(20_200, 100).await.unwrap();

    let esti = stack.bearer("esti").await.unwrap();
    let estimate = |stack: &Stack| {
        let request = stack
            .http
            .post(stack.url("/v1/download/initiate"))
            .header("Authorization", &esti)
            .json(&serde_json::json!({ "file_ids": [20200] }));
        async move {
            let body: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            (
                body["jobId"].as_str().unwrap().to_string(),
                body["estimatedTime"].as_u64().unwrap(),
            )
        }
    };
    let (first_job, first_estimate) = estimate(&stack).await;
    assert_eq!(
        first_estimate, 11,
        "before any job finished: the configured delay plus a second"
    );
    stack.wait_for_terminal("esti", &first_job).await.unwrap();
    system_tests::wait::wait_for(
        "the estimate to learn from the finished job",
        Duration::from_secs(15),
        || async {
            let (_, estimate) = estimate(&stack).await;
            (estimate == 1).then_some(())
        },
    )
    .await
    .unwrap();
}
