//! Everything that crosses a service boundary: subject/stream/bucket names, message and KV types,
//! configuration sections, NATS and S3 setup, telemetry, shutdown and the error-code enum.

pub mod config;
pub mod consume;
pub mod error_code;
pub mod expiring;
pub mod identity;
pub mod job;
pub mod kv_cas;
pub mod messages;
pub mod metrics;
pub mod names;
pub mod nats;
pub mod net;
pub mod presign;
pub mod readiness;
pub mod retry;
pub mod shutdown;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod validation;
pub mod webhook;
pub mod wire;

pub use error_code::ErrorCode;
pub use job::{FileStatus, JobId, JobRecord, JobStatus};
