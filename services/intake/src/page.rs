//! The browser page at `/app`: fields for the API key (kept in the tab's sessionStorage, sent
//! only as `Authorization: Bearer`) and file ids, a Download button, live progress over
//! `EventSource` (renewing the `streamUrl` token when a reconnection is refused) with a polling
//! fallback, the download on completion, Retry on errors, and pending jobs resumed after a
//! reload. Plain HTML, CSS and JavaScript compiled into the binary: no build step, nothing to
//! deploy beside the intake.

use poem::http::header;
use poem::{Response, handler};

const INDEX: &str = include_str!("../static/index.html");
const SCRIPT: &str = include_str!("../static/app.js");
const STYLE: &str = include_str!("../static/app.css");

/// Scripts and styles from this origin only; API calls and streams to this origin only (the
/// presigned download is a navigation, which this policy does not restrict).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .body(body)
}

/// `GET /app`.
#[handler]
pub fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /app/app.js`.
#[handler]
pub fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /app/app.css`.
#[handler]
pub fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
