//! The README's `nats` CLI commands are the operator's interface to jobs. The `nats` CLI is in
//! none of the registries this project installs from, so this test reads the commands from the
//! README and runs each one's operation through the NATS protocol as the `ops` user (KV get,
//! watch, ls and info; stream and consumer info; a subscription; a stream view; micro ls, info
//! and stats; a request), on a stack with a job running, a stream open and limits on: every
//! documented bucket, key, stream, consumer, subject and service exists and answers as the
//! comment says. A renamed resource fails here, not in an operator's terminal.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use system_tests::servers::workspace_root;
use system_tests::stack::Stack;

use crate::init_logs;

/// The tenant the README's commands name.
const TENANT: &str = "demo";
const FILE_ID: u64 = 97_400;
const PATIENCE: Duration = Duration::from_secs(15);

/// The `nats …` lines of the README's operator section, with `<jobId>` and the shell's hex of
/// the tenant filled in, comments dropped, split into words (quotes removed).
fn documented_commands(job_id: &str) -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("## Operating with the `nats` CLI")
        .nth(1)
        .expect("the README has the operator section")
        .split("\n## ")
        .next()
        .unwrap();
    let hex_tenant = format!("$(printf %s {TENANT} | od -An -tx1 | tr -d ' \\n')");
    let tenant_hex = common::identity::key::hex(TENANT.as_bytes());
    section
        .lines()
        .filter(|line| line.starts_with("nats "))
        .map(|line| {
            let line = line.replace(&hex_tenant, &tenant_hex).replace("<jobId>", job_id);
            let command = match line.find("  #") {
                Some(comment) => &line[..comment],
                None => line.as_str(),
            };
            let command = command.split(" | ").next().unwrap();
            words(command)
        })
        .collect()
}

