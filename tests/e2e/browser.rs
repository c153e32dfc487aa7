//! The browser page (`/app`) in headless Chromium, through the production nginx front, used with
//! an API key typed into the page: a click starts a job whose progress bar fills live to 100 %
//! and whose file lands in the downloads directory; a reload mid-job resumes it; a stream broken
//! mid-job (the notifier stops) hands over to polling and the file still arrives; a stream whose
//! token expires mid-job is renewed and continues without gap or duplicate; a bad key gets a
//! clear message. Swagger UI (`/docs`) authorizes with a key and its "Try it out" reads a status.
//! Saves a screenshot.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::browser::Browser;
use system_tests::servers::NginxServer;
use system_tests::stack::Stack;

use crate::init_logs;

const TENANT: &str = "browser-page";
const PATIENCE: Duration = Duration::from_secs(30);

/// The job cards on the page, newest first: id, status, progress, mode and error of each, the
/// ids of the stream events it received (in order, duplicates included) and how often it renewed
/// its stream token.
async fn cards(browser: &Browser) -> Vec<Value> {
    let script = "return [...document.querySelectorAll('#jobs .job')].map((card) => ({
        jobId: card.dataset.jobId || null, status: card.dataset.status,
        progress: Number(card.dataset.progress), mode: card.dataset.mode || null,
        error: card.querySelector('.error').textContent,
        eventIds: (card.dataset.eventIds || '').split(' ').filter(Boolean).map(Number),
        renewals: Number(card.dataset.renewals || 0),
        link: card.querySelector('.link').hidden ? null : card.querySelector('.link').href }));";
    let value = browser.eval(script, json!([])).await.unwrap();
    value.as_array().cloned().unwrap_or_default()
}

async fn card(browser: &Browser, job_id: &str) -> Option<Value> {
    cards(browser)
        .await
        .into_iter()
        .find(|card| card["jobId"].as_str() == Some(job_id))
}

