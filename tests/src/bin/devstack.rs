//! The local stack: NATS and SeaweedFS from the project venv, seeded sample files, and every
//! service as its own process (built binaries next to this one). Prints the URLs; Ctrl-C stops
//! everything. Started by `deploy/local/up`.

use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};
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

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let s3_ports = S3Ports::fixed(S3_PORT, S3_INTERNAL_BASE);
    let mut wanted = vec![NATS_PORT, NATS_MONITOR_PORT, API_PORT, NOTIFIER_PORT, INTAKE_PORT];
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
        // Behind nginx: rate limits key anonymous clients by X-Forwarded-For.
        ("TRUST_PROXY".to_string(), "true".to_string()),
        ("DOWNLOAD_DELAY_MIN_MS".to_string(), "5000".to_string()),
        ("DOWNLOAD_DELAY_MAX_MS".to_string(), "15000".to_string()),
    ]);
    let binaries = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let mut children: Vec<(&str, Child)> = Vec::new();
    let services = [
        ("presigner", NatsUser::Presigner),
        ("processor", NatsUser::Processor),
        ("intake", NatsUser::Intake),
        ("notifier", NatsUser::Notifier),
    ];
    for (service, user) in services {
        let path = binaries.join(service);
        let port = if service == "notifier" {
            NOTIFIER_PORT
        } else {
            INTAKE_PORT
        };
        // Each service connects as its own NATS user (NATS_URL, NATS_USER, NATS_PASSWORD).
        let child = Command::new(&path)
            .envs(env.iter().cloned())
            .envs(nats.env_for(user))
            .env("PORT", port.to_string())
            .spawn()
            .with_context(|| format!("starting {} (built by deploy/local/up?)", path.display()))?;
        children.push((service, child));
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
        "  try: curl -s -X POST {base}/v1/download/initiate -H 'X-User-Id: demo' -H 'Content-Type: application/json' -d '{{\"file_ids\":[10000,70000]}}'"
    );
    println!();
    println!("Ctrl-C stops everything.");

    tokio::signal::ctrl_c().await?;
    println!("stopping ...");
    for (_, child) in &children {
        // A terminal's Ctrl-C reaches the services too, but a supervisor's signal reaches only
        // this process: ask every service to stop either way.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for (name, child) in &mut children {
        // Give them a moment to drain.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if child.try_wait()?.is_none() {
            println!("{name} did not stop in time, killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    drop(proxy);
    drop(s3);
    drop(nats);
    Ok(())
}
