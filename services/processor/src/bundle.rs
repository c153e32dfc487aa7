//! Builds `bundles/{jobId}.zip` from several source archives in constant memory: each source is
//! streamed from S3 into the ZIP writer, and the output is cut into multipart-upload parts as it
//! grows. At most one part (plus one network chunk) is held at a time, whatever the bundle's size.
//!
//! A part is filled in an anonymous memory map of its own, which goes back to the kernel as soon
//! as its upload lets go of it. From the allocator, a part-sized buffer stayed resident after
//! its bundle: once glibc has freed one mmapped buffer of 8 MiB it serves the next ones from its
//! arenas (its mmap threshold rises to the size freed), and each arena keeps what it served. The
//! processor's RSS then grew by a part or two with every bundle (README, "Bundling's peak").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
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
    /// The bundle outgrew S3's 10,000 parts (its sources grew after the part size was chosen).
    #[error("the bundle needs more than 10000 parts")]
    TooManyParts,
    /// No memory could be mapped for a part.
    #[error("no memory for a part of {size} bytes")]
    Memory {
        /// The part's size.
        size: usize,
        /// The mapping's error.
        #[source]
        source: std::io::Error,
    },
}

/// A multipart-upload part being filled, in an anonymous memory map of the part's size: only the
/// pages written become resident, and all of them go back to the kernel when the last reference
/// to the part (the upload's) is dropped.
struct Part {
    map: memmap2::MmapMut,
    len: usize,
}

impl Part {
    fn new(size: usize) -> Result<Part, BundleError> {
        let map = memmap2::MmapMut::map_anon(size).map_err(|source| BundleError::Memory { size, source })?;
        Ok(Part { map, len: 0 })
    }

    /// Copies as much of `data` as fits; returns how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let taken = data.len().min(self.map.len() - self.len);
        self.map[self.len..self.len + taken].copy_from_slice(&data[..taken]);
        self.len += taken;
        taken
    }

    fn is_full(&self) -> bool {
        self.len == self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written, without a copy; the map lives as long as they do.
    fn into_bytes(self) -> Bytes {
        let len = self.len;
        Bytes::from_owner(self.map).slice(..len)
    }
}

/// What the ZIP writer writes goes here first (a network chunk, an entry's headers, the central
/// directory), and into the current part after each chunk and at the end: this is its starting
/// size, and it grows to the largest of those (a few hundred KiB at most).
const STAGING_CAPACITY: usize = 64 * 1024;

/// Moves what `staging` holds into `part`, uploading each part that fills (and starting the next).
async fn drain(
    storage: &Storage,
    key: &str,
    upload_id: &str,
    parts: &mut Vec<PartInfo>,
    part: &mut Part,
    staging: &mut BytesMut,
) -> Result<(), BundleError> {
    let mut rest = &staging[..];
    while !rest.is_empty() {
        let taken = part.fill(rest);
        rest = &rest[taken..];
        if part.is_full() {
            // Untouched, the next part costs no memory while the full one uploads.
            let next = Part::new(part.map.len())?;
            let full = std::mem::replace(part, next);
            upload_part(storage, key, upload_id, parts, full.into_bytes()).await?;
        }
    }
    staging.clear();
    Ok(())
}

/// The multipart upload in flight, so it can be aborted if the job is cancelled, times out or
/// fails: `(key, upload id)`.
#[derive(Clone, Default)]
pub struct UploadInFlight(Arc<Mutex<Option<(String, String)>>>);

