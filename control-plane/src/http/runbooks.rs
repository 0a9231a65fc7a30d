//! Runbooks (SPEC §9): the catalog (`/v1/runbooks…`), runs (`/v1/runbook-runs…`: status,
//! approve, abort), the events their notify steps emit (`/v1/events`), and cell lifecycle
//! commands (`/v1/cells/{name}/drain|undrain|retire`). Who may run a runbook is declared in the
//! runbook; the route only asks that the role may run runbooks at all.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cellfleet_api::{
    AbortRunRequest, CellLifecycle, CellLifecycleRequest, CellName, CellResync, ErrorBody,
    EventView, RunStarted, RunView, RunbookSummary, RunbookView, StartRunRequest,
};
use serde::Deserialize;

use super::extract::{ApiJson, ApiQuery, Auth, OptionalJson};
use super::moves::ListQuery;
use super::{ApiError, AppState, parse_id};
use crate::auth::Action;
use crate::service::cells::CellAction;

#[utoipa::path(get, path = "/v1/runbooks", tag = "runbooks", security(("bearer" = [])),
    responses((status = 200, body = [RunbookSummary])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<RunbookSummary>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.runbooks()))
}

#[utoipa::path(get, path = "/v1/runbooks/{name}", tag = "runbooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "Runbook name")),
    responses((status = 200, body = RunbookView), (status = 404, body = ErrorBody),
        (status = 400, description = "The runbook's file does not parse (file, document and path named)", body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<RunbookView>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.runbook_view(&name)?))
}

/// Starts a run of a runbook, or (with `dryRun`) plans every step and changes nothing.
#[utoipa::path(post, path = "/v1/runbooks/{name}/runs", tag = "runbooks", security(("bearer" = [])),
    params(("name" = String, Path, description = "Runbook name")), request_body = StartRunRequest,
    responses((status = 201, body = RunStarted), (status = 200, description = "Dry run: the plan", body = RunStarted),
        (status = 400, description = "A missing, unknown or mistyped parameter; a runbook file that does not parse", body = ErrorBody),
        (status = 403, description = "The runbook (or one of its steps) does not name the caller's role", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Another run holds the runbook's lock", body = ErrorBody)))]
pub async fn run(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<StartRunRequest>,
) -> Result<(StatusCode, Json<RunStarted>), ApiError> {
    let caller = auth.require(Action::RunRunbooks)?;
    let started = state
        .registry
        .start_run(&caller, auth.principal.role, &name, &req)
        .await?;
    let status = if started.run.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(started)))
}

#[utoipa::path(get, path = "/v1/runbook-runs", tag = "runbooks", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = [RunView])))]
pub async fn runs(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.runs(!q.all.unwrap_or(false)).await?))
}

#[utoipa::path(get, path = "/v1/runbook-runs/{id}", tag = "runbooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (rb_…)")),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody)))]
pub async fn get_run(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    auth.require(Action::ReadFleet)?;
    Ok(Json(state.registry.get_run(&id).await?))
}

/// Approves the `approve` step a run waits at (by a role the step names).
#[utoipa::path(post, path = "/v1/runbook-runs/{id}/approve", tag = "runbooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Nothing waits for approval", body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let caller = auth.require(Action::RunRunbooks)?;
    Ok(Json(
        state
            .registry
            .approve_run(&caller, auth.principal.role, &id)
            .await?,
    ))
}

/// Stops a run where it is (an operation a step started goes on by itself; the note names it).
#[utoipa::path(post, path = "/v1/runbook-runs/{id}/abort", tag = "runbooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")), request_body = Option<AbortRunRequest>,
    responses((status = 200, body = RunView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn abort(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<AbortRunRequest>,
) -> Result<Json<RunView>, ApiError> {
    let caller = auth.require(Action::RunRunbooks)?;
    Ok(Json(
        state
            .registry
            .abort_run(
                &caller,
                auth.principal.role,
                &id,
                req.unwrap_or_default().reason,
            )
            .await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only the events of this run.
    pub run: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/events", tag = "runbooks", security(("bearer" = [])), params(EventsQuery),
    responses((status = 200, body = [EventView]), (status = 400, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    auth.require(Action::ReadFleet)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit}: between 1 and 1000"
        )));
    }
    Ok(Json(state.registry.events(q.run.as_deref(), limit).await?))
}

async fn lifecycle(
    state: AppState,
    auth: Auth,
    name: &str,
    action: CellAction,
    req: CellLifecycleRequest,
) -> Result<Json<CellLifecycle>, ApiError> {
    let caller = auth.require(Action::ManageInfrastructure)?;
    let cell: CellName = parse_id("cell name", name)?;
    Ok(Json(
        state
            .registry
            .cell_lifecycle(&caller, &cell, action, req.reason)
            .await?,
    ))
}

/// `ready → draining`: the cell takes no new placements.
#[utoipa::path(post, path = "/v1/cells/{name}/drain", tag = "cells", security(("bearer" = [])),
    params(("name" = cellfleet_api::CellName, Path, description = "Cell name")), request_body = Option<CellLifecycleRequest>,
    responses((status = 200, body = CellLifecycle), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<CellLifecycleRequest>,
) -> Result<Json<CellLifecycle>, ApiError> {
    lifecycle(
        state,
        auth,
        &name,
        CellAction::Drain,
        req.unwrap_or_default(),
    )
    .await
}

/// `draining → ready`.
#[utoipa::path(post, path = "/v1/cells/{name}/undrain", tag = "cells", security(("bearer" = [])),
    params(("name" = cellfleet_api::CellName, Path, description = "Cell name")), request_body = Option<CellLifecycleRequest>,
    responses((status = 200, body = CellLifecycle), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn undrain(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<CellLifecycleRequest>,
) -> Result<Json<CellLifecycle>, ApiError> {
    lifecycle(
        state,
        auth,
        &name,
        CellAction::Undrain,
        req.unwrap_or_default(),
    )
    .await
}

/// `draining → retired`, only when nothing is placed on the cell and no move goes through it.
#[utoipa::path(post, path = "/v1/cells/{name}/retire", tag = "cells", security(("bearer" = [])),
    params(("name" = cellfleet_api::CellName, Path, description = "Cell name")), request_body = Option<CellLifecycleRequest>,
    responses((status = 200, body = CellLifecycle), (status = 404, body = ErrorBody),
        (status = 409, description = "Not draining, or tenants or a move remain (named)", body = ErrorBody)))]
pub async fn retire(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    OptionalJson(req): OptionalJson<CellLifecycleRequest>,
) -> Result<Json<CellLifecycle>, ApiError> {
    lifecycle(
        state,
        auth,
        &name,
        CellAction::Retire,
        req.unwrap_or_default(),
    )
    .await
}

/// For an agent ahead of a registry restored from an older copy: moves the cell's desired
/// generation one past the agent's, so the agent takes the registry's state as newer.
#[utoipa::path(post, path = "/v1/cells/{name}/resync", tag = "cells", security(("bearer" = [])),
    params(("name" = cellfleet_api::CellName, Path, description = "Cell name")),
    responses((status = 200, body = CellResync), (status = 404, body = ErrorBody),
        (status = 409, description = "The agent is not ahead of the registry", body = ErrorBody)))]
pub async fn resync(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<CellResync>, ApiError> {
    let caller = auth.require(Action::ManageInfrastructure)?;
    let cell: CellName = parse_id("cell name", &name)?;
    Ok(Json(state.registry.resync_cell(&caller, &cell).await?))
}
