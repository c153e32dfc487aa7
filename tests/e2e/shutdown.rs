//! The graceful path under load: every service stopped as SIGTERM stops it (drain, then exit)
//! while jobs run, then started again, loses no job and leaves none with two outcomes.

use std::time::Duration;

use system_tests::sse::SseReader;
use system_tests::stack::Stack;

use crate::init_logs;

const USER: &str = "drain";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_every_service_under_load_loses_no_job() {
    init_logs();
    let mut stack = Stack::start(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "1000"),
        ("DOWNLOAD_DELAY_MAX_MS", "3000"),
        ("SHUTDOWN_GRACE_SECONDS", "1"),
    ])
    .await
    .unwrap();
    stack.start_processor(&[]).await.unwrap();
    stack.start_notifier().await.unwrap();
    stack.put_file(53_000, 1024).await.unwrap();
    let mut job_ids = Vec::new();
    for _ in 0..30 {
        job_ids.push(stack.initiate(USER, &[53_000]).await.unwrap());
    }
    let followed = job_ids[0].clone();
    // A programmatic client: its API key, and Last-Event-ID when it resumes.
    let bearer = stack.bearer(USER).await.unwrap();
    let stream = stack
        .http
        .get(stack.stream_url(&followed))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(stream);
    let mut heartbeats = 0;
    let (first_id, _, _) = reader
        .next_event(Duration::from_secs(10), &mut heartbeats)
        .await
        .unwrap()
        .unwrap();

    // Processors: one drains (its grace of 1 s is shorter than most jobs, so it hands them
    // back), the other keeps working; then a fresh one joins.
    let draining = stack.processors.remove(0);
    tokio::time::timeout(Duration::from_secs(15), draining.stop())
        .await
        .expect("a processor drains within its grace period and a few seconds")
        .unwrap();
    stack.start_processor(&[]).await.unwrap();

    // The notifier closes its streams on the way out; the client resumes on the next one.
    let notifier = stack.notifier.take().unwrap();
    tokio::time::timeout(Duration::from_secs(15), notifier.stop())
        .await
        .expect("the notifier stops")
        .unwrap();
    let mut last_id = first_id;
    while let Ok(Some((id, _, _))) = reader.next_event(Duration::from_secs(5), &mut heartbeats).await {
        last_id = id;
    }
    stack.start_notifier().await.unwrap();

    // The intake and the presigner stop and come back; jobs go on meanwhile.
    let intake = stack.intake.take().unwrap();
    tokio::time::timeout(Duration::from_secs(35), intake.stop())
        .await
        .expect("the intake stops")
        .unwrap();
    let presigner = stack.presigner.take().unwrap();
    tokio::time::timeout(Duration::from_secs(15), presigner.stop())
        .await
        .expect("the presigner stops")
        .unwrap();
    stack.start_intake().await.unwrap();
    stack.start_presigner().await.unwrap();

    let mut request = stack
        .http
        .get(stack.stream_url(&followed))
        .header("Authorization", &bearer);
    if let Some(id) = &last_id {
        request = request.header("Last-Event-ID", id);
    }
    let resumed = request.send().await.unwrap();
    if resumed.status() == 200 {
        let mut resumed = SseReader::new(resumed);
        let mut names = Vec::new();
        while let Some((_, name, _)) = resumed
            .next_event(Duration::from_secs(60), &mut heartbeats)
            .await
            .unwrap()
        {
            names.push(name.unwrap_or_default());
        }
        assert_eq!(names.last().map(String::as_str), Some("completed"), "{names:?}");
    } else {
        assert_eq!(resumed.status(), 204, "the resumed stream had seen the end already");
    }

    for job_id in &job_ids {
        let status = stack.wait_for_terminal(USER, job_id).await.unwrap();
        assert_eq!(status["status"], "completed", "job {job_id}: {status}");
        assert!(status["downloadUrl"].is_string(), "{status}");
        let events = stack.events(job_id).await.unwrap();
        let completions = events.iter().filter(|event| event["status"] == "completed").count();
        assert_eq!(completions, 1, "job {job_id}: {events:?}");
    }
}