/// Shell words: whitespace-separated, single-quoted parts kept whole.
fn words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for character in command.chars() {
        match character {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Runs one documented command's operation; what it found, for the log.
async fn run(client: &async_nats::Client, command: &[String], job_id: &str) -> String {
    let js = jetstream::new(client.clone());
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["nats", "kv", "get", bucket, key, ..] => {
            let kv = js.get_key_value(*bucket).await.unwrap();
            let entry = kv
                .entry(*key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{bucket} has {key}"));
            let value: Value = serde_json::from_slice(&entry.value).unwrap();
            if *bucket == common::names::JOBS_BUCKET {
                for field in ["status", "progress", "attempt", "processedBy"] {
                    assert!(value.get(field).is_some(), "the record has {field}: {value}");
                }
            }
            format!("{bucket} {key}: {value}")
        }
        ["nats", "kv", "watch", bucket] => {
            let kv = js.get_key_value(*bucket).await.unwrap();
            let mut watch = kv.watch_all_from_revision(1).await.unwrap();
            let entry = tokio::time::timeout(PATIENCE, watch.next())
                .await
                .expect("a change arrives")
                .unwrap()
                .unwrap();
            format!("{bucket} changed: {}", entry.key)
        }
        ["nats", "kv", "ls", bucket] => {
            let kv = js.get_key_value(*bucket).await.unwrap();
            let keys: Vec<String> = match kv.keys().await {
                Ok(keys) => keys.map(Result::unwrap).collect().await,
                Err(error) => panic!("{bucket} lists its keys: {error}"),
            };
            let expected = match *bucket {
                common::names::JOBS_BUCKET => Some(job_id.to_string()),
                common::names::LIMITS_BUCKET => Some(common::names::hex_key("active", TENANT)),
                _ => None,
            };
            if let Some(expected) = expected {
                assert!(keys.contains(&expected), "{bucket} lists {expected}: {keys:?}");
            }
            if *bucket == common::names::RATE_LIMITS_BUCKET {
                assert!(keys.iter().any(|key| key.starts_with("rate.")), "{keys:?}");
            }
            format!("{bucket}: {} keys", keys.len())
        }
        ["nats", "kv", "info", bucket] => {
            let status = js.get_key_value(*bucket).await.unwrap().status().await.unwrap();
            format!("{bucket}: {} values", status.values())
        }
        ["nats", "stream", "info", stream] => {
            let info = js.get_stream(*stream).await.unwrap().info().await.unwrap().clone();
            format!("{stream}: {} messages", info.state.messages)
        }
        ["nats", "consumer", "info", stream, consumer] => {
            let mut consumer: jetstream::consumer::PullConsumer =
                js.get_consumer_from_stream(*consumer, *stream).await.unwrap();
            let info = consumer.info().await.unwrap();
            format!("{stream} {}: {} pending", info.name, info.num_pending)
        }
        ["nats", "sub", subject] => {
            let mut subscription = client.subscribe(subject.to_string()).await.unwrap();
            let message = tokio::time::timeout(PATIENCE, subscription.next())
                .await
                .expect("a job event arrives while the job runs")
                .unwrap();
            format!("{subject}: {}", message.subject)
        }
        ["nats", "stream", "view", stream, "--subject", subject] => {
            let stream_handle = js.get_stream(*stream).await.unwrap();
            let consumer = stream_handle
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: subject.to_string(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let message = tokio::time::timeout(PATIENCE, messages.next())
                .await
                .expect("the job's history has an event")
                .unwrap()
                .unwrap();
            assert!(message.subject.starts_with(&format!("downloads.events.{job_id}.")));
            format!("{stream} {subject}: {}", message.subject)
        }
        ["nats", "stream", "get", stream, "--last-for", subject] => {
            assert_eq!(
                (*stream, subject.to_string()),
                (common::names::JOBS_STREAM, common::names::job_submitted_subject(job_id))
            );
            let record = system_tests::queue::queued_record(&jetstream::new(client.clone()), job_id)
                .await
                .expect("the running job's message is still in the work queue");
            assert_eq!(
                (record.job_id.to_string(), record.status.as_str()),
                (job_id.to_string(), "queued")
            );
            format!("{stream} {subject}: the record as accepted")
        }
        ["nats", "micro", "ls"] => {
            let answer = client.request("$SRV.PING", "".into()).await.unwrap();
            let ping: Value = serde_json::from_slice(&answer.payload).unwrap();
            assert_eq!(ping["name"], "download-presigner", "{ping}");
            format!("micro: {}", ping["name"])
        }
        ["nats", "micro", verb @ ("info" | "stats"), service] => {
            let subject = format!("$SRV.{}.{service}", verb.to_ascii_uppercase());
            let answer = client.request(subject, "".into()).await.unwrap();
            let info: Value = serde_json::from_slice(&answer.payload).unwrap();
            assert_eq!(info["name"], *service, "{info}");
            assert!(info["endpoints"].is_array(), "{info}");
            format!(
                "micro {verb} {service}: {} endpoints",
                info["endpoints"].as_array().unwrap().len()
            )
        }
        ["nats", "request", subject, payload] => {
            let answer = client
                .request(subject.to_string(), payload.to_string().into())
                .await
                .unwrap();
            let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
            assert!(
                answer["url"].as_str().is_some_and(|url| url.starts_with("http")),
                "{answer}"
            );
            format!("{subject}: a URL")
        }
        other => panic!("the README documents a command this test does not know: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_nats_command_finds_what_its_comment_says() {
    init_logs();
    let mut stack = Stack::servers_only(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "30000"),
        ("DOWNLOAD_DELAY_MAX_MS", "30000"),
        ("PROGRESS_INTERVAL_MS", "250"),
        ("RATE_LIMIT_MAX_REQUESTS", "1000"),
        ("MAX_ACTIVE_JOBS_PER_TENANT", "10"),
    ])
    .await
    .unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_processor(&[]).await.unwrap();
    stack.start_intake().await.unwrap();
    let (notifier, _notifier) = stack.spawn_notifier(&[]).await.unwrap();
    stack.put_file(FILE_ID, 1000).await.unwrap();
    let job_id = stack.initiate(TENANT, &[FILE_ID]).await.unwrap();
    stack
        .wait_for_status(TENANT, &job_id, PATIENCE, |status| status["status"] == "processing")
        .await
        .unwrap();
    // A stream open, so the tenant holds a stream lease while the commands run.
    let stream = stack
        .http
        .get(format!("http://{notifier}/v1/download/{job_id}/stream"))
        .header("Authorization", stack.bearer(TENANT).await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    let client = stack.nats_client().await.unwrap();
    let commands = documented_commands(&job_id);
    assert!(commands.len() >= 20, "the README documents its commands: {commands:?}");
    for command in &commands {
        let found = tokio::time::timeout(Duration::from_secs(30), run(&client, command, &job_id))
            .await
            .unwrap_or_else(|_| panic!("{command:?} did not answer"));
        tracing::info!(command = command.join(" "), found, "documented command");
    }
    drop(stream);
}
