//! Headless Chromium driven over WebDriver: Debian's `chromium` and `chromium-driver` (installed
//! by `deploy/local/install`), spoken to with plain HTTP (the W3C WebDriver protocol), so no
//! browser download and no Node.js. Each browser gets a fresh profile and downloads directory;
//! ChromeDriver and the browser are killed on `Drop`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

use crate::servers::free_port;
use crate::wait::wait_for;

/// Where Debian installs the browser and its driver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session.
pub struct Browser {
    driver: Option<Child>,
    http: reqwest::Client,
    session_url: String,
    _profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and opens a headless session.
    pub async fn start() -> anyhow::Result<Self> {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(binary).exists() {
                bail!("{binary} is missing: run deploy/local/install (Debian packages chromium, chromium-driver)");
            }
        }
        let port = free_port();
        let log = tempfile::NamedTempFile::new()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let profile = tempfile::tempdir()?;
        let downloads = tempfile::tempdir()?;
        let http = reqwest::Client::new();
        let mut browser = Browser {
            driver: Some(driver),
            http,
            session_url: String::new(),
            _profile: profile,
            downloads,
        };
        let base = format!("http://127.0.0.1:{port}");
        let status_url = format!("{base}/status");
        let http = browser.http.clone();
        wait_for("chromedriver to answer", Duration::from_secs(20), || {
            let http = http.clone();
            let status_url = status_url.clone();
            async move {
                let status: Value = http.get(&status_url).send().await.ok()?.json().await.ok()?;
                status["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await
        .with_context(|| std::fs::read_to_string(log.path()).unwrap_or_default())?;
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        // What this machine needs (closed network, root): see the env notes.
                        "args": [
                            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync",
                            "--window-size=900,700",
                            format!("--user-data-dir={}", browser._profile.path().display()),
                        ],
                        "prefs": {
                            "download.default_directory": browser.downloads.path(),
                            "download.prompt_for_download": false,
                            "safebrowsing.enabled": false,
                        },
                    },
                },
            },
        });
        let created: Value = browser
            .http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await?
            .json()
            .await?;
        let Some(session) = created["value"]["sessionId"].as_str() else {
            bail!("chromedriver refused the session: {created}");
        };
        browser.session_url = format!("{base}/session/{session}");
        // Allow downloads into this browser's directory (headless Chromium denies them otherwise).
        browser
            .command(
                "POST",
                "/goog/cdp/execute",
                json!({
                    "cmd": "Browser.setDownloadBehavior",
                    "params": {"behavior": "allow", "downloadPath": browser.downloads.path()},
                }),
            )
            .await?;
        Ok(browser)
    }

    /// One WebDriver command; fails with the driver's error message.
    async fn command(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.session_url);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request.send().await?;
        let status = response.status();
        let answer: Value = response.json().await?;
        if !status.is_success() {
            bail!("WebDriver {method} {path}: {status}: {}", answer["value"]["message"]);
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command("POST", "/url", json!({ "url": url })).await.map(drop)
    }

    /// Reloads the page.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.command("POST", "/refresh", json!({})).await.map(drop)
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .command("POST", "/element", json!({"using": "css selector", "value": css}))
            .await?;
        found
            .as_object()
            .and_then(|object| object.values().next())
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("no element {css}"))
    }

    /// Replaces the text of the input `css`.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command("POST", &format!("/element/{element}/clear"), json!({}))
            .await?;
        self.command("POST", &format!("/element/{element}/value"), json!({ "text": text }))
            .await
            .map(drop)
    }

    /// Clicks the element `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command("POST", &format!("/element/{element}/click"), json!({}))
            .await
            .map(drop)
    }

    /// The rendered text of the element `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self.element(css).await?;
        let text = self
            .command("GET", &format!("/element/{element}/text"), Value::Null)
            .await?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    /// Waits until the page has an element `css` (pages that render after loading, such as
    /// Swagger UI).
    pub async fn wait_for_element(&self, css: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("the element {css}"), timeout, || async {
            let found = self
                .eval("return document.querySelector(arguments[0]) !== null;", json!([css]))
                .await
                .ok()?;
            found.as_bool().filter(|found| *found).map(drop)
        })
        .await
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its value.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.command("POST", "/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let encoded = self.command("GET", "/screenshot", Value::Null).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().context("screenshot")?)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// The browser's downloads directory.
    pub fn downloads(&self) -> &Path {
        self.downloads.path()
    }

    /// Waits for a finished download (no `.crdownload` left) whose bytes are `expected`.
    pub async fn wait_for_download(&self, expected: &[u8], timeout: Duration) -> anyhow::Result<PathBuf> {
        wait_for("the file to arrive in the downloads directory", timeout, || async {
            std::fs::read_dir(self.downloads.path())
                .ok()?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_none_or(|extension| extension != "crdownload"))
                .find(|path| std::fs::read(path).is_ok_and(|bytes| bytes == expected))
        })
        .await
    }

    /// Ends the session (closing the browser) and stops the driver.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        self.command("DELETE", "", Value::Null).await?;
        self.stop_driver();
        Ok(())
    }

    fn stop_driver(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            // The driver leads its own process group: kill the browser with it.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", driver.id())])
                .status();
            let _ = driver.kill();
            let _ = driver.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_driver();
    }
}
