//! The router's HTTP dialects through `app(state).oneshot(..)`: `/route`, nginx `auth_request`,
//! Envoy `ext_authz`, holds for frozen tenants, quotas, the lookup token, health and metrics.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cellfleet_api::{Generation, RouteEntry, RouteState, RoutesSnapshot};
use cellfleet_routing::router::{RouterConfig, RouterState, app};
use cellfleet_routing::{RoutingTable, SyncStatus, unix_ms};
use tower::ServiceExt;

fn entry(tenant: &str, cell: &str, state: RouteState, rps: Option<u32>, gen_: i64) -> RouteEntry {
    RouteEntry {
        tenant: tenant.parse().unwrap(),
        env: "prod".parse().unwrap(),
        cell: cell.parse().unwrap(),
        endpoint: (cell != "bare").then(|| format!("http://{cell}.internal:8080")),
        state,
        generation: Generation(gen_),
        requests_per_second: rps,
        version: 1,
    }
}

fn table(version: i64, entries: Vec<RouteEntry>) -> RoutingTable {
    RoutingTable::from_snapshot(&RoutesSnapshot {
        version,
        entries,
        epoch: String::new(),
    })
    .unwrap()
}

fn fleet() -> RoutingTable {
    let mut staging = entry("acme", "cell-s", RouteState::Active, None, 1);
    staging.env = "staging".parse().unwrap();
    table(
        7,
        vec![
            entry("acme", "cell-a", RouteState::Active, None, 1),
            staging,
            entry("globex", "cell-b", RouteState::Suspended, None, 1),
            entry("initech", "cell-a", RouteState::Active, Some(3), 1),
            entry("moving", "cell-a", RouteState::Frozen, None, 4),
            entry("hermit", "bare", RouteState::Active, None, 1),
        ],
    )
}

struct Router {
    state: RouterState,
    table: Arc<ArcSwap<RoutingTable>>,
}

impl Router {
    fn new(config: RouterConfig) -> Router {
        let table = Arc::new(ArcSwap::from_pointee(fleet()));
        let status = Arc::new(SyncStatus::restored(unix_ms()));
        Router {
            state: RouterState::new(config, table.clone(), status, false),
            table,
        }
    }

