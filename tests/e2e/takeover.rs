//! A job whose processor dies mid-way resumes on another processor within its lease, and the dead
//! attempt neither counts as a failure nor leaves a second outcome.

use std::time::Duration;

use common::JobStatus;
use futures::StreamExt;
use system_tests::stack::Stack;

use crate::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_processor_died_mid_way_resumes_elsewhere_within_its_lease_and_completes_once() {
    init_logs();
    let lease = Duration::from_secs(3);
    let mut stack = Stack::servers_only(&[
        ("JOB_ACK_WAIT_SECONDS", "3"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "500"),
        ("DOWNLOAD_DELAY_MAX_MS", "500"),
    ])
    .await
    .unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_intake().await.unwrap();
    let content = stack.put_file(52_000, 2048).await.unwrap();
    let job_id = stack.initiate("ivy", &[52_000]).await.unwrap();

    // A processor (played by the test) takes the job, claims it, reports progress and dies
    // without a word: no ack, no further write.
    let handles = stack.provision_processor_consumers().await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = handles
        .jetstream
        .get_consumer_from_stream(common::names::PROCESSOR_CONSUMER, common::names::JOBS_STREAM)
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    let _taken = batch.next().await.expect("the job is delivered").unwrap();
    let store = common::store::JobStore::new(handles.jetstream.clone(), handles.jobs.clone());
    let id = common::JobId::parse(&job_id).unwrap();
    store
        .update(id, |record| {
            record.status = JobStatus::Processing;
            record.attempt = 1;
            record.processed_by = Some("processor-that-dies".into());
            record.progress = 40;
            true
        })
        .await
        .unwrap();
    let died = tokio::time::Instant::now();

    // A live processor gets the job once the dead one's lease lapses, and finishes it.
    stack.start_processor(&[]).await.unwrap();
    let resumed = stack
        .wait_for_status("ivy", &job_id, Duration::from_secs(30), |status| status["attempt"] == 2)
        .await
        .unwrap();
    let waited = died.elapsed();
    assert!(
        waited <= lease + Duration::from_secs(2),
        "resumed {waited:?} after the processor died (lease {lease:?}): {resumed}"
    );
    let status = stack.wait_for_terminal("ivy", &job_id).await.unwrap();
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["attempt"], 2);
    let url = status["downloadUrl"].as_str().unwrap();
    assert_eq!(reqwest::get(url).await.unwrap().bytes().await.unwrap(), content);

    // The dead attempt is not a failed attempt, and the job has one outcome.
    let record = store.load(id).await.unwrap().unwrap().record;
    assert_eq!(record.failed_attempts, 0);
    let events = stack.events(&job_id).await.unwrap();
    let completions = events.iter().filter(|event| event["status"] == "completed").count();
    assert_eq!(completions, 1, "{events:?}");
    let attempts: Vec<u64> = events.iter().map(|event| event["attempt"].as_u64().unwrap()).collect();
    assert!(
        attempts.windows(2).all(|pair| pair[0] <= pair[1]),
        "attempts go back: {attempts:?}"
    );
}
