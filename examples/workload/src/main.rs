//! `notes-workload`: the example multi-tenant application that runs in every cell.
//!
//! Per-tenant notes over HTTP. The tenant comes from the `X-Tenant-Id` header; every query is
//! scoped by `tenant_id`, and on PostgreSQL every request runs in a transaction with
//! `app.tenant_id` set, so the cell's row-level security policies apply as a second wall. The
//! schema is not created here: it comes from the fleet's migration stream (see `migrations/`),
//! applied by the cell agent.
//!
//! It follows the cell workload contract (`cellfleet_api::workload`): `/healthz` names the release
//! and the instance nonce the agent started it with, and under an agent it serves only the tenants
//! the agent hands it (see `tenants`).
//!
//! Test knobs simulate a bad release: `--error-rate` (share of tenant requests answered 500) and
//! `--latency` (added to every tenant request).

mod tenants;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cellfleet_api::workload::refusal;
use cellfleet_api::{CellTenants, WorkloadHealth};
use clap::Parser;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

#[derive(Debug, Parser)]
#[command(
    name = "notes-workload",
    version,
    about = "Example multi-tenant workload"
)]
struct Args {
    #[arg(long, env = "WORKLOAD_LISTEN", default_value = "127.0.0.1:9100")]
    listen: String,
    /// The cell database: sqlite://PATH or postgres://…
    #[arg(long, env = "WORKLOAD_DATABASE_URL")]
    database_url: String,
    /// The release this process runs (reported at /version and in /metrics).
    #[arg(long, env = "WORKLOAD_RELEASE", default_value = "0.0.0-dev")]
    release: String,
    /// The cell this process serves (set by the cell agent); every answer names it in
    /// `X-Served-By`, so a client or a test can see which cell served it.
    #[arg(long, env = "WORKLOAD_CELL", default_value = "")]
    cell: String,
    /// The instance nonce the cell agent started this process with (reported at /healthz, so the
    /// agent can tell its own process from anything else on the port).
    #[arg(long, env = "WORKLOAD_INSTANCE", default_value = "")]
    instance: String,
    /// The secret the cell agent hands tenant sets with (`PUT /cellfleet/tenants`). With it the
    /// workload serves only the tenants of the last set; without it (run by hand), any tenant.
    #[arg(long, env = "WORKLOAD_CONTROL_TOKEN", hide_env_values = true)]
    control_token: Option<String>,
    /// Share of tenant requests answered with 500 (0.0–1.0), to simulate a bad release.
    #[arg(long, env = "WORKLOAD_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Latency added to every tenant request, e.g. 50ms.
    #[arg(long, env = "WORKLOAD_LATENCY", value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Debug)]
struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<TenantLabels, Histogram>,
    /// TCP connections accepted: with a pooling edge in front, far fewer than requests.
    connections: Counter,
}

#[derive(Debug, Clone)]
struct AppState {
    pool: AnyPool,
    postgres: bool,
    release: String,
    cell: String,
    instance: String,
    tenants: tenants::Tenants,
    error_rate: f64,
    latency: Option<Duration>,
    metrics: Arc<Metrics>,
}

/// The tenant of a request.
#[derive(Debug, Clone)]
struct Tenant(String);

const TENANT_HEADER: &str = "x-tenant-id";

fn tenant_of(headers: &HeaderMap) -> Result<Tenant, AppError> {
    let t = headers
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 63)
        .ok_or(AppError::NoTenant)?;
    Ok(Tenant(t.to_owned()))
}

#[derive(Debug)]
enum AppError {
    NoTenant,
    NotFound,
    BadBody(String),
    Injected,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Db(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AppError::NoTenant => (
                StatusCode::BAD_REQUEST,
                "missing X-Tenant-Id header".to_owned(),
            ),
            AppError::NotFound => (StatusCode::NOT_FOUND, "no such note".to_owned()),
            AppError::BadBody(m) => (StatusCode::BAD_REQUEST, m),
            AppError::Injected => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected failure (error-rate knob)".to_owned(),
            ),
            // A move's write guard refused the write: nothing was applied, so the request is
            // answered like any other request of a tenant being moved (retry-safe).
            AppError::Db(e) if e.to_string().contains(refusal::GUARD_MARKER) => {
                return tenants::refused(&tenants::Gate::Moved, "", "");
            }
            AppError::Db(e) => {
                tracing::error!(error = %e, "database error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "database error".to_owned(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Note {
    id: i64,
    body: String,
    #[serde(rename = "createdAt")]
    created_at: i64,
}

#[derive(Debug, Deserialize)]
struct NewNote {
    body: String,
}

impl AppState {
    /// A transaction scoped to `tenant`: on PostgreSQL, `app.tenant_id` is set for its duration,
    /// so row-level security applies to everything it does.
    async fn scoped(&self, tenant: &Tenant) -> Result<Transaction<'static, Any>, AppError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            tx.execute(
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(tenant.0.clone()),
            )
            .await?;
        }
        Ok(tx)
    }
}

