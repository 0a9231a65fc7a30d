//! Request plumbing: bearer authentication, JSON/query extraction with API-shaped errors, and
//! the correlation-id + metrics + tracing middleware.

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::{ApiError, AppState};
use cellfleet_api::CellName;

use crate::auth::{Action, Principal, allows};
use crate::store::Caller;

pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The request's correlation id: the caller's `X-Correlation-Id` when it is sane, else a new one.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

fn sane_correlation_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    ok.then(|| s.to_owned())
}

/// Assigns the correlation id, opens the request's tracing span, records metrics, and echoes the
/// id in the response.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(sane_correlation_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "request",
        %method,
        %route,
        correlation_id = %id,
        actor = tracing::field::Empty
    );
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(&method, &route, response.status().as_u16(), elapsed);
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "handled"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_HEADER, v);
    }
    response
}

/// An authenticated caller. Handlers turn it into a [`Caller`] with [`Auth::require`], which is
/// where the role matrix is applied.
#[derive(Debug, Clone)]
pub struct Auth {
    pub principal: Principal,
    pub correlation_id: String,
}

impl Auth {
    /// Checks the role matrix for `action`.
    pub fn require(&self, action: Action) -> Result<Caller, ApiError> {
        if allows(self.principal.role, action) {
            Ok(self.caller())
        } else {
            Err(ApiError::Forbidden(format!(
                "role {} may not {}",
                self.principal.role,
                action.describe()
            )))
        }
    }

    /// Passes if the role may do at least one of `actions` (finer checks follow in the service).
    pub fn require_any(&self, actions: &[Action]) -> Result<Caller, ApiError> {
        match actions.iter().find(|a| allows(self.principal.role, **a)) {
            Some(a) => self.require(*a),
            None => self.require(actions[0]),
        }
    }

    /// For the agent routes: the caller must be an agent token, and may only act for the cell it
    /// is bound to (`requested`, when the request names one, must be that cell).
    pub fn require_agent(
        &self,
        requested: Option<&CellName>,
    ) -> Result<(Caller, CellName), ApiError> {
        let caller = self.require(Action::AgentSync)?;
        let Some(own) = &self.principal.cell else {
            return Err(ApiError::Forbidden(
                "this agent token is not bound to a cell".to_owned(),
            ));
        };
        match requested {
            Some(other) if other != own => Err(ApiError::Forbidden(format!(
                "the agent token of cell {own} may not act for cell {other}"
            ))),
            _ => Ok((caller, own.clone())),
        }
    }

    /// Checks again that the token is live: a long-poll answers only if its token was not
    /// revoked while it waited (else 401, like any request with a revoked token).
    pub async fn still_live(&self, state: &AppState) -> Result<(), ApiError> {
        if state
            .registry
            .token_is_live(&self.principal.token_id)
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    fn caller(&self) -> Caller {
        Caller {
            actor: self.principal.actor(),
            correlation_id: self.correlation_id.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .filter(|s| s.len() <= 256)
            .ok_or(ApiError::Unauthorized)?;
        let principal = state
            .registry
            .authenticate(secret)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let correlation_id = parts
            .extensions
            .get::<CorrelationId>()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        tracing::Span::current().record("actor", principal.actor());
        Ok(Auth {
            principal,
            correlation_id,
        })
    }
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work too.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `Json<T>` whose rejections are API errors (413 for oversized bodies, 400 otherwise).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    axum::Json<T>: FromRequest<AppState, Rejection = JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge(state.max_body_bytes))
            }
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "invalid request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// An optional JSON body: an empty (or blank) body is `None`. Rejections are API errors.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(state.max_body_bytes)
                } else {
                    ApiError::BadRequest(format!("invalid request body: {}", r.body_text()))
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptionalJson(Some(v)))
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
    }
}

/// `Query<T>` whose rejections are API errors.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r| ApiError::BadRequest(format!("invalid query: {}", r.body_text())))
    }
}
