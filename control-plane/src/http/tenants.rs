//! Operator routes for tenants: create, read, lifecycle, explain and context.

use axum::Json;
use axum::extract::{Path, State};
use cellfleet_api::{
    CreateTenantRequest, Env, ErrorBody, LifecycleRequest, TenantContext, TenantExplain, TenantId,
    TenantState, TenantView,
};
use serde::Deserialize;

use super::extract::{ApiJson, ApiQuery, Auth, OptionalJson};
use super::{ApiError, AppState, parse_id, warning_headers};
use crate::auth::Action;
use crate::lifecycle::Transition;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tenants in this state (default: every tenant that is not deleted).
    pub state: Option<TenantState>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvQuery {
    /// Environment tier (default `prod`).
    pub env: Option<Env>,
}

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = [TenantView]), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.tenants(q.state).await?))
}

/// Creates a tenant and places it; it stays `draft` with the reason when nothing has room.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])),
    request_body = CreateTenantRequest,
    responses((status = 201, body = TenantView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateTenantRequest>,
) -> Result<
    (
        axum::http::StatusCode,
        axum::http::HeaderMap,
        Json<TenantView>,
    ),
    ApiError,
> {
    let caller = auth.require(Action::ManageTenants)?;
    let (view, warnings) = state
        .registry
        .create_tenant(&caller, &req.id, &req.spec)
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        warning_headers(warnings.iter().map(String::as_str)),
        Json(view),
    ))
}

#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", security(("bearer" = [])),
    params(("id" = cellfleet_api::TenantId, Path, description = "Tenant id")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    auth.require(Action::ReadFleet)?;
    let id: TenantId = parse_id("tenant id", &id)?;
    Ok(Json(state.registry.tenant(&id).await?))
}

async fn transition(
    state: AppState,
    auth: Auth,
    id: String,
    transition: Transition,
    body: Option<LifecycleRequest>,
) -> Result<Json<TenantView>, ApiError> {
    let caller = auth.require(Action::ManageTenants)?;
    let id: TenantId = parse_id("tenant id", &id)?;
    let reason = body.and_then(|b| b.reason);
    Ok(Json(
        state
            .registry
            .transition(&caller, &id, transition, reason)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants", security(("bearer" = [])),
    params(("id" = cellfleet_api::TenantId, Path, description = "Tenant id")), request_body = Option<LifecycleRequest>,
    responses((status = 200, body = TenantView), (status = 409, description = "Illegal transition", body = ErrorBody)))]
pub async fn suspend(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<LifecycleRequest>,
) -> Result<Json<TenantView>, ApiError> {
    transition(state, auth, id, Transition::Suspend, body).await
}

#[utoipa::path(post, path = "/v1/tenants/{id}/resume", tag = "tenants", security(("bearer" = [])),
    params(("id" = cellfleet_api::TenantId, Path, description = "Tenant id")), request_body = Option<LifecycleRequest>,
    responses((status = 200, body = TenantView), (status = 409, description = "Illegal transition", body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<LifecycleRequest>,
) -> Result<Json<TenantView>, ApiError> {
    transition(state, auth, id, Transition::Resume, body).await
}

#[utoipa::path(post, path = "/v1/tenants/{id}/archive", tag = "tenants", security(("bearer" = [])),
    params(("id" = cellfleet_api::TenantId, Path, description = "Tenant id")), request_body = Option<LifecycleRequest>,
    responses((status = 200, body = TenantView), (status = 409, description = "Illegal transition", body = ErrorBody)))]
pub async fn archive(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<LifecycleRequest>,
) -> Result<Json<TenantView>, ApiError> {
    transition(state, auth, id, Transition::Archive, body).await
}

/// Deletes an archived tenant once its retention has passed (the id stays reserved).
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", security(("bearer" = [])),
    params(("id" = cellfleet_api::TenantId, Path, description = "Tenant id")),
    responses((status = 200, body = TenantView), (status = 409, description = "Not archived, or retention not passed", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    transition(state, auth, id, Transition::Delete, None).await
}

#[utoipa::path(get, path = "/v1/tenants/{id}/explain", tag = "tenants", security(("bearer" = [])),
    params(("id" = cellfleet_api::TenantId, Path, description = "Tenant id")),
    responses((status = 200, body = TenantExplain), (status = 404, body = ErrorBody)))]
pub async fn explain(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TenantExplain>, ApiError> {
    auth.require(Action::ReadFleet)?;
    let id: TenantId = parse_id("tenant id", &id)?;
    Ok(Json(state.registry.explain(&id).await?))
}

/// The tenant context every platform module consumes.
#[utoipa::path(get, path = "/v1/tenants/{id}/context", tag = "tenants", security(("bearer" = [])),
    params(("id" = cellfleet_api::TenantId, Path, description = "Tenant id"), EnvQuery),
    responses((status = 200, body = TenantContext), (status = 404, body = ErrorBody), (status = 409, description = "No placement in that env", body = ErrorBody)))]
pub async fn context(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EnvQuery>,
) -> Result<Json<TenantContext>, ApiError> {
    auth.require(Action::ReadFleet)?;
    let id: TenantId = parse_id("tenant id", &id)?;
    let env = q.env.unwrap_or_else(Env::prod);
    Ok(Json(state.registry.context(&id, &env).await?))
}
