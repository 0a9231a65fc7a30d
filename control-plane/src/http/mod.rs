//! The control plane's HTTP API.
//!
//! Routes are grouped by caller: `/v1/…` for operators and SREs, `/v1/agent/…` for cell agents,
//! `/v1/routes…` for edge proxies, plus `/healthz`, `/metrics` and `/openapi.json`. Every route but `/healthz` needs a bearer token; each handler is thin:
//! authorize (the role matrix in [`crate::auth`]) → parse → call the service → respond.

mod admin;
mod agent;
mod audit;
mod error;
mod extract;
mod fleet;
mod metrics;
mod moves;
mod openapi;
mod releases;
mod routes;
mod runbooks;
mod tenants;
mod trains;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use utoipa::OpenApi;

pub use error::ApiError;
pub use extract::CORRELATION_HEADER;
pub use metrics::Metrics;
use openapi::{BearerAuth, SharedAnswers};

use crate::service::Registry;

/// Default limit on request bodies (manifests of a few thousand tenants fit comfortably).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The moves driver's settings (router timeouts are also how `router list` judges).
    pub move_settings: crate::moves::MoveSettings,
}

impl AppState {
    pub fn new(registry: Registry) -> Self {
        AppState {
            registry,
            metrics: Arc::new(Metrics::default()),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            move_settings: crate::moves::MoveSettings::default(),
        }
    }
}

/// The whole API as one router.
pub fn app(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .route("/openapi.json", get(admin::openapi))
        .route("/v1/apply", post(fleet::apply))
        .route("/v1/regions", get(fleet::list_regions))
        .route(
            "/v1/migrations",
            get(fleet::list_migrations).post(fleet::add_migrations),
        )
        .route("/v1/cells", get(fleet::list_cells))
        .route("/v1/cells/{name}", get(fleet::get_cell))
        .route("/v1/cells/{name}/desired", get(agent::cell_desired))
        .route("/v1/cells/{name}/drain", post(runbooks::drain))
        .route("/v1/cells/{name}/undrain", post(runbooks::undrain))
        .route("/v1/cells/{name}/retire", post(runbooks::retire))
        .route("/v1/cells/{name}/resync", post(runbooks::resync))
        .route("/v1/runbooks", get(runbooks::list))
        .route("/v1/runbooks/{name}", get(runbooks::show))
        .route("/v1/runbooks/{name}/runs", post(runbooks::run))
        .route("/v1/runbook-runs", get(runbooks::runs))
        .route("/v1/runbook-runs/{id}", get(runbooks::get_run))
        .route("/v1/runbook-runs/{id}/approve", post(runbooks::approve))
        .route("/v1/runbook-runs/{id}/abort", post(runbooks::abort))
        .route("/v1/events", get(runbooks::events))
        .route("/v1/releases", get(releases::list).post(releases::create))
        .route("/v1/releases/{version}/deploy", post(releases::deploy))
        .route("/v1/routes", get(routes::snapshot))
        .route("/v1/routes/watch", get(routes::watch))
        .route("/v1/routes/{tenant}", get(routes::lookup))
        .route("/v1/agent/desired", get(agent::desired))
        .route("/v1/agent/report", post(agent::report))
        .route("/v1/agent/moves/{id}/position", get(moves::position))
        .route(
            "/v1/agent/moves/{id}/chunks",
            get(moves::download).post(moves::upload),
        )
        .route("/v1/agent/moves/{id}/applied", post(moves::applied))
        .route("/v1/agent/moves/{id}/side", post(moves::side))
        .route("/v1/moves", get(moves::list).post(moves::start))
        .route("/v1/moves/{id}", get(moves::get))
        .route("/v1/moves/{id}/abort", post(moves::abort))
        .route("/v1/moves/{id}/rollback", post(moves::rollback))
        .route("/v1/routers", get(moves::routers))
        .route("/v1/trains", get(trains::list).post(trains::start))
        .route("/v1/trains/{id}", get(trains::get))
        .route("/v1/trains/{id}/promote", post(trains::promote))
        .route("/v1/trains/{id}/pause", post(trains::pause))
        .route("/v1/trains/{id}/resume", post(trains::resume))
        .route("/v1/trains/{id}/abort", post(trains::abort))
        .route("/v1/trains/{id}/rollback", post(trains::rollback))
        .route("/v1/line", get(trains::line))
        .route("/v1/line/stop", post(trains::stop_line))
        .route("/v1/line/resume", post(trains::resume_line))
        .route("/v1/flags", get(trains::flags).post(trains::set_flag))
        .route("/v1/flags/{name}/kill", post(trains::kill_flag))
        .route("/v1/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/v1/tenants/{id}",
            get(tenants::get).delete(tenants::delete),
        )
        .route("/v1/tenants/{id}/suspend", post(tenants::suspend))
        .route("/v1/tenants/{id}/resume", post(tenants::resume))
        .route("/v1/tenants/{id}/archive", post(tenants::archive))
        .route("/v1/tenants/{id}/explain", get(tenants::explain))
        .route("/v1/tenants/{id}/context", get(tenants::context))
        .route(
            "/v1/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(admin::revoke_token),
        )
        .route("/v1/audit", get(audit::list))
        .route(
            "/v1/audit/verify",
            get(audit::verify).post(audit::verify_with_copies),
        )
        .route(
            "/v1/audit/checkpoints",
            get(audit::checkpoints).post(audit::checkpoint),
        )
        .route("/v1/audit/key", get(audit::key))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::observe,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Parses a path segment into a typed id, or a 400 naming what was wrong.
fn parse_id<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| ApiError::BadRequest(format!("invalid {what} {s:?}: {e}")))
}

