//! A real OTLP receiver for the trace tests and the dev stack: the rotel agent (PyPI `rotel`,
//! installed into the project venv by `deploy/local/install`) on a loopback port, receiving
//! OTLP/HTTP, with `deploy/local/rotel_spans.py` writing every span it receives as a JSON line
//! that [`OtlpReceiver::spans`] reads back as [`SpanRecord`]s. [`waterfall`] prints traces the
//! way Jaeger would draw them.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! let receiver = system_tests::otlp::OtlpReceiver::start().await?;
//! // ... run services with OTEL_EXPORTER_OTLP_ENDPOINT = receiver.endpoint() ...
//! let spans = receiver
//!     .wait_for("the initiate span", Duration::from_secs(10), |spans| {
//!         spans.iter().any(|span| span.name == "POST /v1/download/initiate")
//!     })
//!     .await?;
//! println!("{}", system_tests::otlp::waterfall(&spans));
//! # Ok(())
//! # }
//! ```

mod record;
mod waterfall;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

pub use record::{
    JOB_ID_ATTRIBUTES, JobTraces, SpanEvent, SpanKind, SpanLink, SpanRecord, SpanStatus, job_traces,
    processor_errors_path, read_processor_errors, read_spans,
};
pub use waterfall::waterfall;

use crate::servers::{START_ATTEMPTS, await_ready, free_port, log_tail, workspace_root};

/// The dev stack's state directory (git-ignored): its receiver's `spans.jsonl` and `rotel.log`,
/// which `deploy/local/trace` reads.
pub fn dev_stack_dir() -> PathBuf {
    workspace_root().join(".devstack")
}

/// The trace processor the agent runs: one JSON line per span.
pub fn trace_processor() -> PathBuf {
    workspace_root().join("deploy/local/rotel_spans.py")
}

