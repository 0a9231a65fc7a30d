//! Tokens, health, metrics and the API description.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use cellfleet_api::{CreateTokenRequest, ErrorBody, TokenCreated, TokenView};
use utoipa::OpenApi;

use super::extract::{ApiJson, Auth};
use super::{ApiDoc, ApiError, AppState};
use crate::auth::Action;

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])), request_body = CreateTokenRequest,
    responses((status = 201, description = "The secret is in this response only", body = TokenCreated), (status = 400, body = ErrorBody),
        (status = 404, description = "The agent token's cell does not exist", body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(axum::http::StatusCode, Json<TokenCreated>), ApiError> {
    let caller = auth.require(Action::ManageTokens)?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(state.registry.create_token(&caller, &req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = [TokenView])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    auth.require(Action::ManageTokens)?;
    Ok(Json(state.registry.tokens().await?))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])),
    params(("id" = String, Path, description = "Token id (tok_…)")),
    responses((status = 200, body = TokenView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let caller = auth.require(Action::ManageTokens)?;
    Ok(Json(state.registry.revoke_token(&caller, &id).await?))
}

/// Liveness and database reachability; the only unauthenticated route.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "ok"), (status = 503, description = "database unreachable")))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.registry.store().read().await {
        Ok(_) => (axum::http::StatusCode::OK, "ok\n"),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "database unreachable\n",
            )
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "The classic Prometheus text format (0.0.4); OpenMetrics 1.0 when `Accept` asks for application/openmetrics-text",
        content((String = "text/plain"), (String = "application/openmetrics-text")))))]
pub async fn metrics(
    State(state): State<AppState>,
    auth: Auth,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    auth.require(Action::ReadMetadata)?;
    let (tenants, cells) = state.registry.state_counts().await?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) =
        cellfleet_api::exposition::negotiate(accept, state.metrics.render(&tenants, &cells));
    Ok(([(header::CONTENT_TYPE, content_type)], body))
}

#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(("bearer" = [])),
    responses((status = 200, description = "This document")))]
pub async fn openapi(auth: Auth) -> Result<impl IntoResponse, ApiError> {
    auth.require(Action::ReadMetadata)?;
    Ok(Json(ApiDoc::openapi()))
}
