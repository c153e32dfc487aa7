//! `download-admin`: manages tenants, their API keys and webhook secrets in the identity buckets.
//! Connects like the services (`NATS_URL`, `NATS_USER`/`NATS_PASSWORD` or `NATS_CREDS_FILE`; the
//! `admin` user of `nats/auth.conf`). Keys and secrets are printed once, when created.

use clap::{Parser, Subcommand};
use common::identity::admin::{IdentityBuckets, IssuedKey};
use common::identity::{ApiKeyRecord, TenantRecord};
use secrecy::ExposeSecret;

/// Manage tenants, API keys and webhook secrets of the download service.
#[derive(Debug, Parser)]
#[command(name = "download-admin", version)]
struct Command {
    /// Print JSON (for scripts) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Tenants: the owners of jobs, each with its own webhook secret.
    #[command(subcommand)]
    Tenant(TenantAction),
    /// API keys (`dk_…`), sent as `Authorization: Bearer <key>`.
    #[command(subcommand)]
    Key(KeyAction),
}

#[derive(Debug, Subcommand)]
enum TenantAction {
    /// Create a tenant; prints its first API key and its webhook secret, once.
    Create {
        /// Tenant id: 1-128 of letters, digits and . _ @ : + -
        tenant: String,
        /// Label of the first key.
        #[arg(long, default_value = "first key")]
        label: String,
    },
    /// List tenants (secrets are never listed).
    List,
    /// Give a tenant a new webhook secret; the previous one keeps signing for the grace period.
    RotateWebhookSecret {
        /// Tenant id.
        tenant: String,
        /// Hours the previous secret keeps signing (both signatures are sent meanwhile).
        #[arg(long, default_value_t = 24)]
        grace_hours: u32,
    },
}

#[derive(Debug, Subcommand)]
enum KeyAction {
    /// Create another key for a tenant; prints it once.
    Create {
        /// Tenant id.
        tenant: String,
        /// What the key is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List keys (id, tenant, label, last four characters, state).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id; every instance refuses it within seconds.
    Revoke {
        /// The key id (the part after `dk_`, as `key list` shows it).
        key_id: String,
    },
}

fn main() {
    let command = Command::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => exit_with(&format!("cannot start: {error}")),
    };
    if let Err(error) = runtime.block_on(run(command)) {
        exit_with(&format!("{error:#}"));
    }
}

fn exit_with(message: &str) -> ! {
    eprintln!("download-admin: {message}");
    std::process::exit(1)
}

async fn run(command: Command) -> anyhow::Result<()> {
    let env = common::config::Env::from_process();
    let settings = common::config::NatsSettings::from_env(&env)?;
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        common::nats::connect(&settings, "download-admin"),
    )
    .await
    .map_err(|_| anyhow::anyhow!("NATS did not answer within 15 s (NATS_URL and credentials?)"))??;
    let buckets = IdentityBuckets::provision(&client, &common::nats::Topology::streams(&settings)).await?;
    let json = command.json;
    match command.action {
        Action::Tenant(TenantAction::Create { tenant, label }) => {
            let (record, issued) = buckets.create_tenant(&tenant, &label).await?;
            let secret = record
                .webhook_secrets
                .first()
                .map(|secret| secret.secret.clone())
                .unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "tenant": record.tenant,
                        "keyId": issued.record.key_id,
                        "apiKey": issued.key.expose_secret(),
                        "webhookSecret": secret,
                    })
                );
            } else {
                println!("tenant {} created", record.tenant);
                print_issued(&issued);
                println!("webhook secret (shown once; verify webhook-signature with it): {secret}");
            }
        }
        Action::Tenant(TenantAction::List) => {
            let tenants = buckets.list_tenants().await?;
            if json {
                let list: Vec<_> = tenants.iter().map(tenant_json).collect();
                println!("{}", serde_json::Value::from(list));
            } else {
                for tenant in &tenants {
                    println!(
                        "{}\tcreated {}\t{} webhook secret(s)",
                        tenant.tenant,
                        tenant.created_at.format("%Y-%m-%d %H:%M"),
                        tenant.signing_secrets(chrono::Utc::now()).len()
                    );
                }
            }
        }
        Action::Tenant(TenantAction::RotateWebhookSecret { tenant, grace_hours }) => {
            let grace = chrono::Duration::hours(i64::from(grace_hours));
            let secret = buckets.rotate_webhook_secret(&tenant, grace).await?;
            if json {
                println!("{}", serde_json::json!({ "tenant": tenant, "webhookSecret": secret }));
            } else {
                println!("new webhook secret of {tenant} (shown once): {secret}");
                println!("the previous secret keeps signing for {grace_hours} h");
            }
        }
        Action::Key(KeyAction::Create { tenant, label }) => {
            let issued = buckets.create_key(&tenant, &label).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "tenant": issued.record.tenant,
                        "keyId": issued.record.key_id,
                        "apiKey": issued.key.expose_secret(),
                    })
                );
            } else {
                print_issued(&issued);
            }
        }
        Action::Key(KeyAction::List { tenant }) => {
            let keys = buckets.list_keys(tenant.as_deref()).await?;
            if json {
                let list: Vec<_> = keys.iter().map(key_json).collect();
                println!("{}", serde_json::Value::from(list));
            } else {
                for key in &keys {
                    println!(
                        "{}\t{}\t…{}\t{}\t{}",
                        key.key_id,
                        key.tenant,
                        key.last4,
                        key.revoked_at.map_or("active".to_string(), |at| format!(
                            "revoked {}",
                            at.format("%Y-%m-%d %H:%M")
                        )),
                        key.label
                    );
                }
            }
        }
        Action::Key(KeyAction::Revoke { key_id }) => {
            let record = buckets.revoke_key(&key_id).await?;
            if json {
                println!("{}", key_json(&record));
            } else {
                println!("key {} of {} revoked", record.key_id, record.tenant);
            }
        }
    }
    client.flush().await.ok();
    Ok(())
}

fn print_issued(issued: &IssuedKey) {
    println!(
        "API key {} for {} (shown once; send it as Authorization: Bearer <key>):",
        issued.record.key_id, issued.record.tenant
    );
    println!("{}", issued.key.expose_secret());
}

fn key_json(key: &ApiKeyRecord) -> serde_json::Value {
    serde_json::json!({
        "keyId": key.key_id,
        "tenant": key.tenant,
        "label": key.label,
        "last4": key.last4,
        "createdAt": key.created_at,
        "revokedAt": key.revoked_at,
    })
}

fn tenant_json(tenant: &TenantRecord) -> serde_json::Value {
    serde_json::json!({
        "tenant": tenant.tenant,
        "createdAt": tenant.created_at,
        "activeWebhookSecrets": tenant.signing_secrets(chrono::Utc::now()).len(),
    })
}
