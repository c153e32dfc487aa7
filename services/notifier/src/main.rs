//! Notifier entry point: settings from the environment, serve until SIGTERM/ctrl-c.

fn main() -> anyhow::Result<()> {
    let env = common::config::Env::from_process();
    let settings = notifier::Settings::from_env(&env)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        common::telemetry::init("notifier", env.get("LOG_FORMAT") == Some("json"));
        let shutdown = common::shutdown::on_signal();
        let application = notifier::Application::build(settings).await?;
        application.run_until_stopped(shutdown).await
    })
}