impl UploadInFlight {
    fn set(&self, key: &str, upload_id: &str) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((key.to_string(), upload_id.to_string()));
    }

    /// The open upload as `(key, upload id)`, if any.
    pub fn current(&self) -> Option<(String, String)> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn clear(&self) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Aborts the upload, if one is still open, so no partial parts are left behind.
    pub async fn abort(&self, storage: &Storage) {
        let Some((key, upload_id)) = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
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
        match storage.timed("AbortMultipartUpload", &key, request.send()).await {
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
    let created = storage.timed("CreateMultipartUpload", key, create.send()).await?;
    let upload_id = created
        .upload_id()
        .await
        .map_err(|error| StorageError::Config(error.into()))?;
    upload.set(key, upload_id.as_ref());

    let part_size = part_size_for(sources, part_size);
    let mut zip = ZipStreamWriter::new(chrono::Utc::now());
    let mut staging = BytesMut::with_capacity(STAGING_CAPACITY);
    let mut part = Part::new(part_size)?;
    let mut parts: Vec<PartInfo> = Vec::new();
    let stall = storage.request_timeout();
    let id: &str = upload_id.as_ref();
    for source in sources {
        let source_key = names::source_key(source.file_id);
        zip.start_entry(&format!("{}.zip", source.file_id), source.size, &mut staging);
        let get = client
            .get_object(bucket, source_key.as_str())
            .map_err(|error| StorageError::Config(error.into()))?
            .build();
        let response = storage.timed("GetObject", &source_key, get.send()).await?;
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
            zip.write_data(&chunk, &mut staging);
            on_progress(chunk.len() as u64);
            drain(storage, key, id, &mut parts, &mut part, &mut staging).await?;
        }
        zip.finish_entry(&mut staging)?;
    }
    zip.finish(&mut staging);
    drain(storage, key, id, &mut parts, &mut part, &mut staging).await?;
    if !part.is_empty() || parts.is_empty() {
        upload_part(storage, key, id, &mut parts, part.into_bytes()).await?;
    }
    let total: u64 = parts.iter().map(|part| part.size).sum();
    let complete = client
        .complete_multipart_upload(bucket, key, upload_id.as_ref(), parts)
        .map_err(|error| StorageError::Config(error.into()))?
        .build();
    storage.timed("CompleteMultipartUpload", key, complete.send()).await?;
    upload.clear();
    Ok(total)
}

/// S3 accepts at most this many parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// The part size for a bundle of `sources`: the configured one, or larger when the bundle would
/// otherwise need more than [`MAX_PARTS`] parts (with room for the ZIP's headers: 1 KiB per
/// entry and 64 KiB for the central directory and its end records).
pub fn part_size_for(sources: &[Source], configured: usize) -> usize {
    let content: u64 = sources.iter().map(|source| source.size).sum();
    let bundle = content + 1024 * sources.len() as u64 + 64 * 1024;
    let needed = bundle.div_ceil(MAX_PARTS - 1) as usize;
    configured.max(needed)
}

async fn upload_part(
    storage: &Storage,
    key: &str,
    upload_id: &str,
    parts: &mut Vec<PartInfo>,
    data: Bytes,
) -> Result<(), BundleError> {
    let number = u16::try_from(parts.len() + 1)
        .ok()
        .filter(|number| u64::from(*number) <= MAX_PARTS)
        .ok_or(BundleError::TooManyParts)?;
    let size = data.len() as u64;
    let request = storage
        .client()
        .upload_part(storage.bucket(), key, upload_id, number, SegmentedBytes::from(data))
        .map_err(|error| StorageError::Config(error.into()))?
        .build();
    // A part's upload takes longer the larger it is: the request timeout, plus a second per MiB.
    let response = storage
        .timed_within(
            "UploadPart",
            key,
            storage.request_timeout() + std::time::Duration::from_secs(size.div_ceil(1024 * 1024)),
            request.send(),
        )
        .await?;
    let etag = response.etag().map_err(|error| StorageError::Config(error.into()))?;
    parts.push(PartInfo::new(number, etag, size, None));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_takes_what_fits_and_hands_out_exactly_what_was_written() {
        let mut part = Part::new(10).unwrap();
        assert!(part.is_empty());
        assert_eq!(part.fill(b"abcdef"), 6);
        assert_eq!(part.fill(b"ghijklmn"), 4, "only what fits");
        assert!(part.is_full());
        assert_eq!(part.fill(b"x"), 0);
        assert_eq!(&part.into_bytes()[..], b"abcdefghij");
        let mut last = Part::new(10).unwrap();
        last.fill(b"mn");
        assert_eq!(&last.into_bytes()[..], b"mn", "a last part is as long as what it holds");
    }

    #[test]
    fn parts_grow_so_no_bundle_needs_more_than_ten_thousand() {
        let eight_mib = 8 * 1024 * 1024;
        let small = [Source { file_id: 1, size: 1024 }];
        assert_eq!(part_size_for(&small, eight_mib), eight_mib);
        // 100 GiB in two files: 8 MiB parts would take 12,800 of them.
        let huge = [
            Source {
                file_id: 1,
                size: 50 << 30,
            },
            Source {
                file_id: 2,
                size: 50 << 30,
            },
        ];
        let part = part_size_for(&huge, eight_mib) as u64;
        assert!(part > eight_mib as u64);
        let bundle = (100u64 << 30) + 2 * 1024 + 64 * 1024;
        assert!(bundle.div_ceil(part) < MAX_PARTS, "{} parts", bundle.div_ceil(part));
    }
}
