//! Typed configuration sections read from environment variables, validated at startup.
//!
//! Services build their `Settings` from an [`Env`]: the process environment in `main`, a plain
//! map in tests (so nothing ever calls `std::env::set_var`). Every error names the bad key.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

/// A configuration value that could not be used; names the variable. Its message never shows
/// a secret: values of variables named like secrets are hidden, and URLs lose their credentials.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {key}={shown:?}: {reason}", shown = shown_value(key, value))]
pub struct ConfigError {
    /// The environment variable.
    pub key: String,
    /// Its value (never a secret's).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How a configuration value may appear in an error: hidden for secrets, without the
/// credentials for URLs (`nats://user:password@host` shows as `nats://***@host`).
pub fn shown_value(key: &str, value: &str) -> String {
    let secret_name = ["SECRET", "PASSWORD", "TOKEN", "CREDS", "KEY_ID"]
        .iter()
        .any(|marker| key.to_ascii_uppercase().contains(marker));
    if secret_name {
        return "(hidden)".into();
    }
    if !value.contains('@') {
        return value.to_string();
    }
    value
        .split(',')
        .map(|part| match part.trim().split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => part.trim().to_string(),
            },
            None => "(hidden)".to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A snapshot of configuration variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    variables: HashMap<String, String>,
    /// Every name asked for, by this snapshot and its clones (what a deployment's variables
    /// are checked against: a variable nobody reads is a misspelt or stale one).
    asked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Env {
    /// The process environment, read once.
    pub fn from_process() -> Self {
        Env {
            variables: std::env::vars().collect(),
            asked: Default::default(),
        }
    }

    /// Variables from explicit pairs (tests, embedded use).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Env {
            variables: pairs
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            asked: Default::default(),
        }
    }

    /// Sets one variable in this snapshot (not in the process).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.insert(key.into(), value.into());
        self
    }

    /// Every variable name read so far (through this snapshot or a clone of it).
    pub fn asked(&self) -> std::collections::BTreeSet<String> {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The raw value, if set and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_string());
        self.variables
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.trim().is_empty())
    }

    /// A string with a default.
    pub fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).trim().to_string()
    }

    /// A parsed value with a default.
    pub fn parse<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|error: T::Err| ConfigError {
                key: key.to_string(),
                value: raw.to_string(),
                reason: error.to_string(),
            }),
        }
    }

    /// A boolean: `true/false`, `1/0`, `yes/no`, `on/off`.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key).map(|raw| raw.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(raw) => match raw.as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError {
                    key: key.to_string(),
                    value: raw,
                    reason: "expected true or false".into(),
                }),
            },
        }
    }

    /// A duration given in milliseconds.
    pub fn millis(&self, key: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.parse(key, default_ms).map(Duration::from_millis)
    }

    /// A duration given in seconds.
    pub fn seconds(&self, key: &str, default_seconds: u64) -> Result<Duration, ConfigError> {
        self.parse(key, default_seconds).map(Duration::from_secs)
    }

    /// A secret; its value never appears in errors or logs.
    pub fn secret(&self, key: &str, default: &str) -> SecretString {
        SecretString::from(self.string(key, default))
    }

    /// Fails with a message naming `key` unless `condition` holds.
    pub fn require(&self, condition: bool, key: &str, reason: &str) -> Result<(), ConfigError> {
        if condition {
            return Ok(());
        }
        Err(ConfigError {
            key: key.to_string(),
            value: self.get(key).unwrap_or_default().to_string(),
            reason: reason.to_string(),
        })
    }
}

