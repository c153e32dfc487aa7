//! Cross-cutting behaviour of every response: request ids, security headers, per-tenant (or
//! per-address) rate limits, bounded bodies, the request timeout, and problem+json for every error.

use std::sync::Arc;

use common::ErrorCode;
use poem::http::{HeaderName, HeaderValue, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use crate::State;
use crate::problem::{Problem, into_problem};

/// Header carrying the request id, `X-Request-ID` (a name, not a `&str` parsed on every use).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The rate limit's headers (draft-ietf-httpapi-ratelimit-headers, and the older triple).
const RATE_LIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATE_LIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The request id of the current request, kept in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn caller_request_id(request: &Request) -> Option<String> {
    let value = request.headers().get(&REQUEST_ID_HEADER)?.to_str().ok()?;
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'));
    valid.then(|| value.to_string())
}

/// The intake's route templates, for span names and metric labels (specific before generic).
const ROUTES: &[&str] = &[
    "/",
    "/health",
    "/livez",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/openapi.yaml",
    "/docs",
    "/app",
    "/app/app.js",
    "/app/app.css",
    "/v1/download/initiate",
    "/v1/download/check",
    "/v1/download/start",
    "/v1/download/status/{jobId}",
    "/v1/download/{jobId}/stream",
    "/v1/download/{jobId}",
];

/// Outermost layer: request id, trace span, security headers; turns any error into a problem.
pub async fn request_context<E: Endpoint>(endpoint: Arc<E>, mut request: Request) -> poem::Result<Response> {
    let request_id = caller_request_id(&request).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let mut response =
        common::metrics::observe_http(endpoint.as_ref(), request, ROUTES, Some(&request_id), into_problem).await;
    let headers = response.headers_mut();
    // Room for these five at once, not a growth of the map at every few.
    headers.reserve(5);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if response.status() == poem::http::StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            poem::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"downloads\""),
        );
    }
    Ok(response)
}

/// What the answer says about the route beyond the operation: `Allow` on a 405 (the methods
/// of the request's path), and with `CORS_ORIGINS=*`, `Access-Control-Allow-Origin: *` on
/// every answer, also to a request without `Origin` (as the old service answered).
pub async fn route_headers<E: Endpoint>(
    endpoint: Arc<E>,
    request: Request,
    methods: Arc<std::collections::BTreeMap<String, String>>,
    any_origin: bool,
) -> poem::Result<Response> {
    let path = request.uri().path().to_string();
    let mut response = endpoint.call(request).await?.into_response();
    if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
        let allowed = methods
            .get(common::metrics::route_of(&path, ROUTES))
            .map_or("GET", String::as_str);
        if let Ok(value) = HeaderValue::from_str(allowed) {
            response.headers_mut().insert(poem::http::header::ALLOW, value);
        }
    }
    if any_origin {
        response
            .headers_mut()
            .entry(poem::http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .or_insert(HeaderValue::from_static("*"));
    }
    Ok(response)
}

/// The key a client is counted under: its tenant when authenticated, else its address (behind
/// `TRUSTED_PROXIES`, the rightmost untrusted `X-Forwarded-For` hop).
fn client_key(request: &Request, trusted_proxies: &[common::net::Network]) -> String {
    if let crate::auth::Caller::Tenant(tenant) = crate::auth::caller(request) {
        return format!("tenant:{tenant}");
    }
    client_address_key(request, trusted_proxies)
}

/// `ip:<address>` of the client: the peer, or behind `TRUSTED_PROXIES` the rightmost untrusted
/// hop of every `X-Forwarded-For` line, in order.
pub fn client_address_key(request: &Request, trusted_proxies: &[common::net::Network]) -> String {
    let Some(peer) = request.remote_addr().as_socket_addr().map(|address| address.ip()) else {
        return "ip:unknown".to_string();
    };
    // A proxy may add its own line rather than extend the client's: all lines, in order, are
    // one list, and the rightmost entries are the proxies'.
    let lines: Vec<&str> = request
        .headers()
        .get_all("X-Forwarded-For")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let forwarded_for = (!lines.is_empty()).then(|| lines.join(","));
    format!(
        "ip:{}",
        common::net::client_address(peer, forwarded_for.as_deref(), trusted_proxies)
    )
}

/// Routes never rate limited: health checks, probes and metrics (load balancers,
/// orchestrators and Prometheus poll them).
pub fn exempt_from_rate_limits(request: &Request) -> bool {
    matches!(request.uri().path(), "/health" | "/livez" | "/readyz" | "/metrics")
}

