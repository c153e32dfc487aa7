//! The service image, built here: the Dockerfile's base images cannot be pulled on this
//! machine, so `deploy/image/build-scratch` builds the same image FROM scratch out of the
//! binaries of this build (buildah, vfs storage, chroot isolation: no daemon, no registry). Run
//! from the image as uid 10001, the presigner's `provision` step reaches a real NATS with the
//! presigner's own credentials and exits 0; with a NATS that is not there, it fails.

use std::path::Path;
use std::process::Command;

use system_tests::processes::service_binaries;
use system_tests::servers::{NatsServer, NatsUser, workspace_root};

use crate::init_logs;

/// `buildah` with the test's own storage.
fn buildah(storage: &Path) -> Command {
    let mut command = Command::new("buildah");
    command.args([
        "--storage-driver",
        "vfs",
        "--root",
        storage.to_str().unwrap(),
        "--runroot",
        storage.join("run").to_str().unwrap(),
    ]);
    command
}

fn output_of(command: &mut Command) -> std::process::Output {
    command.output().unwrap_or_else(|error| panic!("{command:?}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_built_from_scratch_runs_a_service_against_nats() {
    init_logs();
    let storage = tempfile::tempdir().unwrap();
    let binaries = service_binaries().unwrap();
    let built = output_of(Command::new(workspace_root().join("deploy/image/build-scratch")).args([
        binaries.to_str().unwrap(),
        "download-service:test",
        storage.path().to_str().unwrap(),
    ]));
    assert!(
        built.status.success(),
        "the image does not build:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let inspect = output_of(buildah(storage.path()).args([
        "inspect",
        "--format",
        "{{.OCIv1.Config.User}}",
        "download-service:test",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "10001:10001",
        "not root"
    );

    let nats = NatsServer::start().await.unwrap();
    let container = output_of(buildah(storage.path()).args(["from", "download-service:test"]));
    assert!(
        container.status.success(),
        "{}",
        String::from_utf8_lossy(&container.stderr)
    );
    let container = String::from_utf8(container.stdout).unwrap().trim().to_string();
    let provision = |env: &[(String, String)]| {
        let mut command = buildah(storage.path());
        command.args(["run", "--isolation", "chroot", "--network", "host"]);
        for (key, value) in env {
            command.args(["--env", &format!("{key}={value}")]);
        }
        command.args([container.as_str(), "--", "/usr/local/bin/presigner", "provision"]);
        output_of(&mut command)
    };
    let env = nats.env_for(NatsUser::Presigner);
    let ran = provision(&env);
    assert!(
        ran.status.success(),
        "the presigner in the image cannot reach NATS:\n{}\n{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    // The control: the same step with a NATS that is not there fails.
    let nowhere: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| match key.as_str() {
            "NATS_URL" => (key.clone(), "nats://127.0.0.1:1".to_string()),
            _ => (key.clone(), value.clone()),
        })
        .collect();
    assert!(!provision(&nowhere).status.success(), "it really connects");
    let _ = output_of(buildah(storage.path()).args(["rm", &container]));
}