/// Where a service without an HTTP port of its own (processor, presigner) serves `/metrics`
/// and `/health`: `METRICS_PORT` on `HOST` (default 127.0.0.1); unset: not served, `0`: a free
/// port (logged).
pub fn metrics_address(env: &Env) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(_) = env.get("METRICS_PORT") else {
        return Ok(None);
    };
    let port: u16 = env.parse("METRICS_PORT", 0)?;
    let host: std::net::IpAddr = env.parse("HOST", std::net::IpAddr::from([127, 0, 0, 1]))?;
    Ok(Some(std::net::SocketAddr::new(host, port)))
}

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `NATS_URL`: one or more comma-separated server URLs (all members of a cluster).
    pub urls: Vec<String>,
    /// `NATS_CREDS_FILE`: a `.creds` file (JWT + NKey).
    pub credentials_file: Option<String>,
    /// `NATS_USER` / `NATS_PASSWORD`.
    pub user_password: Option<(String, SecretString)>,
    /// `NATS_TOKEN`.
    pub token: Option<SecretString>,
    /// `NATS_TLS_CA_FILE`: CA to trust for `tls://` servers.
    pub tls_ca_file: Option<String>,
    /// `NATS_TLS_CERT_FILE` / `NATS_TLS_KEY_FILE`: client certificate for mutual TLS.
    pub tls_client_cert: Option<(String, String)>,
    /// `NATS_REPLICAS`: replicas of streams and buckets (1 single node, 3 in a cluster).
    pub replicas: usize,
    /// `NATS_RETRY_WINDOW_SECONDS`: how long a JetStream call is retried (backoff with jitter)
    /// while the cluster cannot answer it, before the failure counts (default 30: a leader
    /// election takes up to ~10 s).
    pub patience: crate::retry::Patience,
    /// `NATS_PROVISION`: whether the service creates or updates its streams, buckets and
    /// consumers at startup (default true). With least-privilege NATS users (`nats/auth.conf`)
    /// services may not create streams (that right would let them read and write every stream
    /// through sources): set it to false, and run `<service> provision` as the `admin` user
    /// before starting the service; it then waits for them to exist.
    pub provision: bool,
    /// `QUEUE_MAX_MESSAGES`: the job stream's hard limit (`max_msgs`, discard new) applied by
    /// provisioning (default 100000): a job published to a full stream is refused, and the
    /// intake answers 503 `QUEUE_FULL`. The intake's `QUEUE_MAX_BACKLOG` refuses earlier.
    pub jobs_max_messages: i64,
}

impl NatsSettings {
    /// Reads the section.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let urls: Vec<String> = env
            .string("NATS_URL", "nats://127.0.0.1:14222")
            .split(',')
            .map(|url| url.trim().to_string())
            .filter(|url| !url.is_empty())
            .collect();
        env.require(!urls.is_empty(), "NATS_URL", "at least one server URL is needed")?;
        for url in &urls {
            let parsed = url::Url::parse(url).map_err(|error| ConfigError {
                key: "NATS_URL".into(),
                value: url.clone(),
                reason: error.to_string(),
            })?;
            env.require(
                matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss"),
                "NATS_URL",
                "scheme must be nats, tls, ws or wss",
            )?;
        }
        let user_password = env
            .get("NATS_USER")
            .map(|user| (user.to_string(), env.secret("NATS_PASSWORD", "")));
        let tls_client_cert = match (env.get("NATS_TLS_CERT_FILE"), env.get("NATS_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => Some((cert.to_string(), key.to_string())),
            (None, None) => None,
            _ => {
                return Err(ConfigError {
                    key: "NATS_TLS_CERT_FILE".into(),
                    value: String::new(),
                    reason: "NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE must be set together".into(),
                });
            }
        };
        let replicas = env.parse("NATS_REPLICAS", 1usize)?;
        env.require((1..=5).contains(&replicas), "NATS_REPLICAS", "must be between 1 and 5")?;
        let window = env.seconds("NATS_RETRY_WINDOW_SECONDS", 30)?;
        env.require(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&window),
            "NATS_RETRY_WINDOW_SECONDS",
            "must be between 1 and 600",
        )?;
        Ok(NatsSettings {
            urls,
            credentials_file: env.get("NATS_CREDS_FILE").map(str::to_string),
            user_password,
            token: env.get("NATS_TOKEN").map(|_| env.secret("NATS_TOKEN", "")),
            tls_ca_file: env.get("NATS_TLS_CA_FILE").map(str::to_string),
            tls_client_cert,
            replicas,
            patience: crate::retry::Patience { window },
            provision: env.bool("NATS_PROVISION", true)?,
            jobs_max_messages: {
                let max = env.parse("QUEUE_MAX_MESSAGES", crate::nats::DEFAULT_JOBS_MAX_MESSAGES)?;
                env.require(
                    (1..=100_000_000).contains(&max),
                    "QUEUE_MAX_MESSAGES",
                    "must be between 1 and 100000000",
                )?;
                max
            },
        })
    }
}

/// How callers prove who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// `AUTH_MODE=api_key` (default): `Authorization: Bearer dk_…` keys from the key bucket.
    ApiKeys,
    /// `AUTH_MODE=gateway`: a gateway in front authenticates and sets this header (default
    /// `X-User-Id`, `AUTH_GATEWAY_HEADER`), overwriting any value a client sent.
    Gateway {
        /// The header carrying the tenant.
        header: String,
    },
}

