//! `cellfleet-router`, the edge sidecar (SPEC §6): a [`RouteWatcher`]-synced table served over
//! HTTP to edge proxies, with the table persisted to disk for static stability.
//!
//! Endpoints (all but `/healthz` need the lookup token when one is configured):
//! - `GET /route/{tenant}?env=` — JSON + `X-Cell-Id`/`X-Cell-Endpoint`; 403 unknown/suspended;
//! - `/nginx/auth` — nginx `auth_request`: only 2xx/401/403 mean anything to nginx, so "retry
//!   later" (frozen hold expired, over quota) is a **401** carrying the real status in
//!   `X-Cellfleet-Status` and `Retry-After`, which the shipped nginx config turns back into
//!   429/503 (`examples/nginx/`);
//! - `/envoy/authz/…` — Envoy `ext_authz` (HTTP service): 200 with the `cluster_header` header,
//!   or the real denial status, which Envoy passes to the client — but not a 5xx, which Envoy
//!   takes for a failed check (and answers with its own `status_on_error`): a frozen tenant held
//!   past `--hold` is a **200** with `X-Cellfleet-Later: frozen` (and `X-Cellfleet-Retry-After`)
//!   instead of a cell, which the shipped Envoy config answers itself as 503 + `Retry-After`
//!   (`examples/envoy/`);
//! - `/healthz`, `/metrics` — version, staleness, decisions.
//!
//! Handlers are thin: authorize → find the tenant ([`TenantSource`]) → [`admission::admit`] →
//! answer in the endpoint's dialect.

mod admission;
pub mod cache;
mod metrics;
pub mod nginx_upstreams;
mod quota;
mod tenant_source;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use cellfleet_api::workload::REFUSED_BY_HEADER;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use admission::{Admission, Denial, Destination, Later, Refusal, admit};
pub use cache::{CacheError, Restored};
pub use metrics::{Mode, Outcome};
pub use quota::Quotas;
pub use tenant_source::{FORWARDED_HOST, ORIGINAL_URI, TenantSource};

use crate::watcher::{SyncStatus, unix_ms};
use crate::{RouteWatcher, RoutingTable, WatcherConfig};
use metrics::{RouterMetrics, TableGauges};

pub const X_CELL_ID: HeaderName = HeaderName::from_static("x-cell-id");
pub const X_CELL_ENDPOINT: HeaderName = HeaderName::from_static("x-cell-endpoint");
/// Why a request was refused or should be retried (`unknown-tenant`, `suspended`, …).
pub const X_REASON: HeaderName = HeaderName::from_static("x-cellfleet-reason");
/// In nginx mode, the status a "retry later" 401 stands for (429 or 503).
pub const X_STATUS: HeaderName = HeaderName::from_static("x-cellfleet-status");
/// In Envoy mode, a "retry later" Envoy must answer itself (a 5xx from the check is an error to
/// Envoy): its reason, and the seconds for `Retry-After`.
pub const X_LATER: HeaderName = HeaderName::from_static("x-cellfleet-later");
pub const X_LATER_AFTER: HeaderName = HeaderName::from_static("x-cellfleet-retry-after");
/// In nginx mode, where to proxy: a pooled upstream's name, or the cell's `host:port`.
pub const X_CELL_UPSTREAM: HeaderName = HeaderName::from_static("x-cell-upstream");
/// In nginx mode, the scheme to proxy with (`http` or `https`).
pub const X_CELL_SCHEME: HeaderName = HeaderName::from_static("x-cell-scheme");

/// How the router answers (everything but where the table comes from).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The environment the proxy modes route (`/route` takes `?env=`).
    pub env: String,
    pub tenant_source: TenantSource,
    /// How long a request for a frozen tenant is held before 503.
    pub hold: Duration,
    /// The header Envoy's `cluster_header` route reads (the cell name).
    pub cluster_header: HeaderName,
    /// When set, every endpoint but `/healthz` requires `Authorization: Bearer <token>`.
    pub lookup_token: Option<String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            env: "prod".into(),
            tenant_source: TenantSource::default(),
            hold: Duration::from_secs(5),
            cluster_header: HeaderName::from_static("x-cellfleet-cell"),
            lookup_token: None,
        }
    }
}

