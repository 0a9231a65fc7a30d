//! The edge, for real: nginx (the Debian package) with `auth_request` to `cellfleet-router`, in
//! front of two cells run by their agents. Requests reach their tenant's cell, unknown and
//! suspended tenants are refused, quotas answer 429, a placement change takes effect without
//! touching nginx, and the router keeps routing with the control plane stopped — also after its
//! own restart.

use std::path::Path;
use std::time::Duration;

use cellfleet_e2e::{
    AgentProcess, Db, NginxProcess, ServerProcess, TestDb, agent_token_file, cli, eventually,
    free_port, http_get, workspace_bin,
};

/// The shipped example, used as is (the test only changes the ports).
fn nginx_config(router: &str) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nginx/cellfleet.conf");
    std::fs::read_to_string(&example)
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()))
        .replace(
            "server 127.0.0.1:7480;",
            &format!("server {};", router.trim_start_matches("http://")),
        )
}

/// One request through the edge: `(status, served-by cell, selected headers)`.
struct Edge {
    status: u16,
    served_by: Option<String>,
    reason: Option<String>,
    retry_after: Option<String>,
}

fn through(edge: &str, method: &str, path: &str, tenant: Option<&str>) -> Edge {
    use std::io::{Read, Write};
    let addr = edge.trim_start_matches("http://");
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(t) = tenant {
        request.push_str(&format!("X-Tenant-Id: {t}\r\n"));
    }
    let body = "{\"body\": \"hello\"}";
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    let mut response = String::new();
    let sent = std::net::TcpStream::connect(addr).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(request.as_bytes())?;
        s.read_to_string(&mut response)
    });
    if sent.is_err() {
        return Edge {
            status: 0,
            served_by: None,
            reason: None,
            retry_after: None,
        };
    }
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    Edge {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        served_by: header("x-served-by"),
        reason: header("x-cellfleet-reason"),
        retry_after: header("retry-after"),
    }
}

fn cell_of(url: &str, admin: &Path, tenant: &str) -> Option<String> {
    cli(url, admin, &["tenant", "get", tenant, "-o", "json"]).json()["placements"][0]["cell"]
        .as_str()
        .map(str::to_owned)
}

fn start_router(control_plane: &str, token: &Path, cache: &Path, listen: &str) -> ServerProcess {
    ServerProcess::start_bin_at(
        &workspace_bin("cellfleet-router"),
        listen,
        &[
            "--control-plane",
            control_plane,
            "--token-file",
            token.to_str().unwrap_or_default(),
            "--cache-dir",
            cache.to_str().unwrap_or_default(),
            "--poll",
            "5s",
        ],
        "listening on",
    )
}

