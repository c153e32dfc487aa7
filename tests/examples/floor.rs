use poem::{IntoResponse, Route, Server, handler, http::StatusCode, listener::TcpListener, post, web::Json};
#[handler]
async fn initiate(body: Json<serde_json::Value>) -> impl IntoResponse {
    let n = body.0["fileIds"].as_array().map_or(0, |a| a.len());
    Json(serde_json::json!({"jobId": uuid::Uuid::new_v4().to_string(), "status": "queued", "files": n, "statusUrl": "/v1/download/x", "streamUrl": "/v1/download/x/stream"})).with_status(StatusCode::ACCEPTED)
}
fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = Route::new().at("/v1/download/initiate", post(initiate));
        Server::new(TcpListener::bind("127.0.0.1:18080"))
            .run(app)
            .await
            .unwrap();
    });
}
