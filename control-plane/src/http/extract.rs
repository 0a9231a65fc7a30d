//! Request plumbing: bearer authentication, JSON/query extraction with API-shaped errors, and
//! the correlation-id + metrics + tracing middleware.

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
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

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let essence = v.split(';').next().unwrap_or_default().trim();
                essence.eq_ignore_ascii_case("application/json")
                    || essence.to_ascii_lowercase().ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::BadRequest(
                "invalid request body: expected `Content-Type: application/json`".to_owned(),
            ));
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

async fn body_bytes(req: Request, state: &AppState) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(state.max_body_bytes)
            } else {
                ApiError::BadRequest(format!("invalid request body: {}", r.body_text()))
            }
        })
}

/// Parses a JSON body. JSON does not tell `3` from `3.0`, and the OpenAPI document's `integer`
/// (JSON Schema's) admits both, so a body that fails only because a whole number came with a
/// fraction part is parsed again with those numbers as integers. The first attempt is the
/// plain one, so large bodies (move chunks) pay nothing extra.
///
/// Every request body of this API is a JSON object (`null` too where the body is optional): serde
/// would also build a struct from an array of its fields, which no schema here describes.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::BadRequest(
            "invalid request body: expected a JSON object, not an array".to_owned(),
        ));
    }
    let err = match serde_json::from_slice(bytes) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let bad = |e: serde_json::Error| ApiError::BadRequest(format!("invalid request body: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(bad)?;
    if !integral_floats_to_integers(&mut value) {
        return Err(bad(err));
    }
    serde_json::from_value(value).map_err(bad)
}

/// Rewrites every exactly represented number with a zero fraction as that integer; whether any
/// was rewritten.
fn integral_floats_to_integers(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            match n.as_f64() {
                // Only where a double is exact (|f| ≤ 2^53): an integer too large for an `i64`,
                // which serde_json also reads as a double, must not become one that fits.
                Some(f) if f.fract() == 0.0 && f.abs() <= 2f64.powi(53) => {
                    #[allow(clippy::cast_possible_truncation)]
                    let i = f as i64;
                    *value = serde_json::Value::from(i);
                    true
                }
                _ => false,
            }
        }
        serde_json::Value::Array(items) => rewrite_all(items.iter_mut()),
        serde_json::Value::Object(map) => rewrite_all(map.values_mut()),
        _ => false,
    }
}

/// An optional JSON body: an empty (or blank) body is `None`. Rejections are API errors.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        // `null` is no body too.
        parse_json::<Option<T>>(&bytes).map(OptionalJson)
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

/// [`integral_floats_to_integers`] on every value (none skipped once one was rewritten).
fn rewrite_all<'a>(values: impl Iterator<Item = &'a mut serde_json::Value>) -> bool {
    let mut any = false;
    for v in values {
        any |= integral_floats_to_integers(v);
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Body {
        n: i64,
        #[serde(default)]
        list: Vec<u64>,
    }

    #[test]
    fn whole_numbers_with_a_fraction_part_are_integers() {
        let b: Body = parse_json(br#"{"n": 3.0, "list": [1, 2.0, 3e2]}"#).unwrap();
        assert_eq!(
            b,
            Body {
                n: 3,
                list: vec![1, 2, 300]
            }
        );
        // A real fraction, and an integer too large for an i64 (read as a double), stay refused.
        for bad in [
            r#"{"n": 3.5}"#,
            r#"{"n": -9223372036854775809}"#,
            r#"{"n": 1e300}"#,
        ] {
            let err = parse_json::<Body>(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn a_body_is_an_object_or_for_an_optional_body_null() {
        let err = parse_json::<Body>(b" [1]").unwrap_err();
        assert!(err.to_string().contains("not an array"), "{err}");
        assert_eq!(parse_json::<Option<Body>>(b"null").unwrap(), None);
    }
}