/// The rotel wheel's native agent in the project venv
/// (`.venv/lib/python3*/site-packages/rotel/rotel-agent`).
pub fn rotel_agent() -> anyhow::Result<PathBuf> {
    let lib = workspace_root().join(".venv").join("lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
        .map(|entry| entry.path().join("site-packages/rotel/rotel-agent"))
        .find(|agent| agent.is_file());
    found.with_context(|| {
        format!(
            "the rotel OTLP receiver is missing ({}/python3*/site-packages/rotel/rotel-agent): run deploy/local/install",
            lib.display()
        )
    })
}

/// The rotel agent receiving OTLP/HTTP on a loopback port (its gRPC listener, which cannot be
/// turned off, on a port of the kernel's choosing), writing what it receives to a spans file.
/// Stopped (SIGTERM, then killed) on `Drop`.
pub struct OtlpReceiver {
    child: Mutex<Option<Child>>,
    port: u16,
    spans_path: PathBuf,
    log_path: PathBuf,
    /// The files' directory, when the receiver owns it.
    _dir: Option<tempfile::TempDir>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free port with its files in a temp dir; fails with a message
    /// naming `deploy/local/install` when rotel is not installed.
    pub async fn start() -> anyhow::Result<Self> {
        let mut failure = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::tempdir()?;
            let (spans_path, log_path) = (dir.path().join("spans.jsonl"), dir.path().join("rotel.log"));
            match Self::launch(free_port(), spans_path, log_path, Some(dir)).await {
                Ok(receiver) => return Ok(receiver),
                Err(error) if rotel_agent().is_err() => return Err(error),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.expect("at least one attempt"))
    }

    /// Starts a receiver on `port` writing `dir/spans.jsonl` (emptied first) and logging to
    /// `dir/rotel.log`: the dev stack's, at a path `deploy/local/trace` knows.
    pub async fn start_in(port: u16, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let spans_path = dir.join("spans.jsonl");
        for stale in [spans_path.clone(), processor_errors_path(&spans_path)] {
            match std::fs::remove_file(&stale) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error).with_context(|| format!("removing {}", stale.display()));
                }
                _ => {}
            }
        }
        Self::launch(port, spans_path, dir.join("rotel.log"), None).await
    }

    /// Starts a receiver on a free port that accepts spans and drops them (no trace processor,
    /// so no Python per span): what a benchmark exports to, costing the services what a real
    /// collector would and the machine little else.
    pub async fn start_sink() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (spans_path, log_path) = (dir.path().join("spans.jsonl"), dir.path().join("rotel.log"));
        Self::launch_with(free_port(), spans_path, log_path, Some(dir), false).await
    }

    async fn launch(
        port: u16,
        spans_path: PathBuf,
        log_path: PathBuf,
        dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        Self::launch_with(port, spans_path, log_path, dir, true).await
    }

    async fn launch_with(
        port: u16,
        spans_path: PathBuf,
        log_path: PathBuf,
        dir: Option<tempfile::TempDir>,
        record: bool,
    ) -> anyhow::Result<Self> {
        let agent = rotel_agent()?;
        let processor = trace_processor();
        anyhow::ensure!(processor.is_file(), "{} is missing", processor.display());
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(&agent);
        command
            .arg("start")
            .args(["--log-format", "json"])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-grpc-endpoint", "127.0.0.1:0"])
            // Received spans go nowhere but to the trace processor (if any).
            .args(["--exporter", "blackhole"]);
        if record {
            command.arg("--otlp-with-trace-processor").arg(&processor);
        }
        let child = command
            .env("SPANS_JSONL", &spans_path)
            // The agent embeds the system's Python: the caller's Python paths would mislead it.
            .env_remove("PYTHONHOME")
            .env_remove("PYTHONPATH")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?;
        let mut child = Some(child);
        let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
        let url = format!("http://127.0.0.1:{port}/v1/traces");
        // An empty export request is a valid one: 200 once the receiver serves.
        await_ready(
            &mut child,
            &log_path,
            "the rotel OTLP receiver to accept an export",
            Duration::from_secs(20),
            || {
                let request = http
                    .post(&url)
                    .header("Content-Type", "application/x-protobuf")
                    .body(Vec::new());
                async move { request.send().await.is_ok_and(|response| response.status() == 200) }
            },
        )
        .await?;
        Ok(OtlpReceiver {
            child: Mutex::new(child),
            port,
            spans_path,
            log_path,
            _dir: dir,
        })
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://127.0.0.1:<port>`; exporters
    /// append `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its OTLP/HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file the spans are appended to, one JSON object a line.
    pub fn spans_path(&self) -> &Path {
        &self.spans_path
    }

    /// The agent's own log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Every span received so far; an error when the trace processor failed on a batch (its
    /// tracebacks are in the error) or the file holds a line that is not a span.
    pub fn spans(&self) -> anyhow::Result<Vec<SpanRecord>> {
        let errors = read_processor_errors(&self.spans_path)?;
        if !errors.is_empty() {
            bail!(
                "the trace processor failed {} time(s) ({}):\n{}",
                errors.len(),
                processor_errors_path(&self.spans_path).display(),
                errors.join("\n")
            );
        }
        read_spans(&self.spans_path)
    }

    /// Polls the received spans until `done` holds for them, and returns them; fails at once if
    /// the receiver died or its processor failed, and after `timeout` with a waterfall of what
    /// arrived.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[SpanRecord]) -> bool,
    ) -> anyhow::Result<Vec<SpanRecord>> {
        let done = &done;
        let outcome = crate::wait::wait_for(what, timeout, || async move {
            match self.check_running().and_then(|()| self.spans()) {
                Ok(spans) => done(&spans).then_some(Ok(spans)),
                Err(error) => Some(Err(error)),
            }
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(timed_out) => {
                let spans = self.spans().unwrap_or_default();
                Err(anyhow!(
                    "{timed_out}; {} span(s) received:\n{}",
                    spans.len(),
                    waterfall(&spans)
                ))
            }
        }
    }

    /// Fails with the agent's log when it is no longer running.
    pub fn check_running(&self) -> anyhow::Result<()> {
        let mut child = self.child.lock().expect("receiver lock");
        let status = match child.as_mut() {
            Some(process) => process.try_wait()?,
            None => bail!("the OTLP receiver was stopped"),
        };
        if let Some(status) = status {
            bail!("the OTLP receiver exited ({status}):\n{}", log_tail(&self.log_path));
        }
        Ok(())
    }

    /// Stops the agent: SIGTERM, then a kill if it has not exited within five seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.lock().expect("receiver lock").take() else {
            return;
        };
        if crate::processes::signal(child.id(), "TERM").is_ok() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}
