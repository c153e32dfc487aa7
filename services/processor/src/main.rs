//! Processor entry point: settings from the environment, run until SIGTERM/ctrl-c.
//! `processor provision` creates or updates the processors' JetStream resources and exits.

fn main() -> anyhow::Result<()> {
    let env = common::config::Env::from_process();
    let settings = processor::Settings::from_env(&env)?;
    let runtime = tokio::runtime::Runtime::new()?;
    if std::env::args().nth(1).as_deref() == Some("provision") {
        return runtime.block_on(processor::provision(&settings));
    }
    // Before the runtime runs: the exporter's blocking client lives on the batch thread.
    let telemetry = common::telemetry::init("processor", &env)?;
    let result = runtime.block_on(async {
        let shutdown = common::shutdown::on_signal();
        processor::run(settings, shutdown).await
    });
    drop(runtime);
    // Spans buffered at exit are exported before the process ends.
    telemetry.shutdown();
    result
}
