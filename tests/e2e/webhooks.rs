//! Signed, durable webhooks: verification with the job owner's (tenant's) secret, retries with
//! a stable id, 410, dead letters and replay, SSRF refusals.

use std::time::Duration;

use system_tests::receiver::Receiver;
use system_tests::stack::Stack;
use system_tests::wait::{wait_for, wait_until};

use crate::init_logs;

const PATIENCE: Duration = Duration::from_secs(30);

async fn stack_with_webhooks(extra: &[(&str, &str)]) -> Stack {
    // Every job owner is a tenant, whose own secrets sign its webhooks: no WEBHOOK_SECRETS.
    let mut overrides = vec![
        ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
        ("WEBHOOK_INITIAL_DELAY_MS", "200"),
        ("WEBHOOK_MAX_DELAY_MS", "1000"),
        ("WEBHOOK_TIMEOUT_MS", "2000"),
        ("WEBHOOK_MAX_ATTEMPTS", "3"),
    ];
    overrides.extend_from_slice(extra);
    let mut stack = Stack::start(&overrides).await.unwrap();
    stack.start_notifier().await.unwrap();
    stack
}

async fn webhooks_idle(stack: &Stack) -> bool {
    let Ok(client) = stack.nats_client().await else {
        return false;
    };
    let jetstream = async_nats::jetstream::new(client);
    system_tests::queue::consumer_idle(
        &jetstream,
        common::names::EVENTS_STREAM,
        common::names::WEBHOOK_CONSUMER,
    )
    .await
        && system_tests::queue::consumer_idle(
            &jetstream,
            common::names::WEBHOOK_REPLAYS_STREAM,
            common::names::WEBHOOK_REPLAY_CONSUMER,
        )
        .await
}

async fn dead_letters(stack: &Stack) -> Vec<notifier::webhooks::dead_letters::DeadLetter> {
    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    notifier::webhooks::dead_letters::list(&jetstream).await.unwrap()
}

