//! The SDKs generated from the published document, used as their users use them: against a live
//! stack behind the production nginx front, each SDK's live test initiates a job, follows it
//! over SSE, downloads the result (the bytes must equal the source file), verifies the webhook
//! the notifier delivered with the SDK's helper (and rejects a tampered one), and sees error
//! answers as its typed error with the problem's `code`; it also runs the README's quickstart.
//! The committed generated code must be what the generators make now (no hand edits, no stale
//! client), and the generators must keep every schema (their scripts refuse any warning).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use system_tests::servers::{venv_binary, workspace_root};
use system_tests::stack::Proxied;

use crate::init_logs;

const TENANT: &str = "sdk-user";
const FILE_ID: u64 = 97_100;

/// A stack with every service, nginx in front, a file to download and a tenant with a key and
/// a webhook secret; webhooks may go to loopback (the SDK tests receive them there).
struct Live {
    system: Proxied,
    env: Vec<(String, String)>,
    _files: tempfile::TempDir,
}

impl Live {
    async fn start() -> Self {
        // Jobs take 3 s with progress every 250 ms, so a stream has events to cut and resume.
        let system = Proxied::start(
            &[
                ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8"),
                ("DOWNLOAD_DELAY_ENABLED", "true"),
                ("DOWNLOAD_DELAY_MIN_MS", "3000"),
                ("DOWNLOAD_DELAY_MAX_MS", "3000"),
                ("PROGRESS_INTERVAL_MS", "250"),
            ],
            "10s",
        )
        .await
        .unwrap();
        let stack = &system.stack;
        let bytes = stack.put_file(FILE_ID, 150_000).await.unwrap();
        let files = tempfile::tempdir().unwrap();
        let source = files.path().join("source.bin");
        std::fs::write(&source, &bytes).unwrap();
        let key = stack.key(TENANT).await.unwrap();
        let secret = stack.webhook_secrets(TENANT).await.unwrap().remove(0);
        let env = vec![
            ("DOWNLOAD_API_URL".to_string(), system.base_url()),
            ("DOWNLOAD_API_KEY".to_string(), key),
            ("DOWNLOAD_WEBHOOK_SECRET".to_string(), secret),
            ("SDK_FILE_ID".to_string(), FILE_ID.to_string()),
            ("SDK_FILE_PATH".to_string(), source.display().to_string()),
        ];
        Live {
            system,
            env,
            _files: files,
        }
    }
}

/// Runs `program` in `dir` with `env`, bounded by `timeout`.
async fn run(
    program: &Path,
    args: &[&str],
    dir: &Path,
    env: &[(String, String)],
    timeout: std::time::Duration,
) -> Output {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .envs(env.iter().cloned())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not end within {timeout:?}", program.display()))
        .unwrap_or_else(|error| panic!("{} cannot run: {error}", program.display()))
}

/// The JSON object a live test prints last, after checking it ran well.
fn observed(what: &str, output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let last = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|error| panic!("{what} printed no JSON last ({error}):\n{stdout}"))
}

/// What every SDK's live test must have seen.
fn assert_used_as_documented(what: &str, seen: &Value) {
    assert_eq!(seen["status"], "completed", "{what}: {seen}");
    assert_eq!(
        seen["bytesEqual"], true,
        "{what}: the downloaded bytes are the file's: {seen}"
    );
    assert!(
        seen["events"].as_u64().unwrap_or(0) >= 1,
        "{what} followed the stream: {seen}"
    );
    assert_eq!(seen["webhookType"], "download.completed", "{what}: {seen}");
    assert_eq!(seen["webhookVerified"], true, "{what}: {seen}");
    assert_eq!(seen["tamperedRejected"], true, "{what}: {seen}");
    assert_eq!(
        seen["errorCodes"],
        serde_json::json!(["VALIDATION_FAILED", "NOT_FOUND"]),
        "{what}: error answers surface as the typed error with their code: {seen}"
    );
    assert_eq!(
        seen["quickstartBytesEqual"], true,
        "{what}: the README's quickstart ran and downloaded the file: {seen}"
    );
    // A stream cut after two events resumed with Last-Event-ID, and a job whose streams were
    // refused finished by polling.
    assert!(seen["resumedFromEventId"].as_u64().is_some(), "{what}: {seen}");
    assert_eq!(seen["pollingFallback"], "completed", "{what}: {seen}");
}

