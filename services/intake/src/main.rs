//! Intake entry point: settings from the environment, serve until SIGTERM/ctrl-c.
//! `intake provision` creates or updates the intake's JetStream resources and exits.

fn main() -> anyhow::Result<()> {
    let env = common::config::Env::from_process();
    let settings = intake::Settings::from_env(&env)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if std::env::args().nth(1).as_deref() == Some("provision") {
        return runtime.block_on(intake::provision(&settings));
    }
    // Before the runtime runs: the exporter's blocking client lives on the batch thread.
    let telemetry = common::telemetry::init("intake", &env)?;
    let result = runtime.block_on(async {
        let shutdown = common::shutdown::on_signal();
        let application = intake::Application::build(settings).await?;
        application.run_until_stopped(shutdown).await
    });
    drop(runtime);
    // Spans buffered at exit are exported before the process ends.
    telemetry.shutdown();
    result
}
