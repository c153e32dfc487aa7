//! Object storage through the `minio` crate, against any S3 (MinIO, AWS, SeaweedFS).

use std::time::Duration;

use minio::s3::client::ConnectionPoolConfig;
use minio::s3::creds::StaticProvider;
use minio::s3::http::BaseUrl;
use minio::s3::lifecycle_config::{LifecycleConfig, LifecycleRule};
use minio::s3::minio_error_response::MinioErrorCode;
use minio::s3::multimap_ext::{Multimap, MultimapExt};
use minio::s3::types::{Filter, Region, S3Api};
use minio::s3::{MinioClient, MinioClientBuilder};
use secrecy::ExposeSecret;

use crate::config::S3Settings;

/// Why a storage call failed, split the way callers must act on it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object or bucket does not exist.
    #[error("not found")]
    NotFound,
    /// Storage answered with an error or could not be reached: worth retrying.
    #[error("storage unavailable")]
    Unavailable(#[source] minio::s3::error::Error),
    /// Storage did not answer in time: worth retrying.
    #[error("storage did not answer within {0:?}")]
    TimedOut(Duration),
    /// The client could not be configured (bad endpoint or key).
    #[error("storage client configuration")]
    Config(#[source] minio::s3::error::Error),
}

impl StorageError {
    /// Classifies a client error: missing objects are `NotFound`, everything else is transient.
    pub fn from_minio(error: minio::s3::error::Error) -> Self {
        use minio::s3::error::{Error, S3ServerError, ValidationErr};
        match &error {
            Error::S3Server(S3ServerError::S3Error(response))
                if matches!(
                    response.code(),
                    MinioErrorCode::NoSuchKey
                        | MinioErrorCode::NoSuchBucket
                        | MinioErrorCode::NoSuchLifecycleConfiguration
                ) =>
            {
                StorageError::NotFound
            }
            Error::S3Server(S3ServerError::HttpError(404, _)) => StorageError::NotFound,
            // The client reports a refused connection or a broken transfer as a validation
            // error: storage could not be reached, which is worth retrying, not a bad setting.
            Error::Validation(ValidationErr::HttpError(_) | ValidationErr::IOError(_)) => {
                StorageError::Unavailable(error)
            }
            Error::Validation(_) => StorageError::Config(error),
            _ => StorageError::Unavailable(error),
        }
    }
}

/// Connections kept open by a service that makes a few S3 requests at once (readiness checks,
/// provisioning, tests): the minio crate's default.
const FEW_PARALLEL_REQUESTS: usize = 32;

/// A bucket on an S3 endpoint, with a second client that signs URLs for the public endpoint.
#[derive(Clone, Debug)]
pub struct Storage {
    client: MinioClient,
    public_client: MinioClient,
    bucket: String,
    request_timeout: Duration,
}

fn build_client(endpoint: &str, settings: &S3Settings, kept_connections: usize) -> Result<MinioClient, StorageError> {
    let mut base_url: BaseUrl = endpoint
        .parse()
        .map_err(|error: minio::s3::error::ValidationErr| StorageError::Config(error.into()))?;
    base_url.region = Region::new(&settings.region).map_err(|error| StorageError::Config(error.into()))?;
    base_url.virtual_style = !settings.force_path_style;
    let provider = StaticProvider::new(
        &settings.access_key_id,
        settings.secret_access_key.expose_secret(),
        None,
    );
    let pool = ConnectionPoolConfig::default().max_idle_per_host(kept_connections.max(1));
    MinioClientBuilder::new(base_url)
        .provider(Some(provider))
        .connection_pool_config(pool)
        .build()
        .map_err(StorageError::Config)
}

impl Storage {
    /// Builds the clients for a service making a few S3 requests at once; no network traffic
    /// happens here.
    pub fn new(settings: &S3Settings) -> Result<Self, StorageError> {
        Self::for_parallel_requests(settings, FEW_PARALLEL_REQUESTS)
    }

    /// Builds the clients for a service making up to `parallel` S3 requests at once: as many
    /// connections stay open between requests. A pool smaller than the requests in flight makes
    /// every request over it open a connection and close it after one use (the processor's 256
    /// jobs against a pool of 32 opened two connections per one-file job: a tenth of its
    /// samples in `perf`, and as many connections for the store to accept).
    pub fn for_parallel_requests(settings: &S3Settings, parallel: usize) -> Result<Self, StorageError> {
        Ok(Storage {
            client: build_client(&settings.endpoint, settings, parallel)?,
            // Only signs URLs: it never connects.
            public_client: build_client(&settings.public_endpoint, settings, 1)?,
            bucket: settings.bucket.clone(),
            request_timeout: settings.request_timeout,
        })
    }

    /// The underlying client, for streaming and multipart calls.
    pub fn client(&self) -> &MinioClient {
        &self.client
    }

    /// The bucket every key lives in.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Per-request timeout for calls without a streaming body.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Runs one storage call under the request timeout, classifying its error, in a client span
    /// `S3.{operation}` on `key`.
    pub async fn timed<T>(
        &self,
        operation: &'static str,
        key: &str,
        call: impl Future<Output = Result<T, minio::s3::error::Error>>,
    ) -> Result<T, StorageError> {
        self.timed_within(operation, key, self.request_timeout, call).await
    }

    /// Like [`timed`](Self::timed) under `timeout` (a large upload's own).
    pub async fn timed_within<T>(
        &self,
        operation: &'static str,
        key: &str,
        timeout: Duration,
        call: impl Future<Output = Result<T, minio::s3::error::Error>>,
    ) -> Result<T, StorageError> {
        use tracing::Instrument;
        let span = crate::telemetry::span::s3(operation, &self.bucket, key);
        let result = match tokio::time::timeout(timeout, call).instrument(span.clone()).await {
            Ok(result) => result.map_err(StorageError::from_minio),
            Err(_) => Err(StorageError::TimedOut(timeout)),
        };
        if let Err(error) = &result {
            crate::telemetry::span::failed(&span, &error.to_string());
        }
        result
    }

    /// Size of an object, `None` when it does not exist.
    pub async fn object_size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let request = self
            .client
            .stat_object(&self.bucket, key)
            .map_err(|error| StorageError::Config(error.into()))?
            .build();
        match self.timed("HeadObject", key, request.send()).await {
            Ok(response) => Ok(Some(
                response.size().map_err(|error| StorageError::Config(error.into()))?,
            )),
            Err(StorageError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The bucket's housekeeping, as the processor (which writes the bundles) applies it: bundles
    /// (`bundles/`) expire `retention_days` after they were written, and multipart uploads left
    /// incomplete (a processor killed mid-bundle) are aborted after a day. The store enforces
    /// it (on S3 and MinIO at once; SeaweedFS by its daily lifecycle worker); sources are never
    /// touched.
    /// The bucket's other rules (an operator's own) are kept: only these two, by id, are
    /// replaced.
    pub async fn apply_lifecycle(&self, retention_days: u32) -> Result<(), StorageError> {
        let ours = lifecycle(retention_days).rules;
        let mut rules: Vec<LifecycleRule> = match self.lifecycle_rules().await {
            Ok(rules) => rules,
            // No configuration yet.
            Err(StorageError::NotFound) => Vec::new(),
            Err(error) => return Err(error),
        };
        rules.retain(|rule| ours.iter().all(|own| own.id != rule.id));
        rules.extend(ours);
        let request = self
            .client
            .put_bucket_lifecycle(&self.bucket)
            .map_err(|error| StorageError::Config(error.into()))?
            .life_cycle_config(LifecycleConfig { rules })
            .build();
        self.timed("PutBucketLifecycle", "", request.send()).await.map(drop)
    }

    /// The bucket's housekeeping rules as the store holds them.
    pub async fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>, StorageError> {
        let request = self
            .client
            .get_bucket_lifecycle(&self.bucket)
            .map_err(|error| StorageError::Config(error.into()))?
            .build();
        let response = self.timed("GetBucketLifecycle", "", request.send()).await?;
        Ok(response
            .config()
            .map_err(|error| StorageError::Config(error.into()))?
            .rules)
    }

    /// Checks that the bucket answers a signed HEAD. A bucket without objects is reachable.
    pub async fn check_bucket(&self) -> Result<(), StorageError> {
        let request = self
            .client
            .bucket_exists(&self.bucket)
            .map_err(|error| StorageError::Config(error.into()))?
            .build();
        let response = self.timed("HeadBucket", "", request.send()).await?;
        if response.exists() {
            Ok(())
        } else {
            Err(StorageError::NotFound)
        }
    }

    /// A presigned GET URL on the public endpoint that downloads `key` as `filename`.
    /// Pure computation: no request reaches storage.
    pub async fn presign_get(&self, key: &str, filename: &str, expiry: Duration) -> Result<String, StorageError> {
        let mut query = Multimap::new();
        let safe_filename: String = filename
            .chars()
            .filter(|character| character.is_ascii_alphanumeric() || matches!(character, '.' | '-' | '_'))
            .collect();
        query.add(
            "response-content-disposition",
            format!("attachment; filename=\"{safe_filename}\""),
        );
        let response = self
            .public_client
            .get_presigned_object_url(&self.bucket, key, http::Method::GET)
            .map_err(|error| StorageError::Config(error.into()))?
            .expiry_seconds(expiry.as_secs().clamp(1, 604_800) as u32)
            .extra_query_params(query)
            .build()
            .send()
            .await
            .map_err(StorageError::from_minio)?;
        Ok(response.url)
    }
}

/// Rule id of the bundles' expiry.
pub const BUNDLE_EXPIRY_RULE: &str = "expire-bundles";
/// Rule id of the incomplete uploads' abort.
pub const ABORT_UPLOADS_RULE: &str = "abort-incomplete-uploads";

/// The housekeeping rules of the bucket (see [`Storage::apply_lifecycle`]).
pub fn lifecycle(retention_days: u32) -> LifecycleConfig {
    let prefixed = |prefix: &str| Filter {
        and_operator: None,
        prefix: Some(prefix.to_string()),
        tag: None,
    };
    LifecycleConfig {
        rules: vec![
            LifecycleRule {
                id: BUNDLE_EXPIRY_RULE.into(),
                status: true,
                filter: prefixed(crate::names::BUNDLES_PREFIX),
                expiration_days: Some(retention_days),
                ..Default::default()
            },
            LifecycleRule {
                id: ABORT_UPLOADS_RULE.into(),
                status: true,
                // Every upload (an empty filter: an empty prefix does not read back).
                filter: Filter {
                    and_operator: None,
                    prefix: None,
                    tag: None,
                },
                abort_incomplete_multipart_upload_days_after_initiation: Some(1),
                ..Default::default()
            },
        ],
    }
}
