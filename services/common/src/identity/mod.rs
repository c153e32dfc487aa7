//! Identity: tenants, their API keys and webhook secrets, and stream tokens.
//!
//! Keys live in the `download-api-keys` bucket (one entry per key id, holding only the key's
//! SHA-256), tenants in `download-tenants` (one entry per tenant, with its `whsec_` webhook
//! secrets, which the notifier needs in clear to sign). Services keep both in memory, following
//! the buckets (see [`directory`]), so checking a key costs no round trip and a revocation
//! reaches every instance as soon as the bucket's update does. [`admin`] holds the operations of
//! the `download-admin` command.

pub mod admin;
pub mod directory;
pub mod key;
pub mod token;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Owner of jobs started through the legacy `/start` without credentials; no key can belong to it.
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// One API key, as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRecord {
    /// The key's id (the part after `dk_`), also its KV key.
    pub key_id: String,
    /// The tenant it authenticates as.
    pub tenant: String,
    /// What it is for, as its creator said.
    pub label: String,
    /// SHA-256 of the whole key, lowercase hex.
    pub sha256: String,
    /// Its last four characters, to recognise it in lists.
    pub last4: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key authenticates nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One webhook signing secret of a tenant.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecret {
    /// `whsec_<base64>`.
    pub secret: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// After a rotation, when this (previous) secret stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WebhookSecret")
            .field("created_at", &self.created_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// A tenant: whose jobs are whose, and how its webhooks are signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantRecord {
    /// The tenant id (owner of its jobs), also its KV key.
    pub tenant: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Its webhook secrets, newest first; during a rotation the previous one signs too until it
    /// retires (receivers accept any signature that verifies).
    pub webhook_secrets: Vec<WebhookSecret>,
}

impl TenantRecord {
    /// The secrets that sign deliveries at `now`, newest first.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<String> {
        self.webhook_secrets
            .iter()
            .filter(|secret| secret.retires_at.is_none_or(|retires| retires > now))
            .map(|secret| secret.secret.clone())
            .collect()
    }
}

/// Longest tenant id, in bytes.
pub const TENANT_ID_MAX_BYTES: usize = 64;

/// Checks a tenant id: 1-64 letters, digits, `-`, `_` and inner `.` (it is a KV key), and not
/// the reserved anonymous owner.
pub fn check_tenant_id(text: &str) -> Result<&str, String> {
    let valid = !text.is_empty()
        && text.len() <= TENANT_ID_MAX_BYTES
        && !text.starts_with('.')
        && !text.ends_with('.')
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if !valid {
        return Err(format!(
            "a tenant id is 1-{TENANT_ID_MAX_BYTES} letters, digits, - _ and inner ."
        ));
    }
    if text == ANONYMOUS_TENANT {
        return Err(format!("{ANONYMOUS_TENANT} is reserved for anonymous legacy jobs"));
    }
    Ok(text)
}

/// Checks the tenant a gateway names (`AUTH_MODE=gateway`): a valid user id, and not the
/// anonymous owner of legacy jobs (whose jobs no caller may read).
pub fn check_gateway_user(text: &str) -> Result<&str, String> {
    let user = crate::validation::check_user_id(text)?;
    if user == ANONYMOUS_TENANT {
        return Err(format!("{ANONYMOUS_TENANT} is reserved for anonymous legacy jobs"));
    }
    Ok(user)
}

/// The credentials of an `Authorization` header value of the `Bearer` scheme (`None` for any
/// other scheme, or none at all).
pub fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// Why a presented key authenticates nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// Malformed, or a checksum mismatch (decided without a lookup).
    #[error(transparent)]
    Format(#[from] key::KeyFormatError),
    /// No key has this id, or the secret part is wrong.
    #[error("the API key is not valid")]
    Unknown,
    /// The key was revoked.
    #[error("the API key was revoked")]
    Revoked,
}

/// Checks presented API keys against the key bucket held in memory.
#[derive(Clone)]
pub struct KeyDirectory {
    keys: std::sync::Arc<directory::Directory<ApiKeyRecord>>,
}

impl KeyDirectory {
    /// Keys from `directory` (which the caller keeps following).
    pub fn new(keys: std::sync::Arc<directory::Directory<ApiKeyRecord>>) -> Self {
        KeyDirectory { keys }
    }

    /// Whether checking `text` would read the key bucket: a well-formed key whose id is not held
    /// in memory (a key created a moment ago, or a made-up one). Callers limit such checks per
    /// client before making them, since anyone can make up keys with a valid checksum.
    pub fn needs_lookup(&self, text: &str) -> bool {
        key::id_of(text).is_some_and(|id| !self.keys.answers_from_memory(id))
    }

    /// The tenant a key authenticates as. Shape and checksum are checked first, so a typo costs
    /// no lookup; a known key costs none either (the bucket is in memory). An error means the
    /// bucket could not be read for a key not in memory.
    pub async fn authenticate(&self, text: &str) -> Result<Result<String, KeyRefusal>, directory::LookupError> {
        let presented = match key::PresentedKey::parse(text) {
            Ok(presented) => presented,
            Err(error) => return Ok(Err(KeyRefusal::Format(error))),
        };
        let Some(record) = self.keys.get(presented.id()).await? else {
            return Ok(Err(KeyRefusal::Unknown));
        };
        if !presented.matches(&record.sha256) {
            return Ok(Err(KeyRefusal::Unknown));
        }
        if record.revoked_at.is_some() {
            return Ok(Err(KeyRefusal::Revoked));
        }
        Ok(Ok(record.tenant.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_secret_stops_signing_and_the_newest_signs_first() {
        let now = Utc::now();
        let tenant = TenantRecord {
            tenant: "acme".into(),
            created_at: now,
            webhook_secrets: vec![
                WebhookSecret {
                    secret: "whsec_bmV3".into(),
                    created_at: now,
                    retires_at: None,
                },
                WebhookSecret {
                    secret: "whsec_b2xk".into(),
                    created_at: now,
                    retires_at: Some(now + chrono::Duration::hours(1)),
                },
            ],
        };
        assert_eq!(tenant.signing_secrets(now), vec!["whsec_bmV3", "whsec_b2xk"]);
        assert_eq!(
            tenant.signing_secrets(now + chrono::Duration::hours(2)),
            vec!["whsec_bmV3"]
        );
    }

    #[test]
    fn bearer_credentials_are_read_from_the_bearer_scheme_only() {
        assert_eq!(bearer_credentials("Bearer dk_x"), Some("dk_x"));
        assert_eq!(bearer_credentials("bearer   dk_x "), Some("dk_x"));
        assert_eq!(bearer_credentials("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_credentials("Bearer "), None);
        assert_eq!(bearer_credentials("dk_x"), None);
    }

    #[test]
    fn the_anonymous_owner_cannot_be_a_tenant() {
        assert!(check_tenant_id("anonymous").is_err());
        assert!(check_tenant_id("bad id").is_err());
        assert!(check_tenant_id("alice@example.com").is_err(), "not a KV key");
        assert!(check_tenant_id(".hidden").is_err());
        assert_eq!(check_tenant_id("acme-corp"), Ok("acme-corp"));
    }

    #[test]
    fn a_webhook_secret_never_shows_in_debug_output() {
        let secret = WebhookSecret {
            secret: "whsec_c2VjcmV0".into(),
            created_at: Utc::now(),
            retires_at: None,
        };
        assert!(!format!("{secret:?}").contains("whsec_"));
    }
}
