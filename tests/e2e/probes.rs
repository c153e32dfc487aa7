//! The probes an orchestrator uses, on every service run as its own process: `/livez` answers
//! while the process runs; `/readyz` answers 200 once the service is started and connected
//! (NATS, and object storage for the intake and the processor), 503 naming the failed check
//! while storage is down, and 503 `draining` from SIGTERM on while a processor finishes its
//! running job.

use std::time::Duration;

use serde_json::Value;
use system_tests::processes::{Kind, ServiceFleet};
use system_tests::stack::Stack;
use system_tests::wait::wait_for;

use crate::init_logs;

const PATIENCE: Duration = Duration::from_secs(20);

async fn probe(http: &reqwest::Client, fleet: &ServiceFleet, kind: Kind, path: &str) -> (u16, Value) {
    let answer = http
        .get(format!("http://{}{path}", fleet.address(kind)))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{} {path}: {error}", kind.binary()));
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_is_live_and_ready_not_ready_without_storage_and_not_ready_while_draining() {
    init_logs();
    let mut stack = Stack::servers_only(&[]).await.unwrap();
    let mut fleet = ServiceFleet::builder(&stack)
        .env("DOWNLOAD_DELAY_ENABLED", "true")
        .env("DOWNLOAD_DELAY_MIN_MS", "6000")
        .env("DOWNLOAD_DELAY_MAX_MS", "6000")
        .env("SHUTDOWN_GRACE_SECONDS", "20")
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let kinds = [Kind::Intake, Kind::Notifier, Kind::Processor, Kind::Presigner];
    for kind in kinds {
        assert_eq!(
            probe(&http, &fleet, kind, "/livez").await,
            (200, serde_json::json!({"status": "alive"}))
        );
        let (status, ready) = probe(&http, &fleet, kind, "/readyz").await;
        assert_eq!(status, 200, "{}: {ready}", kind.binary());
        assert_eq!(ready["checks"]["nats"], "ok");
        let uses_storage = matches!(kind, Kind::Intake | Kind::Processor);
        assert_eq!(
            ready["checks"].get("storage").is_some(),
            uses_storage,
            "{}: {ready}",
            kind.binary()
        );
    }

    // Storage down: the services that use it are not ready (and say why); the others are.
    stack.s3.stop();
    for kind in [Kind::Intake, Kind::Processor] {
        let (status, ready) = probe(&http, &fleet, kind, "/readyz").await;
        assert_eq!(status, 503, "{}: {ready}", kind.binary());
        assert_eq!(ready["checks"]["storage"], "unavailable");
        assert_eq!(probe(&http, &fleet, kind, "/livez").await.0, 200, "alive all the same");
    }
    for kind in [Kind::Notifier, Kind::Presigner] {
        assert_eq!(probe(&http, &fleet, kind, "/readyz").await.0, 200, "{}", kind.binary());
    }
    stack.s3.restart().await.unwrap();
    wait_for("the processor ready again", PATIENCE, || async {
        (probe(&http, &fleet, Kind::Processor, "/readyz").await.0 == 200).then_some(())
    })
    .await
    .unwrap();

    // A job running for 6 s; SIGTERM: the processor drains it, not ready meanwhile.
    stack.put_file(98_100, 100).await.unwrap();
    let bearer = stack.bearer("probed").await.unwrap();
    let accepted: Value = http
        .post(fleet.url("/v1/download/initiate"))
        .header("Authorization", &bearer)
        .json(&serde_json::json!({"file_ids": [98100]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status_url = fleet.url(accepted["statusUrl"].as_str().unwrap());
    wait_for("the job to run", PATIENCE, || async {
        let status: Value = http
            .get(&status_url)
            .header("Authorization", &bearer)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (status["status"] == "processing").then_some(())
    })
    .await
    .unwrap();
    let pid = fleet.pid(Kind::Processor).unwrap();
    system_tests::processes::signal(pid, "TERM").unwrap();
    let (status, ready) = wait_for("the processor to say it drains", PATIENCE, || async {
        let answer = probe(&http, &fleet, Kind::Processor, "/readyz").await;
        (answer.0 == 503).then_some(answer)
    })
    .await
    .unwrap();
    assert_eq!(status, 503);
    assert_eq!(ready["checks"]["draining"], "draining", "{ready}");
    assert_eq!(
        probe(&http, &fleet, Kind::Processor, "/livez").await.0,
        200,
        "alive while draining"
    );
    // It finishes the running job, then exits.
    let exit = fleet.terminate(Kind::Processor).await;
    assert!(exit.is_ok_and(|status| status.success()));
    let status: Value = http
        .get(&status_url)
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "completed", "the drained job completed: {status}");
    fleet.stop().await.unwrap();
}
