//! What the rest of the machine does without our services, measured in the same run beside the
//! NATS ceilings, so a figure can be read against every floor under it:
//! - the HTTP framework alone: poem and poem-openapi (as the intake uses them) in a process of
//!   their own, answering the initiate request wrk sends with a 202 and a job-shaped body, with
//!   nothing of ours between (no credential check, no NATS, no spans, no metrics);
//! - SeaweedFS alone: the HEAD of one object, the one S3 call a one-file job cannot avoid, made
//!   through the processor's client (`Storage::object_size`).

use std::time::{Duration, Instant};

use anyhow::Context;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService};
use tokio::io::AsyncBufReadExt;

use super::cpu::{CpuMeter, CpuPerUnit};
use super::nats::concurrently;
use super::options::Options;
use super::pipeline::{INITIATE_BODY, INITIATE_PATH};
use super::system::System;
use super::wrk::{self, Load, TenantRequest};

/// The argument that makes the benchmark's own binary serve the HTTP floor.
pub const SERVE_HTTP_FLOOR: &str = "--serve-http-floor";

/// One floor: a rate and what it cost.
#[derive(Debug, Clone)]
pub struct Floor {
    /// What was measured.
    pub operation: &'static str,
    /// Operations per second.
    pub rate: f64,
    /// How many at once.
    pub concurrency: String,
    /// CPU per operation of every process, and of the load generator.
    pub cpu: CpuPerUnit,
    /// The process that served them (its CPU per operation is the floor's cost).
    pub server: &'static str,
}

impl Floor {
    /// The serving process's CPU per operation, µs.
    pub fn server_micros(&self) -> f64 {
        self.cpu.processes.get(self.server).copied().unwrap_or(f64::NAN)
    }
}

/// The initiate request the floor parses.
#[derive(Debug, Object)]
struct FloorRequest {
    file_ids: Vec<u64>,
}

/// A job-shaped answer.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
struct FloorAnswer {
    job_id: String,
    status: String,
    files: u32,
    status_url: String,
    stream_url: String,
}

#[derive(ApiResponse)]
enum FloorResponse {
    /// Accepted.
    #[oai(status = 202)]
    Accepted(Json<FloorAnswer>),
}

struct FloorApi;

#[OpenApi]
impl FloorApi {
    /// Answers as the intake would, having done nothing.
    #[oai(path = "/v1/download/initiate", method = "post")]
    async fn initiate(&self, body: Json<FloorRequest>) -> FloorResponse {
        let job_id = uuid::Uuid::now_v7().to_string();
        FloorResponse::Accepted(Json(FloorAnswer {
            status_url: format!("/v1/download/{job_id}"),
            stream_url: format!("/v1/download/{job_id}/stream"),
            files: body.0.file_ids.len() as u32,
            status: "queued".into(),
            job_id,
        }))
    }
}

/// Serves the HTTP floor on a free loopback port, printing the port on the first line of
/// stdout; runs until killed. What `bench --serve-http-floor` does.
pub async fn serve_http_floor() -> anyhow::Result<()> {
    use poem::listener::{Acceptor, Listener};
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let port = acceptor
        .local_addr()
        .first()
        .and_then(|address| address.as_socket_addr().copied())
        .context("the floor's listener has an address")?
        .port();
    // Built before the port is told, so none of its start-up counts against the requests.
    let app = poem::Route::new().nest("/", OpenApiService::new(FloorApi, "floor", "1"));
    println!("{port}");
    common::net::http_server(acceptor).run(app).await?;
    Ok(())
}

/// The HTTP framework alone: this binary started again as the floor's server, loaded by wrk as
/// initiate is.
async fn http_floor(options: &Options, seconds: u64, processes: &[(String, u32)]) -> anyhow::Result<Floor> {
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .arg(SERVE_HTTP_FLOOR)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the HTTP floor's server")?;
    let pid = server.id().context("the HTTP floor's server runs")?;
    let mut lines = tokio::io::BufReader::new(server.stdout.take().context("its stdout")?).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the HTTP floor's server did not say its port")??
        .context("the HTTP floor's server ended")?
        .trim()
        .parse()?;
    let load = Load {
        method: "POST",
        base_url: format!("http://127.0.0.1:{port}"),
        tenants: vec![TenantRequest {
            header: "Authorization".into(),
            value: "Bearer floor".into(),
            path: INITIATE_PATH.into(),
        }],
        body: Some(INITIATE_BODY.into()),
        idempotency_prefix: None,
        expected_status: 202,
        body_must_contain: Some("streamUrl".into()),
    };
    let mut measured = processes.to_vec();
    measured.push(("poem".into(), pid));
    let meter = CpuMeter::start(&measured);
    let outcome = wrk::run(&load, options.connections, seconds).await?;
    let usage = meter.stop();
    // Reaped after the meter stopped, so its time does not count as the generator's.
    server.kill().await?;
    anyhow::ensure!(
        outcome.refused == 0,
        "the HTTP floor refused requests: {}",
        outcome.refusals()
    );
    Ok(Floor {
        operation: "HTTP alone: poem + poem-openapi answer initiate's request (wrk)",
        rate: outcome.accepted_per_second(),
        concurrency: format!("{} connections", options.connections),
        cpu: usage.per_unit_micros(outcome.accepted()),
        server: "poem",
    })
}

/// SeaweedFS alone: `--connections` tasks HEAD one object through the processor's client. The
/// client's cost is the benchmark process's (the generator's), tasks and all.
async fn head_floor(system: &System, options: &Options, seconds: u64) -> anyhow::Result<Floor> {
    let key = system.put_source_file().await?;
    let storage = common::storage::Storage::for_parallel_requests(&system.s3.settings(), options.connections)?;
    let (rate, heads, usage) = concurrently(
        options.connections,
        seconds as f64,
        &system.processes(),
        |_, deadline| {
            let (storage, key) = (storage.clone(), key.clone());
            async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    storage.object_size(&key).await?.context("the object is there")?;
                    done += 1;
                }
                Ok(done)
            }
        },
    )
    .await?;
    Ok(Floor {
        operation: "SeaweedFS alone: HEAD of one object (the processor's client)",
        rate,
        concurrency: format!("{} tasks", options.connections),
        cpu: usage.per_unit_micros(heads),
        server: "weed",
    })
}

/// Both floors, `seconds` each, on the system's servers before any service starts.
pub async fn measure(system: &System, options: &Options, seconds: u64) -> anyhow::Result<Vec<Floor>> {
    eprintln!("floors: HTTP alone, SeaweedFS alone ...");
    Ok(vec![
        http_floor(options, seconds, &system.processes()).await?,
        head_floor(system, options, seconds).await?,
    ])
}