/// Every file under `root` (relative path → bytes), skipping what running the code leaves.
fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if matches!(name.as_ref(), "__pycache__" | "node_modules" | ".pytest_cache") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                files.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut files = std::collections::BTreeMap::new();
    walk(root, root, &mut files);
    files
}

/// Regenerates an SDK with its own script into a temp dir and compares it with the committed
/// generated code, file by file.
async fn assert_generated_code_is_current(script: &str, committed: &str) {
    let fresh = tempfile::tempdir().unwrap();
    let out = fresh.path().join("generated");
    let root = workspace_root();
    let output = run(
        &root.join(script),
        &[out.to_str().unwrap()],
        &root,
        &[],
        std::time::Duration::from_secs(300),
    )
    .await;
    assert!(
        output.status.success(),
        "{script} failed (a generator warning fails it):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (fresh, committed_tree) = (tree(&out), tree(&root.join(committed)));
    let stale: Vec<&PathBuf> = fresh
        .keys()
        .chain(committed_tree.keys())
        .filter(|path| fresh.get(*path) != committed_tree.get(*path))
        .collect();
    assert!(
        stale.is_empty(),
        "{committed} is stale (regenerate with {script}): {stale:?}"
    );
}

/// The README shows `example` verbatim (the live tests run that very file).
fn assert_readme_shows(example: &str) {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let code = std::fs::read_to_string(root.join(example)).unwrap();
    assert!(readme.contains(code.trim_end()), "the README shows {example} as it is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_runs_a_job_live_verifies_its_webhook_and_types_its_errors() {
    init_logs();
    let live = Live::start().await;
    let root = workspace_root();
    let output = run(
        &venv_binary("python").unwrap(),
        &["sdks/python/tests/live.py"],
        &root,
        &live.env,
        std::time::Duration::from_secs(180),
    )
    .await;
    let seen = observed("the Python SDK's live test", &output);
    assert_used_as_documented("Python", &seen);
    assert_eq!(
        seen["asyncErrorCode"], "NOT_FOUND",
        "generated async calls raise typed errors: {seen}"
    );
    // The job it ran is the stack's, completed.
    let status = live
        .system
        .stack
        .status(TENANT, seen["jobId"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status["status"], "completed");
    assert_readme_shows("sdks/python/examples/quickstart.py");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_is_generated_from_the_committed_document_and_its_offline_tests_pass() {
    init_logs();
    assert_generated_code_is_current("sdks/python/generate", "sdks/python/generated").await;
    let root = workspace_root();
    let output = run(
        &venv_binary("python").unwrap(),
        &[
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "sdks/python/tests/test_offline.py",
        ],
        &root,
        &[],
        std::time::Duration::from_secs(120),
    )
    .await;
    assert!(
        output.status.success(),
        "the Python SDK's offline tests failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// `npm`, which the install script provides (Debian's package where the machine has none).
fn npm() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("npm"))
        .find(|path| path.is_file())
        .expect("npm is installed (deploy/local/install)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_runs_a_job_live_verifies_its_webhook_and_types_its_errors() {
    init_logs();
    let live = Live::start().await;
    let output = run(
        &npm(),
        &["run", "--silent", "live"],
        &workspace_root().join("sdks/typescript"),
        &live.env,
        std::time::Duration::from_secs(240),
    )
    .await;
    let seen = observed("the TypeScript SDK's live test", &output);
    assert_used_as_documented("TypeScript", &seen);
    assert_eq!(seen["ok"], true, "{seen}");
    let status = live
        .system
        .stack
        .status(TENANT, seen["jobId"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(status["status"], "completed");
    assert_readme_shows("sdks/typescript/examples/quickstart.ts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_is_generated_from_the_committed_document_and_its_offline_tests_pass() {
    init_logs();
    assert_generated_code_is_current("sdks/typescript/generate", "sdks/typescript/src/generated").await;
    let output = run(
        &npm(),
        &["run", "--silent", "test"],
        &workspace_root().join("sdks/typescript"),
        &[],
        std::time::Duration::from_secs(180),
    )
    .await;
    assert!(
        output.status.success(),
        "the TypeScript SDK's offline tests failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
