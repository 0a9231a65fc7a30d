//! Release trains, the line and fleet flags (SPEC §8): SREs start, watch and steer trains
//! (`/v1/trains…`), stop and resume the line (`/v1/line…`) and roll flags out (`/v1/flags…`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cellfleet_api::{
    AbortTrainRequest, ErrorBody, FlagView, LineView, RollbackTrainRequest, SetFlagRequest,
    StartTrainRequest, StopLineRequest, TrainStarted, TrainView,
};

use super::extract::{ApiJson, ApiQuery, Auth, OptionalJson};
use super::moves::ListQuery;
use super::{ApiError, AppState};
use crate::auth::Action;
use crate::service::trains::TrainCommand;

/// Plans a release train and (unless `dryRun`) starts it.
#[utoipa::path(post, path = "/v1/trains", tag = "trains", security(("bearer" = [])),
    request_body = StartTrainRequest,
    responses((status = 201, body = TrainStarted), (status = 200, description = "Dry run: the plan", body = TrainStarted),
        (status = 400, body = ErrorBody), (status = 404, description = "Unknown release", body = ErrorBody),
        (status = 409, description = "Another train runs, or the release is older than the fleet's", body = ErrorBody),
        (status = 422, description = "A bad policy file (file and field named)", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<StartTrainRequest>,
) -> Result<(StatusCode, Json<TrainStarted>), ApiError> {
    let caller = auth.require(Action::ManageReleases)?;
    let started = state.registry.start_train(&caller, &req).await?;
    let status = if started.train.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(started)))
}

#[utoipa::path(get, path = "/v1/trains", tag = "trains", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = [TrainView])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<TrainView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.trains(!q.all.unwrap_or(false)).await?))
}

#[utoipa::path(get, path = "/v1/trains/{id}", tag = "trains", security(("bearer" = [])),
    params(("id" = String, Path, description = "Train id (tr_…)")),
    responses((status = 200, body = TrainView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TrainView>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.get_train(&id).await?))
}

async fn command(
    state: AppState,
    auth: Auth,
    id: String,
    command: TrainCommand,
) -> Result<Json<TrainView>, ApiError> {
    let caller = auth.require(Action::ManageReleases)?;
    Ok(Json(
        state.registry.train_command(&caller, &id, command).await?,
    ))
}

/// Approves the next wave (a wave that passed with `approval`, or an inconclusive gate).
#[utoipa::path(post, path = "/v1/trains/{id}/promote", tag = "trains", security(("bearer" = [])),
    params(("id" = String, Path, description = "Train id")),
    responses((status = 200, body = TrainView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn promote(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TrainView>, ApiError> {
    command(state, auth, id, TrainCommand::Promote).await
}

#[utoipa::path(post, path = "/v1/trains/{id}/pause", tag = "trains", security(("bearer" = [])),
    params(("id" = String, Path, description = "Train id")),
    responses((status = 200, body = TrainView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TrainView>, ApiError> {
    command(state, auth, id, TrainCommand::Pause).await
}

#[utoipa::path(post, path = "/v1/trains/{id}/resume", tag = "trains", security(("bearer" = [])),
    params(("id" = String, Path, description = "Train id")),
    responses((status = 200, body = TrainView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TrainView>, ApiError> {
    command(state, auth, id, TrainCommand::Resume).await
}

/// Stops a train for good (`rollback`: also every cell it changed goes back).
#[utoipa::path(post, path = "/v1/trains/{id}/abort", tag = "trains", security(("bearer" = [])),
    params(("id" = String, Path, description = "Train id")), request_body = Option<AbortTrainRequest>,
    responses((status = 200, body = TrainView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn abort(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<AbortTrainRequest>,
) -> Result<Json<TrainView>, ApiError> {
    command(
        state,
        auth,
        id,
        TrainCommand::Abort(req.unwrap_or_default()),
    )
    .await
}

/// Rolls the train's cells (or one) back to their last good release; refused past an applied
/// contract migration, with the reason.
#[utoipa::path(post, path = "/v1/trains/{id}/rollback", tag = "trains", security(("bearer" = [])),
    params(("id" = String, Path, description = "Train id")), request_body = Option<RollbackTrainRequest>,
    responses((status = 200, body = TrainView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<RollbackTrainRequest>,
) -> Result<Json<TrainView>, ApiError> {
    command(
        state,
        auth,
        id,
        TrainCommand::Rollback(req.unwrap_or_default()),
    )
    .await
}

#[utoipa::path(get, path = "/v1/line", tag = "trains", security(("bearer" = [])),
    responses((status = 200, body = LineView)))]
pub async fn line(State(state): State<AppState>, auth: Auth) -> Result<Json<LineView>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.line().await?))
}

/// Stops the line: every open train stops where it is.
#[utoipa::path(post, path = "/v1/line/stop", tag = "trains", security(("bearer" = [])),
    request_body = Option<StopLineRequest>, responses((status = 200, body = LineView), (status = 400, body = ErrorBody)))]
pub async fn stop_line(
    State(state): State<AppState>,
    auth: Auth,
    OptionalJson(req): OptionalJson<StopLineRequest>,
) -> Result<Json<LineView>, ApiError> {
    let caller = auth.require(Action::ManageReleases)?;
    let reason = req.and_then(|r| r.reason);
    Ok(Json(state.registry.stop_line(&caller, reason).await?))
}

#[utoipa::path(post, path = "/v1/line/resume", tag = "trains", security(("bearer" = [])),
    responses((status = 200, body = LineView), (status = 409, description = "The line is not stopped", body = ErrorBody)))]
pub async fn resume_line(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<LineView>, ApiError> {
    let caller = auth.require(Action::ManageReleases)?;
    Ok(Json(state.registry.resume_line(&caller).await?))
}

#[utoipa::path(get, path = "/v1/flags", tag = "trains", security(("bearer" = [])),
    responses((status = 200, body = [FlagView])))]
pub async fn flags(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<FlagView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.flags().await?))
}

/// Sets a fleet flag for its target (everyone when none).
#[utoipa::path(post, path = "/v1/flags", tag = "trains", security(("bearer" = [])),
    request_body = SetFlagRequest,
    responses((status = 200, body = FlagView), (status = 400, body = ErrorBody), (status = 404, description = "Unknown tenant or cell", body = ErrorBody)))]
pub async fn set_flag(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<SetFlagRequest>,
) -> Result<Json<FlagView>, ApiError> {
    let caller = auth.require(Action::ManageReleases)?;
    Ok(Json(state.registry.set_flag(&caller, &req).await?))
}

/// The kill switch: the flag is false for every tenant, at once.
#[utoipa::path(post, path = "/v1/flags/{name}/kill", tag = "trains", security(("bearer" = [])),
    params(("name" = String, Path, description = "Flag name", pattern = "^[A-Za-z0-9._-]{1,63}$")),
    responses((status = 200, body = FlagView), (status = 400, body = ErrorBody)))]
pub async fn kill_flag(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<FlagView>, ApiError> {
    let caller = auth.require(Action::ManageReleases)?;
    Ok(Json(state.registry.kill_flag(&caller, &name).await?))
}
