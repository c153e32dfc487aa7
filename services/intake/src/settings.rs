//! Intake configuration.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::config::{AuthSettings, ConfigError, DelaySettings, Env, NatsSettings, S3Settings};
use common::net::Network;

/// The highest `MAX_ACTIVE_JOBS_PER_TENANT`: a tenant's slots are one KV value, read and
/// rewritten whole by every change (about 90 bytes a slot).
pub const MAX_ACTIVE_JOBS_CAP: usize = 1000;

/// Everything the intake reads at startup.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST` and `PORT` (default 127.0.0.1:3000; use `HOST=0.0.0.0` in a container).
    pub listen: SocketAddr,
    /// NATS connection.
    pub nats: NatsSettings,
    /// Object storage (health check and `/check`).
    pub s3: S3Settings,
    /// Simulated slowness, for estimates before any job has finished.
    pub delay: DelaySettings,
    /// `REQUEST_TIMEOUT_MS`: no request is held longer (default 30000).
    pub request_timeout: Duration,
    /// `START_WAIT_MS`: how long the legacy `/start` waits for the job (default 20000, must stay
    /// well under `REQUEST_TIMEOUT_MS`).
    pub start_wait: Duration,
    /// `RATE_LIMIT_WINDOW_MS` (default 60000).
    pub rate_limit_window: Duration,
    /// `RATE_LIMIT_MAX_REQUESTS` per client and window (default 100; 0 turns rate limiting off,
    /// for a gateway in front that limits).
    pub rate_limit_max_requests: u32,
    /// `CORS_ORIGINS`: comma-separated allowed origins, `*` for any (default `*`).
    pub cors_origins: Vec<String>,
    /// `TRUSTED_PROXIES`: comma-separated CIDRs of the proxies in front (e.g. `127.0.0.1/32` for
    /// the nginx of the dev stack). Only a request from one of them has its `X-Forwarded-For`
    /// read, from the right, and the first hop not in the list is the client (default none:
    /// the peer address is the client).
    pub trusted_proxies: Vec<Network>,
    /// Identity: `AUTH_MODE`, `AUTH_GATEWAY_HEADER`, `STREAM_TOKEN_SECRET`, `STREAM_TOKEN_TTL_SECONDS`.
    pub auth: AuthSettings,
    /// `LEGACY_ANONYMOUS_START`: the legacy `POST /v1/download/start` works without credentials,
    /// as the old service did; its jobs belong to `anonymous` (default false; the dev stack
    /// turns it on).
    pub legacy_anonymous_start: bool,
    /// `MAX_BODY_BYTES`: largest accepted request body (default 65536).
    pub max_body_bytes: usize,
    /// `PRESIGN_TIMEOUT_MS`: how long to wait for the presigner (default 2000).
    pub presign_timeout: Duration,
    /// `IDEMPOTENCY_KEY_TTL_SECONDS`: how long an `Idempotency-Key` is remembered after its first
    /// use (default 86400, at most 7 days); after that the key is new again.
    pub idempotency_ttl: Duration,
    /// `MAX_ACTIVE_JOBS_PER_TENANT`: jobs queued or processing per tenant, across all intakes
    /// (default 10; 0 turns the cap off).
    pub max_active_jobs_per_tenant: usize,
    /// `ACTIVE_JOB_LEASE_SECONDS`: a tenant's slot whose job cannot be confirmed active (an
    /// intake killed half-way, an end missed) is free at most this long after it was taken
    /// (default 60; must exceed `REQUEST_TIMEOUT_MS`, the longest an accept can take).
    pub active_job_lease: Duration,
    /// `QUEUE_MAX_BACKLOG`: jobs waiting in `DOWNLOAD_JOBS` (accepted, not yet finished) at which
    /// initiate answers 503 `QUEUE_FULL` (default 10000).
    pub queue_max_backlog: u64,
}

