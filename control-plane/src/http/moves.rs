//! Tenant moves: operators start, watch, abort and roll back moves (`/v1/moves…`); agents move
//! the data of the moves their cell takes part in (`/v1/agent/moves/{id}/…`, only for their own
//! cell's part); operators see the edge routers the cut-overs wait for (`/v1/routers`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cellfleet_api::{
    AbortMoveRequest, ChunkApplied, ErrorBody, MoveChunk, MoveSideReport, MoveStarted, MoveView,
    RouterView, StartMoveRequest, StreamPosition,
};
use serde::Deserialize;

use super::extract::{ApiJson, ApiQuery, Auth, OptionalJson};
use super::{ApiError, AppState};
use crate::auth::Action;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Also finished moves (default: only open ones).
    pub all: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AfterQuery {
    /// The last chunk the agent applied (default: the last one it acknowledged).
    pub after: Option<i64>,
}

/// Plans a move of a tenant environment and (unless `dryRun`) starts it.
#[utoipa::path(post, path = "/v1/moves", tag = "moves", security(("bearer" = [])),
    request_body = StartMoveRequest,
    responses((status = 201, body = MoveStarted), (status = 200, description = "Dry run: the plan", body = MoveStarted),
        (status = 404, body = ErrorBody), (status = 409, description = "A check failed (named)", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<StartMoveRequest>,
) -> Result<(StatusCode, Json<MoveStarted>), ApiError> {
    let caller = auth.require(Action::ManageTenants)?;
    let started = state.registry.start_move(&caller, &req).await?;
    let status = if started.started.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(started)))
}

#[utoipa::path(get, path = "/v1/moves", tag = "moves", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = [MoveView])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<MoveView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.moves(!q.all.unwrap_or(false)).await?))
}

#[utoipa::path(get, path = "/v1/moves/{id}", tag = "moves", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id (mv_…)")),
    responses((status = 200, body = MoveView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<MoveView>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.get_move(&id).await?))
}

/// Aborts a move before its cut-over: the target drops its copy, the tenant stays where it is.
#[utoipa::path(post, path = "/v1/moves/{id}/abort", tag = "moves", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id")), request_body = Option<AbortMoveRequest>,
    responses((status = 200, body = MoveView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn abort(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<AbortMoveRequest>,
) -> Result<Json<MoveView>, ApiError> {
    let caller = auth.require(Action::ManageTenants)?;
    let reason = req.and_then(|r| r.reason);
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::BadRequest(
            "reason: at most 500 characters".into(),
        ));
    }
    Ok(Json(
        state
            .registry
            .request_move(&caller, &id, false, reason)
            .await?,
    ))
}

/// Rolls a move back within its window: the same fenced cut-over, back to the source.
#[utoipa::path(post, path = "/v1/moves/{id}/rollback", tag = "moves", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id")),
    responses((status = 200, body = MoveView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<MoveView>, ApiError> {
    let caller = auth.require(Action::ManageTenants)?;
    Ok(Json(
        state
            .registry
            .request_move(&caller, &id, true, None)
            .await?,
    ))
}

/// The edge routers seen on their watches, with the table version each acknowledged.
#[utoipa::path(get, path = "/v1/routers", tag = "routes", security(("bearer" = [])),
    responses((status = 200, body = [RouterView])))]
pub async fn routers(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<RouterView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    let gone = chrono::TimeDelta::milliseconds(state.move_settings.router_gone_after_ms);
    Ok(Json(state.registry.routers(gone).await?))
}

// ---- agents ------------------------------------------------------------------------------------

/// Where the agent's cell resumes uploading its stream of a move.
#[utoipa::path(get, path = "/v1/agent/moves/{id}/position", tag = "agent", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id")),
    responses((status = 200, body = StreamPosition), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn position(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<StreamPosition>, ApiError> {
    let (_, cell) = auth.require_agent(None)?;
    Ok(Json(state.registry.move_position(&cell, &id).await?))
}

/// The next chunk of the agent's stream (or the last one again).
#[utoipa::path(post, path = "/v1/agent/moves/{id}/chunks", tag = "agent", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id")), request_body = MoveChunk,
    responses((status = 200, body = StreamPosition), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, description = "Too many chunks wait to be applied: send again later", body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(chunk): ApiJson<MoveChunk>,
) -> Result<Json<StreamPosition>, ApiError> {
    let (_, cell) = auth.require_agent(None)?;
    Ok(Json(state.registry.upload_chunk(&cell, &id, chunk).await?))
}

/// Chunks of the stream the agent's cell applies, after `after`.
#[utoipa::path(get, path = "/v1/agent/moves/{id}/chunks", tag = "agent", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id"), AfterQuery),
    responses((status = 200, body = [MoveChunk]), (status = 403, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> Result<Json<Vec<MoveChunk>>, ApiError> {
    let (_, cell) = auth.require_agent(None)?;
    Ok(Json(
        state.registry.download_chunks(&cell, &id, q.after).await?,
    ))
}

/// The agent applied a chunk (and how its checksums compared).
#[utoipa::path(post, path = "/v1/agent/moves/{id}/applied", tag = "agent", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id")), request_body = ChunkApplied,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn applied(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(ack): ApiJson<ChunkApplied>,
) -> Result<StatusCode, ApiError> {
    let (_, cell) = auth.require_agent(None)?;
    state.registry.chunk_applied(&cell, &id, ack).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What the agent's cell says about its side of a move.
#[utoipa::path(post, path = "/v1/agent/moves/{id}/side", tag = "agent", security(("bearer" = [])),
    params(("id" = String, Path, description = "Move id")), request_body = MoveSideReport,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn side(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<MoveSideReport>,
) -> Result<StatusCode, ApiError> {
    let (_, cell) = auth.require_agent(None)?;
    state.registry.move_side_report(&cell, &id, report).await?;
    Ok(StatusCode::NO_CONTENT)
}
