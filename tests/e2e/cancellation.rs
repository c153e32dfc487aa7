//! Cancelling queued, running and finished jobs.

use std::time::Duration;

use system_tests::stack::Stack;
use system_tests::wait::wait_until;

use crate::init_logs;

async fn job_consumer_is_idle(stack: &Stack) -> bool {
    match stack.nats_client().await {
        Ok(client) => system_tests::queue::job_consumer_idle(&async_nats::jetstream::new(client)).await,
        Err(_) => false,
    }
}

/// `DELETE /v1/download/{jobId}` with `user`'s API key.
async fn cancel(stack: &Stack, user: &str, job_id: &str) -> reqwest::Response {
    stack
        .http
        .delete(stack.url(&format!("/v1/download/{job_id}")))
        .header("Authorization", stack.bearer(user).await.unwrap())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_job_never_runs() {
    init_logs();
    let mut stack = Stack::servers_only(&[]).await.unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    stack.put_file(30_000, 100).await.unwrap();
    let job_id = stack.initiate("erin", &[30_000]).await.unwrap();

    // Until a processor claims it, the job is its message: the bucket has no entry, and its
    // status is read from the message on its own subject.
    let queued = stack.status("erin", &job_id).await.unwrap();
    assert_eq!(
        (&queued["jobId"], &queued["status"]),
        (&job_id.clone().into(), &"queued".into())
    );
    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    let bucket = jetstream.get_key_value(common::names::JOBS_BUCKET).await.unwrap();
    assert!(bucket.entry(&job_id).await.unwrap().is_none());
    let record = system_tests::queue::queued_record(&jetstream, &job_id).await.unwrap();
    assert_eq!((record.user_id.as_str(), &record.file_ids[..]), ("erin", &[30_000][..]));

    let response = cancel(&stack, "erin", &job_id).await;
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"jobId": job_id, "status": "cancelled"}));
    // The cancellation created the record; the claim, which creates it too, will lose.
    let stored = bucket.get(&job_id).await.unwrap().expect("the cancellation's record");
    assert_eq!(
        common::JobRecord::from_json_bytes(&stored).unwrap().status,
        common::JobStatus::Cancelled
    );
    assert_eq!(
        cancel(&stack, "erin", &job_id).await.status(),
        200,
        "cancelling again changes nothing"
    );

    stack.start_processor(&[]).await.unwrap();
    wait_until(
        "the processor to consume the cancelled job",
        Duration::from_secs(20),
        || job_consumer_is_idle(&stack),
    )
    .await
    .unwrap();
    let status = stack.status("erin", &job_id).await.unwrap();
    assert_eq!(status["status"], "cancelled");
    assert_eq!(status["attempt"], 0, "the job never started: {status}");
    assert!(status["startedAt"].is_null());
    let events = stack.events(&job_id).await.unwrap();
    assert_eq!(events.len(), 1, "only the cancellation happened: {events:?}");
    assert_eq!(events[0]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_stopped_by_its_processor_and_leaves_no_bundle() {
    init_logs();
    let stack = Stack::start(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "30000"),
        ("DOWNLOAD_DELAY_MAX_MS", "30000"),
    ])
    .await
    .unwrap();
    stack.put_file(30_001, 1000).await.unwrap();
    stack.put_file(30_002, 1000).await.unwrap();
    let job_id = stack.initiate("frank", &[30_001, 30_002]).await.unwrap();
    stack
        .wait_for_status("frank", &job_id, Duration::from_secs(20), |status| {
            status["status"] == "processing" && status["progress"].as_u64().unwrap_or(0) > 10
        })
        .await
        .unwrap();

    assert_eq!(cancel(&stack, "frank", &job_id).await.status(), 202);
    // The processor lets go of the job long before its 30 s delay would end.
    wait_until(
        "the processor to release the cancelled job",
        Duration::from_secs(5),
        || job_consumer_is_idle(&stack),
    )
    .await
    .unwrap();
    let status = stack.status("frank", &job_id).await.unwrap();
    assert_eq!(status["status"], "cancelled");
    assert!(status["downloadUrl"].is_null());
    let events = stack.events(&job_id).await.unwrap();
    assert_eq!(
        events.last().unwrap()["status"],
        "cancelled",
        "nothing was written after the cancellation"
    );
    assert_eq!(stack.get_object(&format!("bundles/{job_id}.zip")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_job_is_a_conflict_and_another_tenants_job_is_not_found() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    stack.put_file(30_003, 10).await.unwrap();
    let finished = stack.initiate("gina", &[30_003]).await.unwrap();
    assert_eq!(
        stack.wait_for_terminal("gina", &finished).await.unwrap()["status"],
        "completed"
    );
    let response = cancel(&stack, "gina", &finished).await;
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "JOB_FINISHED");

    let failed = stack.initiate("gina", &[30_404]).await.unwrap();
    assert_eq!(
        stack.wait_for_terminal("gina", &failed).await.unwrap()["status"],
        "failed"
    );
    assert_eq!(cancel(&stack, "gina", &failed).await.status(), 409);

    assert_eq!(
        cancel(&stack, "mallory", &finished).await.status(),
        404,
        "another tenant's job is not found"
    );
}

/// A processor writes its progress and outcome on the record as its claim wrote it, without
/// reading it again: when the owner cancelled in between, that write loses the compare-and-set,
/// reads the record and leaves the cancellation alone; with nobody in between it is written on
/// the next revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_the_record_as_last_written_never_overwrites_a_cancellation_made_since() {
    use common::JobStatus;
    use common::store::{Change, Versioned};
    init_logs();
    let mut stack = Stack::servers_only(&[]).await.unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    let handles = stack.provision_processor_consumers().await.unwrap();
    let store = common::store::JobStore::new(handles.jetstream.clone(), handles.jobs.clone());
    let processing = |record: &mut common::JobRecord| {
        if record.status.is_terminal() {
            return false;
        }
        record.status = JobStatus::Processing;
        record.progress = 10;
        true
    };
    let progress = |record: &mut common::JobRecord| {
        if record.status != JobStatus::Processing {
            return false;
        }
        record.progress = 50;
        true
    };

    let job_id = common::JobId::parse(&stack.initiate("una", &[53_000]).await.unwrap()).unwrap();
    let Change::Written(claimed) = store.update(job_id, processing).await.unwrap() else {
        panic!("the claim is written");
    };
    // The write starts from the record as given (a field only the given copy has shows it was
    // not read again) and lands on the next revision.
    let mut known = claimed.clone();
    known.record.processed_by = Some("the claim's copy".into());
    let Change::Written(written) = store.update_from(job_id, Some(known), progress).await.unwrap() else {
        panic!("a write on the current record is written");
    };
    assert_eq!(written.revision, claimed.revision + 1);
    assert_eq!(written.record.processed_by.as_deref(), Some("the claim's copy"));
    assert_eq!(
        (written.record.progress, written.record.event_seq),
        (50, claimed.record.event_seq + 1)
    );

    let other = common::JobId::parse(&stack.initiate("una", &[53_001]).await.unwrap()).unwrap();
    let Change::Written(claimed) = store.update(other, processing).await.unwrap() else {
        panic!("the claim is written");
    };
    assert_eq!(cancel(&stack, "una", &other.to_string()).await.status(), 202);
    let stale: Versioned = claimed;
    let Change::Unchanged(current) = store.update_from(other, Some(stale), progress).await.unwrap() else {
        panic!("a write on a record changed since must not be written");
    };
    assert_eq!(current.status, JobStatus::Cancelled);
    let status = stack.status("una", &other.to_string()).await.unwrap();
    assert_eq!(status["status"], "cancelled");
}