impl Settings {
    /// Reads and validates the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let host: IpAddr = env.parse("HOST", IpAddr::from([127, 0, 0, 1]))?;
        let port: u16 = env.parse("PORT", 3000)?;
        let settings = Settings {
            listen: SocketAddr::new(host, port),
            nats: NatsSettings::from_env(env)?,
            s3: S3Settings::from_env(env)?,
            delay: DelaySettings::from_env(env)?,
            request_timeout: env.millis("REQUEST_TIMEOUT_MS", 30_000)?,
            start_wait: env.millis("START_WAIT_MS", 20_000)?,
            rate_limit_window: env.millis("RATE_LIMIT_WINDOW_MS", 60_000)?,
            rate_limit_max_requests: env.parse("RATE_LIMIT_MAX_REQUESTS", 100)?,
            cors_origins: env
                .string("CORS_ORIGINS", "*")
                .split(',')
                .map(|origin| origin.trim().to_string())
                .filter(|origin| !origin.is_empty())
                .collect(),
            trusted_proxies: common::net::parse_networks(&env.string("TRUSTED_PROXIES", "")).map_err(|reason| {
                ConfigError {
                    key: "TRUSTED_PROXIES".into(),
                    value: env.string("TRUSTED_PROXIES", ""),
                    reason,
                }
            })?,
            auth: AuthSettings::from_env(env)?,
            legacy_anonymous_start: env.bool("LEGACY_ANONYMOUS_START", false)?,
            max_body_bytes: env.parse("MAX_BODY_BYTES", 64 * 1024)?,
            presign_timeout: env.millis("PRESIGN_TIMEOUT_MS", 2_000)?,
            idempotency_ttl: env.seconds(
                "IDEMPOTENCY_KEY_TTL_SECONDS",
                common::nats::DEFAULT_IDEMPOTENCY_TTL.as_secs(),
            )?,
            max_active_jobs_per_tenant: env.parse("MAX_ACTIVE_JOBS_PER_TENANT", 10)?,
            active_job_lease: env.seconds("ACTIVE_JOB_LEASE_SECONDS", 60)?,
            queue_max_backlog: env.parse("QUEUE_MAX_BACKLOG", 10_000)?,
        };
        env.require(
            env.get("TRUST_PROXY").is_none(),
            "TRUST_PROXY",
            "was replaced by TRUSTED_PROXIES (the CIDRs of your proxies)",
        )?;
        env.require(
            settings.request_timeout >= Duration::from_secs(1),
            "REQUEST_TIMEOUT_MS",
            "must be at least 1000",
        )?;
        env.require(
            settings.start_wait + Duration::from_secs(1) <= settings.request_timeout,
            "START_WAIT_MS",
            "must be at least 1000 ms below REQUEST_TIMEOUT_MS",
        )?;
        env.require(
            !settings.rate_limit_window.is_zero() && settings.rate_limit_window <= common::nats::MAX_RATE_LIMIT_WINDOW,
            "RATE_LIMIT_WINDOW_MS",
            "must be between 1 and 3600000",
        )?;
        env.require(
            settings.idempotency_ttl >= settings.idempotency_stale_after()
                && settings.idempotency_ttl <= Duration::from_secs(7 * 24 * 60 * 60),
            "IDEMPOTENCY_KEY_TTL_SECONDS",
            "must be at most 604800 and at least REQUEST_TIMEOUT_MS + 5 s (a key outlives its request)",
        )?;
        env.require(
            settings.max_active_jobs_per_tenant <= MAX_ACTIVE_JOBS_CAP,
            "MAX_ACTIVE_JOBS_PER_TENANT",
            "must be at most 1000 (0: no cap)",
        )?;
        env.require(
            settings.active_job_lease > settings.request_timeout
                && settings.active_job_lease <= Duration::from_secs(24 * 60 * 60),
            "ACTIVE_JOB_LEASE_SECONDS",
            "must exceed REQUEST_TIMEOUT_MS (an accept may take that long) and be at most 86400",
        )?;
        env.require(settings.queue_max_backlog > 0, "QUEUE_MAX_BACKLOG", "must be positive")?;
        env.require(
            (1024..=16 * 1024 * 1024).contains(&settings.max_body_bytes),
            "MAX_BODY_BYTES",
            "must be between 1024 and 16777216",
        )?;
        Ok(settings)
    }

    /// How long an `Idempotency-Key` claim without an answer is trusted to belong to a request
    /// still running: the request timeout and a margin (after that its request died, and the
    /// claim is taken over).
    pub fn idempotency_stale_after(&self) -> Duration {
        self.request_timeout + Duration::from_secs(5)
    }

    /// How long accepting a job may ride out an unavailable cluster: the request timeout less a
    /// margin, so the client always hears the outcome (202, or a 503 that left nothing behind).
    pub fn accept_budget(&self) -> Duration {
        self.request_timeout
            .saturating_sub(Duration::from_secs(2))
            .max(Duration::from_millis(500))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_SECRET: (&str, &str) = ("STREAM_TOKEN_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn start_wait_must_stay_under_the_request_timeout() {
        let env = Env::from_pairs([("REQUEST_TIMEOUT_MS", "5000"), ("START_WAIT_MS", "4500"), TOKEN_SECRET]);
        assert_eq!(Settings::from_env(&env).unwrap_err().key, "START_WAIT_MS");
    }

    #[test]
    fn defaults_match_the_old_service() {
        let settings = Settings::from_env(&Env::from_pairs([TOKEN_SECRET])).unwrap();
        assert_eq!(settings.request_timeout, Duration::from_secs(30));
        assert_eq!(settings.rate_limit_window, Duration::from_secs(60));
        assert_eq!(settings.rate_limit_max_requests, 100);
        assert_eq!(settings.cors_origins, vec!["*"]);
        assert_eq!(settings.auth.mode, common::config::AuthMode::ApiKeys);
        assert!(!settings.legacy_anonymous_start);
        assert!(settings.trusted_proxies.is_empty());
        assert_eq!(settings.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(settings.max_active_jobs_per_tenant, 10);
        assert_eq!(settings.active_job_lease, Duration::from_secs(60));
        assert_eq!(settings.queue_max_backlog, 10_000);
        assert_eq!(settings.nats.jobs_max_messages, 100_000);
    }

    #[test]
    fn a_lease_shorter_than_an_accept_is_refused() {
        let env = Env::from_pairs([
            ("REQUEST_TIMEOUT_MS", "30000"),
            ("ACTIVE_JOB_LEASE_SECONDS", "30"),
            TOKEN_SECRET,
        ]);
        assert_eq!(Settings::from_env(&env).unwrap_err().key, "ACTIVE_JOB_LEASE_SECONDS");
        let env = Env::from_pairs([("QUEUE_MAX_MESSAGES", "0"), TOKEN_SECRET]);
        assert_eq!(Settings::from_env(&env).unwrap_err().key, "QUEUE_MAX_MESSAGES");
        let env = Env::from_pairs([("IDEMPOTENCY_KEY_TTL_SECONDS", "30"), TOKEN_SECRET]);
        assert_eq!(
            Settings::from_env(&env).unwrap_err().key,
            "IDEMPOTENCY_KEY_TTL_SECONDS",
            "a key must outlive its request"
        );
    }

    #[test]
    fn a_missing_token_secret_and_the_old_trust_proxy_are_named() {
        assert_eq!(
            Settings::from_env(&Env::default()).unwrap_err().key,
            "STREAM_TOKEN_SECRET"
        );
        let env = Env::from_pairs([("TRUST_PROXY", "true"), TOKEN_SECRET]);
        assert_eq!(Settings::from_env(&env).unwrap_err().key, "TRUST_PROXY");
        let env = Env::from_pairs([("TRUSTED_PROXIES", "10.0.0.0/8, nonsense"), TOKEN_SECRET]);
        assert_eq!(Settings::from_env(&env).unwrap_err().key, "TRUSTED_PROXIES");
    }
}