/// Shared by every handler: the table, its sync status, quotas and metrics.
#[derive(Debug, Clone)]
pub struct RouterState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RouterConfig,
    /// SHA-256 of the lookup token: comparing digests leaks nothing about the token itself.
    token_digest: Option<[u8; 32]>,
    table: Arc<ArcSwap<RoutingTable>>,
    status: Arc<SyncStatus>,
    /// Bumped (to the table version) after every publish; held requests wait on it.
    published: tokio::sync::watch::Sender<i64>,
    serving_cache: AtomicBool,
    quotas: Quotas,
    metrics: RouterMetrics,
    /// The nginx answer per cell (see `nginx_upstreams`), recomputed on every publish.
    nginx_targets: ArcSwap<HashMap<Box<str>, nginx_upstreams::Target>>,
    /// Cells whose upstream block nginx has loaded.
    nginx_loaded: std::sync::Mutex<HashSet<String>>,
}

impl RouterState {
    /// A router serving `table` (kept in sync by whoever publishes into it; see
    /// [`RouterState::published`]).
    pub fn new(
        config: RouterConfig,
        table: Arc<ArcSwap<RoutingTable>>,
        status: Arc<SyncStatus>,
        serving_cache: bool,
    ) -> Self {
        let version = table.load().version();
        let targets = nginx_upstreams::targets(
            &nginx_upstreams::cell_addresses(&table.load()),
            &HashSet::new(),
        );
        RouterState {
            inner: Arc::new(Inner {
                token_digest: config.lookup_token.as_deref().map(digest),
                config,
                table,
                status,
                published: tokio::sync::watch::Sender::new(version),
                serving_cache: AtomicBool::new(serving_cache),
                quotas: Quotas::default(),
                metrics: RouterMetrics::default(),
                nginx_targets: ArcSwap::from_pointee(targets),
                nginx_loaded: std::sync::Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Tells the router a new table is in place (after it was stored): wakes held requests.
    pub fn published(&self, table: &RoutingTable) {
        self.inner.serving_cache.store(false, Ordering::Relaxed);
        self.refresh_nginx_targets(table);
        self.inner.published.send_replace(table.version());
    }

    /// Notes that nginx has loaded the upstream blocks of `cells` (see `nginx_upstreams`).
    pub fn nginx_loaded(&self, cells: HashSet<String>) {
        if let Ok(mut loaded) = self.inner.nginx_loaded.lock() {
            *loaded = cells;
        }
        self.refresh_nginx_targets(&self.table());
    }

    /// Notes that nginx is about to load upstream blocks for `kept` only (the others are gone
    /// from its file, or changed): from now on those cells are named by address, which works
    /// whichever configuration the worker that gets the request has.
    pub fn nginx_unloading(&self, kept: &HashSet<String>) {
        if let Ok(mut loaded) = self.inner.nginx_loaded.lock() {
            loaded.retain(|c| kept.contains(c));
        }
        self.refresh_nginx_targets(&self.table());
    }

    fn refresh_nginx_targets(&self, table: &RoutingTable) {
        let loaded = self
            .inner
            .nginx_loaded
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let targets = nginx_upstreams::targets(&nginx_upstreams::cell_addresses(table), &loaded);
        self.inner.nginx_targets.store(Arc::new(targets));
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.inner.table.load_full()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.inner.token_digest else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|token| digest(token) == *want)
    }

    fn gauges(&self) -> TableGauges {
        let table = self.inner.table.load();
        TableGauges {
            version: table.version(),
            routes: table.len(),
            connected: self.inner.status.connected(),
            staleness: self.inner.status.staleness(unix_ms()),
            sync_failures: self.inner.status.failures(),
            epoch_changes: self.inner.status.epoch_changes(),
            from_cache: self.inner.serving_cache.load(Ordering::Relaxed),
            quota_tenants: self.inner.quotas.len(),
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme is case-insensitive, RFC 9110
/// §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The router's HTTP API over `state`.
pub fn app(state: RouterState) -> Router {
    Router::new()
        .route("/route/{tenant}", get(route_lookup))
        .route("/nginx/auth", any(nginx_auth))
        // Envoy asks `path_prefix` + the original path: `/envoy/authz/` for a request of `/`
        // (a `{*rest}` wildcard never matches an empty rest, so that one is a route of its own).
        .route("/envoy/authz", any(envoy_authz))
        .route("/envoy/authz/", any(envoy_authz))
        .route("/envoy/authz/{*rest}", any(envoy_authz))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            refusal(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint: see /route/{tenant}, /nginx/auth, /envoy/authz/…".into(),
            )
        })
        .with_state(state)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteBody<'a> {
    tenant: &'a str,
    env: &'a str,
    cell: &'a str,
    endpoint: Option<&'a str>,
    generation: i64,
    version: i64,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

fn refusal(status: StatusCode, reason: &'static str, message: String) -> Response {
    let body = serde_json::to_vec(&ErrorBody {
        code: reason,
        message,
    })
    .unwrap_or_default();
    (
        status,
        [
            (X_REASON, HeaderValue::from_static(reason)),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response()
}

fn retry_after(after: Duration) -> HeaderValue {
    // Whole seconds, at least one: what clients and nginx understand.
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// The answer to a denied request, in the dialect of `mode` (and its outcome counted).
fn not_routed(state: &RouterState, mode: Mode, tenant: &str, denial: Denial) -> Response {
    let metrics = &state.inner.metrics;
    let (status, reason, message, outcome, after) = match denial {
        Denial::Refused(Refusal::NoTenant) => (
            StatusCode::FORBIDDEN,
            "no-tenant",
            format!(
                "the request names no tenant (expected in {})",
                state.inner.config.tenant_source
            ),
            Outcome::NoTenant,
            None,
        ),
        Denial::Refused(Refusal::UnknownTenant) => (
            StatusCode::FORBIDDEN,
            "unknown-tenant",
            format!(
                "tenant {tenant:?} has no route in env {:?}",
                state.inner.config.env
            ),
            Outcome::UnknownTenant,
            None,
        ),
        Denial::Refused(Refusal::Suspended) => (
            StatusCode::FORBIDDEN,
            "suspended",
            format!("tenant {tenant:?} is suspended"),
            Outcome::Suspended,
            None,
        ),
        Denial::Retry {
            why: Later::Frozen,
            after,
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "frozen",
            format!("tenant {tenant:?} is being moved; retry shortly"),
            Outcome::FrozenTimeout,
            Some(after),
        ),
        Denial::Retry {
            why: Later::RateLimited,
            after,
        } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!("tenant {tenant:?} is over its request-rate quota"),
            Outcome::RateLimited,
            Some(after),
        ),
    };
    metrics.decided(mode, outcome);
    let Some(after) = after else {
        return refusal(status, reason, message);
    };
    // Envoy takes a 5xx from its check for a failure, not an answer: allow the request towards
    // the config's "later" route instead (see the module docs).
    if mode == Mode::Envoy && status.is_server_error() {
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert(X_LATER, HeaderValue::from_static(reason));
        headers.insert(X_LATER_AFTER, retry_after(after));
        return response;
    }
    // nginx's auth_request only understands 2xx/401/403: "retry later" travels as a 401 with the
    // real status beside it (see the module docs).
    let sent = if mode == Mode::Nginx {
        StatusCode::UNAUTHORIZED
    } else {
        status
    };
    let mut response = refusal(sent, reason, message);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, retry_after(after));
    headers.insert(X_STATUS, HeaderValue::from(status.as_u16()));
    response
}

fn unauthorized(state: &RouterState, mode: Mode) -> Response {
    state.inner.metrics.decided(mode, Outcome::Unauthorized);
    // In nginx mode a 401 means "retry later"; a bad router token is a refusal.
    let status = if mode == Mode::Nginx {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    refusal(
        status,
        "unauthorized",
        "missing or wrong router lookup token (Authorization: Bearer …)".into(),
    )
}

#[derive(serde::Deserialize)]
struct EnvQuery {
    env: Option<String>,
}

async fn route_lookup(
    State(state): State<RouterState>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    if !state.authorized(request.headers()) {
        return unauthorized(&state, Mode::Route);
    }
    let query = axum::extract::Query::<EnvQuery>::try_from_uri(request.uri()).ok();
    let env = query
        .as_ref()
        .and_then(|q| q.0.env.as_deref())
        .unwrap_or(&state.inner.config.env);
    match admit(&state, &tenant, env, None).await {
        Admission::Routed(dest) => {
            state.inner.metrics.decided(Mode::Route, Outcome::Routed);
            let body = serde_json::to_vec(&RouteBody {
                tenant: &tenant,
                env,
                cell: dest.cell.to_str().unwrap_or_default(),
                endpoint: dest.endpoint.as_ref().and_then(|e| e.to_str().ok()),
                generation: dest.generation,
                version: dest.version,
            })
            .unwrap_or_default();
            let mut response = Response::new(Body::from(body));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            insert_destination(headers, dest);
            response
        }
        Admission::Denied(denial) => not_routed(&state, Mode::Route, &tenant, denial),
    }
}

fn insert_destination(headers: &mut HeaderMap, dest: Destination) {
    if let Some(endpoint) = dest.endpoint {
        headers.insert(X_CELL_ENDPOINT, endpoint);
    }
    headers.insert(X_CELL_ID, dest.cell);
}

/// The proxy modes: tenant from the configured source, answer in the proxy's dialect.
async fn proxy_decision(
    state: &RouterState,
    mode: Mode,
    headers: &HeaderMap,
    path: Option<&str>,
) -> Response {
    if !state.authorized(headers) {
        return unauthorized(state, mode);
    }
    let Some(tenant) = state.inner.config.tenant_source.tenant(headers, path) else {
        return not_routed(state, mode, "", Denial::Refused(Refusal::NoTenant));
    };
    // A request a cell refused as moved, sent once more by the edge.
    let refused_by = headers
        .get(REFUSED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    match admit(state, tenant, &state.inner.config.env, refused_by).await {
        Admission::Routed(dest) => {
            if mode == Mode::Nginx && dest.endpoint.is_none() {
                // nginx would proxy to an empty address and answer 500: say why instead.
                state.inner.metrics.decided(mode, Outcome::NoEndpoint);
                return refusal(
                    StatusCode::FORBIDDEN,
                    "no-endpoint",
                    format!("the cell serving tenant {tenant:?} declares no endpoint"),
                );
            }
            if mode == Mode::Nginx {
                let target = dest.cell.to_str().ok().and_then(|cell| {
                    state
                        .inner
                        .nginx_targets
                        .load()
                        .get(cell)
                        .cloned()
                        .or_else(|| {
                            // A cell newer than the targets (published a moment ago): direct.
                            let endpoint = dest.endpoint.as_ref()?.to_str().ok()?;
                            let address = nginx_upstreams::cell_addresses_of(cell, endpoint)?;
                            nginx_upstreams::targets(&address, &HashSet::new()).remove(cell)
                        })
                });
                let Some(target) = target else {
                    state.inner.metrics.decided(mode, Outcome::NoEndpoint);
                    return refusal(
                        StatusCode::FORBIDDEN,
                        "no-endpoint",
                        format!(
                            "the endpoint of the cell serving tenant {tenant:?} is not an http(s) URL"
                        ),
                    );
                };
                state.inner.metrics.decided(mode, Outcome::Routed);
                let mut response = Response::new(Body::empty());
                let headers = response.headers_mut();
                headers.insert(X_CELL_UPSTREAM, target.upstream);
                headers.insert(X_CELL_SCHEME, target.scheme);
                insert_destination(headers, dest);
                return response;
            }
            state.inner.metrics.decided(mode, Outcome::Routed);
            let mut response = Response::new(Body::empty());
            let headers = response.headers_mut();
            if mode == Mode::Envoy {
                headers.insert(state.inner.config.cluster_header.clone(), dest.cell.clone());
            }
            insert_destination(headers, dest);
            response
        }
        Admission::Denied(denial) => not_routed(state, mode, tenant, denial),
    }
}

async fn nginx_auth(State(state): State<RouterState>, request: Request) -> Response {
    let headers = request.headers();
    let original = headers.get(ORIGINAL_URI).and_then(|v| v.to_str().ok());
    proxy_decision(&state, Mode::Nginx, headers, original).await
}

async fn envoy_authz(State(state): State<RouterState>, request: Request) -> Response {
    // Envoy appends the original path to the configured path prefix.
    let original = request.uri().path().strip_prefix("/envoy/authz");
    proxy_decision(&state, Mode::Envoy, request.headers(), original).await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    version: i64,
    /// The control plane's routing history the table follows (see `RoutesWatch::epoch`).
    epoch: String,
    /// Snapshots taken since start because that epoch changed.
    epoch_changes: u64,
    routes: usize,
    connected: bool,
    /// Seconds the table may have been out of date; `None` if it never was current.
    staleness_seconds: Option<f64>,
    source: &'static str,
    sync_failures: u64,
    last_error: Option<String>,
}

/// 200 whenever there is a table to serve, current or not: a stale table keeps the edge up
/// (static stability), so a health check must not take the router out for it. 503 only when the
/// router has never had a table (never reached the control plane, nothing on disk).
async fn healthz(State(state): State<RouterState>) -> Response {
    let g = state.gauges();
    let (status, code) = match (g.connected, g.staleness) {
        (true, _) => ("ok", StatusCode::OK),
        (false, Some(_)) => ("stale", StatusCode::OK),
        (false, None) => ("no-table", StatusCode::SERVICE_UNAVAILABLE),
    };
    let body = Health {
        status,
        version: g.version,
        epoch: state.inner.table.load().epoch().to_owned(),
        epoch_changes: g.epoch_changes,
        routes: g.routes,
        connected: g.connected,
        staleness_seconds: g.staleness.map(|s| s.as_secs_f64()),
        source: if g.from_cache {
            "cache"
        } else {
            "control-plane"
        },
        sync_failures: g.sync_failures,
        last_error: state.inner.status.last_error(),
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<RouterState>, headers: HeaderMap) -> Response {
    if !state.authorized(&headers) {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong router lookup token (Authorization: Bearer …)".into(),
        );
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) =
        cellfleet_api::exposition::negotiate(accept, state.inner.metrics.render(state.gauges()));
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        text,
    )
        .into_response()
}

/// Everything `cellfleet-router` needs to run.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub control_plane: String,
    /// An `edge` token for the control plane.
    pub token: String,
    pub listen: SocketAddr,
    pub cache_dir: PathBuf,
    /// Longest wait of one long-poll.
    pub poll: Duration,
    pub router: RouterConfig,
    /// Render per-cell nginx upstreams (connection pooling to cells).
    pub nginx_upstreams: Option<nginx_upstreams::NginxUpstreams>,
    /// This router's id on its watches [default: one made once and kept in the cache directory].
    pub router_id: Option<String>,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot use cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the control-plane client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// Runs the sidecar until `shutdown` resolves: restores the cached table, syncs from the
/// control plane, persists every new table, serves HTTP. Prints `listening on ADDR` once ready.
pub async fn run_sidecar(
    config: SidecarConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SidecarError> {
    let dir = config.cache_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| SidecarError::CacheDir {
        path: dir.clone(),
        source,
    })?;
    let (initial, status, from_cache) = match cache::load(&dir) {
        Ok(Some(restored)) => {
            tracing::info!(
                version = restored.table.version(),
                routes = restored.table.len(),
                "serving the routing table restored from disk until the control plane answers"
            );
            let status = SyncStatus::restored(restored.as_of_ms);
            (restored.table, status, true)
        }
        Ok(None) => (RoutingTable::empty(), SyncStatus::default(), false),
        Err(e) => {
            // Refusing to start would take the edge down with it; an empty table refuses
            // tenants until the control plane answers, and the error says what to look at.
            tracing::error!(error = %e, "ignoring the cached routing table");
            (RoutingTable::empty(), SyncStatus::default(), false)
        }
    };
    let saved_version = from_cache.then(|| initial.version());
    let router_id = match &config.router_id {
        Some(id) => id.clone(),
        None => cache::router_id(&dir).map_err(|source| SidecarError::CacheDir {
            path: dir.clone(),
            source,
        })?,
    };
    tracing::info!(router_id = %router_id, "router identity");
    let watcher = RouteWatcher::new(
        WatcherConfig {
            control_plane: config.control_plane.clone(),
            token: config.token.clone(),
            poll: config.poll,
            router_id: Some(router_id),
        },
        initial,
    )?
    .with_status(status);
    let state = RouterState::new(
        config.router.clone(),
        watcher.table(),
        watcher.status(),
        from_cache,
    );
    let notify = state.clone();
    let watcher = watcher.on_update(move |table| notify.published(table));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SidecarError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%addr, control_plane = %config.control_plane, "cellfleet-router listening");
    println!("listening on {addr}");

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let syncing = tokio::spawn(watcher.run(until_stopped(stopping.clone())));
    let persisting = tokio::spawn(persist(
        state.clone(),
        dir,
        saved_version,
        until_stopped(stopping.clone()),
    ));
    let rendering = config.nginx_upstreams.clone().map(|cfg| {
        tokio::spawn(render_nginx_upstreams(
            state.clone(),
            cfg,
            until_stopped(stopping.clone()),
        ))
    });
    let served = serve(listener, app(state), async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    let _ = syncing.await;
    let _ = persisting.await;
    if let Some(rendering) = rendering {
        let _ = rendering.await;
    }
    served.map_err(SidecarError::Serve)
}

/// Keeps the per-cell nginx upstreams file in step with the cells of the table, reloading nginx
/// when it changes (see `nginx_upstreams`). A failed write or reload is retried every 5 s.
async fn render_nginx_upstreams(
    state: RouterState,
    cfg: nginx_upstreams::NginxUpstreams,
    shutdown: impl std::future::Future<Output = ()>,
) {
    const RETRY: Duration = Duration::from_secs(5);
    tokio::pin!(shutdown);
    let mut published = state.inner.published.subscribe();
    let mut written: Option<std::collections::BTreeMap<String, nginx_upstreams::Address>> = None;
    let mut unloaded = false;
    loop {
        let table = state.table();
        // No table yet (nothing synced, nothing cached): an empty file would drop every cell.
        let mut retry = false;
        if table.version() > 0 {
            let cells = nginx_upstreams::cell_addresses(&table);
            if written.as_ref() != Some(&cells) {
                let text = nginx_upstreams::render(&cells, cfg.keepalive, table.version());
                let file = cfg.file.clone();
                let wrote = tokio::task::spawn_blocking(move || {
                    nginx_upstreams::write_atomically(&file, &text)
                })
                .await;
                match wrote {
                    Ok(Ok(())) => {
                        tracing::info!(file = %cfg.file.display(), cells = cells.len(), "nginx upstreams written");
                        // A cell whose block left the file (or changed) is not named any more,
                        // even before nginx reloads: its address works with either config.
                        let kept: HashSet<String> = written
                            .as_ref()
                            .map(|old| {
                                old.iter()
                                    .filter(|(c, a)| cells.get(*c) == Some(*a))
                                    .map(|(c, _)| c.clone())
                                    .collect()
                            })
                            .unwrap_or_default();
                        state.nginx_unloading(&kept);
                        written = Some(cells);
                        unloaded = true;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, file = %cfg.file.display(), "cannot write the nginx upstreams");
                        retry = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "nginx upstreams writer failed");
                        retry = true;
                    }
                }
            }
            if unloaded && let Some(cells) = &written {
                let reloaded = match &cfg.reload_command {
                    Some(command) => nginx_upstreams::reload(command).await,
                    None => Ok(()),
                };
                state.inner.metrics.nginx_reloaded(reloaded.is_ok());
                match reloaded {
                    Ok(()) => {
                        // nginx's new workers take the configuration a moment after the signal.
                        tokio::time::sleep(cfg.grace).await;
                        state.nginx_loaded(cells.keys().cloned().collect());
                        unloaded = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "nginx reload failed; cells stay reached directly");
                        retry = true;
                    }
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            changed = published.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY), if retry => {}
        }
    }
}

/// Serves HTTP/1.1 until `shutdown`, then lets open connections finish (at most 10 s).
///
/// hyper directly rather than `axum::serve`: lookups are tiny, so the per-request costs
/// matter — one flat write per answer instead of a vectored one, no HTTP/2 sniffing (edge
/// proxies speak HTTP/1.1 to a sidecar), and pipelined answers flushed together.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.writev(false)
        .pipeline_flush(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let connection = graceful.watch(
                    http.serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

/// Writes every newly published table to disk (coalescing bursts: only the latest is written),
/// marks the cached version as current while connected, and drops limiters of gone routes.
async fn persist(
    state: RouterState,
    dir: PathBuf,
    mut saved: Option<i64>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    const MARK_EVERY: Duration = Duration::from_secs(15);
    tokio::pin!(shutdown);
    let mut published = state.inner.published.subscribe();
    let mut tick = tokio::time::interval(MARK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let table = tokio::select! {
            () = &mut shutdown => return,
            changed = published.changed() => {
                if changed.is_err() {
                    return;
                }
                let table = state.table();
                state.inner.quotas.retain(&table);
                if saved == Some(table.version()) {
                    continue;
                }
                Some(table)
            }
            _ = tick.tick() => None,
        };
        let dir = dir.clone();
        let connected = state.inner.status.connected();
        let version = state.table().version();
        let write = tokio::task::spawn_blocking(move || match &table {
            Some(table) => cache::save(&dir, table, unix_ms()).map(|()| Some(table.version())),
            None if connected => cache::mark_synced(&dir, version, unix_ms()).map(|()| None),
            None => Ok(None),
        })
        .await;
        match write {
            Ok(Ok(Some(version))) => saved = Some(version),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                state.inner.metrics.cache_write_failed();
                tracing::warn!(error = %e, "could not write the routing table to disk");
            }
            Err(e) => tracing::warn!(error = %e, "cache writer failed"),
        }
    }
}
