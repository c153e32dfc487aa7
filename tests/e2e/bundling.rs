//! Bundling against real S3: an interrupted bundle leaves no partial upload behind.

use minio::s3::types::S3Api;
use processor::bundle::{self, Source, UploadInFlight};
use system_tests::stack::Stack;

use crate::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_interrupted_mid_upload_is_aborted_and_leaves_nothing() {
    init_logs();
    let stack = Stack::servers_only(&[]).await.unwrap();
    let size = 12 * 1024 * 1024;
    stack.put_file(80_001, size).await.unwrap();
    stack.put_file(80_002, size).await.unwrap();
    let key = format!("bundles/{}.zip", common::JobId::new());
    let upload = UploadInFlight::default();
    let sources = [
        Source {
            file_id: 80_001,
            size: size as u64,
        },
        Source {
            file_id: 80_002,
            size: size as u64,
        },
    ];

    // Interrupt the bundle once more than one 5 MiB part went out, as a cancellation does.
    let (past_first_part, reached) = tokio::sync::oneshot::channel();
    let mut past_first_part = Some(past_first_part);
    let mut copied = 0u64;
    let build = bundle::build(&stack.storage, &key, &sources, 5 * 1024 * 1024, &upload, |bytes| {
        copied += bytes;
        if copied > 11 * 1024 * 1024
            && let Some(signal) = past_first_part.take()
        {
            let _ = signal.send(());
        }
    });
    tokio::select! {
        result = build => panic!("the bundle finished before it was interrupted: {result:?}"),
        _ = reached => {}
    }
    let (open_key, upload_id) = upload.current().expect("a multipart upload is open mid-bundle");
    assert_eq!(open_key, key);

    upload.abort(&stack.storage).await;
    assert!(upload.current().is_none());
    let parts = vec![minio::s3::types::PartInfo::new(1, "0".parse().unwrap(), 1, None)];
    let completed = stack
        .storage
        .client()
        .complete_multipart_upload(stack.storage.bucket(), key.as_str(), upload_id.as_str(), parts)
        .unwrap()
        .build()
        .send()
        .await;
    assert!(completed.is_err(), "the aborted upload can no longer be completed");
    assert_eq!(stack.get_object(&key).await.unwrap(), None, "no bundle object exists");
}
