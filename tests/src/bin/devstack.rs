//! The local stack: NATS and SeaweedFS from the project venv, seeded sample files, and every
//! service as its own process (built binaries next to this one), set up as a least-privilege
//! deployment: the admin NATS user runs each service's `provision` step and creates a demo
//! tenant with `download-admin`, then every service runs as its own NATS user with
//! `NATS_PROVISION=false`. Every service exports its spans to an OTLP receiver (rotel) writing
//! them to `.devstack/spans.jsonl`, read by `deploy/local/trace <jobId>`, and serves Prometheus
//! metrics. Prints the URLs and the demo tenant's API key; Ctrl-C stops everything. Started by
//! `deploy/local/up`.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};
use system_tests::otlp::{OtlpReceiver, dev_stack_dir};
use system_tests::servers::{NatsPorts, NatsServer, NatsUser, S3Ports, S3Server, port_answers};
use system_tests::wait::wait_until;

/// The project's own ports, clear of a NATS already on 4222 and of the usual dev ports.
const NATS_PORT: u16 = 14222;
const NATS_MONITOR_PORT: u16 = 18222;
const S3_PORT: u16 = 18333;
const S3_INTERNAL_BASE: u16 = 19330;
/// nginx: the one base URL of the API.
const API_PORT: u16 = 18080;
const NOTIFIER_PORT: u16 = 18081;
const INTAKE_PORT: u16 = 18082;
/// `METRICS_PORT` of the processor (`/metrics` and `/health`).
const PROCESSOR_METRICS_PORT: u16 = 18083;
/// `METRICS_PORT` of the presigner (`/metrics` and `/health`).
const PRESIGNER_METRICS_PORT: u16 = 18084;
/// The OTLP/HTTP receiver every service exports its spans to.
const OTLP_PORT: u16 = 14318;
/// How often the services export their spans, in milliseconds (`OTEL_BSP_SCHEDULE_DELAY`): soon
/// enough for `deploy/local/trace` right after a job ends.
const SPAN_EXPORT_DELAY_MS: &str = "500";

/// Sample files: small ones, and two large enough that bundling them takes visible time.
const SAMPLES: &[(u64, usize)] = &[
    (10000, 256 * 1024),
    (10001, 1024 * 1024),
    (10002, 2 * 1024 * 1024),
    (10003, 512 * 1024),
    (10004, 4 * 1024 * 1024),
    (70000, 64 * 1024 * 1024),
    (70001, 128 * 1024 * 1024),
];

/// The services, each started as its own process with its own NATS user.
const SERVICES: [(&str, NatsUser); 4] = [
    ("presigner", NatsUser::Presigner),
    ("processor", NatsUser::Processor),
    ("intake", NatsUser::Intake),
    ("notifier", NatsUser::Notifier),
];

