//! The tenants of the chaos run: one per initiate (each request is its own tenant, so any record
//! found after the run names, by its owner, the request that made it). They are created up
//! front through the identity buckets, as `download-admin tenant create` does, so no fault of
//! the run can stand between a request and its key. A tenant's key authenticates its requests;
//! its webhook secrets check the signatures of its jobs' deliveries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use common::identity::admin::{AdminError, IdentityBuckets};
use futures::{StreamExt, TryStreamExt};
use secrecy::ExposeSecret;

/// How many tenants are created at once.
const CREATING_AT_ONCE: usize = 32;
/// The label of the run's keys.
const LABEL: &str = "chaos run";
/// How often, and how far apart, a read of a tenant created a moment ago is tried: reads of a
/// replicated bucket may reach a replica a write behind.
const READ_BACK_ATTEMPTS: u32 = 50;
const READ_BACK_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What the harness holds of one tenant.
#[derive(Clone)]
pub struct Tenant {
    /// `Bearer dk_…`: the `Authorization` header of its requests.
    pub bearer: String,
    /// The `whsec_` secrets its webhooks are signed with (no rotation during the run).
    pub webhook_secrets: Vec<String>,
}

/// Every tenant of the run.
pub struct Tenants {
    buckets: IdentityBuckets,
    created: Mutex<HashMap<String, Tenant>>,
}

impl Tenants {
    /// Opens (provisions) the identity buckets on `replicas` replicas, as the services do.
    pub async fn open(client: &async_nats::Client, replicas: usize) -> anyhow::Result<Arc<Self>> {
        let topology = common::nats::Topology {
            replicas,
            ..Default::default()
        };
        let buckets = IdentityBuckets::provision(client, &topology)
            .await
            .context("opening the identity buckets")?;
        Ok(Arc::new(Tenants {
            buckets,
            created: Mutex::new(HashMap::new()),
        }))
    }

    /// Creates every tenant of `names`, several at once.
    pub async fn create_all(&self, names: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
        futures::stream::iter(names)
            .map(|name| async move { self.tenant(&name).await.map(|_| ()) })
            .buffer_unordered(CREATING_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The tenant `name`, created now if it was not before.
    pub async fn tenant(&self, name: &str) -> anyhow::Result<Tenant> {
        if let Some(tenant) = self.created(name) {
            return Ok(tenant);
        }
        let issued = match self.buckets.create_tenant(name, LABEL).await {
            Ok((_, issued)) => Ok(issued),
            // The tenant exists: created by an earlier call, or by this one when reading it back
            // for its first key reached a replica that had not seen it yet. A key of its own.
            Err(AdminError::Exists(_) | AdminError::Missing(_)) => {
                patiently(|| self.buckets.create_key(name, LABEL)).await
            }
            Err(error) => Err(error),
        }
        .with_context(|| format!("creating tenant {name}"))?;
        let record = patiently(|| self.buckets.tenant(name))
            .await
            .with_context(|| format!("reading tenant {name}"))?;
        let tenant = Tenant {
            bearer: format!("Bearer {}", issued.key.expose_secret()),
            webhook_secrets: record.signing_secrets(chrono::Utc::now()),
        };
        self.created
            .lock()
            .expect("tenants lock")
            .insert(name.to_string(), tenant.clone());
        Ok(tenant)
    }

    /// The tenant `name` if it was created.
    pub fn created(&self, name: &str) -> Option<Tenant> {
        self.created.lock().expect("tenants lock").get(name).cloned()
    }

    /// The `Authorization` header of `name`'s requests (creating the tenant if needed).
    pub async fn bearer(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.tenant(name).await?.bearer)
    }
}

/// Runs `operation` again while it finds the tenant missing (a replica serving the read has not
/// seen the tenant yet), up to [`READ_BACK_ATTEMPTS`] times.
async fn patiently<T, Operation, Running>(operation: Operation) -> Result<T, AdminError>
where
    Operation: Fn() -> Running,
    Running: Future<Output = Result<T, AdminError>>,
{
    let mut attempts = 1;
    loop {
        match operation().await {
            Err(AdminError::Missing(_)) if attempts < READ_BACK_ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(READ_BACK_PAUSE).await;
            }
            outcome => return outcome,
        }
    }
}