/// `Warning` headers (RFC 9111 §5.5 syntax, code 299, as Kubernetes sends them) for what a
/// mutation accepted but probably was not meant; the CLI prints them on stderr.
fn warning_headers<'a>(warnings: impl IntoIterator<Item = &'a str>) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    for w in warnings {
        // A quoted-string of printable ASCII: anything else is replaced.
        let text: String = w
            .chars()
            .map(|c| match c {
                '"' => '\'',
                '\\' => '/',
                c if c.is_ascii() && !c.is_ascii_control() => c,
                _ => '?',
            })
            .collect();
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("299 cellfleet \"{text}\"")) {
            headers.append(axum::http::header::WARNING, v);
        }
    }
    headers
}

/// The `timeout` of a long-poll: digits and one unit (`ms`, `s`, `m`, `h`), as the OpenAPI
/// document's pattern says (`30s` when absent; the service caps it).
fn long_poll_wait(timeout: Option<&str>) -> Result<std::time::Duration, ApiError> {
    let Some(t) = timeout else {
        return Ok(std::time::Duration::from_secs(30));
    };
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    match n.parse::<u64>() {
        Ok(n) if ms_per > 0 && (1..=9).contains(&digits) => {
            Ok(std::time::Duration::from_millis(n.saturating_mul(ms_per)))
        }
        _ => Err(ApiError::BadRequest(format!(
            "invalid timeout {t:?}: digits and a unit (ms, s, m or h), e.g. 30s"
        ))),
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "cellfleet control plane", description = "Places tenants on cells, and serves the fleet registry to operators, SREs, agents and edge proxies."),
    paths(
        admin::healthz, admin::metrics, admin::openapi,
        fleet::apply, fleet::list_regions, fleet::add_migrations, fleet::list_migrations, fleet::list_cells, fleet::get_cell, agent::cell_desired,
        agent::desired, agent::report, releases::create, releases::list, releases::deploy,
        routes::snapshot, routes::watch, routes::lookup, moves::routers,
        moves::start, moves::list, moves::get, moves::abort, moves::rollback,
        moves::position, moves::upload, moves::download, moves::applied, moves::side,
        trains::start, trains::list, trains::get, trains::promote, trains::pause, trains::resume,
        trains::abort, trains::rollback, trains::line, trains::stop_line, trains::resume_line,
        trains::flags, trains::set_flag, trains::kill_flag,
        runbooks::list, runbooks::show, runbooks::run, runbooks::runs, runbooks::get_run,
        runbooks::approve, runbooks::abort, runbooks::events,
        runbooks::drain, runbooks::undrain, runbooks::retire, runbooks::resync,
        tenants::list, tenants::create, tenants::get, tenants::delete, tenants::suspend,
        tenants::resume, tenants::archive, tenants::explain, tenants::context,
        admin::create_token, admin::list_tokens, admin::revoke_token,
        audit::list, audit::verify, audit::verify_with_copies, audit::checkpoints,
        audit::checkpoint, audit::key,
    ),
    modifiers(&BearerAuth, &SharedAnswers),
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_long_poll_timeout_is_digits_and_a_unit() {
        for (t, want) in [
            ("30s", 30_000),
            ("1500ms", 1_500),
            ("2m", 120_000),
            ("1h", 3_600_000),
        ] {
            assert_eq!(
                super::long_poll_wait(Some(t)).unwrap(),
                Duration::from_millis(want)
            );
        }
        for bad in ["", "30", "s", "1h 30m", "-1s", "1.5s", "1234567890s", "30S"] {
            assert!(super::long_poll_wait(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
