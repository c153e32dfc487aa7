//! What one job does: check every file in S3, wait out the simulated delay, then point at the
//! single available file or build the bundle. Progress goes into a shared counter that the
//! worker writes to KV on its own schedule; the outcome is a [`JobResult`] or a [`JobError`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::storage::StorageError;
use common::{ErrorCode, FileStatus, JobId, names};
use futures::StreamExt;

use crate::Context;
use crate::bundle::{self, UploadInFlight};

/// Progress milestones, in percent.
const CHECKED: u8 = 10;
const DELAY_END_WITH_BUNDLE: u8 = 50;
const DELAY_END_SINGLE: u8 = 99;
const BUNDLE_END: u8 = 99;

/// How many HEAD requests one job runs at once.
const CHECK_CONCURRENCY: usize = 16;

/// What a finished job produced.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Key of the downloadable object.
    pub result_key: String,
    /// Its size.
    pub result_size: u64,
}

/// Why a job did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help (e.g. no file exists).
    #[error("{message}")]
    Permanent {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// Retrying may help (storage down, broker hiccup).
    #[error("{message}")]
    Transient {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
}

impl JobError {
    fn storage(context: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %error, cause = ?error.source(), context, "storage failure");
        JobError::Transient {
            code: ErrorCode::StorageUnavailable,
            message: format!("storage unavailable while {context}"),
        }
    }
}

/// Shared, lock-free progress of a running job.
#[derive(Clone, Default)]
pub struct Progress(Arc<AtomicU8>);

impl Progress {
    /// Current value, 0-100.
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, value: u8) {
        self.0.fetch_max(value.min(100), Ordering::Relaxed);
    }
}

/// Hooks the worker gives a job: where to report progress and the checked files.
pub struct JobHooks {
    /// Progress counter.
    pub progress: Progress,
    /// Receives the availability of every file once checked.
    pub files_checked: tokio::sync::mpsc::Sender<Vec<FileStatus>>,
    /// The multipart upload in flight, for abort on cancel.
    pub upload: UploadInFlight,
}

/// Runs a job to its result.
pub async fn run(
    context: &Context,
    job_id: JobId,
    file_ids: &[u64],
    delay: Duration,
    hooks: &JobHooks,
) -> Result<JobResult, JobError> {
    let storage = &context.storage;
    let checks = futures::stream::iter(file_ids.iter().copied())
        .map(|file_id| async move { (file_id, storage.object_size(&names::source_key(file_id)).await) })
        .buffered(CHECK_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut files = Vec::with_capacity(checks.len());
    for (file_id, checked) in checks {
        match checked {
            Ok(size) => files.push(FileStatus {
                file_id,
                available: size.is_some(),
                size,
            }),
            Err(error) => return Err(JobError::storage("checking files", &error)),
        }
    }
    hooks.progress.set(CHECKED);
    let available: Vec<bundle::Source> = files
        .iter()
        .filter_map(|file| {
            Some(bundle::Source {
                file_id: file.file_id,
                size: file.size?,
            })
        })
        .collect();
    let _ = hooks.files_checked.send(files).await;
    if available.is_empty() {
        return Err(JobError::Permanent {
            code: ErrorCode::FileNotFound,
            message: if file_ids.len() == 1 {
                format!("file {} does not exist", file_ids[0])
            } else {
                format!("none of the {} requested files exists", file_ids.len())
            },
        });
    }

    let delay_end = if available.len() == 1 {
        DELAY_END_SINGLE
    } else {
        DELAY_END_WITH_BUNDLE
    };
    simulate_delay(delay, CHECKED, delay_end, &hooks.progress).await;

    if let [single] = available.as_slice() {
        hooks.progress.set(DELAY_END_SINGLE);
        return Ok(JobResult {
            result_key: names::source_key(single.file_id),
            result_size: single.size,
        });
    }

    let key = names::bundle_key(&job_id.to_string());
    let total: u64 = available.iter().map(|source| source.size).sum::<u64>().max(1);
    let mut copied = 0u64;
    let progress = hooks.progress.clone();
    let span = (BUNDLE_END - delay_end) as u64;
    let size = bundle::build(
        storage,
        &key,
        &available,
        context.settings.part_size,
        &hooks.upload,
        |bytes| {
            copied += bytes;
            progress.set(delay_end + (span * copied.min(total) / total) as u8);
        },
    )
    .await
    .map_err(|error| match error {
        bundle::BundleError::Storage(StorageError::Config(source)) => {
            tracing::error!(error = %source, "storage client misconfigured");
            JobError::Transient {
                code: ErrorCode::StorageUnavailable,
                message: "storage unavailable while bundling".into(),
            }
        }
        memory @ bundle::BundleError::Memory { .. } => {
            tracing::error!(error = %memory, cause = ?std::error::Error::source(&memory), "bundling");
            JobError::Transient {
                code: ErrorCode::Internal,
                message: "the processor had no memory for the bundle; it is retried".into(),
            }
        }
        other => JobError::storage("bundling", &other),
    })?;
    Ok(JobResult {
        result_key: key,
        result_size: size,
    })
}

/// The old service's simulated slowness, reported as progress between `from` and `to`.
async fn simulate_delay(delay: Duration, from: u8, to: u8, progress: &Progress) {
    if delay.is_zero() {
        return;
    }
    let started = tokio::time::Instant::now();
    let step = Duration::from_millis(250).min(delay);
    loop {
        let elapsed = started.elapsed();
        if elapsed >= delay {
            break;
        }
        let fraction = elapsed.as_secs_f64() / delay.as_secs_f64();
        progress.set(from + ((to - from) as f64 * fraction) as u8);
        tokio::time::sleep(step.min(delay - elapsed)).await;
    }
    progress.set(to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn simulated_delay_reports_steady_progress_and_ends_at_its_target() {
        let progress = Progress::default();
        let task = tokio::spawn({
            let progress = progress.clone();
            async move { simulate_delay(Duration::from_secs(10), 10, 50, &progress).await }
        });
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        let midway = progress.get();
        assert!(
            (28..=32).contains(&midway),
            "halfway through the delay progress is {midway}"
        );
        task.await.unwrap();
        assert_eq!(progress.get(), 50);
    }

    #[test]
    fn progress_never_goes_backwards() {
        let progress = Progress::default();
        progress.set(40);
        progress.set(20);
        assert_eq!(progress.get(), 40);
        progress.set(250);
        assert_eq!(progress.get(), 100);
    }
}