/// Identity settings shared by the intake and the notifier.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `AUTH_MODE`.
    pub mode: AuthMode,
    /// `STREAM_TOKEN_SECRET`: signs the stream tokens in `streamUrl` (the intake issues them, the
    /// notifier verifies them); at least 32 bytes, the same on both.
    pub stream_token_secret: SecretString,
    /// `STREAM_TOKEN_TTL_SECONDS`: how long a stream token opens its stream (default 600).
    pub stream_token_ttl: Duration,
}

impl AuthSettings {
    /// Reads the section.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        // Checked in every mode: a deployment switching to the gateway later finds a bad name
        // now, not then.
        let header = env.string("AUTH_GATEWAY_HEADER", "X-User-Id");
        env.require(
            poem_header_name(&header),
            "AUTH_GATEWAY_HEADER",
            "must be a valid HTTP header name",
        )?;
        let mode = match env.string("AUTH_MODE", "api_key").to_ascii_lowercase().as_str() {
            "api_key" | "api_keys" => AuthMode::ApiKeys,
            "gateway" => AuthMode::Gateway { header },
            other => {
                return Err(ConfigError {
                    key: "AUTH_MODE".into(),
                    value: other.into(),
                    reason: "expected api_key or gateway".into(),
                });
            }
        };
        let secret = env.secret("STREAM_TOKEN_SECRET", "");
        env.require(
            secrecy::ExposeSecret::expose_secret(&secret).len() >= crate::identity::token::MIN_SECRET_BYTES,
            "STREAM_TOKEN_SECRET",
            "must be set to at least 32 random characters, the same for the intake and the notifier",
        )?;
        let stream_token_ttl = env.seconds("STREAM_TOKEN_TTL_SECONDS", 600)?;
        env.require(
            (Duration::from_secs(2)..=Duration::from_secs(3_600)).contains(&stream_token_ttl),
            "STREAM_TOKEN_TTL_SECONDS",
            "must be between 2 and 3600 (a token in a URL is a short-lived capability)",
        )?;
        Ok(AuthSettings {
            mode,
            stream_token_secret: secret,
            stream_token_ttl,
        })
    }

    /// The signer of stream tokens.
    pub fn token_signer(&self) -> crate::identity::token::TokenSigner {
        crate::identity::token::TokenSigner::new(self.stream_token_secret.clone())
    }
}

fn poem_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'))
}

/// How to reach object storage. Names as in the old service.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `S3_ENDPOINT`, e.g. `http://127.0.0.1:18333`.
    pub endpoint: String,
    /// `S3_PUBLIC_ENDPOINT`: the endpoint as browsers reach it, used in presigned URLs
    /// (defaults to `S3_ENDPOINT`).
    pub public_endpoint: String,
    /// `S3_REGION`.
    pub region: String,
    /// `S3_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `S3_SECRET_ACCESS_KEY`.
    pub secret_access_key: SecretString,
    /// `S3_BUCKET_NAME`.
    pub bucket: String,
    /// `S3_FORCE_PATH_STYLE`: `bucket` in the path rather than the host name.
    pub force_path_style: bool,
    /// `S3_REQUEST_TIMEOUT_MS`: per-request timeout of S3 calls that are not streaming bodies.
    pub request_timeout: Duration,
    /// `RESULT_RETENTION_DAYS`: how long a bundle is kept (1-365, default 1, as long as its job's
    /// record): the bucket's lifecycle expires it then; a result whose object is gone answers 410.
    pub result_retention_days: u32,
}

impl S3Settings {
    /// Reads the section.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let endpoint = env.string("S3_ENDPOINT", "http://127.0.0.1:18333");
        validate_http_url(env, "S3_ENDPOINT", &endpoint)?;
        let public_endpoint = env.string("S3_PUBLIC_ENDPOINT", &endpoint);
        validate_http_url(env, "S3_PUBLIC_ENDPOINT", &public_endpoint)?;
        let bucket = env.string("S3_BUCKET_NAME", "downloads");
        env.require(
            (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'.'),
            "S3_BUCKET_NAME",
            "must be a valid S3 bucket name (3-63 lowercase letters, digits, '-' or '.')",
        )?;
        Ok(S3Settings {
            endpoint,
            public_endpoint,
            region: env.string("S3_REGION", "us-east-1"),
            access_key_id: env.string("S3_ACCESS_KEY_ID", "devkey"),
            secret_access_key: env.secret("S3_SECRET_ACCESS_KEY", "devsecret"),
            bucket,
            force_path_style: env.bool("S3_FORCE_PATH_STYLE", true)?,
            request_timeout: env.millis("S3_REQUEST_TIMEOUT_MS", 10_000)?,
            result_retention_days: {
                let days: u32 = env.parse("RESULT_RETENTION_DAYS", 1)?;
                env.require((1..=365).contains(&days), "RESULT_RETENTION_DAYS", "must be 1-365 days")?;
                days
            },
        })
    }
}