/// Waits for the first dead letters to appear.
async fn first_dead_letters(stack: &Stack) -> Vec<notifier::webhooks::dead_letters::DeadLetter> {
    wait_for("a delivery to be dead-lettered", PATIENCE, || async {
        let letters = dead_letters(stack).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_same_signed_webhook_until_it_accepts_it_and_then_no_more() {
    init_logs();
    let stack = stack_with_webhooks(&[]).await;
    let mut receiver = Receiver::start(0, &[500, 500, 200]).await.unwrap();
    let content = stack.put_file(93_000, 500).await.unwrap();
    // The caller's trace reaches the receiver.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let initiated = stack
        .http
        .post(stack.url("/v1/download/initiate"))
        .header("Authorization", stack.bearer("web").await.unwrap())
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&serde_json::json!({ "file_ids": [93_000], "callbackUrl": receiver.url() }))
        .send()
        .await
        .unwrap();
    let job_id = system_tests::stack::accepted_job_id(initiated).await.unwrap();
    let secrets = stack.webhook_secrets("web").await.unwrap();
    let another_tenants = stack.webhook_secrets("web-neighbour").await.unwrap();

    let mut deliveries = Vec::new();
    while deliveries.len() < 3 {
        let delivery = tokio::time::timeout(PATIENCE, receiver.deliveries.recv())
            .await
            .expect("a delivery")
            .unwrap();
        delivery.verify(&secrets).expect("every delivery verifies");
        assert!(
            delivery.verify(&another_tenants).is_err(),
            "another tenant's secret does not verify the owner's webhook"
        );
        deliveries.push(delivery);
    }
    assert!(
        deliveries.iter().all(|delivery| delivery.id == deliveries[0].id),
        "the webhook-id is stable across retries"
    );
    for delivery in &deliveries {
        assert!(
            delivery.traceparent.starts_with(&format!("00-{trace_id}-")),
            "the job's trace continues at the receiver: {:?}",
            delivery.traceparent
        );
    }
    let payload = deliveries[2].json();
    assert_eq!(payload["type"], "download.completed");
    assert_eq!(payload["jobId"], job_id.as_str());
    assert_eq!(payload["status"], "completed");
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
    let url = payload["downloadUrl"].as_str().unwrap();
    assert_eq!(
        reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );

    wait_until("webhook deliveries to settle", PATIENCE, || webhooks_idle(&stack))
        .await
        .unwrap();
    assert!(receiver.deliveries.try_recv().is_err(), "nothing more after the 200");
    assert!(dead_letters(&stack).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_410_is_not_called_again() {
    init_logs();
    let stack = stack_with_webhooks(&[]).await;
    let mut receiver = Receiver::start(0, &[410]).await.unwrap();
    let job_id = stack
        .initiate_with_callback("gone", &[93_404], &receiver.url())
        .await
        .unwrap();
    let delivery = tokio::time::timeout(PATIENCE, receiver.deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.json()["type"], "download.failed");
    assert_eq!(delivery.json()["errorCode"], "FILE_NOT_FOUND");
    assert_eq!(delivery.json()["jobId"], job_id.as_str());
    wait_until("webhook deliveries to settle", PATIENCE, || webhooks_idle(&stack))
        .await
        .unwrap();
    assert!(receiver.deliveries.try_recv().is_err());
    assert!(dead_letters(&stack).await.is_empty(), "410 is an answer, not a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_ends_in_the_dead_letters_and_a_replay_delivers_once_it_is_back() {
    init_logs();
    let stack = stack_with_webhooks(&[]).await;
    let port = system_tests::servers::free_port();
    let callback = format!("http://127.0.0.1:{port}/hook");
    stack.put_file(93_001, 10).await.unwrap();
    let job_id = stack
        .initiate_with_callback("dead", &[93_001], &callback)
        .await
        .unwrap();
    let letters = first_dead_letters(&stack).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].url, callback);
    assert!(
        letters[0].last_error.contains("connection"),
        "{}",
        letters[0].last_error
    );
    assert!(letters[0].webhook_id.starts_with(&job_id));

    let mut receiver = Receiver::start(port, &[200]).await.unwrap();
    let jetstream = async_nats::jetstream::new(stack.nats_client().await.unwrap());
    let replayed =
        notifier::webhooks::dead_letters::replay(&jetstream, Some(std::slice::from_ref(&letters[0].webhook_id)))
            .await
            .unwrap();
    assert_eq!(replayed, 1);
    let delivery = tokio::time::timeout(PATIENCE, receiver.deliveries.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        delivery.id, letters[0].webhook_id,
        "the replay carries the original webhook-id"
    );
    delivery
        .verify(&stack.webhook_secrets("dead").await.unwrap())
        .expect("the replay is signed with the owner's secret");
    assert_eq!(delivery.json()["status"], "completed");
    assert!(dead_letters(&stack).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_milestones_are_posted_once_each_as_the_job_crosses_them() {
    init_logs();
    let stack = stack_with_webhooks(&[
        ("WEBHOOK_PROGRESS_MILESTONES", "75, 25,50"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "3000"),
        ("DOWNLOAD_DELAY_MAX_MS", "3000"),
        ("PROGRESS_INTERVAL_MS", "200"),
    ])
    .await;
    let mut receiver = Receiver::start(0, &[200]).await.unwrap();
    stack.put_file(93_050, 100).await.unwrap();
    let job_id = stack
        .initiate_with_callback("miles", &[93_050], &receiver.url())
        .await
        .unwrap();
    stack.wait_for_terminal("miles", &job_id).await.unwrap();
    wait_until("webhook deliveries to settle", PATIENCE, || webhooks_idle(&stack))
        .await
        .unwrap();
    let secrets = stack.webhook_secrets("miles").await.unwrap();
    let mut deliveries = Vec::new();
    while let Ok(delivery) = receiver.deliveries.try_recv() {
        delivery.verify(&secrets).expect("every delivery verifies");
        deliveries.push(delivery);
    }

    // What the job's own events say should have been posted: the highest milestone each change
    // crossed (a change can cross several when progress jumps).
    let events: Vec<common::messages::JobEvent> = stack
        .events(&job_id)
        .await
        .unwrap()
        .into_iter()
        .map(|event| serde_json::from_value(event).unwrap())
        .collect();
    let expected: Vec<String> = events
        .iter()
        .filter(|event| !event.status().is_terminal())
        .filter_map(|event| event.crossed(&[25, 50, 75]))
        .map(|milestone| format!("{job_id}-p{milestone}"))
        .collect();
    assert!(!expected.is_empty(), "the job crossed milestones: {events:?}");
    let progress: Vec<&system_tests::receiver::Delivery> = deliveries
        .iter()
        .filter(|delivery| delivery.json()["type"] == "download.progress")
        .collect();
    let mut posted: Vec<String> = progress.iter().map(|delivery| delivery.id.clone()).collect();
    posted.sort();
    assert_eq!(posted, expected, "one webhook per milestone crossed, none twice");
    for delivery in &progress {
        let body = delivery.json();
        let milestone: u64 = delivery.id.rsplit_once("-p").unwrap().1.parse().unwrap();
        assert!(body["progress"].as_u64().unwrap() >= milestone, "{body}");
        assert_eq!(body["status"], "processing");
        assert_eq!(body["jobId"], job_id.as_str());
    }
    let outcomes: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|delivery| delivery.json())
        .filter(|body| body["type"] != "download.progress")
        .collect();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["type"], "download.completed");
    assert!(outcomes[0].get("progress").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_ends_in_the_dead_letters_when_its_time_window_closes_before_its_attempts_run_out() {
    init_logs();
    let stack = stack_with_webhooks(&[("WEBHOOK_MAX_ATTEMPTS", "50"), ("WEBHOOK_MAX_WINDOW_SECONDS", "2")]).await;
    let callback = format!("http://127.0.0.1:{}/hook", system_tests::servers::free_port());
    stack.put_file(93_060, 10).await.unwrap();
    stack
        .initiate_with_callback("window", &[93_060], &callback)
        .await
        .unwrap();
    let letters = first_dead_letters(&stack).await;
    assert!(
        (2..50).contains(&letters[0].attempts),
        "retried, then stopped by the window: {} attempts",
        letters[0].attempts
    );
    assert!(
        letters[0].last_error.contains("gave up after"),
        "{}",
        letters[0].last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_targets_are_refused_even_through_a_name() {
    init_logs();
    // No allowlist: the defaults refuse loopback, private and link-local targets.
    let stack = stack_with_webhooks(&[("WEBHOOK_ALLOWED_NETWORKS", "")]).await;
    let mut receiver = Receiver::start(0, &[200]).await.unwrap();
    let by_name = format!("http://localhost:{}/hook", receiver.address.port());
    let targets = [
        by_name.as_str(),
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/hook",
    ];
    for target in targets {
        stack.initiate_with_callback("ssrf", &[93_405], target).await.unwrap();
    }
    let letters = wait_for("every refused delivery to be dead-lettered", PATIENCE, || async {
        let letters = dead_letters(&stack).await;
        (letters.len() == targets.len()).then_some(letters)
    })
    .await
    .unwrap();
    for letter in &letters {
        assert!(
            letter.last_error.contains("forbidden") || letter.last_error.contains("refused"),
            "{}",
            letter.last_error
        );
        assert_eq!(letter.attempts, 1, "a refused target is not retried");
    }
    assert!(
        receiver.deliveries.try_recv().is_err(),
        "the loopback receiver was never called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_ended_before_any_notifier_ever_ran_still_get_their_webhooks() {
    init_logs();
    let mut stack = Stack::start(&[("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")])
        .await
        .unwrap();
    let mut receiver = Receiver::start(0, &[200]).await.unwrap();
    stack.put_file(93_100, 64).await.unwrap();
    let job_id = stack
        .initiate_with_callback("early", &[93_100], &receiver.url())
        .await
        .unwrap();
    stack.wait_for_terminal("early", &job_id).await.unwrap();

    // The first notifier starts after the job ended: its webhook consumer delivers from the
    // stream's first event, not from "now".
    stack.start_notifier().await.unwrap();
    let delivery = tokio::time::timeout(PATIENCE, receiver.deliveries.recv())
        .await
        .expect("the webhook of a job that ended before the notifier started")
        .unwrap();
    delivery.verify(&stack.webhook_secrets("early").await.unwrap()).unwrap();
    assert_eq!(delivery.json()["jobId"], job_id.as_str());
    assert_eq!(delivery.json()["type"], "download.completed");
}
