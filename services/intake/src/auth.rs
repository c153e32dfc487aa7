//! Who is calling. A middleware resolves the caller once per request, before rate limiting (so
//! budgets are per tenant): with `AUTH_MODE=api_key` (the default) from `Authorization: Bearer
//! dk_…`, checked against the key bucket held in memory; with `AUTH_MODE=gateway` from the header
//! a trusted gateway sets. Operations take [`Tenant`], which answers 401 (or 503 when the keys
//! cannot be read) for anyone else and puts the Bearer scheme in the OpenAPI document.

use std::sync::Arc;

use common::ErrorCode;
use common::config::AuthMode;
use common::identity::KeyRefusal;
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::ApiExtractor;
use poem_openapi::registry::{MetaSecurityScheme, Registry};

use crate::State;
use crate::problem::{ApiProblem, Problem, into_problem};

/// Name of the security scheme in the OpenAPI document.
pub const SECURITY_SCHEME: &str = "ApiKey";

/// The caller of a request, as the middleware found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An authenticated tenant.
    Tenant(String),
    /// No credentials at all.
    Anonymous,
    /// Credentials that authenticate nobody.
    Refused(Refusal),
    /// A key could not be checked: the key bucket is unavailable.
    Unverifiable,
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An API key that is malformed, mistyped, unknown or revoked.
    Key(KeyRefusal),
    /// An `Authorization` header that is not `Bearer <key>`.
    NotBearer,
    /// The gateway's header holds no valid tenant id.
    GatewayHeader(String),
}

impl Caller {
    /// The problem answered to a caller that is not a tenant (`None` for a tenant).
    pub fn problem(&self) -> Option<Problem> {
        match self {
            Caller::Tenant(_) => None,
            Caller::Anonymous => Some(
                Problem::new(
                    ErrorCode::Unauthenticated,
                    "authentication is required: send Authorization: Bearer <API key>",
                )
                .with_field("Authorization"),
            ),
            Caller::Refused(Refusal::Key(refusal)) => {
                Some(Problem::new(ErrorCode::InvalidCredentials, refusal.to_string()).with_field("Authorization"))
            }
            Caller::Refused(Refusal::NotBearer) => Some(
                Problem::new(
                    ErrorCode::InvalidCredentials,
                    "the Authorization header must be Bearer <API key>",
                )
                .with_field("Authorization"),
            ),
            Caller::Refused(Refusal::GatewayHeader(header)) => Some(
                Problem::new(
                    ErrorCode::InvalidCredentials,
                    format!("the {header} header set by the gateway is not a valid tenant id"),
                )
                .with_field(header.clone()),
            ),
            Caller::Unverifiable => Some(Problem::new(
                ErrorCode::QueueUnavailable,
                "API keys cannot be checked right now, retry shortly",
            )),
        }
    }
}

/// The `Bearer` credentials of a request, if it sent an `Authorization` header.
fn bearer(request: &Request) -> Option<Result<&str, Refusal>> {
    let value = request.headers().get(poem::http::header::AUTHORIZATION)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(common::identity::bearer_credentials)
            .ok_or(Refusal::NotBearer),
    )
}

/// Resolves the caller of a request.
pub async fn caller_of(state: &State, request: &Request) -> Caller {
    match &state.settings.auth.mode {
        AuthMode::Gateway { header } => match request.headers().get(header.as_str()) {
            None => Caller::Anonymous,
            Some(value) => match value
                .to_str()
                .ok()
                .and_then(|text| common::identity::check_gateway_user(text).ok())
            {
                Some(tenant) => Caller::Tenant(tenant.to_string()),
                None => Caller::Refused(Refusal::GatewayHeader(header.clone())),
            },
        },
        AuthMode::ApiKeys => match bearer(request) {
            None => Caller::Anonymous,
            Some(Err(refusal)) => Caller::Refused(refusal),
            Some(Ok(key)) => match state.keys.authenticate(key).await {
                Ok(Ok(tenant)) => Caller::Tenant(tenant),
                Ok(Err(refusal)) => Caller::Refused(Refusal::Key(refusal)),
                Err(error) => {
                    tracing::warn!(%error, "api keys unavailable");
                    Caller::Unverifiable
                }
            },
        },
    }
}

/// Resolves the caller and keeps it in the request's extensions for what follows. A key that
/// would cost a read of the key bucket (its id is not in memory) counts against the client
/// address's budget first, so made-up keys cannot make every request a read.
pub async fn authenticate<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: Request,
    state: Arc<State>,
) -> poem::Result<Response> {
    // Health checks and metrics need no caller: they answer whatever credentials come along,
    // and a made-up key costs them nothing (not even a key-lookup budget).
    if crate::middleware::exempt_from_rate_limits(&request) {
        return match endpoint.call(request).await {
            Ok(response) => Ok(response.into_response()),
            Err(error) => Ok(into_problem(error)),
        };
    }
    if let Some(Ok(key)) = bearer(&request)
        && state.settings.auth.mode == AuthMode::ApiKeys
        && state.keys.needs_lookup(key)
    {
        let address = crate::middleware::client_address_key(&request, &state.settings.trusted_proxies);
        let decision = state.lookup_limiter.check(&format!("lookup:{address}")).await;
        if !decision.allowed {
            return Ok(crate::middleware::rate_limited(decision));
        }
    }
    let caller = caller_of(&state, &request).await;
    if let Caller::Tenant(tenant) = &caller {
        tracing::Span::current().record("tenant", tenant.as_str());
    }
    request.extensions_mut().insert(caller);
    match endpoint.call(request).await {
        Ok(response) => Ok(response.into_response()),
        Err(error) => Ok(into_problem(error)),
    }
}

/// The authenticated tenant of an operation.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

impl<'a> ApiExtractor<'a> for Tenant {
    const TYPES: &'static [poem_openapi::ApiExtractorType] = &[poem_openapi::ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        registry.create_security_scheme(
            SECURITY_SCHEME,
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "An API key (`dk_…`) from `download-admin`, sent as `Authorization: Bearer <key>`. \
                     In Swagger UI, paste the key into Authorize.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: Some("dk_<id>_<secret>"),
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![SECURITY_SCHEME]
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut poem::RequestBody,
        _param_opts: poem_openapi::ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match caller(request) {
            Caller::Tenant(tenant) => Ok(Tenant(tenant)),
            other => Err(ApiProblem(other.problem().expect("not a tenant")).into()),
        }
    }
}

/// The caller kept by [`authenticate`] (anonymous if the middleware did not run).
pub fn caller(request: &Request) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous)
}

/// The caller of an operation that also serves anonymous callers (the legacy `/start`): in the
/// OpenAPI document, the Bearer scheme or none.
#[derive(Debug, Clone)]
pub struct OptionalTenant(pub Caller);

impl<'a> ApiExtractor<'a> for OptionalTenant {
    const TYPES: &'static [poem_openapi::ApiExtractorType] = &[poem_openapi::ApiExtractorType::SecurityScheme];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        Tenant::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![SECURITY_SCHEME]
    }

    fn has_security_fallback() -> bool {
        true
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut poem::RequestBody,
        _param_opts: poem_openapi::ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(OptionalTenant(caller(request)))
    }
}
