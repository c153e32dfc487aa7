//! The browser page (`/app`) in headless Chromium, through the production nginx front: a click
//! starts a job whose progress bar fills live to 100 % and whose file lands in the downloads
//! directory; a reload mid-job resumes it; a stream broken mid-job (the notifier stops) hands
//! over to polling and the file still arrives. Saves a screenshot.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::browser::Browser;
use system_tests::servers::NginxServer;
use system_tests::stack::Stack;

use crate::init_logs;

const USER: &str = "browser@example.com";
const PATIENCE: Duration = Duration::from_secs(30);

/// The job cards on the page: id, status, progress and mode of each, newest first.
async fn cards(browser: &Browser) -> Vec<Value> {
    let script = "return [...document.querySelectorAll('#jobs .job')].map((card) => ({
        jobId: card.dataset.jobId || null, status: card.dataset.status,
        progress: Number(card.dataset.progress), mode: card.dataset.mode || null,
        error: card.querySelector('.error').textContent }));";
    let value = browser.eval(script, json!([])).await.unwrap();
    value.as_array().cloned().unwrap_or_default()
}

async fn card(browser: &Browser, job_id: &str) -> Option<Value> {
    cards(browser)
        .await
        .into_iter()
        .find(|card| card["jobId"].as_str() == Some(job_id))
}

/// Clicks Download for `file_id` and returns the new job's id.
async fn start_download(browser: &Browser, file_id: u64) -> String {
    let before = cards(browser).await.len();
    browser.fill("#files", &file_id.to_string()).await.unwrap();
    browser.click("#download").await.unwrap();
    system_tests::wait::wait_for("the new job's card", PATIENCE, || async {
        let cards = cards(browser).await;
        (cards.len() > before).then_some(())?;
        cards[0]["jobId"].as_str().map(str::to_string)
    })
    .await
    .unwrap()
}

