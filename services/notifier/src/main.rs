//! Notifier entry point: settings from the environment, serve until SIGTERM/ctrl-c.
//!
//! `notifier provision` creates or updates the notifiers' JetStream resources and exits.
//! Operator subcommands for webhook dead letters:
//! `notifier dead-letters list` and `notifier dead-letters replay <webhookId>... | --all`.

fn main() -> anyhow::Result<()> {
    let env = common::config::Env::from_process();
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    if arguments.first().map(String::as_str) == Some("dead-letters") {
        let nats = common::config::NatsSettings::from_env(&env)?;
        return runtime.block_on(dead_letters(nats, &arguments[1..]));
    }
    let settings = notifier::Settings::from_env(&env)?;
    if arguments.first().map(String::as_str) == Some("provision") {
        return runtime.block_on(notifier::provision(&settings));
    }
    // Before the runtime runs: the exporter's blocking client lives on the batch thread.
    let telemetry = common::telemetry::init("notifier", &env)?;
    let result = runtime.block_on(async {
        let shutdown = common::shutdown::on_signal();
        let application = notifier::Application::build(settings).await?;
        application.run_until_stopped(shutdown).await
    });
    drop(runtime);
    // Spans buffered at exit are exported before the process ends.
    telemetry.shutdown();
    result
}

async fn dead_letters(nats: common::config::NatsSettings, arguments: &[String]) -> anyhow::Result<()> {
    let client = common::nats::connect(&nats, "download-notifier-cli").await?;
    let jetstream = async_nats::jetstream::new(client);
    match arguments.first().map(String::as_str) {
        Some("list") => {
            for letter in notifier::webhooks::dead_letters::list(&jetstream).await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
        }
        Some("replay") if arguments.get(1).map(String::as_str) == Some("--all") => {
            let count = notifier::webhooks::dead_letters::replay(&jetstream, None).await?;
            println!("replayed {count} webhook deliveries");
        }
        Some("replay") if arguments.len() > 1 => {
            let count = notifier::webhooks::dead_letters::replay(&jetstream, Some(&arguments[1..])).await?;
            println!("replayed {count} webhook deliveries");
        }
        _ => anyhow::bail!("usage: notifier dead-letters list | notifier dead-letters replay <webhookId>... | --all"),
    }
    Ok(())
}
