//! On a replicated JetStream cluster (3 nodes, R3), as production runs: services started all at
//! once on a fresh cluster come up, and killing the node that leads the job stream, the records
//! bucket or the events stream under load fails no job, loses no event or webhook and freezes no
//! open stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use system_tests::receiver::Receiver;
use system_tests::sse::SseReader;
use system_tests::stack::{Stack, accepted_job_id};
use tokio_util::sync::CancellationToken;

use crate::init_logs;

const USER: &str = "cluster-user";
const FILE_ID: u64 = 61_000;

/// What one initiate came to, and what its follower saw.
struct Submitted {
    status: u16,
    job_id: Option<String>,
}

/// Follows a job's stream with the API key in `bearer` until its terminal event, resuming with
/// `Last-Event-ID` whenever the stream is cut; returns the terminal event's name, or what went
/// wrong.
async fn follow(http: reqwest::Client, url: String, bearer: String, within: Duration) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last_id: Option<String> = None;
    while tokio::time::Instant::now() < deadline {
        let mut request = http.get(&url).header("Authorization", &bearer);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = match request.send().await {
            Ok(response) if response.status() == 200 => response,
            Ok(response) if response.status() == 204 => return Ok("ended before".into()),
            _ => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut reader = SseReader::new(response);
        let mut heartbeats = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match reader.next_event(left, &mut heartbeats).await {
                Ok(Some((id, event, _data))) => {
                    if id.is_some() {
                        last_id = id;
                    }
                    let event = event.unwrap_or_default();
                    if matches!(event.as_str(), "completed" | "failed" | "cancelled") {
                        return Ok(event);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    Err(format!(
        "no terminal event within {within:?} (last event id {last_id:?})"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_of_each_stream_under_load_fails_loses_and_freezes_nothing() {
    init_logs();
    let mut receiver = Receiver::start(0, &[200]).await.unwrap();
    let mut stack = Stack::on_cluster(
        3,
        &[
            ("DOWNLOAD_DELAY_ENABLED", "true"),
            ("DOWNLOAD_DELAY_MIN_MS", "200"),
            ("DOWNLOAD_DELAY_MAX_MS", "1500"),
            ("JOB_ACK_WAIT_SECONDS", "6"),
            ("PROGRESS_INTERVAL_MS", "250"),
            ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
            ("WEBHOOK_INITIAL_DELAY_MS", "500"),
            ("WEBHOOK_MAX_DELAY_MS", "2000"),
        ],
    )
    .await
    .unwrap();
    // Everything at once on a cluster that has no stream yet, as a fresh deployment starts.
    stack.start_together().await.unwrap();
    let bytes = stack.put_file(FILE_ID, 4096).await.unwrap();
    // The tenant of every job: its key authenticates the load, its secret signs the webhooks.
    let bearer = stack.bearer(USER).await.unwrap();
    let secrets = stack.webhook_secrets(USER).await.unwrap();

    // A steady load: a job every 150 ms with a callback, every third one followed over SSE.
    let stop_load = CancellationToken::new();
    let load = tokio::spawn({
        let (base, notifier, callback) = (
            stack.base_url(),
            format!("http://{}", stack.notifier_address()),
            receiver.url(),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let stop_load = stop_load.clone();
        let bearer = bearer.clone();
        async move {
            let mut submitted = Vec::new();
            let mut followers = Vec::new();
            let mut ticker = tokio::time::interval(Duration::from_millis(150));
            while !stop_load.is_cancelled() {
                ticker.tick().await;
                let answer = http
                    .post(format!("{base}/v1/download/initiate"))
                    .header("Authorization", &bearer)
                    .json(&serde_json::json!({ "file_ids": [FILE_ID], "callbackUrl": callback }))
                    .send()
                    .await
                    .expect("the intake answers");
                let status = answer.status().as_u16();
                let job_id = accepted_job_id(answer).await.ok();
                if let Some(job_id) = &job_id
                    && submitted.len() % 3 == 0
                {
                    let url = format!("{notifier}/v1/download/{job_id}/stream");
                    let follower = tokio::spawn(follow(http.clone(), url, bearer.clone(), Duration::from_secs(120)));
                    followers.push((job_id.clone(), follower));
                }
                submitted.push(Submitted { status, job_id });
            }
            (submitted, followers)
        }
    });

    // Faults: the node leading each stream killed for 5 s, one after the other.
    for stream in ["DOWNLOAD_JOBS", "KV_download-jobs", "DOWNLOAD_EVENTS"] {
        // 3 s of load between faults: the schedule of the scenario, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cluster = stack.nats.cluster();
        let leader = cluster.leader_of(stream).await.unwrap();
        tracing::info!(stream, node = cluster.name(leader), "killing the leader");
        cluster.kill(leader);
        // The fault lasts 5 s: the length of the outage is the scenario, not a wait.
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.restart(leader).await.unwrap();
        cluster.wait_current(leader, Duration::from_secs(60)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_load.cancel();
    let (submitted, followers) = load.await.unwrap();

    // Every initiate was accepted: elections are ridden out within the request.
    let refused: Vec<u16> = submitted
        .iter()
        .filter(|answer| answer.status != 202)
        .map(|answer| answer.status)
        .collect();
    assert!(refused.is_empty(), "initiates not accepted: {refused:?}");
    let job_ids: Vec<String> = submitted.iter().filter_map(|answer| answer.job_id.clone()).collect();
    assert!(job_ids.len() > 50, "only {} jobs submitted", job_ids.len());

    // Every job completed: unavailability never counts as a job's failure.
    for job_id in &job_ids {
        let status = tokio::time::timeout(Duration::from_secs(120), stack.wait_for_terminal(USER, job_id))
            .await
            .unwrap_or_else(|_| panic!("job {job_id} never ended"))
            .unwrap();
        assert_eq!(status["status"], "completed", "job {job_id}: {status}");
    }
    // One completed job's URL serves the file.
    let status = stack.status(USER, &job_ids[job_ids.len() / 2]).await.unwrap();
    let url = status["downloadUrl"].as_str().unwrap();
    assert_eq!(reqwest::get(url).await.unwrap().bytes().await.unwrap(), bytes);

    // Every job's events are numbered without gaps and end with its one completion.
    let mut completed_seq: HashMap<String, u64> = HashMap::new();
    for job_id in &job_ids {
        let events = stack.events(job_id).await.unwrap();
        let by_seq: BTreeMap<u64, &Value> = events
            .iter()
            .map(|event| (event["seq"].as_u64().unwrap(), event))
            .collect();
        let numbers: Vec<u64> = by_seq.keys().copied().collect();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, expected, "job {job_id}: event numbers have gaps");
        let (last, last_event) = by_seq.last_key_value().unwrap();
        assert_eq!(
            last_event["status"], "completed",
            "job {job_id}: last event {last_event}"
        );
        let completions: HashSet<u64> = events
            .iter()
            .filter(|event| event["status"] == "completed")
            .map(|event| event["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(completions.len(), 1, "job {job_id}: completions {completions:?}");
        completed_seq.insert(job_id.clone(), *last);
    }

    // Every open stream saw its job's end: no feed froze.
    for (job_id, follower) in followers {
        let seen = follower.await.unwrap();
        assert!(
            matches!(seen.as_deref(), Ok("completed") | Ok("ended before")),
            "stream of job {job_id}: {seen:?}"
        );
    }

    // Every job's completion webhook arrived, signed.
    let mut missing: HashSet<String> = completed_seq
        .iter()
        .map(|(job_id, seq)| format!("{job_id}-{seq}"))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(delivery)) = tokio::time::timeout(left, receiver.deliveries.recv()).await else {
            panic!(
                "{} webhooks never arrived, e.g. {:?}",
                missing.len(),
                missing.iter().next()
            );
        };
        delivery.verify(&secrets).unwrap();
        missing.remove(&delivery.id);
    }
}
