//! Presigner entry point: settings from the environment, run until SIGTERM/ctrl-c.

fn main() -> anyhow::Result<()> {
    let env = common::config::Env::from_process();
    let settings = presigner::Settings::from_env(&env)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        common::telemetry::init("presigner", env.get("LOG_FORMAT") == Some("json"));
        let shutdown = common::shutdown::on_signal();
        presigner::run(settings, shutdown).await
    })
}
