//! Routes for edge proxies (`/v1/routes…`): the routing table, a long-poll watch of its changes,
//! and single lookups. Readable with the `edge` role (and by every reader).

use axum::Json;
use axum::extract::{Path, State};
use cellfleet_api::{Env, ErrorBody, RouteEntry, RoutesSnapshot, RoutesWatch, TenantId};
use serde::Deserialize;

use super::extract::{ApiQuery, Auth};
use super::{ApiError, AppState, long_poll_wait, parse_id};
use crate::auth::Action;
use crate::service::Held;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// The table version the client has (default 0).
    pub since: Option<i64>,
    /// How long to wait for a change, e.g. `30s` (default 30s, at most 60s).
    #[param(pattern = "^[0-9]{1,9}(ms|s|m|h)$")]
    pub timeout: Option<String>,
    /// The epoch of the table the client holds (the `epoch` of the answer it built it from): a
    /// client of another epoch gets a snapshot.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub epoch: Option<String>,
    /// The router's stable id: `since` is then its acknowledgement of the table it serves, which
    /// tenant moves wait for (`cellfleet router list`).
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    pub router: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvQuery {
    /// Environment tier (default `prod`).
    pub env: Option<cellfleet_api::Env>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// The table version the client holds, if any: one ahead of the head (in the current epoch)
    /// starts a new epoch.
    pub since: Option<i64>,
    /// The epoch of the table the client holds.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub epoch: Option<String>,
}

/// What the client holds, its epoch checked.
fn held(since: Option<i64>, epoch: Option<&str>) -> Result<Held<'_>, ApiError> {
    if let Some(e) = epoch
        && (e.is_empty()
            || e.len() > 64
            || !e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(ApiError::BadRequest(format!(
            "invalid epoch {e:?}: 1–64 of [A-Za-z0-9_-]"
        )));
    }
    Ok(Held {
        version: since.unwrap_or(0),
        epoch,
    })
}

/// The whole routing table `{version, entries, epoch}`.
#[utoipa::path(get, path = "/v1/routes", tag = "routes", security(("bearer" = [])), params(SnapshotQuery),
    responses((status = 200, body = RoutesSnapshot)))]
pub async fn snapshot(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<SnapshotQuery>,
) -> Result<Json<RoutesSnapshot>, ApiError> {
    auth.require(Action::ReadRoutes)?;
    let held = held(q.since, q.epoch.as_deref())?;
    Ok(Json(state.registry.routes(held).await?))
}

/// Long-poll for the changes after `since` (or a snapshot when `since` is too old).
#[utoipa::path(get, path = "/v1/routes/watch", tag = "routes", security(("bearer" = [])), params(WatchQuery),
    responses((status = 200, body = RoutesWatch), (status = 400, body = ErrorBody)))]
pub async fn watch(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> Result<Json<RoutesWatch>, ApiError> {
    auth.require(Action::ReadRoutes)?;
    let wait = long_poll_wait(q.timeout.as_deref())?;
    let held = held(q.since, q.epoch.as_deref())?;
    if let Some(router) = &q.router {
        state.registry.router_seen(router, held).await?;
    }
    let answer = state.registry.watch_routes(held, wait).await?;
    auth.still_live(&state).await?;
    // Seen again as the long-poll ends: a router waiting on its watch is not silent (and one
    // whose table this answer replaced acknowledges nothing of this history yet).
    if let Some(router) = &q.router {
        state.registry.router_seen(router, held).await?;
    }
    Ok(Json(answer))
}

/// One tenant's route.
#[utoipa::path(get, path = "/v1/routes/{tenant}", tag = "routes", security(("bearer" = [])),
    params(("tenant" = cellfleet_api::TenantId, Path, description = "Tenant id"), EnvQuery),
    responses((status = 200, body = RouteEntry), (status = 404, description = "No route (unknown, draft, archived or deleted tenant)", body = ErrorBody)))]
pub async fn lookup(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    ApiQuery(q): ApiQuery<EnvQuery>,
) -> Result<Json<RouteEntry>, ApiError> {
    auth.require(Action::ReadRoutes)?;
    let tenant: TenantId = parse_id("tenant id", &tenant)?;
    let env = q.env.unwrap_or_else(Env::prod);
    Ok(Json(state.registry.route(&tenant, &env).await?))
}