fn health(router: &str) -> serde_json::Value {
    http_get(router, "/healthz", None)
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_routes_every_tenant_to_its_cell_through_the_router() {
    let db = TestDb::new(Db::Sqlite).await;
    let dir = db.dir.path();
    let admin = dir.join("admin.token");
    let server = ServerProcess::start(
        &[
            "serve",
            "--database-url",
            &db.url,
            "--admin-token-file",
            admin.to_str().unwrap_or_default(),
        ],
        "listening on",
    );
    let url = server.url.clone();
    let run = |args: &[&str]| cli(&url, &admin, args);

    // Two cells with room for one tenant each, run by their agents.
    let endpoints: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let fleet = |capacity_a: u32| {
        format!(
            "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {{name: eu-west-1}}\nspec: {{jurisdiction: eu, location: {{lat: 53.35, lon: -6.26}}}}\n\
             ---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: cell-a}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, capacity: {capacity_a}, endpoint: \"{}\"}}\n\
             ---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: cell-b}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, capacity: 1, endpoint: \"{}\"}}\n",
            endpoints[0], endpoints[1]
        )
    };
    let fleet_file = dir.join("fleet.yaml");
    std::fs::write(&fleet_file, fleet(1)).unwrap_or_default();
    let fleet_path = fleet_file.to_str().unwrap_or_default();
    run(&["apply", "-f", fleet_path]).ok();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workload/migrations");
    run(&[
        "migration",
        "add",
        "-f",
        migrations.to_str().unwrap_or_default(),
    ])
    .ok();
    let release = dir.join("release.yaml");
    std::fs::write(
        &release,
        format!(
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"1.0.0\"}}\nspec:\n  artifact: {{command: \"{}\"}}\n  migrations: {{upTo: 2}}\n",
            workspace_bin("notes-workload").display()
        ),
    )
    .unwrap_or_default();
    run(&[
        "release",
        "create",
        "-f",
        release.to_str().unwrap_or_default(),
    ])
    .ok();
    run(&["release", "deploy", "1.0.0"]).ok();
    let mut agents = Vec::new();
    for cell in ["cell-a", "cell-b"] {
        let token_file = agent_token_file(&url, &admin, cell, dir);
        agents.push(AgentProcess::start(
            &url,
            &token_file,
            cell,
            &dir.join(cell),
        ));
    }
    for endpoint in &endpoints {
        eventually(Duration::from_secs(60), "both cells serve", || {
            matches!(http_get(endpoint, "/healthz", None), Ok((200, _)))
        });
    }

    // acme and globex fill both cells; initech waits as a draft (no room).
    let tenants: String = ["acme", "globex", "initech"]
        .iter()
        .map(|t| format!("---\napiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {t}}}\nspec: {{displayName: {t}, profile: mt-standard, residency: {{jurisdiction: eu}}}}\n"))
        .collect();
    std::fs::write(dir.join("tenants.yaml"), &tenants).unwrap_or_default();
    run(&[
        "apply",
        "-f",
        dir.join("tenants.yaml").to_str().unwrap_or_default(),
    ])
    .ok();
    let acme_cell = cell_of(&url, &admin, "acme").unwrap_or_default();
    let globex_cell = cell_of(&url, &admin, "globex").unwrap_or_default();
    assert_ne!(acme_cell, globex_cell, "one tenant per cell");
    assert_eq!(cell_of(&url, &admin, "initech"), None, "no room yet");

    // The edge: router + nginx with the shipped configuration.
    let edge_token = run(&["token", "create", "--role", "edge", "-o", "json"]).json();
    let edge_token_file = dir.join("edge.token");
    std::fs::write(
        &edge_token_file,
        edge_token["token"].as_str().unwrap_or_default(),
    )
    .unwrap_or_default();
    let cache = dir.join("router-cache");
    let router_addr = format!("127.0.0.1:{}", free_port());
    let router = start_router(&url, &edge_token_file, &cache, &router_addr);
    eventually(Duration::from_secs(30), "the router syncs", || {
        health(&router.url)["status"] == "ok"
    });
    let nginx = NginxProcess::start(&nginx_config(&router.url));
    let nginx_pid = nginx.pid();
    let edge = nginx.url.clone();

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
    std::fs::write(&fleet_file, fleet(2)).unwrap_or_default();
    run(&["apply", "-f", fleet_path]).ok();
    assert_eq!(
        cell_of(&url, &admin, "initech").as_deref(),
        Some("cell-a"),
        "initech placed where room appeared"
    );
    eventually(Duration::from_secs(30), "initech routed to cell-a", || {
        through(&edge, "GET", "/v1/notes", Some("initech"))
            .served_by
            .as_deref()
            == Some("cell-a")
    });
    run(&["tenant", "suspend", "globex"]).ok();
    eventually(Duration::from_secs(30), "globex refused", || {
        through(&edge, "GET", "/v1/notes", Some("globex"))
            .reason
            .as_deref()
            == Some("suspended")
    });
    let suspended = through(&edge, "GET", "/v1/notes", Some("globex"));
    assert_eq!((suspended.status, suspended.served_by), (403, None));

    // A quota is enforced at the edge: over it, nginx answers 429 with Retry-After.
    let quota = tenants.replace(
        "metadata: {name: acme}\nspec: {displayName: acme,",
        "metadata: {name: acme}\nspec: {displayName: acme, quotas: {requestsPerSecond: 2},",
    );
    assert_ne!(quota, tenants);
    std::fs::write(dir.join("tenants.yaml"), &quota).unwrap_or_default();
    run(&[
        "apply",
        "-f",
        dir.join("tenants.yaml").to_str().unwrap_or_default(),
    ])
    .ok();
    eventually(Duration::from_secs(30), "acme's quota applies", || {
        let burst: Vec<Edge> = (0..10)
            .map(|_| through(&edge, "GET", "/v1/notes", Some("acme")))
            .collect();
        burst.iter().any(|e| {
            e.status == 429
                && e.retry_after.is_some()
                && e.reason.as_deref() == Some("rate-limited")
        }) && burst
            .iter()
            .all(|e| e.status == 429 || e.served_by.as_deref() == Some(acme_cell.as_str()))
    });
    assert_eq!(nginx.pid(), nginx_pid, "nginx was never restarted");

    // Static stability: the control plane stops; the router keeps answering from its table...
    std::thread::sleep(Duration::from_millis(1_100)); // let acme's quota refill
    server.stop();
    eventually(Duration::from_secs(30), "the router notices", || {
        health(&router.url)["status"] == "stale"
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
    let version = health(&router.url)["version"].clone();
    router.stop();
    let router = start_router(&url, &edge_token_file, &cache, &router_addr);
    let restored = health(&router.url);
    assert_eq!(restored["source"], "cache", "{restored}");
    assert_eq!(restored["status"], "stale");
    assert_eq!(restored["version"], version);
    assert!(restored["stalenessSeconds"].as_f64().is_some());
    check_edge("router restarted with the control plane stopped");
    assert_eq!(nginx.pid(), nginx_pid, "nginx was never restarted");
    drop(router);
    drop(nginx);
    drop(agents);
}