fn validate_http_url(env: &Env, key: &str, value: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(value).map_err(|error| ConfigError {
        key: key.into(),
        value: value.into(),
        reason: error.to_string(),
    })?;
    env.require(
        matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some(),
        key,
        "must be an absolute http(s) URL",
    )
}

/// The old service's simulated slowness, added to the real work.
#[derive(Debug, Clone, Copy)]
pub struct DelaySettings {
    /// `DOWNLOAD_DELAY_ENABLED`.
    pub enabled: bool,
    /// `DOWNLOAD_DELAY_MIN_MS`.
    pub min: Duration,
    /// `DOWNLOAD_DELAY_MAX_MS`.
    pub max: Duration,
}

impl DelaySettings {
    /// Reads the section.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let settings = DelaySettings {
            enabled: env.bool("DOWNLOAD_DELAY_ENABLED", false)?,
            min: env.millis("DOWNLOAD_DELAY_MIN_MS", 10_000)?,
            max: env.millis("DOWNLOAD_DELAY_MAX_MS", 120_000)?,
        };
        env.require(
            settings.min <= settings.max,
            "DOWNLOAD_DELAY_MIN_MS",
            "must not exceed DOWNLOAD_DELAY_MAX_MS",
        )?;
        Ok(settings)
    }

    /// The expected delay of a job, for estimates before any job has finished.
    pub fn mean(&self) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        (self.min + self.max) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let env = Env::default();
        let s3 = S3Settings::from_env(&env).unwrap();
        assert_eq!(s3.bucket, "downloads");
        assert!(s3.force_path_style);
        let nats = NatsSettings::from_env(&env).unwrap();
        assert_eq!(nats.urls, vec!["nats://127.0.0.1:14222"]);
        assert_eq!(nats.replicas, 1);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let env = Env::from_pairs([("DOWNLOAD_DELAY_MIN_MS", "soon")]);
        let error = DelaySettings::from_env(&env).unwrap_err();
        assert_eq!(error.key, "DOWNLOAD_DELAY_MIN_MS");
        assert!(error.to_string().contains("DOWNLOAD_DELAY_MIN_MS"));
    }

    #[test]
    fn inverted_delay_bounds_are_refused() {
        let env = Env::from_pairs([("DOWNLOAD_DELAY_MIN_MS", "5000"), ("DOWNLOAD_DELAY_MAX_MS", "10")]);
        assert_eq!(DelaySettings::from_env(&env).unwrap_err().key, "DOWNLOAD_DELAY_MIN_MS");
    }

    #[test]
    fn cluster_urls_are_split_and_checked() {
        let env = Env::from_pairs([("NATS_URL", "nats://a:4222, nats://b:4222")]);
        assert_eq!(NatsSettings::from_env(&env).unwrap().urls.len(), 2);
        let env = Env::from_pairs([("NATS_URL", "http://a:4222")]);
        assert_eq!(NatsSettings::from_env(&env).unwrap_err().key, "NATS_URL");
    }

    #[test]
    fn secrets_do_not_leak_into_debug_output() {
        let env = Env::from_pairs([("S3_SECRET_ACCESS_KEY", "hunter2-very-secret")]);
        let s3 = S3Settings::from_env(&env).unwrap();
        assert_eq!(s3.secret_access_key.expose_secret(), "hunter2-very-secret");
        assert!(!format!("{s3:?}").contains("hunter2"));
    }

    #[test]
    fn errors_never_echo_credentials_in_urls_or_secret_values() {
        let env = Env::from_pairs([("NATS_URL", "http://intake:hunter2@nats:4222")]);
        let message = NatsSettings::from_env(&env).unwrap_err().to_string();
        assert!(message.contains("NATS_URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let env = Env::from_pairs([("NATS_URL", "nats://intake:hunter2@nats:4222,::bad")]);
        let message = NatsSettings::from_env(&env).unwrap_err().to_string();
        assert!(!message.contains("hunter2"), "{message}");
        let error = ConfigError {
            key: "STREAM_TOKEN_SECRET".into(),
            value: "too-short-secret".into(),
            reason: "too short".into(),
        };
        assert!(!error.to_string().contains("too-short-secret"));
    }

    #[test]
    fn bucket_names_are_validated() {
        let env = Env::from_pairs([("S3_BUCKET_NAME", "Bad_Bucket")]);
        assert_eq!(S3Settings::from_env(&env).unwrap_err().key, "S3_BUCKET_NAME");
    }
}
