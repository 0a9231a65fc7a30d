//! Release routes (SRE): register releases and deploy them to cells.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cellfleet_api::{CellName, CreateReleaseRequest, DeployRequest, ErrorBody, ReleaseView};

use super::extract::{ApiJson, Auth};
use super::{ApiError, AppState};
use crate::auth::Action;

/// Registers a release from a `kind: Release` manifest (201 when new, 200 when already there).
#[utoipa::path(post, path = "/v1/releases", tag = "releases", security(("bearer" = [])), request_body = CreateReleaseRequest,
    responses(
        (status = 201, body = ReleaseView), (status = 200, description = "Unchanged", body = ReleaseView),
        (status = 409, description = "Releases are immutable", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CreateReleaseRequest>,
) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    let caller = auth.require(Action::ManageInfrastructure)?;
    let (view, created) = state.registry.create_release(&caller, &req.file).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(view),
    ))
}

#[utoipa::path(get, path = "/v1/releases", tag = "releases", security(("bearer" = [])),
    responses((status = 200, body = [ReleaseView])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<ReleaseView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.releases().await?))
}

/// Moves cells (all when none are named) to the release; returns the cells that changed.
#[utoipa::path(post, path = "/v1/releases/{version}/deploy", tag = "releases", security(("bearer" = [])),
    params(("version" = String, Path, description = "Release version (semver)",
        pattern = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$")),
    request_body = DeployRequest,
    responses((status = 200, body = [String]), (status = 404, body = ErrorBody)))]
pub async fn deploy(
    State(state): State<AppState>,
    auth: Auth,
    Path(version): Path<String>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<Json<Vec<CellName>>, ApiError> {
    let caller = auth.require(Action::ManageInfrastructure)?;
    Ok(Json(
        state
            .registry
            .deploy_release(&caller, &version, &req.cells)
            .await?,
    ))
}
