//! The operations of the `download-admin` command (and of test harnesses): tenants, their keys
//! and webhook secrets. Keys are shown once, when created; only their digest is stored.

use async_nats::jetstream::kv;
use base64::Engine;
use chrono::Utc;
use futures::TryStreamExt;
use rand::RngCore;
use secrecy::SecretString;

use super::directory::leader_entry;
use super::{ApiKeyRecord, TenantRecord, WebhookSecret, check_tenant_id, key};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Bad input, named.
    #[error("{0}")]
    Invalid(String),
    /// No such tenant or key.
    #[error("{0} does not exist")]
    Missing(String),
    /// Already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The bucket could not be read or written.
    #[error("the identity buckets are unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> AdminError {
    AdminError::Unavailable(Box::new(error))
}

/// The buckets the operations work on.
#[derive(Clone)]
pub struct IdentityBuckets {
    /// `download-api-keys`.
    pub keys: kv::Store,
    /// `download-tenants`.
    pub tenants: kv::Store,
}

/// A key as shown once to its creator.
pub struct IssuedKey {
    /// The stored record.
    pub record: ApiKeyRecord,
    /// The whole key.
    pub key: SecretString,
}

/// A new `whsec_` secret (24 random bytes).
pub fn new_webhook_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{}{}",
        crate::webhook::SECRET_PREFIX,
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

impl IdentityBuckets {
    /// Provisions (creates or updates) both buckets and opens them.
    pub async fn provision(
        client: &async_nats::Client,
        topology: &crate::nats::Topology,
    ) -> Result<Self, crate::nats::NatsSetupError> {
        use crate::nats::Resource;
        let jetstream =
            crate::nats::provision_only(client, topology, &[Resource::ApiKeysBucket, Resource::TenantsBucket]).await?;
        Ok(IdentityBuckets {
            keys: crate::nats::bucket(&jetstream, crate::names::API_KEYS_BUCKET).await?,
            tenants: crate::nats::bucket(&jetstream, crate::names::TENANTS_BUCKET).await?,
        })
    }

    /// Creates a tenant with a webhook secret and its first key.
    pub async fn create_tenant(&self, tenant: &str, label: &str) -> Result<(TenantRecord, IssuedKey), AdminError> {
        let tenant = check_tenant_id(tenant).map_err(AdminError::Invalid)?;
        let record = TenantRecord {
            tenant: tenant.to_string(),
            created_at: Utc::now(),
            webhook_secrets: vec![WebhookSecret {
                secret: new_webhook_secret(),
                created_at: Utc::now(),
                retires_at: None,
            }],
        };
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        match self.tenants.create(tenant, value.into()).await {
            Ok(_) => {}
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(AdminError::Exists(format!("tenant {tenant}")));
            }
            Err(error) => return Err(unavailable(error)),
        }
        let issued = self.create_key(tenant, label).await?;
        Ok((record, issued))
    }

    /// The tenant's record.
    pub async fn tenant(&self, tenant: &str) -> Result<TenantRecord, AdminError> {
        let (value, _) = leader_entry(&self.tenants, tenant)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::Missing(format!("tenant {tenant}")))?;
        serde_json::from_slice(&value).map_err(unavailable)
    }

    /// A new key for an existing tenant.
    pub async fn create_key(&self, tenant: &str, label: &str) -> Result<IssuedKey, AdminError> {
        self.tenant(tenant).await?;
        if label.len() > 200 {
            return Err(AdminError::Invalid("a key label is at most 200 bytes".into()));
        }
        let generated = key::generate();
        let record = ApiKeyRecord {
            key_id: generated.id.clone(),
            tenant: tenant.to_string(),
            label: label.to_string(),
            sha256: generated.sha256,
            last4: generated.last4,
            created_at: Utc::now(),
            revoked_at: None,
        };
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        self.keys
            .create(&record.key_id, value.into())
            .await
            .map_err(unavailable)?;
        Ok(IssuedKey {
            record,
            key: generated.text,
        })
    }

    /// Every key, or a tenant's, oldest first.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>, AdminError> {
        let mut records: Vec<ApiKeyRecord> = read_all(&self.keys).await?;
        records.retain(|record| tenant.is_none_or(|tenant| record.tenant == tenant));
        records.sort_by_key(|record| record.created_at);
        Ok(records)
    }

    /// Every tenant, by id.
    pub async fn list_tenants(&self) -> Result<Vec<TenantRecord>, AdminError> {
        let mut records: Vec<TenantRecord> = read_all(&self.tenants).await?;
        records.sort_by(|left, right| left.tenant.cmp(&right.tenant));
        Ok(records)
    }

    /// Revokes a key (by id); every instance refuses it once the change reaches it.
    pub async fn revoke_key(&self, key_id: &str) -> Result<ApiKeyRecord, AdminError> {
        let (value, revision) = leader_entry(&self.keys, key_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::Missing(format!("key {key_id}")))?;
        let mut record: ApiKeyRecord = serde_json::from_slice(&value).map_err(unavailable)?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(Utc::now());
            let value = serde_json::to_vec(&record).map_err(unavailable)?;
            self.keys
                .update(key_id, value.into(), revision)
                .await
                .map_err(unavailable)?;
        }
        Ok(record)
    }

    /// Gives a tenant a new webhook secret; the previous ones keep signing for `grace`, so
    /// receivers can switch without missing a delivery. Returns the new secret.
    pub async fn rotate_webhook_secret(&self, tenant: &str, grace: chrono::Duration) -> Result<String, AdminError> {
        let (value, revision) = leader_entry(&self.tenants, tenant)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::Missing(format!("tenant {tenant}")))?;
        let mut record: TenantRecord = serde_json::from_slice(&value).map_err(unavailable)?;
        let now = Utc::now();
        let retires_at = now + grace;
        record
            .webhook_secrets
            .retain(|secret| secret.retires_at.is_none_or(|retires| retires > now));
        for secret in &mut record.webhook_secrets {
            secret.retires_at = Some(secret.retires_at.map_or(retires_at, |retires| retires.min(retires_at)));
        }
        let secret = new_webhook_secret();
        record.webhook_secrets.insert(
            0,
            WebhookSecret {
                secret: secret.clone(),
                created_at: now,
                retires_at: None,
            },
        );
        let value = serde_json::to_vec(&record).map_err(unavailable)?;
        self.tenants
            .update(tenant, value.into(), revision)
            .await
            .map_err(unavailable)?;
        Ok(secret)
    }
}

async fn read_all<T: serde::de::DeserializeOwned>(bucket: &kv::Store) -> Result<Vec<T>, AdminError> {
    let names: Vec<String> = match bucket.keys().await {
        Ok(keys) => keys.try_collect().await.map_err(unavailable)?,
        Err(error) => return Err(unavailable(error)),
    };
    let mut records = Vec::with_capacity(names.len());
    for name in names {
        if let Some(value) = bucket.get(&name).await.map_err(unavailable)? {
            records.push(serde_json::from_slice(&value).map_err(unavailable)?);
        }
    }
    Ok(records)
}
