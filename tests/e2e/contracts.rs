//! The committed contracts match the code: the OpenAPI document, the JSON Schemas of messages
//! and records, and the JetStream definitions in `nats/` as a real server holds them.
//! Run with `UPDATE_CONTRACTS=1` to rewrite the files from the code after an intended change.

use std::path::Path;

use futures::TryStreamExt;
use serde_json::Value;
use system_tests::servers::{NatsCredentials, NatsServer, venv_binary, workspace_root};
use system_tests::stack::Stack;

use crate::init_logs;

fn updating() -> bool {
    std::env::var_os("UPDATE_CONTRACTS").is_some()
}

/// Compares `actual` with the committed file, or rewrites it when updating.
fn assert_matches_file(relative: &str, actual: &str) {
    let path = workspace_root().join(relative);
    if updating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_CONTRACTS=1", path.display()));
    assert!(
        committed == actual,
        "{relative} differs from what the code generates; if the change is intended, run the tests with UPDATE_CONTRACTS=1 and commit"
    );
}

/// Drops what the server adds on its own (`_nats.*` metadata: server version and API level), so the
/// files hold only this system's definitions.
fn without_server_metadata(mut config: Value) -> Value {
    if let Some(metadata) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|key, _| !key.starts_with("_nats."));
        if metadata.is_empty() {
            config.as_object_mut().unwrap().remove("metadata");
        }
    }
    config
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_openapi_document_is_what_the_intake_serves() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let json: Value = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["info"]["title"], "Download service");
    // The documented webhook is the one the notifier sends: same fields, same type names.
    assert!(
        json["webhooks"]["downloadFinished"]["post"].is_object(),
        "the webhook is in the document"
    );
    // The webhook body is `common::wire::DownloadWebhookBody`, the type the notifier sends.
    assert_eq!(
        json["webhooks"]["downloadFinished"]["post"]["requestBody"]["content"]["application/json; charset=utf-8"]["schema"]
            ["$ref"],
        "#/components/schemas/DownloadWebhookBody"
    );
    let documented_types = &json["components"]["schemas"]["WebhookType"]["enum"];
    assert_eq!(
        documented_types,
        &serde_json::json!([
            "download.completed",
            "download.failed",
            "download.cancelled",
            "download.progress"
        ])
    );
    assert_stream_matches_the_document(&stack, &json).await;
    assert_matches_file("openapi/openapi.json", &pretty(&json));
    let yaml = stack
        .http
        .get(stack.url("/openapi.yaml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_matches_file("openapi/openapi.yaml", &yaml);
}

/// The documented stream operation is what the notifier serves: statuses, headers, event names
/// and data fields; and an intake reached directly names the misrouting.
async fn assert_stream_matches_the_document(stack: &Stack, json: &Value) {
    let operation = &json["paths"]["/v1/download/{jobId}/stream"]["get"];
    assert_eq!(operation["operationId"], "streamDownloadEvents");
    let statuses: std::collections::BTreeSet<&str> = operation["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for status in ["200", "204", "400", "401", "404", "429", "503"] {
        assert!(statuses.contains(status), "{status} is documented: {statuses:?}");
    }
    let ok = &operation["responses"]["200"];
    assert!(ok["content"]["text/event-stream"].is_object());
    for header in ["Cache-Control", "X-Accel-Buffering"] {
        assert!(ok["headers"][header].is_object(), "{header} is documented: {ok}");
    }
    let schema = &json["components"]["schemas"]["StreamEventData"];
    let documented: std::collections::BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();

    // A real completed job's stream, read from the notifier through the streamUrl its status
    // gives (with its token), as a browser opens it.
    let (notifier_url, notifier) = stack.spawn_notifier(&[]).await.unwrap();
    stack.put_file(93_001, 100).await.unwrap();
    let job_id = stack.initiate("contract", &[93_001]).await.unwrap();
    let status = stack.wait_for_terminal("contract", &job_id).await.unwrap();
    let stream_url = status["streamUrl"].as_str().unwrap();
    assert!(
        stream_url.starts_with(&format!("/v1/download/{job_id}/stream?token=")),
        "the streamUrl is the documented operation's path: {stream_url}"
    );
    let response = stack
        .http
        .get(format!("http://{notifier_url}{stream_url}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut reader = system_tests::sse::SseReader::new(response);
    let mut heartbeats = 0;
    let (id, name, data) = reader
        .next_event(std::time::Duration::from_secs(10), &mut heartbeats)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(name.as_deref(), Some("completed"));
    assert_eq!(id.unwrap(), data["seq"].to_string());
    let sent: std::collections::BTreeSet<&str> = data.as_object().unwrap().keys().map(String::as_str).collect();
    assert!(sent.is_subset(&documented), "sent {sent:?}, documented {documented:?}");
    for field in required {
        assert!(sent.contains(field), "required {field} is sent");
    }
    assert!(data["downloadUrl"].is_string());
    drop(notifier);

    let misdirected = stack.http.get(stack.url(stream_url)).send().await.unwrap();
    assert_eq!(misdirected.status(), 421);
    let problem: Value = misdirected.json().await.unwrap();
    assert_eq!(problem["code"], "MISDIRECTED");
}

#[test]
fn the_committed_json_schemas_are_generated_from_the_message_types() {
    for (file, schema) in common::messages::schema_documents() {
        assert_matches_file(&format!("schemas/{file}"), &pretty(&schema));
    }
    let committed: Vec<String> = std::fs::read_dir(workspace_root().join("schemas"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".schema.json"))
        .collect();
    assert_eq!(
        committed.len(),
        common::messages::schema_documents().len(),
        "a schema file without a type: {committed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_definitions_are_exactly_what_provisioning_creates() {
    init_logs();
    let server = NatsServer::start().await.unwrap();
    let client = server.client().await.unwrap();
    let topology = common::nats::Topology::default();
    common::nats::provision(&client, &topology, common::nats::Resource::ALL)
        .await
        .unwrap();
    // A second provisioning (another instance starting) changes nothing and does not fail.
    common::nats::provision(&client, &topology, common::nats::Resource::ALL)
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    // The webhook consumers belong to the notifier, which creates them from its own settings.
    let webhooks = notifier::webhooks::WebhookTopology::default();
    jetstream
        .create_consumer_on_stream(
            notifier::webhooks::webhook_consumer_config(&webhooks),
            common::names::EVENTS_STREAM,
        )
        .await
        .unwrap();
    jetstream
        .create_consumer_on_stream(
            notifier::webhooks::webhook_replay_consumer_config(&webhooks),
            common::names::WEBHOOK_REPLAYS_STREAM,
        )
        .await
        .unwrap();

    let streams = [
        (
            common::names::JOBS_STREAM.to_string(),
            "nats/streams/DOWNLOAD_JOBS.json",
        ),
        (
            common::names::EVENTS_STREAM.to_string(),
            "nats/streams/DOWNLOAD_EVENTS.json",
        ),
        (
            common::names::ADVISORIES_STREAM.to_string(),
            "nats/streams/DOWNLOAD_ADVISORIES.json",
        ),
        (
            common::names::WEBHOOK_REPLAYS_STREAM.to_string(),
            "nats/streams/DOWNLOAD_WEBHOOK_REPLAYS.json",
        ),
        (
            format!("KV_{}", common::names::JOBS_BUCKET),
            "nats/kv/download-jobs.json",
        ),
        (
            format!("KV_{}", common::names::WEBHOOK_DEAD_LETTERS_BUCKET),
            "nats/kv/download-webhook-dead-letters.json",
        ),
        (
            format!("KV_{}", common::names::STREAM_LEASES_BUCKET),
            "nats/kv/download-stream-leases.json",
        ),
        (
            format!("KV_{}", common::names::API_KEYS_BUCKET),
            "nats/kv/download-api-keys.json",
        ),
        (
            format!("KV_{}", common::names::TENANTS_BUCKET),
            "nats/kv/download-tenants.json",
        ),
        (
            format!("KV_{}", common::names::IDEMPOTENCY_BUCKET),
            "nats/kv/download-idempotency.json",
        ),
        (
            format!("KV_{}", common::names::LIMITS_BUCKET),
            "nats/kv/download-limits.json",
        ),
        (
            format!("KV_{}", common::names::RATE_LIMITS_BUCKET),
            "nats/kv/download-rate-limits.json",
        ),
    ];
    // Every stream and bucket provisioning created has its file: none is left out of nats/.
    let created: std::collections::BTreeSet<String> = jetstream.stream_names().try_collect().await.unwrap();
    let documented: std::collections::BTreeSet<String> = streams.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(created, documented, "streams and buckets provisioning creates");
    let committed_files = |folder: &str| {
        std::fs::read_dir(workspace_root().join(folder))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    for (name, file) in &streams {
        let mut stream = jetstream.get_stream(name).await.unwrap();
        let config = serde_json::to_value(&stream.info().await.unwrap().config).unwrap();
        assert_matches_file(file, &pretty(&without_server_metadata(config)));
    }
    assert_eq!(
        committed_files("nats/streams") + committed_files("nats/kv"),
        streams.len(),
        "a stream or bucket file in nats/ that the code no longer creates"
    );
    let consumers = [
        (common::names::JOBS_STREAM, common::names::PROCESSOR_CONSUMER),
        (common::names::ADVISORIES_STREAM, common::names::ADVISORIES_CONSUMER),
        (common::names::EVENTS_STREAM, common::names::WEBHOOK_CONSUMER),
        (
            common::names::WEBHOOK_REPLAYS_STREAM,
            common::names::WEBHOOK_REPLAY_CONSUMER,
        ),
    ];
    assert_eq!(
        committed_files("nats/consumers"),
        consumers.len(),
        "a consumer file the code no longer creates"
    );
    for (stream, name) in consumers {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            jetstream.get_consumer_from_stream(name, stream).await.unwrap();
        let config = without_server_metadata(serde_json::to_value(&consumer.info().await.unwrap().config).unwrap());
        assert_matches_file(&format!("nats/consumers/{stream}-{name}.json"), &pretty(&config));
    }
}

#[test]
fn the_server_configuration_in_nats_is_valid() {
    let config = workspace_root().join("nats/nats-server.conf");
    assert!(Path::new(&config).exists());
    // Its users' passwords come from the environment, as in a deployment.
    let output = std::process::Command::new(venv_binary("nats-server").unwrap())
        .envs(NatsCredentials::generate().server_env())
        .arg("-c")
        .arg(&config)
        .arg("-t")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "nats-server -t refused the config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The committed document (JSON and YAML) is valid OpenAPI 3.1 by `openapi-spec-validator`,
/// the validator generators and tools build on.
#[test]
fn the_committed_document_is_valid_openapi_3_1() {
    for file in ["openapi/openapi.json", "openapi/openapi.yaml"] {
        let path = workspace_root().join(file);
        let output = std::process::Command::new(venv_binary("openapi-spec-validator").unwrap())
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains(": OK"),
            "{file} is not valid:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join("openapi/openapi.json")).unwrap()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["webhooks"]["downloadFinished"].is_object());
}
