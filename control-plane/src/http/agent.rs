//! Routes for cell agents (`/v1/agent/…`): an agent token reads its own cell's desired state
//! (long-poll) and reports what it observed. Operators read any cell's desired state at
//! `/v1/cells/{name}/desired`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cellfleet_api::{AgentReport, CellName, DesiredState, ErrorBody};
use serde::Deserialize;

use super::extract::{ApiJson, ApiQuery, Auth};
use super::{ApiError, AppState, long_poll_wait, parse_id};
use crate::auth::Action;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DesiredQuery {
    /// Return as soon as the cell's generation is above this (default 0: at once).
    pub since: Option<i64>,
    /// How long to wait for a newer generation, e.g. `30s` (default 30s, at most 60s).
    #[param(pattern = "^[0-9]{1,9}(ms|s|m|h)$")]
    pub timeout: Option<String>,
    /// The cell; must be the token's own (default: the token's cell).
    pub cell: Option<CellName>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// The cell; must be the token's own (default: the token's cell).
    pub cell: Option<CellName>,
}

/// Long-poll for the desired state of the agent's own cell.
#[utoipa::path(get, path = "/v1/agent/desired", tag = "agent", security(("bearer" = [])), params(DesiredQuery),
    responses(
        (status = 200, description = "The desired state: newer than `since`, or the current one when the wait ran out", body = DesiredState),
        (status = 403, description = "Not an agent token, or another cell", body = ErrorBody),
    ))]
pub async fn desired(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<DesiredQuery>,
) -> Result<Json<DesiredState>, ApiError> {
    let (_, cell) = auth.require_agent(q.cell.as_ref())?;
    let wait = long_poll_wait(q.timeout.as_deref())?;
    let desired = state
        .registry
        .wait_desired(&cell, q.since.unwrap_or(0), wait)
        .await?;
    auth.still_live(&state).await?;
    Ok(Json(desired))
}

/// Report what the agent observed in its cell.
#[utoipa::path(post, path = "/v1/agent/report", tag = "agent", security(("bearer" = [])), params(ReportQuery),
    request_body = AgentReport,
    responses(
        (status = 204, description = "Stored"),
        (status = 403, description = "Not an agent token, or another cell", body = ErrorBody),
        (status = 400, description = "Not a valid report", body = ErrorBody),
    ))]
pub async fn report(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ReportQuery>,
    ApiJson(report): ApiJson<AgentReport>,
) -> Result<StatusCode, ApiError> {
    let (caller, cell) = auth.require_agent(q.cell.as_ref())?;
    state.registry.report(&caller, &cell, report).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Any cell's desired state, for operators.
#[utoipa::path(get, path = "/v1/cells/{name}/desired", tag = "fleet", security(("bearer" = [])),
    params(("name" = cellfleet_api::CellName, Path, description = "Cell name")),
    responses((status = 200, body = DesiredState), (status = 404, body = ErrorBody)))]
pub async fn cell_desired(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<DesiredState>, ApiError> {
    auth.require(Action::ReadFleet)?;
    let name: CellName = parse_id("cell name", &name)?;
    Ok(Json(state.registry.desired_state(&name).await?))
}