/// The 429 of a spent budget, with `Retry-After`.
pub fn rate_limited(decision: crate::rate_limit::Decision) -> Response {
    let mut response = Problem::new(
        ErrorCode::RateLimited,
        format!(
            "more than {} requests in the window; retry after {} s",
            decision.limit, decision.retry_after_seconds
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert("Retry-After", HeaderValue::from(decision.retry_after_seconds));
    response
}

/// Counts the request against its client's budget (shared by every intake); adds the IETF
/// `RateLimit-Policy` and `RateLimit` headers (and the older `RateLimit-Limit`, `-Remaining`,
/// `-Reset`) to every response and answers 429 with `Retry-After` once the budget is spent.
pub async fn rate_limit<E: Endpoint>(endpoint: Arc<E>, request: Request, state: Arc<State>) -> poem::Result<Response> {
    let rate_limiter = match &state.rate_limiter {
        Some(rate_limiter) if !exempt_from_rate_limits(&request) => rate_limiter,
        _ => {
            return match endpoint.call(request).await {
                Ok(response) => Ok(response.into_response()),
                Err(error) => Ok(into_problem(error)),
            };
        }
    };
    let key = client_key(&request, &state.settings.trusted_proxies);
    let decision = rate_limiter.check(&key).await;
    let mut response = if decision.allowed {
        match endpoint.call(request).await {
            Ok(response) => response.into_response(),
            Err(error) => into_problem(error),
        }
    } else {
        rate_limited(decision)
    };
    let headers = response.headers_mut();
    headers.reserve(5);
    if let Some(policy) = rate_limiter.policy_header() {
        headers.insert(RATE_LIMIT_POLICY, policy.clone());
    }
    if let Ok(current) = HeaderValue::from_str(&format!(
        "\"default\";r={};t={}",
        decision.remaining, decision.reset_seconds
    )) {
        headers.insert(RATE_LIMIT, current);
    }
    headers.insert(RATE_LIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(RATE_LIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RATE_LIMIT_RESET, HeaderValue::from(decision.reset_seconds));
    Ok(response)
}

/// Bounds the request body (413 beyond `MAX_BODY_BYTES`, whether announced or streamed) and the
/// time a request may take (`REQUEST_TIMEOUT_MS`).
pub async fn bound_request<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: Request,
    state: Arc<State>,
) -> poem::Result<Response> {
    let limit = state.settings.max_body_bytes;
    let too_large = || {
        Problem::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
        .into_response()
    };
    let announced = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Ok(too_large());
    }
    // The body is read within the request's time too: a client that trickles it cannot hold a
    // connection past the timeout.
    let timeout = state.settings.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || {
        tracing::warn!(timeout_ms = timeout.as_millis() as u64, "request timed out");
        let mut response = Problem::new(ErrorCode::RequestTimeout, "the request took too long; retry").into_response();
        response.headers_mut().insert("Retry-After", HeaderValue::from(1));
        response
    };
    let body = request.take_body();
    let Ok(read) = tokio::time::timeout_at(deadline, body.into_bytes_limit(limit)).await else {
        return Ok(timed_out());
    };
    match read {
        Ok(bytes) => request.set_body(bytes),
        Err(poem::error::ReadBodyError::PayloadTooLarge) => return Ok(too_large()),
        Err(error) => {
            return Ok(Problem::new(
                ErrorCode::ValidationFailed,
                format!("request body could not be read: {error}"),
            )
            .into_response());
        }
    }
    match tokio::time::timeout_at(deadline, endpoint.call(request)).await {
        Ok(Ok(response)) => Ok(response.into_response()),
        Ok(Err(error)) => Ok(into_problem(error)),
        Err(_) => Ok(timed_out()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_of_the_published_contract_has_its_route_template() {
        let spec: serde_json::Value = serde_json::from_str(include_str!("../../../openapi/openapi.json")).unwrap();
        let paths = spec["paths"].as_object().unwrap();
        assert!(!paths.is_empty());
        for template in paths.keys() {
            let path = template.replace("{jobId}", "01a224f1-2869-7492-a33b-0a7af98f579d");
            assert_eq!(
                common::metrics::route_of(&path, ROUTES),
                template.as_str(),
                "{template} has no route template of its own: add it to ROUTES"
            );
        }
    }
}
