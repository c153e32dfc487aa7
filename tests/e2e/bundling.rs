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

/// The bucket's housekeeping is set by the processor that writes the bundles (bundles expire
/// after `RESULT_RETENTION_DAYS`, incomplete uploads abort after a day; the store enforces it,
/// which a test cannot wait a day to see), and a completed job whose result is gone says so:
/// 410 `RESULT_EXPIRED` on the result URL instead of a presigned URL of nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_expires_bundles_and_a_gone_result_answers_410() {
    init_logs();
    let stack = Stack::start(&[("RESULT_RETENTION_DAYS", "3")]).await.unwrap();
    let rules = stack.storage.lifecycle_rules().await.unwrap();
    let rule = |id: &str| {
        rules
            .iter()
            .find(|rule| rule.id == id)
            .unwrap_or_else(|| panic!("rule {id} in {rules:?}"))
    };
    let expiry = rule(common::storage::BUNDLE_EXPIRY_RULE);
    assert!(expiry.status);
    assert_eq!(expiry.filter.prefix.as_deref(), Some("bundles/"));
    assert_eq!(expiry.expiration_days, Some(3));
    let abort = rule(common::storage::ABORT_UPLOADS_RULE);
    assert_eq!(abort.abort_incomplete_multipart_upload_days_after_initiation, Some(1));
    // An operator's own rule survives provisioning again: only ours are replaced, by id.
    let mut config = common::storage::lifecycle(3);
    config.rules[0].id = "operator-logs".into();
    config.rules[0].filter.prefix = Some("logs/".into());
    config.rules.truncate(1);
    let mut with_operators = rules.clone();
    with_operators.extend(config.rules);
    stack
        .storage
        .client()
        .put_bucket_lifecycle(stack.storage.bucket())
        .unwrap()
        .life_cycle_config(minio::s3::lifecycle_config::LifecycleConfig { rules: with_operators })
        .build()
        .send()
        .await
        .unwrap();
    stack.storage.apply_lifecycle(5).await.unwrap();
    let again = stack.storage.lifecycle_rules().await.unwrap();
    let ids: std::collections::BTreeSet<&str> = again.iter().map(|rule| rule.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            common::storage::ABORT_UPLOADS_RULE,
            common::storage::BUNDLE_EXPIRY_RULE,
            "operator-logs"
        ]
        .into()
    );
    let expiry = again
        .iter()
        .find(|rule| rule.id == common::storage::BUNDLE_EXPIRY_RULE)
        .unwrap();
    assert_eq!(expiry.expiration_days, Some(5));

    stack.put_file(98_200, 100).await.unwrap();
    stack.put_file(98_201, 100).await.unwrap();
    let job_id = stack.initiate("kept", &[98_200, 98_201]).await.unwrap();
    assert_eq!(
        stack.wait_for_terminal("kept", &job_id).await.unwrap()["status"],
        "completed"
    );
    let result = || async {
        stack
            .http
            .get(stack.url(&format!("/v1/download/{job_id}")))
            .header("Authorization", stack.bearer("kept").await.unwrap())
            .send()
            .await
            .unwrap()
    };
    assert_eq!(result().await.status(), 302, "a kept result redirects to it");
    // The store expires the bundle.
    stack
        .storage
        .client()
        .delete_object(stack.storage.bucket(), common::names::bundle_key(&job_id))
        .unwrap()
        .build()
        .send()
        .await
        .unwrap();
    let gone = result().await;
    assert_eq!(gone.status(), 410);
    assert_eq!(gone.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = gone.json().await.unwrap();
    assert_eq!(problem["code"], "RESULT_EXPIRED");
    assert!(problem["detail"].as_str().unwrap().contains("3 day"), "{problem}");
}