async fn create_note(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, AppError> {
    let tenant = tenant_of(&headers)?;
    let new: NewNote = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadBody(format!("invalid body: {e}")))?;
    if new.body.len() > 64 * 1024 {
        return Err(AppError::BadBody("body: at most 64 KiB".into()));
    }
    let note = Note {
        id: rand::random_range(1..i64::MAX),
        body: new.body,
        created_at: now_millis(),
    };
    let mut tx = s.scoped(&tenant).await?;
    tx.execute(
        sqlx::query("INSERT INTO notes (id, tenant_id, body, created_at) VALUES ($1, $2, $3, $4)")
            .bind(note.id)
            .bind(tenant.0.clone())
            .bind(note.body.clone())
            .bind(note.created_at),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(note)))
}

fn note_row(r: &sqlx::any::AnyRow) -> Result<Note, sqlx::Error> {
    Ok(Note {
        id: r.try_get("id")?,
        body: r.try_get("body")?,
        created_at: r.try_get("created_at")?,
    })
}

async fn list_notes(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Note>>, AppError> {
    let tenant = tenant_of(&headers)?;
    let mut tx = s.scoped(&tenant).await?;
    let rows = sqlx::query("SELECT id, body, created_at FROM notes WHERE tenant_id = $1 ORDER BY created_at, id LIMIT 1000")
        .bind(tenant.0.clone())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(rows.iter().map(note_row).collect::<Result<_, _>>()?))
}

async fn get_note(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Note>, AppError> {
    let tenant = tenant_of(&headers)?;
    let mut tx = s.scoped(&tenant).await?;
    let row =
        sqlx::query("SELECT id, body, created_at FROM notes WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0.clone())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    row.as_ref()
        .map(note_row)
        .transpose()?
        .map(Json)
        .ok_or(AppError::NotFound)
}

async fn delete_note(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<StatusCode, AppError> {
    let tenant = tenant_of(&headers)?;
    let mut tx = s.scoped(&tenant).await?;
    let done = tx
        .execute(
            sqlx::query("DELETE FROM notes WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.0.clone())
                .bind(id),
        )
        .await?;
    tx.commit().await?;
    if done.rows_affected() == 0 {
        Err(AppError::NotFound)
    } else {
        Ok(StatusCode::NO_CONTENT)
    }
}

/// The gate, knobs and metrics of tenant routes: a tenant this process may not serve is refused
/// before anything else happens; then injected latency and errors; then per-tenant counts and
/// latency.
async fn tenant_middleware(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let named = req
        .headers()
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .chars()
        .take(63)
        .collect::<String>();
    let started = Instant::now();
    let gate = if named.is_empty() {
        tenants::Gate::Serve // the handler answers 400
    } else {
        s.tenants.decide(&named)
    };
    // Metrics label refusals of tenants not served here as one series, so a client cannot
    // create series at will.
    let tenant = match gate {
        tenants::Gate::NotHere | tenants::Gate::NotReady if s.tenants.enforced() => {
            "(not-served)".to_owned()
        }
        _ => named.clone(),
    };
    let edge = tenants::EdgeRetry::of(req.headers(), req.uri());
    let response = if gate != tenants::Gate::Serve {
        tenants::refused(&gate, &named, &s.cell)
    } else {
        if let Some(latency) = s.latency {
            tokio::time::sleep(latency).await;
        }
        if s.error_rate > 0.0 && rand::random_bool(s.error_rate.min(1.0)) {
            AppError::Injected.into_response()
        } else {
            next.run(req).await
        }
    };
    let response = edge.finish(response, &s.cell);
    s.metrics
        .requests
        .get_or_create(&RequestLabels {
            tenant: tenant.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    s.metrics
        .latency
        .get_or_create(&TenantLabels { tenant })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(s): State<AppState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &s.metrics.registry);
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = cellfleet_api::exposition::negotiate(accept, out);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Liveness, naming the process (release and the agent's instance nonce) and its tenant set.
async fn healthz(State(s): State<AppState>) -> Json<WorkloadHealth> {
    Json(WorkloadHealth {
        status: "ok".to_owned(),
        release: s.release.clone(),
        instance: s.instance.clone(),
        cell: s.cell.clone(),
        tenants_generation: s.tenants.generation(),
    })
}

/// The agent hands the tenants this process may serve (bearer: the control token).
async fn hand_tenants(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let set: CellTenants = match serde_json::from_slice(&body) {
        Ok(set) => set,
        Err(e) => {
            return AppError::BadBody(format!("invalid tenant set: {e}")).into_response();
        }
    };
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.tenants.hand(auth, set) {
        Ok(generation) => {
            tracing::info!(generation, "tenant set in force");
            Json(serde_json::json!({ "generation": generation })).into_response()
        }
        Err(tenants::HandError::Unauthorized) => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "wrong or missing control token" })),
        )
            .into_response(),
        Err(tenants::HandError::Stale(current)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "error": format!("older than the tenant set in force (generation {current})")
            })),
        )
            .into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct FlagsQuery {
    tenant: String,
}

/// The feature flags this process sees for a tenant (from the agent's last tenant set): what a
/// flag rollout or a kill has reached.
async fn tenant_flags(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<FlagsQuery>,
) -> Response {
    match s.tenants.flags(&q.tenant) {
        Some(flags) => Json(serde_json::json!({ "tenant": q.tenant, "flags": flags })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("tenant {:?} is not in this cell's tenant set", q.tenant) })),
        )
            .into_response(),
    }
}

