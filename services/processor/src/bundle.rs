//! Builds `bundles/{jobId}.zip` from several source archives in constant memory: each source is
//! streamed from S3 into the ZIP writer, and the output is cut into multipart-upload parts as it
//! grows. At most one part (plus one network chunk) is held at a time, whatever the bundle's size.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use common::names;
use common::storage::{Storage, StorageError};
use futures::StreamExt;
use minio::s3::response_traits::HasEtagFromHeaders;
use minio::s3::segmented_bytes::SegmentedBytes;
use minio::s3::types::{PartInfo, S3Api};

use crate::zip::ZipStreamWriter;

/// Why a bundle could not be built. All of these are worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A storage call failed.
    #[error("storage call failed during bundling")]
    Storage(#[from] StorageError),
    /// A source stopped sending data.
    #[error("source {key} stalled for {stall:?}")]
    Stalled {
        /// Source key.
        key: String,
        /// How long nothing arrived.
        stall: Duration,
    },
    /// A source's body broke off.
    #[error("reading source {key} failed")]
    Read {
        /// Source key.
        key: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A source changed size between the check and the copy.
    #[error("source changed while bundling")]
    Changed(#[from] crate::zip::SizeMismatch),
}

/// The multipart upload in flight, so it can be aborted if the job is cancelled, times out or
/// fails: `(key, upload id)`.
#[derive(Clone, Default)]
pub struct UploadInFlight(Arc<Mutex<Option<(String, String)>>>);

impl UploadInFlight {
    fn set(&self, key: &str, upload_id: &str) {
        *self.0.lock().expect("upload lock") = Some((key.to_string(), upload_id.to_string()));
    }

    /// The open upload as `(key, upload id)`, if any.
    pub fn current(&self) -> Option<(String, String)> {
        self.0.lock().expect("upload lock").clone()
    }

    fn clear(&self) {
        *self.0.lock().expect("upload lock") = None;
    }

    /// Aborts the upload, if one is still open, so no partial parts are left behind.
    pub async fn abort(&self, storage: &Storage) {
        let Some((key, upload_id)) = self.0.lock().expect("upload lock").take() else {
            return;
        };
        let request = match storage
            .client()
            .abort_multipart_upload(storage.bucket(), key.as_str(), upload_id.as_str())
        {
            Ok(builder) => builder.build(),
            Err(error) => {
                tracing::warn!(%error, key, "cannot build multipart abort");
                return;
            }
        };
        match storage.timed(request.send()).await {
            Ok(_) => tracing::info!(key, "partial bundle upload aborted"),
            Err(error) => tracing::warn!(error = %error, key, "partial bundle upload not aborted"),
        }
    }
}

/// One source file of a bundle.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// Its file id (the entry is named `{fileId}.zip`).
    pub file_id: u64,
    /// Its size, from the availability check.
    pub size: u64,
}

/// Streams `sources` into a ZIP at `key`. Reports bytes copied through `on_progress`.
/// Returns the bundle's size.
pub async fn build(
    storage: &Storage,
    key: &str,
    sources: &[Source],
    part_size: usize,
    upload: &UploadInFlight,
    mut on_progress: impl FnMut(u64),
) -> Result<u64, BundleError> {
    let client = storage.client();
    let bucket = storage.bucket();
    let create = client
        .create_multipart_upload(bucket, key)
        .map_err(|error| StorageError::Config(error.into()))?
        .build();
    let created = storage.timed(create.send()).await?;
    let upload_id = created
        .upload_id()
        .await
        .map_err(|error| StorageError::Config(error.into()))?;
    upload.set(key, upload_id.as_ref());

    let mut zip = ZipStreamWriter::new(chrono::Utc::now());
    let mut buffer = BytesMut::with_capacity(part_size + 256 * 1024);
    let mut parts: Vec<PartInfo> = Vec::new();
    let stall = storage.request_timeout();
    for source in sources {
        let source_key = names::source_key(source.file_id);
        zip.start_entry(&format!("{}.zip", source.file_id), source.size, &mut buffer);
        let get = client
            .get_object(bucket, source_key.as_str())
            .map_err(|error| StorageError::Config(error.into()))?
            .build();
        let response = storage.timed(get.send()).await?;
        let (mut body, _) = response.into_boxed_stream().map_err(StorageError::from_minio)?;
        loop {
            let chunk = match tokio::time::timeout(stall, body.next()).await {
                Err(_) => return Err(BundleError::Stalled { key: source_key, stall }),
                Ok(None) => break,
                Ok(Some(Err(source))) => {
                    return Err(BundleError::Read {
                        key: source_key,
                        source,
                    });
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            zip.write_data(&chunk, &mut buffer);
            on_progress(chunk.len() as u64);
            while buffer.len() >= part_size {
                let part = buffer.split_to(part_size);
                upload_part(storage, key, upload_id.as_ref(), &mut parts, part).await?;
            }
        }
        zip.finish_entry(&mut buffer)?;
    }
    zip.finish(&mut buffer);
    if !buffer.is_empty() || parts.is_empty() {
        let last = buffer.split();
        upload_part(storage, key, upload_id.as_ref(), &mut parts, last).await?;
    }
    let total: u64 = parts.iter().map(|part| part.size).sum();
    let complete = client
        .complete_multipart_upload(bucket, key, upload_id.as_ref(), parts)
        .map_err(|error| StorageError::Config(error.into()))?
        .build();
    storage.timed(complete.send()).await?;
    upload.clear();
    Ok(total)
}

async fn upload_part(
    storage: &Storage,
    key: &str,
    upload_id: &str,
    parts: &mut Vec<PartInfo>,
    data: BytesMut,
) -> Result<(), BundleError> {
    let number = parts.len() as u16 + 1;
    let size = data.len() as u64;
    let request = storage
        .client()
        .upload_part(
            storage.bucket(),
            key,
            upload_id,
            number,
            SegmentedBytes::from(data.freeze()),
        )
        .map_err(|error| StorageError::Config(error.into()))?
        .build();
    let response = storage.timed(request.send()).await?;
    let etag = response.etag().map_err(|error| StorageError::Config(error.into()))?;
    parts.push(PartInfo::new(number, etag, size, None));
    Ok(())
}