/// Waits until the job's card satisfies `condition`, collecting the progress values seen.
async fn watch(browser: &Browser, job_id: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let current = card(browser, job_id).await;
        if let Some(card) = &current {
            if let Some(progress) = card["progress"].as_u64()
                && seen.last() != Some(&progress)
            {
                seen.push(progress);
            }
            if condition(card) {
                return seen;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {current:?}, progress seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pending_in_local_storage(browser: &Browser) -> Value {
    browser
        .eval(
            "return JSON.parse(localStorage.getItem('downloads.pending') || '[]').map((job) => job.jobId);",
            json!([]),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_progress_downloads_the_file_resumes_after_a_reload_and_falls_back_to_polling() {
    init_logs();
    let mut stack = Stack::servers_only(&[
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "4000"),
        ("DOWNLOAD_DELAY_MAX_MS", "4000"),
        ("PROGRESS_INTERVAL_MS", "250"),
        ("SSE_HEARTBEAT_SECONDS", "1"),
        ("SSE_RETRY_MS", "200"),
    ])
    .await
    .unwrap();
    stack.start_presigner().await.unwrap();
    stack.start_processor(&[]).await.unwrap();
    stack.start_intake().await.unwrap();
    let (notifier_address, notifier) = stack.spawn_notifier(&[]).await.unwrap();
    let proxy = NginxServer::start(0, stack.intake_address(), notifier_address, "10s", "1h")
        .await
        .unwrap();
    let files: Vec<Vec<u8>> =
        futures::future::try_join_all((0..3).map(|n| stack.put_file(96_000 + n, 300_000 + n as usize)))
            .await
            .unwrap();

    let browser = Browser::start().await.unwrap();
    browser.goto(&format!("{}/app", proxy.base_url())).await.unwrap();
    browser.fill("#user", USER).await.unwrap();

    // A bad file id is refused on the page, with no job created.
    browser.fill("#files", "12, x").await.unwrap();
    browser.click("#download").await.unwrap();
    let refusal = browser
        .eval("return document.getElementById('form-error').textContent;", json!([]))
        .await
        .unwrap();
    assert!(
        refusal.as_str().unwrap().contains("\"x\" is not a file id"),
        "{refusal}"
    );
    assert!(cards(&browser).await.is_empty());

    // 1. Click, watch the bar fill live to 100 %, see the file arrive.
    let first = start_download(&browser, 96_000).await;
    let seen = watch(&browser, &first, "the first job to complete", |card| {
        card["status"] == "completed"
    })
    .await;
    let finished = card(&browser, &first).await.unwrap();
    assert_eq!(finished["mode"], "live", "progress came over the stream: {finished}");
    assert_eq!(finished["progress"], 100);
    assert!(
        seen.iter().any(|progress| (1..100).contains(progress)),
        "the bar moved through intermediate values: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|pair| pair[0] <= pair[1]),
        "never backwards: {seen:?}"
    );
    browser.wait_for_download(&files[0], PATIENCE).await.unwrap();
    assert_eq!(pending_in_local_storage(&browser).await, json!([]));

    // 2. Reload mid-job: the page picks the job up again from localStorage and finishes it.
    let second = start_download(&browser, 96_001).await;
    watch(&browser, &second, "the second job to make progress", |card| {
        card["mode"] == "live" && card["progress"].as_u64().is_some_and(|progress| progress > 0)
    })
    .await;
    assert_eq!(pending_in_local_storage(&browser).await, json!([second]));
    browser.reload().await.unwrap();
    let resumed = watch(
        &browser,
        &second,
        "the second job to complete after the reload",
        |card| card["status"] == "completed",
    )
    .await;
    assert_eq!(card(&browser, &second).await.unwrap()["mode"], "live");
    assert!(
        resumed.len() >= 2,
        "the resumed card showed progress before completing: {resumed:?}"
    );
    assert_eq!(
        cards(&browser).await.len(),
        1,
        "only the resumed job is on the reloaded page"
    );
    browser.wait_for_download(&files[1], PATIENCE).await.unwrap();

    // 3. Break the stream mid-job: the notifier goes away, polling takes over, the file arrives.
    let third = start_download(&browser, 96_002).await;
    watch(&browser, &third, "the third job to make progress live", |card| {
        card["mode"] == "live" && card["progress"].as_u64().is_some_and(|progress| progress > 0)
    })
    .await;
    drop(notifier);
    watch(&browser, &third, "polling to take over", |card| {
        card["mode"] == "polling"
    })
    .await;
    watch(&browser, &third, "the third job to complete by polling", |card| {
        card["status"] == "completed"
    })
    .await;
    assert_eq!(card(&browser, &third).await.unwrap()["progress"], 100);
    browser.wait_for_download(&files[2], PATIENCE).await.unwrap();

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser/download-page.png");
    browser.screenshot(&screenshot).await.unwrap();
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    tracing::info!(path = %screenshot.display(), "screenshot saved");
    browser.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_failed_job_with_its_reason_and_retry_starts_it_again() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let (notifier_address, _notifier) = stack.spawn_notifier(&[]).await.unwrap();
    let proxy = NginxServer::start(0, stack.intake_address(), notifier_address, "10s", "1h")
        .await
        .unwrap();
    let browser = Browser::start().await.unwrap();
    browser.goto(&format!("{}/app", proxy.base_url())).await.unwrap();
    browser.fill("#user", USER).await.unwrap();

    // File 96_100 does not exist yet: the job fails, and the page says why.
    let failed = start_download(&browser, 96_100).await;
    watch(&browser, &failed, "the job to fail", |card| card["status"] == "failed").await;
    let shown = card(&browser, &failed).await.unwrap();
    assert!(shown["error"].as_str().unwrap().contains("FILE_NOT_FOUND"), "{shown}");

    // Once the file exists, Retry starts a new job in the same card and downloads it.
    let content = stack.put_file(96_100, 1234).await.unwrap();
    browser.click(".job .retry").await.unwrap();
    let retried = system_tests::wait::wait_for("the retried job", PATIENCE, || async {
        let cards = cards(&browser).await;
        let id = cards.first()?["jobId"].as_str()?.to_string();
        (id != failed).then_some(id)
    })
    .await
    .unwrap();
    watch(&browser, &retried, "the retried job to complete", |card| {
        card["status"] == "completed"
    })
    .await;
    browser.wait_for_download(&content, PATIENCE).await.unwrap();
    browser.quit().await.unwrap();
}