/// Labels every answer with the cell that served it.
async fn served_by(State(s): State<AppState>, mut response: Response) -> Response {
    if let Ok(cell) = axum::http::HeaderValue::from_str(&s.cell) {
        response.headers_mut().insert("x-served-by", cell);
    }
    response
}

fn app(state: AppState) -> Router {
    let tenant_routes = Router::new()
        .route("/v1/notes", get(list_notes).post(create_note))
        .route("/v1/notes/{id}", get(get_note).delete(delete_note))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tenant_middleware,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/cellfleet/tenants", axum::routing::put(hand_tenants))
        .route("/cellfleet/flags", get(tenant_flags))
        .route(
            "/version",
            get(|State(s): State<AppState>| async move {
                Json(serde_json::json!({
                    "release": s.release,
                    "cell": s.cell,
                    "pid": std::process::id(),
                }))
            }),
        )
        .route("/metrics", get(metrics))
        .merge(tenant_routes)
        .layer(axum::extract::DefaultBodyLimit::max(128 * 1024))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            served_by,
        ))
        .with_state(state)
}

fn metrics_registry(release: &str) -> Metrics {
    let mut registry = Registry::with_prefix("workload");
    let requests = Family::<RequestLabels, Counter>::default();
    let latency = Family::<TenantLabels, Histogram>::new_with_constructor(
        (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
    );
    registry.register("requests", "Tenant requests by status", requests.clone());
    registry.register(
        "request_duration_seconds",
        "Tenant request latency",
        latency.clone(),
    );
    let info = prometheus_client::metrics::info::Info::new(vec![(
        "release".to_owned(),
        release.to_owned(),
    )]);
    registry.register("build", "The release this process runs", info);
    let connections = Counter::default();
    registry.register(
        "connections_accepted",
        "TCP connections accepted",
        connections.clone(),
    );
    Metrics {
        registry,
        requests,
        latency,
        connections,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let postgres = args.database_url.starts_with("postgres");
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .connect(&args.database_url)
        .await?;
    let state = AppState {
        pool,
        postgres,
        metrics: Arc::new(metrics_registry(&args.release)),
        tenants: tenants::Tenants::new(args.control_token.as_deref()),
        release: args.release,
        cell: args.cell,
        instance: args.instance,
        error_rate: args.error_rate,
        latency: args.latency,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!(
        "notes-workload {} listening on http://{}",
        state.release,
        listener.local_addr()?
    );
    let accepted = state.metrics.connections.clone();
    let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
        accepted.inc();
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
