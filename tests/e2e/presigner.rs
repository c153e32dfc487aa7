//! The presigner as a NATS micro-service: discoverable, signs result keys only, refuses garbage.

use std::time::Duration;

use system_tests::stack::Stack;

use crate::init_logs;

async fn request(client: &async_nats::Client, payload: &str) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(5),
        client.request(common::names::PRESIGN_SUBJECT, payload.to_string().into()),
    )
    .await
    .expect("the presigner answers")
    .unwrap()
}

fn service_error(message: &async_nats::Message) -> Option<String> {
    message
        .headers
        .as_ref()?
        .get("Nats-Service-Error")
        .map(|value| value.as_str().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presigner_is_discoverable_signs_result_keys_and_refuses_anything_else() {
    init_logs();
    let mut stack = Stack::servers_only(&[]).await.unwrap();
    stack.start_presigner().await.unwrap();
    let client = stack.nats_client().await.unwrap();

    let info = request_info(&client).await;
    assert_eq!(info["name"], common::names::PRESIGNER_SERVICE);
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| endpoint["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, vec![common::names::PRESIGN_SUBJECT]);

    let content = stack.put_file(90_000, 2048).await.unwrap();
    let good = request(
        &client,
        r#"{"type":"presign.request.v1","key":"downloads/90000.zip","filename":"90000.zip"}"#,
    )
    .await;
    assert_eq!(service_error(&good), None);
    let reply: common::messages::PresignResponse = serde_json::from_slice(&good.payload).unwrap();
    let common::messages::PresignResponse::V1 { url, expires_at } = reply;
    assert!(expires_at > chrono::Utc::now() + chrono::Duration::seconds(3500));
    assert_eq!(
        reqwest::get(&url).await.unwrap().bytes().await.unwrap().to_vec(),
        content
    );

    for garbage in [
        "not json",
        r#"{"type":"presign.request.v9","key":"downloads/90000.zip","filename":"x"}"#,
        r#"{"type":"presign.request.v1","key":"secrets/root.key","filename":"x"}"#,
        r#"{"type":"presign.request.v1","key":"downloads/../secrets.zip","filename":"x"}"#,
    ] {
        let refused = request(&client, garbage).await;
        assert!(service_error(&refused).is_some(), "{garbage} was not refused");
    }
    let still_serving = request(
        &client,
        r#"{"type":"presign.request.v1","key":"downloads/90000.zip","filename":"a.zip"}"#,
    )
    .await;
    assert_eq!(
        service_error(&still_serving),
        None,
        "bad requests do not stop the service"
    );
}

async fn request_info(client: &async_nats::Client) -> serde_json::Value {
    let subject = format!("$SRV.INFO.{}", common::names::PRESIGNER_SERVICE);
    let reply = tokio::time::timeout(Duration::from_secs(5), client.request(subject, "".into()))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}
