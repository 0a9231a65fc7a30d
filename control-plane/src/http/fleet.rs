//! Operator routes for regions, cells and `apply`.

use axum::Json;
use axum::extract::{Path, State};
use cellfleet_api::{
    AddMigrationsRequest, ApplyRequest, ApplyResponse, CellName, CellView, ErrorBody, Migration,
    MigrationAdded, RegionView,
};

use super::extract::{ApiJson, Auth};
use super::{ApiError, AppState, parse_id, warning_headers};
use crate::auth::Action;

/// Applies manifest files (multi-document YAML of kinds Region, Cell, Tenant, Release).
#[utoipa::path(post, path = "/v1/apply", tag = "fleet", request_body = ApplyRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What changed (or would change, with dryRun)", body = ApplyResponse),
        (status = 403, description = "A document's kind is not allowed for this role", body = ErrorBody),
        (status = 422, description = "A document is invalid; nothing was written", body = ErrorBody),
    ))]
pub async fn apply(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<ApplyRequest>,
) -> Result<(axum::http::HeaderMap, Json<ApplyResponse>), ApiError> {
    let caller = auth.require_any(&[Action::ManageInfrastructure, Action::ManageTenants])?;
    let response = state
        .registry
        .apply(&caller, auth.principal.role, &req.files, req.dry_run)
        .await?;
    let warnings: Vec<String> = response
        .results
        .iter()
        .flat_map(|r| {
            r.warnings
                .iter()
                .map(move |w| format!("{} {}: {w}", r.kind, r.name))
        })
        .collect();
    Ok((
        warning_headers(warnings.iter().map(String::as_str)),
        Json(response),
    ))
}

#[utoipa::path(get, path = "/v1/regions", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = [RegionView])))]
pub async fn list_regions(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<RegionView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.regions().await?))
}

#[utoipa::path(get, path = "/v1/cells", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = [CellView])))]
pub async fn list_cells(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<CellView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.cells().await?))
}

#[utoipa::path(get, path = "/v1/cells/{name}", tag = "fleet", security(("bearer" = [])),
    params(("name" = cellfleet_api::CellName, Path, description = "Cell name")),
    responses((status = 200, body = CellView), (status = 404, body = ErrorBody)))]
pub async fn get_cell(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<CellView>, ApiError> {
    auth.require(Action::ReadFleet)?;
    let name: CellName = parse_id("cell name", &name)?;
    Ok(Json(state.registry.cell(&name).await?))
}

/// Appends migrations to the fleet-wide stream (all or nothing; re-adding is a no-op).
#[utoipa::path(post, path = "/v1/migrations", tag = "fleet", request_body = AddMigrationsRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What happened to each file", body = [MigrationAdded]),
        (status = 400, description = "A file is not a valid migration", body = ErrorBody),
        (status = 409, description = "The stream is append-only", body = ErrorBody),
    ))]
pub async fn add_migrations(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<AddMigrationsRequest>,
) -> Result<Json<Vec<MigrationAdded>>, ApiError> {
    let caller = auth.require(Action::ManageInfrastructure)?;
    Ok(Json(
        state.registry.add_migrations(&caller, &req.files).await?,
    ))
}

/// The migration stream, in version order.
#[utoipa::path(get, path = "/v1/migrations", tag = "fleet", security(("bearer" = [])),
    responses((status = 200, body = [Migration])))]
pub async fn list_migrations(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<Migration>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.migrations().await?))
}
