//! The edge, for real: nginx (the Debian package) with `auth_request` to `cellfleet-router`, in
//! front of two cells run by their agents. Requests reach their tenant's cell, unknown and
//! suspended tenants are refused, quotas answer 429, a placement change takes effect without
//! touching nginx, and the router keeps routing with the control plane stopped — also after its
//! own restart.

use std::time::Duration;

use cellfleet_e2e::{
    EdgeAnswer, LocalFleet, NginxProcess, eventually, free_port, quota_enforced, router_health,
    shipped_nginx_config, start_router, through_edge,
};

/// TCP connections a cell's workload accepted so far (from its metrics).
fn accepted(endpoint: &str) -> u64 {
    let (_, text) = cellfleet_e2e::http_get(endpoint, "/metrics", None).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("workload_connections_accepted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The router's count of nginx reloads that worked.
fn reloads(router: &str) -> u64 {
    let (_, text) = cellfleet_e2e::http_get(router, "/metrics", None).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("cellfleet_router_nginx_reloads_total{outcome=\"ok\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn through(edge: &str, method: &str, path: &str, tenant: Option<&str>) -> EdgeAnswer {
    through_edge(edge, method, path, tenant, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_routes_every_tenant_to_its_cell_through_the_router() {
    // Two cells with room for one tenant each, run by their agents; acme and globex fill both
    // cells; initech waits as a draft (no room).
    let mut fleet = LocalFleet::start(&[("cell-a", 1), ("cell-b", 1)]).await;
    let url = fleet.url().to_owned();
    let dir = fleet.dir().to_owned();
    fleet.apply_tenants(&[("acme", ""), ("globex", ""), ("initech", "")]);
    let acme_cell = fleet.cell_of("acme").unwrap_or_default();
    let globex_cell = fleet.cell_of("globex").unwrap_or_default();
    assert_ne!(acme_cell, globex_cell, "one tenant per cell");
    assert_eq!(fleet.cell_of("initech"), None, "no room yet");

    // The edge: router + nginx with the shipped configuration.
    let edge_token_file = fleet.edge_token_file();
    // nginx first (it starts without the router's upstreams: the include is a glob), then the
    // router, which writes one upstream per cell and reloads nginx.
    let cache = dir.join("router-cache");
    let router_addr = format!("127.0.0.1:{}", free_port());
    let nginx_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let upstreams = nginx_dir.path().join("upstreams");
    let nginx_pid_file = nginx_dir.path().join("nginx.pid");
    let nginx = NginxProcess::start_in(
        nginx_dir,
        &shipped_nginx_config(&format!("http://{router_addr}"), &upstreams),
    );
    let nginx_pid = nginx.pid();
    let edge = nginx.url.clone();
    let upstreams_file = upstreams.join("upstreams.conf");
    let reload = format!("kill -HUP $(cat {})", nginx_pid_file.display());
    let router_args = [
        "--nginx-upstreams",
        upstreams_file.to_str().unwrap_or_default(),
        "--nginx-reload-command",
        &reload,
    ];
    let router = start_router(&url, &edge_token_file, &cache, &router_addr, &router_args);
    eventually(Duration::from_secs(30), "the router syncs", || {
        router_health(&router.url)["status"] == "ok"
    });
    eventually(
        Duration::from_secs(30),
        "nginx has the cells' upstreams",
        || reloads(&router.url) >= 1,
    );
    let rendered = std::fs::read_to_string(&upstreams_file).unwrap_or_default();
    for cell in [&acme_cell, &globex_cell] {
        assert!(
            rendered.contains(&format!("upstream cellfleet_{} {{", cell.replace('-', "_"))),
            "{rendered}"
        );
    }

    // Each tenant reaches its own cell; writes land there.
    for (tenant, cell) in [("acme", &acme_cell), ("globex", &globex_cell)] {
        let wrote = through(&edge, "POST", "/v1/notes", Some(tenant));
        assert_eq!(
            wrote.status,
            201,
            "{tenant} through nginx: {}",
            nginx.error_log()
        );
        assert_eq!(wrote.served_by.as_deref(), Some(cell.as_str()), "{tenant}");
        let read = through(&edge, "GET", "/v1/notes", Some(tenant));
        assert_eq!(
            (read.status, read.served_by.as_deref()),
            (200, Some(cell.as_str()))
        );
    }

    // nginx keeps its connections to the cells: many requests, few connections.
    let acme_endpoint = fleet
        .cells
        .iter()
        .find(|(c, _, _)| *c == acme_cell)
        .map(|(_, e, _)| e.clone())
        .unwrap_or_default();
    eventually(
        Duration::from_secs(30),
        "requests to a cell share connections",
        || {
            let before = accepted(&acme_endpoint);
            for _ in 0..20 {
                through(&edge, "GET", "/v1/notes", Some("acme"));
            }
            accepted(&acme_endpoint) - before <= 3
        },
    );
    let reloads_before = reloads(&router.url);

    // Unknown, missing and draft tenants are refused by nginx with the router's reason.
    for (tenant, reason) in [
        (Some("nobody"), "unknown-tenant"),
        (None, "no-tenant"),
        (Some("initech"), "unknown-tenant"),
    ] {
        let refused = through(&edge, "GET", "/v1/notes", tenant);
        assert_eq!(refused.status, 403, "{tenant:?}");
        assert_eq!(refused.reason.as_deref(), Some(reason), "{tenant:?}");
        assert_eq!(refused.served_by, None, "{tenant:?} reached no cell");
    }

    // A placement change (room appears in cell-a, initech is placed there) and a suspension take
    // effect at the edge without touching nginx.
    fleet.cells[0].2 = 2;
    fleet.apply_cells();
    assert_eq!(
        fleet.cell_of("initech").as_deref(),
        Some("cell-a"),
        "initech placed where room appeared"
    );
    eventually(Duration::from_secs(30), "initech routed to cell-a", || {
        through(&edge, "GET", "/v1/notes", Some("initech"))
            .served_by
            .as_deref()
            == Some("cell-a")
    });
    fleet.run(&["tenant", "suspend", "globex"]).ok();
    eventually(Duration::from_secs(30), "globex refused", || {
        through(&edge, "GET", "/v1/notes", Some("globex"))
            .reason
            .as_deref()
            == Some("suspended")
    });
    let suspended = through(&edge, "GET", "/v1/notes", Some("globex"));
    assert_eq!((suspended.status, suspended.served_by), (403, None));

    // A quota is enforced at the edge: over it, nginx answers 429 with Retry-After.
    fleet.apply_tenants(&[
        ("acme", "quotas: {requestsPerSecond: 2}"),
        ("globex", ""),
        ("initech", ""),
    ]);
    eventually(Duration::from_secs(30), "acme's quota applies", || {
        quota_enforced(&edge, "acme", &acme_cell)
    });
    assert_eq!(nginx.pid(), nginx_pid, "nginx was never restarted");
    assert_eq!(
        reloads(&router.url),
        reloads_before,
        "tenant changes (a placement, a suspension, a quota) never reloaded nginx"
    );

    // Static stability: the control plane stops; the router keeps answering from its table...
    std::thread::sleep(Duration::from_millis(1_100)); // let acme's quota refill
    fleet.server.halt();
    eventually(Duration::from_secs(30), "the router notices", || {
        router_health(&router.url)["status"] == "stale"
    });
    let check_edge = |what: &str| {
        let initech = through(&edge, "GET", "/v1/notes", Some("initech"));
        assert_eq!(
            (initech.status, initech.served_by.as_deref()),
            (200, Some("cell-a")),
            "{what}: initech"
        );
        let acme = through(&edge, "GET", "/v1/notes", Some("acme"));
        assert_eq!(
            acme.served_by.as_deref(),
            Some(acme_cell.as_str()),
            "{what}: acme"
        );
        assert_eq!(
            through(&edge, "GET", "/v1/notes", Some("globex")).status,
            403,
            "{what}: globex stays suspended"
        );
        assert_eq!(
            through(&edge, "GET", "/v1/notes", Some("nobody")).status,
            403,
            "{what}: unknown"
        );
    };
    check_edge("control plane stopped");

    // ...and after its own restart with the control plane still down, from its disk copy.
    let version = router_health(&router.url)["version"].clone();
    router.stop();
    let router = start_router(&url, &edge_token_file, &cache, &router_addr, &router_args);
    let restored = router_health(&router.url);
    assert_eq!(restored["source"], "cache", "{restored}");
    assert_eq!(restored["status"], "stale");
    assert_eq!(restored["version"], version);
    assert!(restored["stalenessSeconds"].as_f64().is_some());
    check_edge("router restarted with the control plane stopped");
    assert_eq!(nginx.pid(), nginx_pid, "nginx was never restarted");
    drop(router);
    drop(nginx);
    drop(fleet);
}