/// The services' processes: asked to stop (SIGTERM), and killed after a grace period, when
/// stopped or dropped, so a failed start leaves none running.
struct Services(Vec<(&'static str, Child)>);

impl Services {
    fn stop(&mut self) {
        for (_, child) in &self.0 {
            // A terminal's Ctrl-C reaches the services too, but a supervisor's signal reaches
            // only this process: ask every service to stop either way.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        for (name, mut child) in self.0.drain(..) {
            // Give them a moment to drain.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                println!("{name} did not stop in time, killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tenant the stack creates, whose API key it prints.
const DEMO_TENANT: &str = "demo";

/// Runs `binary arguments` with `env` as the admin NATS user and returns what it printed; fails
/// with its error output when it fails.
async fn run_as_admin(
    binary: &Path,
    arguments: &[&str],
    env: &[(String, String)],
    nats: &NatsServer,
) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(binary)
        .args(arguments)
        .envs(env.iter().cloned())
        .envs(nats.env_for(NatsUser::Admin))
        .env("RUST_LOG", "warn")
        .output()
        .await
        .with_context(|| format!("running {} (built by deploy/local/up?)", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            binary.display(),
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM (a supervisor's) stops everything, once the stack is up.
    let stop = common::shutdown::on_signal();
    let s3_ports = S3Ports::fixed(S3_PORT, S3_INTERNAL_BASE);
    let mut wanted = vec![
        NATS_PORT,
        NATS_MONITOR_PORT,
        API_PORT,
        NOTIFIER_PORT,
        INTAKE_PORT,
        PROCESSOR_METRICS_PORT,
        PRESIGNER_METRICS_PORT,
        OTLP_PORT,
    ];
    wanted.extend(s3_ports.all());
    if let Some(busy) = wanted.iter().find(|port| port_answers(**port)) {
        bail!("port {busy} is already in use (another dev stack running?); stop it and retry");
    }
    println!("starting NATS on {NATS_PORT} and SeaweedFS S3 on {S3_PORT} ...");
    // nats/nats-server.conf with its users (nats/auth.conf); passwords are generated for this run.
    let nats = NatsServer::start_on(
        NatsPorts {
            client: NATS_PORT,
            monitor: NATS_MONITOR_PORT,
        },
        tempfile::tempdir()?,
    )
    .await?;
    let s3 = S3Server::start_on(s3_ports, tempfile::tempdir()?).await?;
    // Started before the services and stopped after them, so it receives what they flush when
    // they stop.
    let traces = OtlpReceiver::start_in(OTLP_PORT, &dev_stack_dir()).await?;
    let storage = common::storage::Storage::new(&s3.settings())?;
    println!("seeding {} sample files ...", SAMPLES.len());
    for (file_id, size) in SAMPLES {
        let bytes = system_tests::sample_bytes(*file_id, *size);
        storage
            .client()
            .put_object_content(storage.bucket(), common::names::source_key(*file_id).as_str(), bytes)?
            .build()
            .send()
            .await
            .with_context(|| format!("seeding file {file_id}"))?;
    }

    let mut env: Vec<(String, String)> = s3.env();
    env.extend([
        ("HOST".to_string(), "127.0.0.1".to_string()),
        ("PORT".to_string(), API_PORT.to_string()),
        ("DOWNLOAD_DELAY_ENABLED".to_string(), "true".to_string()),
        // Behind nginx on loopback: client addresses (rate limits) come from X-Forwarded-For
        // when the hop is nginx.
        ("TRUSTED_PROXIES".to_string(), "127.0.0.1/32".to_string()),
        ("DOWNLOAD_DELAY_MIN_MS".to_string(), "5000".to_string()),
        ("DOWNLOAD_DELAY_MAX_MS".to_string(), "15000".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), traces.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), SPAN_EXPORT_DELAY_MS.to_string()),
    ]);
    // The intake signs stream tokens, the notifier verifies them: one secret of this run.
    let stream_token_secret = system_tests::stack::random_secret();
    let binaries = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let service_env = |service: &str| -> Vec<(String, String)> {
        let mut own = env.clone();
        let port = if service == "notifier" {
            NOTIFIER_PORT
        } else {
            INTAKE_PORT
        };
        own.push(("PORT".to_string(), port.to_string()));
        match service {
            "processor" => own.push(("METRICS_PORT".to_string(), PROCESSOR_METRICS_PORT.to_string())),
            "presigner" => own.push(("METRICS_PORT".to_string(), PRESIGNER_METRICS_PORT.to_string())),
            _ => {}
        }
        if service == "intake" || service == "notifier" {
            own.push(("STREAM_TOKEN_SECRET".to_string(), stream_token_secret.clone()));
        }
        if service == "intake" {
            // The download page's anonymous `/start` (README "Legacy").
            own.push(("LEGACY_ANONYMOUS_START".to_string(), "true".to_string()));
        }
        own
    };

    // Provisioning, as the admin: each service's streams, buckets and durable consumers from
    // its own settings, then the demo tenant (download-admin provisions the identity buckets).
    println!("provisioning JetStream as the admin user ...");
    for service in ["intake", "processor", "notifier"] {
        let path = binaries.join(service);
        run_as_admin(&path, &["provision"], &service_env(service), &nats)
            .await
            .with_context(|| format!("{service} provision"))?;
    }
    let demo = run_as_admin(
        &binaries.join("download-admin"),
        &["--json", "tenant", "create", DEMO_TENANT],
        &env,
        &nats,
    )
    .await
    .context("download-admin tenant create")?;
    let demo: serde_json::Value = serde_json::from_str(&demo).context("download-admin --json output")?;
    let field = |name: &str| -> anyhow::Result<String> {
        demo[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("download-admin printed no {name}"))
    };
    let (api_key, webhook_secret) = (field("apiKey")?, field("webhookSecret")?);

    let mut services = Services(Vec::new());
    for (service, user) in SERVICES {
        let path = binaries.join(service);
        // Each service connects as its own NATS user (NATS_URL, NATS_USER, NATS_PASSWORD) and
        // opens what the admin provisioned.
        let child = Command::new(&path)
            .envs(service_env(service))
            .envs(nats.env_for(user))
            .env("NATS_PROVISION", "false")
            .spawn()
            .with_context(|| format!("starting {} (built by deploy/local/up?)", path.display()))?;
        services.0.push((service, child));
    }
    wait_until(
        "the intake and the notifier to listen",
        Duration::from_secs(60),
        || async { port_answers(INTAKE_PORT) && port_answers(NOTIFIER_PORT) },
    )
    .await?;
    let proxy = system_tests::servers::NginxServer::start(
        API_PORT,
        ([127, 0, 0, 1], INTAKE_PORT).into(),
        ([127, 0, 0, 1], NOTIFIER_PORT).into(),
        "60s",
        "1h",
    )
    .await?;

    let base = format!("http://127.0.0.1:{API_PORT}");
    println!();
    println!("  Download page  {base}/app");
    println!("  API base URL   {base}");
    println!("  Swagger UI     {base}/docs");
    println!("  OpenAPI        {base}/openapi.json");
    println!("  SSE streams    {base}/v1/download/{{jobId}}/stream (nginx routes them to the notifier)");
    println!(
        "  NATS           {} (monitoring http://127.0.0.1:{NATS_MONITOR_PORT})",
        nats.url()
    );
    println!(
        "  nats CLI       nats --server {} --user ops --password {}   (passwords of this run only)",
        nats.url(),
        nats.credentials().password(NatsUser::Ops)
    );
    println!(
        "  download-admin NATS_URL={} NATS_USER=admin NATS_PASSWORD={} {} tenant list",
        nats.url(),
        nats.credentials().password(NatsUser::Admin),
        binaries.join("download-admin").display()
    );
    println!(
        "  Metrics        intake http://127.0.0.1:{INTAKE_PORT}/metrics, notifier http://127.0.0.1:{NOTIFIER_PORT}/metrics,"
    );
    println!(
        "                 processor http://127.0.0.1:{PROCESSOR_METRICS_PORT}/metrics, presigner http://127.0.0.1:{PRESIGNER_METRICS_PORT}/metrics"
    );
    println!(
        "  Traces         OTLP/HTTP {} writes {}",
        traces.endpoint(),
        traces.spans_path().display()
    );
    println!("                 a job's waterfall: deploy/local/trace <jobId>");
    println!("  API key (tenant {DEMO_TENANT})  {api_key}");
    println!("  webhook secret (tenant {DEMO_TENANT})  {webhook_secret}");
    println!(
        "  S3 endpoint    {} (bucket downloads, credentials in deploy/local/README.md, access key {})",
        s3.endpoint(),
        system_tests::servers::S3_ACCESS_KEY
    );
    println!(
        "  sample file ids {} (70000 and 70001 are large); 99999 does not exist",
        SAMPLES
            .iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "  try: curl -s -X POST {base}/v1/download/initiate -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' -d '{{\"file_ids\":[10000,70000]}}'"
    );
    println!();
    println!("Ctrl-C stops everything.");

    stop.cancelled().await;
    println!("stopping ...");
    services.stop();
    drop(traces);
    drop(proxy);
    drop(s3);
    drop(nats);
    Ok(())
}
