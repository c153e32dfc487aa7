//! Failure handling: storage outages, retries, timeouts, malformed messages, health.

use std::time::Duration;

use system_tests::stack::Stack;
use system_tests::wait::wait_until;

use crate::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_during_a_job_is_retried_and_the_job_completes_once_storage_is_back() {
    init_logs();
    let mut stack = Stack::start(&[
        ("JOB_MAX_ATTEMPTS", "10"),
        ("JOB_RETRY_INITIAL_DELAY_MS", "500"),
        ("JOB_RETRY_MAX_DELAY_MS", "1000"),
        ("S3_REQUEST_TIMEOUT_MS", "1000"),
    ])
    .await
    .unwrap();
    let content = stack.put_file(50_000, 4000).await.unwrap();
    stack.s3.stop();

    let job_id = stack.initiate("jack", &[50_000]).await.unwrap();
    let retrying = stack
        .wait_for_status("jack", &job_id, Duration::from_secs(20), |status| {
            status["status"] == "queued" && status["attempt"].as_u64().unwrap_or(0) >= 2
        })
        .await
        .unwrap();
    assert_eq!(retrying["errorCode"], "STORAGE_UNAVAILABLE", "{retrying}");
    assert!(retrying["error"].as_str().unwrap().contains("retrying"), "{retrying}");

    stack.s3.restart().await.unwrap();
    let status = stack.wait_for_terminal("jack", &job_id).await.unwrap();
    assert_eq!(status["status"], "completed", "{status}");
    assert!(status["error"].is_null(), "a completed job carries no error: {status}");
    let url = status["downloadUrl"].as_str().unwrap();
    assert_eq!(
        reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_transiently_fails_once_after_its_last_attempt() {
    init_logs();
    let mut stack = Stack::start(&[
        ("JOB_MAX_ATTEMPTS", "3"),
        ("JOB_RETRY_INITIAL_DELAY_MS", "200"),
        ("S3_REQUEST_TIMEOUT_MS", "1000"),
    ])
    .await
    .unwrap();
    stack.put_file(50_001, 10).await.unwrap();
    stack.s3.stop();
    let job_id = stack.initiate("kate", &[50_001]).await.unwrap();
    let status = stack.wait_for_terminal("kate", &job_id).await.unwrap();
    assert_eq!(status["status"], "failed");
    assert_eq!(status["errorCode"], "STORAGE_UNAVAILABLE");
    assert_eq!(status["attempt"], 3);
    assert!(
        status["error"].as_str().unwrap().contains("after 3 attempts"),
        "{status}"
    );
    let events = stack.events(&job_id).await.unwrap();
    let failures = events.iter().filter(|event| event["status"] == "failed").count();
    assert_eq!(failures, 1, "the final failure is recorded exactly once: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_past_its_timeout_fails_with_timeout() {
    init_logs();
    let stack = Stack::start(&[
        ("JOB_TIMEOUT_SECONDS", "1"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "20000"),
        ("DOWNLOAD_DELAY_MAX_MS", "20000"),
    ])
    .await
    .unwrap();
    stack.put_file(50_002, 10).await.unwrap();
    let job_id = stack.initiate("liam", &[50_002]).await.unwrap();
    let status = stack.wait_for_terminal("liam", &job_id).await.unwrap();
    assert_eq!(status["status"], "failed");
    assert_eq!(status["errorCode"], "TIMEOUT");
    assert_eq!(status["attempt"], 1, "a timeout is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_job_messages_are_terminated_and_the_processor_keeps_working() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let client = stack.nats_client().await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    for garbage in [
        &b"not json"[..],
        b"{\"type\":\"job.submitted.v9\"}",
        b"{\"type\":\"job.submitted.v1\",\"jobId\":\"../x\"}",
        b"",
    ] {
        jetstream
            .publish(common::names::JOB_SUBMITTED_SUBJECT, garbage.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A well-formed message for a job that has no record is dropped too, once the job is older
    // than a replica could lag (a brand-new job's missing record is looked for again first).
    let minted_long_ago = uuid::Timestamp::from_unix(uuid::NoContext, 1_700_000_000, 0);
    let orphan = common::messages::JobMessage::SubmittedV1 {
        job_id: common::JobId(uuid::Uuid::new_v7(minted_long_ago)),
        user_id: "x".into(),
        file_ids: vec![10_000],
    };
    jetstream
        .publish(
            common::names::JOB_SUBMITTED_SUBJECT,
            serde_json::to_vec(&orphan).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // A v2 message of a job the intake refused and fenced off (a delete marker where its record
    // would go) is terminated unrun, whatever its age.
    let fenced = common::JobRecord::queued(common::JobId::new(), "mia".into(), vec![50_003], None, 1, None);
    let bucket = jetstream.get_key_value(common::names::JOBS_BUCKET).await.unwrap();
    bucket
        .delete_expect_revision(fenced.job_id.to_string(), Some(0))
        .await
        .unwrap();

    // A v2 message queued longer than a record lives (whatever was written under its key, a
    // cancellation or a refusal's marker, may have expired) is dropped unrun, as a v1 message
    // whose record expired always was.
    let old_job = || {
        common::JobRecord::queued(
            common::JobId(uuid::Uuid::new_v7(minted_long_ago)),
            "mia".into(),
            vec![50_003],
            None,
            1,
            None,
        )
    };
    let expired = old_job();
    // As old, but claimed before (a redelivery after a day): it goes on from its record.
    let mut claimed = old_job();
    claimed.status = common::JobStatus::Processing;
    claimed.attempt = 1;
    claimed.event_seq = 1;
    let store = common::store::JobStore::new(jetstream.clone(), bucket.clone());
    store.create(&claimed).await.unwrap();
    stack.put_file(50_003, 10).await.unwrap();
    for record in [&fenced, &expired, &claimed] {
        let message = common::messages::JobMessage::submitted(record.clone());
        jetstream
            .publish(message.subject(), message.to_json_bytes())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let job_id = stack.initiate("mia", &[50_003]).await.unwrap();
    assert_eq!(
        stack.wait_for_terminal("mia", &job_id).await.unwrap()["status"],
        "completed"
    );
    wait_until("the work queue to be empty", Duration::from_secs(10), || {
        system_tests::queue::work_queue_empty(&jetstream)
    })
    .await
    .unwrap();
    for dropped in [fenced.job_id.to_string(), expired.job_id.to_string()] {
        let status = stack.status_response("mia", &dropped).await.unwrap();
        assert_eq!(status.status(), 404, "{dropped} is no job");
        assert!(stack.events(&dropped).await.unwrap().is_empty(), "{dropped} never ran");
    }
    let resumed = stack
        .wait_for_terminal("mia", &claimed.job_id.to_string())
        .await
        .unwrap();
    assert_eq!(resumed["status"], "completed", "{resumed}");
    let marker = bucket
        .entry(fenced.job_id.to_string())
        .await
        .unwrap()
        .expect("the marker stays");
    assert_eq!(marker.operation, async_nats::jetstream::kv::Operation::Delete);
    assert!(
        bucket.entry(expired.job_id.to_string()).await.unwrap().is_none(),
        "no record was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_healthy_then_names_storage_when_it_stops() {
    init_logs();
    let mut stack = Stack::start(&[("S3_REQUEST_TIMEOUT_MS", "1000")]).await.unwrap();
    let healthy = stack.http.get(stack.url("/health")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    let body: serde_json::Value = healthy.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "healthy", "checks": {"storage": "ok", "queue": "ok"}})
    );

    stack.s3.stop();
    let unhealthy = stack.http.get(stack.url("/health")).send().await.unwrap();
    assert_eq!(unhealthy.status(), 503);
    let body: serde_json::Value = unhealthy.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "unhealthy", "checks": {"storage": "error", "queue": "ok"}})
    );

    stack.s3.restart().await.unwrap();
    stack.nats.stop();
    let no_queue = stack.http.get(stack.url("/health")).send().await.unwrap();
    assert_eq!(no_queue.status(), 503);
    let body: serde_json::Value = no_queue.json().await.unwrap();
    assert_eq!(body["checks"], serde_json::json!({"storage": "ok", "queue": "error"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_workers_die_on_every_attempt_fails_once_with_retries_exhausted() {
    init_logs();
    let mut stack = Stack::servers_only(&[
        ("JOB_MAX_ATTEMPTS", "2"),
        ("JOB_MAX_DELIVERIES", "2"),
        ("JOB_ACK_WAIT_SECONDS", "1"),
    ])
    .await
    .unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    stack.put_file(50_010, 10).await.unwrap();
    let job_id = stack.initiate("nina", &[50_010]).await.unwrap();

    // The consumers as a processor with these settings creates them (the processor owns them).
    let handles = stack.provision_processor_consumers().await.unwrap();
    // The test plays a worker that takes the job and dies without a word, on both deliveries.
    let jetstream = handles.jetstream;
    let consumer: async_nats::jetstream::consumer::PullConsumer = jetstream
        .get_consumer_from_stream(common::names::PROCESSOR_CONSUMER, common::names::JOBS_STREAM)
        .await
        .unwrap();
    for delivery in 1..=2 {
        use futures::StreamExt;
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        let message = batch.next().await.expect("the job is delivered").unwrap();
        assert_eq!(message.info().unwrap().delivered, delivery);
    }

    // Only now does a real processor start: the advisory waited for it in its stream.
    stack.start_processor(&[]).await.unwrap();
    let status = stack.wait_for_terminal("nina", &job_id).await.unwrap();
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "RETRIES_EXHAUSTED");
    let events = stack.events(&job_id).await.unwrap();
    assert_eq!(
        events.iter().filter(|event| event["status"] == "failed").count(),
        1,
        "{events:?}"
    );
    wait_until(
        "the exhausted message to leave the work queue",
        Duration::from_secs(10),
        || system_tests::queue::work_queue_empty(&jetstream),
    )
    .await
    .unwrap();
}