async fn form_error(browser: &Browser) -> String {
    let shown = browser
        .eval("return document.getElementById('form-error').textContent;", json!([]))
        .await
        .unwrap();
    shown.as_str().unwrap_or_default().to_string()
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

/// Where the page keeps the key, and every URL it requested (documents, scripts, API calls and
/// event streams alike).
async fn key_traces(browser: &Browser) -> Value {
    browser
        .eval(
            "return { session: sessionStorage.getItem('downloads.apiKey'),
                      local: JSON.stringify({ ...localStorage }),
                      urls: performance.getEntries().map((entry) => entry.name) };",
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
    let key = stack.key(TENANT).await.unwrap();

    let browser = Browser::start().await.unwrap();
    browser.goto(&format!("{}/app", proxy.base_url())).await.unwrap();
    browser.fill("#key", &key).await.unwrap();

    // A bad file id is refused on the page, with no job created.
    browser.fill("#files", "12, x").await.unwrap();
    browser.click("#download").await.unwrap();
    let refusal = form_error(&browser).await;
    assert!(refusal.contains("\"x\" is not a file id"), "{refusal}");
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

    // 2. Reload mid-job: the page picks the job up again (its id from localStorage, the key from
    // the tab's sessionStorage) and finishes it.
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

    // The key stayed in the tab and in the Authorization header: in no URL, not in localStorage.
    let traces = key_traces(&browser).await;
    assert_eq!(traces["session"], key.as_str(), "kept for this tab: {traces}");
    assert!(!traces["local"].as_str().unwrap().contains(&key), "{traces}");
    let urls = traces["urls"].as_array().unwrap();
    assert!(
        urls.iter().any(|url| url.as_str().unwrap().contains("/stream?token=")),
        "the page's requests are listed: {urls:?}"
    );
    assert!(
        urls.iter().all(|url| !url.as_str().unwrap().contains(&key)),
        "the key is in a URL: {urls:?}"
    );

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser/download-page.png");
    browser.screenshot(&screenshot).await.unwrap();
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    tracing::info!(path = %screenshot.display(), "screenshot saved");
    browser.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_a_valid_api_key_shows_a_failed_job_with_its_reason_and_retry_starts_it_again() {
    init_logs();
    let stack = Stack::start(&[]).await.unwrap();
    let (notifier_address, _notifier) = stack.spawn_notifier(&[]).await.unwrap();
    let proxy = NginxServer::start(0, stack.intake_address(), notifier_address, "10s", "1h")
        .await
        .unwrap();
    let key = stack.key(TENANT).await.unwrap();
    let browser = Browser::start().await.unwrap();
    browser.goto(&format!("{}/app", proxy.base_url())).await.unwrap();

    // No key: the page asks for one, and nothing is sent.
    browser.fill("#files", "96100").await.unwrap();
    browser.click("#download").await.unwrap();
    assert_eq!(form_error(&browser).await, "Enter your API key.");
    assert!(cards(&browser).await.is_empty());

    // A key the service refuses (401): the card says so, and no job exists.
    browser.fill("#key", "dk_000000000000_not-a-key").await.unwrap();
    browser.click("#download").await.unwrap();
    let refused = system_tests::wait::wait_for("the refusal", PATIENCE, || async {
        let cards = cards(&browser).await;
        let card = cards.first()?;
        (card["status"] == "error").then(|| card.clone())
    })
    .await
    .unwrap();
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.starts_with("API key missing or invalid") && message.contains("INVALID_CREDENTIALS"),
        "{refused}"
    );
    assert_eq!(refused["jobId"], Value::Null, "{refused}");

    // With the right key, Retry starts the job in the same card. File 96_100 does not exist
    // yet: the job fails, and the page says why.
    browser.fill("#key", &key).await.unwrap();
    browser.click(".job .retry").await.unwrap();
    let failed = system_tests::wait::wait_for("the job started with the key", PATIENCE, || async {
        cards(&browser).await.first()?["jobId"].as_str().map(str::to_string)
    })
    .await
    .unwrap();
    assert_eq!(cards(&browser).await.len(), 1, "Retry reused the card");
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

/// Stream tokens live 2 s; the job lasts 10 s, with a progress event every 2 s. A proxy cuts
/// streams idle for 1 s (heartbeats only every 30 s), so the stream breaks between progress events
/// and EventSource reconnects all through the job: while its token is valid by itself (with
/// Last-Event-ID), once the token has expired only after the page renewed it from the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renews_an_expired_stream_token_and_follows_the_job_to_the_end_without_gap_or_duplicate() {
    init_logs();
    let stack = Stack::start(&[
        ("STREAM_TOKEN_TTL_SECONDS", "2"),
        ("DOWNLOAD_DELAY_ENABLED", "true"),
        ("DOWNLOAD_DELAY_MIN_MS", "10000"),
        ("DOWNLOAD_DELAY_MAX_MS", "10000"),
        ("PROGRESS_INTERVAL_MS", "2000"),
        ("JOB_ACK_WAIT_SECONDS", "10"),
        ("SSE_HEARTBEAT_SECONDS", "30"),
        ("SSE_RETRY_MS", "100"),
    ])
    .await
    .unwrap();
    let (notifier_address, _notifier) = stack.spawn_notifier(&[]).await.unwrap();
    let proxy = NginxServer::start(0, stack.intake_address(), notifier_address, "10s", "1s")
        .await
        .unwrap();
    let content = stack.put_file(96_200, 200_000).await.unwrap();
    let key = stack.key(TENANT).await.unwrap();
    let browser = Browser::start().await.unwrap();
    browser.goto(&format!("{}/app", proxy.base_url())).await.unwrap();
    browser.fill("#key", &key).await.unwrap();

    let job_id = start_download(&browser, 96_200).await;
    // A stream URL issued now, as the page's first one was: it will have expired long before
    // the job ends.
    let early_stream_url = stack.status(TENANT, &job_id).await.unwrap()["streamUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let seen = watch(&browser, &job_id, "the job to complete", |card| {
        card["status"] == "completed"
    })
    .await;

    // What the user saw: the bar advanced step by step, never backwards, to a completed state
    // reached live (the page never gave up on the stream for polling), with a link that works.
    let finished = card(&browser, &job_id).await.unwrap();
    assert_eq!(finished["mode"], "live", "{finished}");
    assert_eq!(finished["progress"], 100, "{finished}");
    let steps = seen.iter().filter(|progress| (1..100).contains(*progress)).count();
    assert!(steps >= 3, "the bar advanced in steps: {seen:?}");
    assert!(
        seen.windows(2).all(|pair| pair[0] <= pair[1]),
        "never backwards: {seen:?}"
    );
    browser.wait_for_download(&content, PATIENCE).await.unwrap();
    let link = finished["link"].as_str().expect("a download link");
    let downloaded = reqwest::get(link).await.unwrap();
    assert_eq!(downloaded.status(), 200, "{link}");
    assert_eq!(downloaded.bytes().await.unwrap().as_ref(), content.as_slice());

    // The stream was renewed, because tokens do expire within the job.
    let renewals = finished["renewals"].as_u64().unwrap();
    assert!(renewals >= 1, "the page renewed its stream token: {finished}");
    let expired = reqwest::get(format!("{}{early_stream_url}", proxy.base_url()))
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert!(expired.headers().contains_key("www-authenticate"));
    let problem: Value = expired.json().await.unwrap();
    assert_eq!(problem["code"], "TOKEN_EXPIRED", "{problem}");

    // Every event from the first one the page got to the terminal one, each exactly once, across
    // all the reconnections and renewals.
    let received: Vec<u64> = finished["eventIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    let published: Vec<u64> = stack
        .events(&job_id)
        .await
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect();
    let first = *received.first().expect("events received");
    // A stream opened before the job's first event is out starts with the job's state as event
    // 0 (documented: `seq` 0); every published event follows it.
    let expected: Vec<u64> = (first == 0)
        .then_some(0)
        .into_iter()
        .chain(published.into_iter().filter(|seq| *seq >= first))
        .collect();
    assert_eq!(received, expected, "no gap, no duplicate");
    assert!(received.len() >= 5, "progress came as events: {received:?}");
    tracing::info!(
        renewals,
        events = received.len(),
        "stream followed across token expiries"
    );
    browser.quit().await.unwrap();
}

/// Clicks Execute in Swagger UI's `operation` (opened, in "Try it out") and waits until the
/// rendered server response has the status `expected`; fails with what the operation shows.
async fn execute_in_swagger_ui(browser: &Browser, operation: &str, expected: &str) {
    let execute = format!("{operation} .btn.execute");
    browser.wait_for_element(&execute, PATIENCE).await.unwrap();
    browser.click(&execute).await.unwrap();
    let status_shown = format!("{operation} .live-responses-table tr.response .response-col_status");
    let shown = system_tests::wait::wait_for(&format!("Swagger UI to show {expected}"), PATIENCE, || async {
        let shown = browser.text(&status_shown).await.ok()?;
        (shown.split_whitespace().next() == Some(expected)).then_some(())
    })
    .await;
    if let Err(error) = shown {
        let rendered = browser
            .eval(
                "return document.querySelector(arguments[0]).innerText;",
                json!([operation]),
            )
            .await;
        panic!("{error}: {rendered:?}");
    }
}

/// Opens `operation` in Swagger UI and switches it to "Try it out".
async fn try_out_in_swagger_ui(browser: &Browser, operation: &str) {
    browser.wait_for_element(operation, PATIENCE).await.unwrap();
    browser
        .click(&format!("{operation} .opblock-summary-control"))
        .await
        .unwrap();
    // The operation's body renders after the click.
    let try_out = format!("{operation} .try-out__btn");
    browser.wait_for_element(&try_out, PATIENCE).await.unwrap();
    browser.click(&try_out).await.unwrap();
}

/// The response body Swagger UI rendered for `operation`'s last execution, as JSON.
async fn rendered_body(browser: &Browser, operation: &str) -> Value {
    let text = browser
        .text(&format!(
            "{operation} .live-responses-table tr.response .response-col_description .microlight"
        ))
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("the rendered body is JSON ({error}): {text}"))
}