    fn publish(&self, next: RoutingTable) {
        self.table.store(Arc::new(next));
        self.state.published(&self.table.load());
    }

    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::get(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = app(self.state.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&body).unwrap_or_default(),
        }
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: serde_json::Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[tokio::test]
async fn route_lookups_answer_with_the_cell_or_say_why_not() {
    let r = Router::new(RouterConfig::default());
    let a = r.get("/route/acme", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-cell-id"), Some("cell-a"));
    assert_eq!(
        a.header("x-cell-endpoint"),
        Some("http://cell-a.internal:8080")
    );
    assert_eq!(a.body["cell"], "cell-a");
    assert_eq!(a.body["version"], 7);

    let s = r.get("/route/acme?env=staging", &[]).await;
    assert_eq!(s.header("x-cell-id"), Some("cell-s"));

    let unknown = r.get("/route/nobody", &[]).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert_eq!(unknown.header("x-cellfleet-reason"), Some("unknown-tenant"));
    assert!(unknown.header("x-cell-id").is_none());
    assert!(unknown.body["message"].as_str().unwrap().contains("nobody"));

    let suspended = r.get("/route/globex", &[]).await;
    assert_eq!(suspended.status, StatusCode::FORBIDDEN);
    assert_eq!(suspended.header("x-cellfleet-reason"), Some("suspended"));
    assert!(suspended.header("x-cell-id").is_none());

    assert_eq!(
        r.get("/no/such/thing", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn nginx_mode_answers_only_what_auth_request_understands() {
    let r = Router::new(RouterConfig::default());
    let ok = r.get("/nginx/auth", &[("x-tenant-id", "acme")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-cell-id"), Some("cell-a"));
    assert_eq!(
        ok.header("x-cell-endpoint"),
        Some("http://cell-a.internal:8080")
    );
    // Where to proxy: the cell's host:port until nginx has its pooled upstream, then its name.
    assert_eq!(ok.header("x-cell-upstream"), Some("cell-a.internal:8080"));
    assert_eq!(ok.header("x-cell-scheme"), Some("http"));
    r.state.nginx_loaded(["cell-a".to_owned()].into());
    let pooled = r.get("/nginx/auth", &[("x-tenant-id", "acme")]).await;
    assert_eq!(pooled.header("x-cell-upstream"), Some("cellfleet_cell_a"));

    for (headers, reason) in [
        (vec![], "no-tenant"),
        (vec![("x-tenant-id", "nobody")], "unknown-tenant"),
        (vec![("x-tenant-id", "globex")], "suspended"),
        (vec![("x-tenant-id", "hermit")], "no-endpoint"),
    ] {
        let a = r.get("/nginx/auth", &headers).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{reason}");
        assert_eq!(a.header("x-cellfleet-reason"), Some(reason));
    }

    // Over quota: a 401 (the only other status nginx passes on) carrying the real one.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(r.get("/nginx/auth", &[("x-tenant-id", "initech")]).await);
    }
    let routed = statuses
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    assert!((3..=4).contains(&routed), "routed {routed} of 10 at 3 rps");
    let limited = statuses.last().unwrap();
    assert_eq!(limited.status, StatusCode::UNAUTHORIZED);
    assert_eq!(limited.header("x-cellfleet-status"), Some("429"));
    assert_eq!(limited.header("x-cellfleet-reason"), Some("rate-limited"));
    assert_eq!(limited.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn tenant_sources_for_the_proxy_modes() {
    let by_path = Router::new(RouterConfig {
        tenant_source: "path-prefix".parse().unwrap(),
        ..RouterConfig::default()
    });
    let a = by_path
        .get("/nginx/auth", &[("x-original-uri", "/acme/notes?limit=5")])
        .await;
    assert_eq!(a.header("x-cell-id"), Some("cell-a"));
    let e = by_path.get("/envoy/authz/acme/notes", &[]).await;
    assert_eq!(e.status, StatusCode::OK);
    assert_eq!(e.header("x-cellfleet-cell"), Some("cell-a"));

    let by_host = Router::new(RouterConfig {
        tenant_source: "host-prefix".parse().unwrap(),
        ..RouterConfig::default()
    });
    let h = by_host
        .get(
            "/nginx/auth",
            &[("host", "router"), ("x-forwarded-host", "acme.example.com")],
        )
        .await;
    assert_eq!(h.header("x-cell-id"), Some("cell-a"));
}

#[tokio::test]
async fn envoy_mode_sends_the_cluster_header_and_real_denials() {
    let r = Router::new(RouterConfig::default());
    let ok = r
        .get("/envoy/authz/notes", &[("x-tenant-id", "acme")])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-cellfleet-cell"), Some("cell-a"));
    assert_eq!(ok.header("x-cell-id"), Some("cell-a"));
    // A request for `/` arrives as the bare prefix plus `/`.
    let root = r.get("/envoy/authz/", &[("x-tenant-id", "acme")]).await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.header("x-cellfleet-cell"), Some("cell-a"));
    let denied = r.get("/envoy/authz", &[("x-tenant-id", "globex")]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.header("x-cellfleet-cell").is_none());
    let mut last = None;
    for _ in 0..10 {
        last = Some(r.get("/envoy/authz/x", &[("x-tenant-id", "initech")]).await);
    }
    let last = last.unwrap();
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(last.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn a_frozen_tenant_is_held_until_its_new_route_arrives() {
    let r = Arc::new(Router::new(RouterConfig::default()));
    let publisher = r.clone();
    let flip = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Another tenant's change first: the held request looks again and keeps waiting.
        let mut t = fleet().to_snapshot();
        t.version = 8;
        t.entries.retain(|e| e.tenant.as_str() != "acme");
        publisher.publish(RoutingTable::from_snapshot(&t).unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.version = 9;
        for e in &mut t.entries {
            if e.tenant.as_str() == "moving" {
                e.state = RouteState::Active;
                e.cell = "cell-b".parse().unwrap();
                e.endpoint = Some("http://cell-b.internal:8080".into());
                e.generation = Generation(5);
            }
        }
        publisher.publish(RoutingTable::from_snapshot(&t).unwrap());
    });
    let (route, nginx) = tokio::join!(
        r.get("/route/moving", &[]),
        r.get("/nginx/auth", &[("x-tenant-id", "moving")])
    );
    flip.await.unwrap();
    for a in [route, nginx] {
        assert_eq!(a.status, StatusCode::OK, "held, then answered");
        assert_eq!(
            a.header("x-cell-id"),
            Some("cell-b"),
            "the new route, never the old"
        );
    }
    assert_eq!(r.get("/route/moving", &[]).await.body["version"], 9);
}

#[tokio::test(start_paused = true)]
async fn a_hold_is_bounded_then_retry_later() {
    let r = Router::new(RouterConfig {
        hold: Duration::from_secs(5),
        ..RouterConfig::default()
    });
    let started = tokio::time::Instant::now();
    let a = r.get("/route/moving", &[]).await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "held the bound"
    );
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.header("x-cellfleet-reason"), Some("frozen"));
    let n = r.get("/nginx/auth", &[("x-tenant-id", "moving")]).await;
    assert_eq!(n.status, StatusCode::UNAUTHORIZED);
    assert_eq!(n.header("x-cellfleet-status"), Some("503"));
    assert_eq!(n.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn the_lookup_token_guards_everything_but_healthz() {
    let r = Router::new(RouterConfig {
        lookup_token: Some("s3cret".into()),
        ..RouterConfig::default()
    });
    assert_eq!(
        r.get("/route/acme", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        r.get("/route/acme", &[("authorization", "Bearer wrong")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let ok = r
        .get("/route/acme", &[("authorization", "Bearer s3cret")])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} s3cret");
        let ok = r.get("/route/acme", &[("authorization", &auth)]).await;
        assert_eq!(ok.status, StatusCode::OK, "{scheme}");
    }
    // nginx passes a 401 on as "retry later": a bad router token is a refusal there.
    let n = r.get("/nginx/auth", &[("x-tenant-id", "acme")]).await;
    assert_eq!(n.status, StatusCode::FORBIDDEN);
    assert_eq!(n.header("x-cellfleet-reason"), Some("unauthorized"));
    assert_eq!(
        r.get("/metrics", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(r.get("/healthz", &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn health_and_metrics_report_version_staleness_and_decisions() {
    let never = RouterState::new(
        RouterConfig::default(),
        Arc::new(ArcSwap::from_pointee(RoutingTable::empty())),
        Arc::new(SyncStatus::default()),
        false,
    );
    let response = app(never)
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing to serve yet"
    );

    let r = Router::new(RouterConfig::default());
    let h = r.get("/healthz", &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.body["status"], "stale");
    assert_eq!(h.body["version"], 7);
    assert_eq!(h.body["routes"], 6);
    assert!(h.body["stalenessSeconds"].as_f64().unwrap() < 60.0);

    r.get("/route/acme", &[]).await;
    r.get("/nginx/auth", &[("x-tenant-id", "nobody")]).await;
    let response = app(r.state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "cellfleet_router_table_version 7",
        "cellfleet_router_routes 6",
        "cellfleet_router_connected 0",
        "cellfleet_router_decisions_total{endpoint=\"route\",outcome=\"routed\"} 1",
        "cellfleet_router_decisions_total{endpoint=\"nginx\",outcome=\"unknown_tenant\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(text.contains("cellfleet_router_staleness_seconds "));
}
