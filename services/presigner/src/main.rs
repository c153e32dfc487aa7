//! Presigner entry point: settings from the environment, run until SIGTERM/ctrl-c.
//! `presigner provision` checks the settings and NATS and exits (it owns no JetStream resource).

fn main() -> anyhow::Result<()> {
    let env = common::config::Env::from_process();
    let settings = presigner::Settings::from_env(&env)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if std::env::args().nth(1).as_deref() == Some("provision") {
        return runtime.block_on(presigner::provision(&settings));
    }
    // Before the runtime runs: the exporter's blocking client lives on the batch thread.
    let telemetry = common::telemetry::init("presigner", &env)?;
    let result = runtime.block_on(async {
        let shutdown = common::shutdown::on_signal();
        presigner::run(settings, shutdown).await
    });
    drop(runtime);
    // Spans buffered at exit are exported before the process ends.
    telemetry.shutdown();
    result
}