/// Swagger UI as a user meets it: through the production nginx front, from the document the
/// intake publishes (OpenAPI 3.1, rendered by the Swagger UI the intake embeds, no CDN). A
/// request without a key is 401; after Authorize, "Try it out" starts a job (202, the
/// documented body) and reads its status with the returned id (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_through_the_proxy_authorizes_starts_a_job_and_reads_its_status() {
    init_logs();
    let system = system_tests::stack::Proxied::start(&[], "10s").await.unwrap();
    let (stack, proxy) = (&system.stack, &system.proxy);
    stack.put_file(96_300, 1000).await.unwrap();
    let key = stack.key(TENANT).await.unwrap();
    // The page carries Swagger UI itself: no asset from a CDN at run time.
    let page = reqwest::get(format!("{}/docs", proxy.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("SwaggerUIBundle"), "Swagger UI is in the page");
    for remote in ["src=\"http", "href=\"http", "src='http", "href='http"] {
        assert!(!page.contains(remote), "the page loads {remote}…");
    }
    let browser = Browser::start().await.unwrap();
    browser.goto(&format!("{}/docs", proxy.base_url())).await.unwrap();
    // Swagger UI renders the document after the page loads.
    let stamp = ".information-container .version-stamp, .info .version-stamp";
    browser.wait_for_element(stamp, PATIENCE).await.unwrap();
    let version = browser
        .eval(
            "return document.querySelector('.information-container .version-stamp, .info .version-stamp').innerText;",
            json!([]),
        )
        .await
        .unwrap();
    assert!(
        version.as_str().is_some_and(|stamp| stamp.contains("OAS 3.1")),
        "Swagger UI reads the document as OpenAPI 3.1: {version}"
    );

    // Initiate without credentials: 401, the documented problem.
    let initiate = "#operations-Jobs-initiateDownload";
    try_out_in_swagger_ui(&browser, initiate).await;
    browser
        .fill(
            &format!("{initiate} textarea.body-param__text"),
            r#"{"file_ids": [96300]}"#,
        )
        .await
        .unwrap();
    execute_in_swagger_ui(&browser, initiate, "401").await;
    assert_eq!(rendered_body(&browser, initiate).await["code"], "UNAUTHENTICATED");

    // Authorize with the key in the ApiKey (http bearer) field, then run it again: 202.
    browser.click(".auth-wrapper .btn.authorize").await.unwrap();
    browser.wait_for_element("#auth-bearer-value", PATIENCE).await.unwrap();
    browser.fill("#auth-bearer-value", &key).await.unwrap();
    browser
        .click(".auth-container:has(#auth-bearer-value) .auth-btn-wrapper .btn.authorize")
        .await
        .unwrap();
    browser.click(".btn-done").await.unwrap();
    execute_in_swagger_ui(&browser, initiate, "202").await;
    let accepted = rendered_body(&browser, initiate).await;
    let job_id = accepted["jobId"].as_str().unwrap().to_string();
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["statusUrl"], format!("/v1/download/status/{job_id}"));

    // The status of the job it started, with the id it returned: 200, the job's body.
    let status = "#operations-Jobs-getDownloadStatus";
    try_out_in_swagger_ui(&browser, status).await;
    browser
        .fill(&format!("{status} input[placeholder='jobId']"), &job_id)
        .await
        .unwrap();
    execute_in_swagger_ui(&browser, status, "200").await;
    let body = rendered_body(&browser, status).await;
    assert_eq!(body["jobId"], job_id);
    assert!(
        ["queued", "processing", "completed"].contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser/swagger-ui.png");
    browser.screenshot(&screenshot).await.unwrap();
    assert!(
        std::fs::read(&screenshot).unwrap().starts_with(b"\x89PNG"),
        "a PNG screenshot"
    );
    tracing::info!(path = %screenshot.display(), "screenshot saved");
    browser.quit().await.unwrap();
}
