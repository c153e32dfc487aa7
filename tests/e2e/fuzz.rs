//! The server held to its published document by `schemathesis` (tests/contract): every
//! operation, every phase (examples, coverage, fuzzing, and the stateful phase following the
//! document's links from a new job to its status, result, cancel and stream), every check but
//! `use_after_free` (a cancelled job stays readable, by design), with a valid API key, through
//! the production nginx front, at least 1,000 cases with a fixed seed. Any response that is not
//! what the document says (status, headers, body, content type), any input the document allows
//! and the server refuses or the reverse, any server error fails the test.

use serde_json::Value;
use system_tests::servers::workspace_root;
use system_tests::stack::Proxied;

use crate::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_over_every_operation_of_the_published_document() {
    init_logs();
    // Short jobs with progress, so streams have events and the stateful phase meets every state.
    let system = Proxied::start(
        &[
            ("DOWNLOAD_DELAY_ENABLED", "true"),
            ("DOWNLOAD_DELAY_MIN_MS", "200"),
            ("DOWNLOAD_DELAY_MAX_MS", "800"),
            ("PROGRESS_INTERVAL_MS", "100"),
            ("START_WAIT_MS", "2000"),
            ("MAX_ACTIVE_JOBS_PER_TENANT", "0"),
            ("SSE_HEARTBEAT_SECONDS", "1"),
        ],
        "30s",
    )
    .await
    .unwrap();
    let (stack, proxy) = (&system.stack, &system.proxy);
    // A few files the generated ids may hit (most will not exist: both are valid answers).
    for file_id in [10_000, 10_001, 70_000] {
        stack.put_file(file_id, 4096).await.unwrap();
    }
    let key = stack.key("fuzz").await.unwrap();
    let reports = tempfile::tempdir().unwrap();
    let root = workspace_root();
    let mut command = tokio::process::Command::new(root.join("tests/contract/run-schemathesis"));
    command
        .args([
            proxy.base_url().as_str(),
            key.as_str(),
            root.join("openapi/openapi.json").to_str().unwrap(),
            reports.path().to_str().unwrap(),
        ])
        .current_dir(&root)
        .kill_on_drop(true);
    let output = tokio::time::timeout(std::time::Duration::from_secs(900), command.output())
        .await
        .expect("the contract run ends within 15 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found the server and its document apart ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // What the run covered, as its summary line says.
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("cases per phase:"))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let total: u64 = summary
        .rsplit("(total ")
        .next()
        .and_then(|tail| tail.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no total in {summary}"));
    assert!(total >= 1000, "{summary}");
    assert!(summary.contains("stateful"), "{summary}");
    tracing::info!(summary, "schemathesis");
    // Every documented operation was called (the runner fails otherwise; checked here too).
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("openapi/openapi.json")).unwrap()).unwrap();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let operation = format!("  {} {path}:", method.to_ascii_uppercase());
            assert!(stdout.contains(&operation), "{operation} was exercised:\n{stdout}");
        }
    }
}
