//! A small real fleet for end-to-end tests: `cellfleet serve` on a throwaway registry, pooled
//! cells in one region (`eu-west-1`) at free ports, the example workload's migrations and release
//! 1.0.0, and a real `cell-agent` per cell running the workload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{
    AgentProcess, Db, Run, ServerProcess, TestDb, agent_token_file, cli, eventually, free_port,
    header_of, http_get, http_request, wait_converged, workspace_bin,
};

/// The control plane and its cells; everything stops when it is dropped.
#[derive(Debug)]
pub struct LocalFleet {
    pub server: ServerProcess,
    pub admin: PathBuf,
    /// `(cell, endpoint, capacity)` in the order they were asked for.
    pub cells: Vec<(String, String, u32)>,
    pub agents: Vec<AgentProcess>,
    /// Last, so the processes above stop before their files go.
    pub db: TestDb,
}

impl LocalFleet {
    /// A control plane with pooled cells `(name, capacity)` in `eu-west-1` at free ports, each
    /// run by its agent at release 1.0.0 of the example workload. Returns once every workload
    /// answers.
    pub async fn start(cells: &[(&str, u32)]) -> LocalFleet {
        let cells: Vec<(&str, u32, u16)> = cells
            .iter()
            .map(|(name, capacity)| (*name, *capacity, free_port()))
            .collect();
        Self::start_on(&cells).await
    }

    /// [`LocalFleet::start`] with each cell's port given: `(name, capacity, port)`.
    pub async fn start_on(cells: &[(&str, u32, u16)]) -> LocalFleet {
        let db = TestDb::new(Db::Sqlite).await;
        let (server, admin) = ServerProcess::serve(&db, &[]);
        let mut fleet = LocalFleet {
            server,
            admin,
            cells: cells
                .iter()
                .map(|(name, capacity, port)| {
                    (
                        (*name).to_owned(),
                        format!("http://127.0.0.1:{port}"),
                        *capacity,
                    )
                })
                .collect(),
            agents: Vec::new(),
            db,
        };
        fleet.apply_cells();
        let migrations =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workload/migrations");
        fleet
            .run(&["migration", "add", "-f", &migrations.display().to_string()])
            .ok();
        let release = fleet.write(
            "release.yaml",
            &format!(
                "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"1.0.0\"}}\nspec:\n  artifact: {{command: \"{}\"}}\n  migrations: {{upTo: 2}}\n",
                workspace_bin("notes-workload").display()
            ),
        );
        fleet.run(&["release", "create", "-f", &release]).ok();
        fleet.run(&["release", "deploy", "1.0.0"]).ok();
        let dir = fleet.dir().to_owned();
        for (cell, _, _) in &fleet.cells {
            let token = agent_token_file(&fleet.server.url, &fleet.admin, cell, &dir);
            fleet.agents.push(AgentProcess::start(
                &fleet.server.url,
                &token,
                cell,
                &dir.join(cell),
            ));
        }
        for (cell, endpoint, _) in &fleet.cells {
            eventually(Duration::from_secs(60), &format!("{cell} serves"), || {
                matches!(http_get(endpoint, "/healthz", None), Ok((200, _)))
            });
        }
        fleet
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    pub fn dir(&self) -> &Path {
        self.db.dir.path()
    }

    /// The operator CLI as admin.
    pub fn run(&self, args: &[&str]) -> Run {
        cli(&self.server.url, &self.admin, args)
    }

    /// Writes a file in the fleet's directory; returns its path.
    pub fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir().join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path.display().to_string()
    }

    /// (Re)applies the region and cells, with the capacities in `self.cells`.
    pub fn apply_cells(&self) {
        let mut yaml = "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: eu-west-1}\nspec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}\n".to_owned();
        for (cell, endpoint, capacity) in &self.cells {
            yaml.push_str(&format!(
                "---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: {cell}}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, capacity: {capacity}, endpoint: \"{endpoint}\"}}\n"
            ));
        }
        let file = self.write("fleet.yaml", &yaml);
        self.run(&["apply", "-f", &file]).ok();
    }

    /// Applies EU tenants (`extra` goes into each spec, e.g. `quotas: {requestsPerSecond: 2}`)
    /// and waits until every cell serves what it now holds.
    pub fn apply_tenants(&self, tenants: &[(&str, &str)]) {
        let yaml: String = tenants
            .iter()
            .map(|(t, extra)| {
                let extra = if extra.is_empty() {
                    String::new()
                } else {
                    format!(", {extra}")
                };
                format!("---\napiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {t}}}\nspec: {{displayName: {t}, profile: mt-standard, residency: {{jurisdiction: eu}}{extra}}}\n")
            })
            .collect();
        let file = self.write("tenants.yaml", &yaml);
        self.run(&["apply", "-f", &file]).ok();
        self.wait_converged();
    }

    /// Waits until every cell's agent reports the cell's current desired state.
    pub fn wait_converged(&self) {
        for (cell, _, _) in &self.cells {
            wait_converged(&self.server.url, &self.admin, cell);
        }
    }

    /// The cell `tenant`'s prod environment is placed on.
    pub fn cell_of(&self, tenant: &str) -> Option<String> {
        self.run(&["tenant", "get", tenant, "-o", "json"]).json()["placements"][0]["cell"]
            .as_str()
            .map(str::to_owned)
    }

    /// An `edge` token, written to a file.
    pub fn edge_token_file(&self) -> PathBuf {
        let token = self
            .run(&["token", "create", "--role", "edge", "-o", "json"])
            .json();
        let path = self.dir().join("edge.token");
        std::fs::write(&path, token["token"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }
}

/// Starts `cellfleet-router` on `listen` for `control_plane`, with its cache in `cache` and
/// `extra` arguments.
pub fn start_router(
    control_plane: &str,
    token: &Path,
    cache: &Path,
    listen: &str,
    extra: &[&str],
) -> ServerProcess {
    let mut args = vec![
        "--control-plane",
        control_plane,
        "--token-file",
        token.to_str().unwrap_or_default(),
        "--cache-dir",
        cache.to_str().unwrap_or_default(),
        "--poll",
        "5s",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start_bin_at(
        &workspace_bin("cellfleet-router"),
        listen,
        &args,
        "listening on",
    )
}

/// The router's `/healthz` document.
pub fn router_health(router: &str) -> serde_json::Value {
    http_get(router, "/healthz", None)
        .ok()
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
        .unwrap_or_default()
}

/// One request through an edge proxy, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeAnswer {
    pub status: u16,
    /// The cell whose workload answered (`X-Served-By`).
    pub served_by: Option<String>,
    pub reason: Option<String>,
    pub retry_after: Option<String>,
}

/// `method path` through the edge at `edge` as `tenant`, with extra headers.
pub fn through_edge(
    edge: &str,
    method: &str,
    path: &str,
    tenant: Option<&str>,
    headers: &[(&str, &str)],
) -> EdgeAnswer {
    let mut all: Vec<(&str, &str)> = tenant.map(|t| ("X-Tenant-Id", t)).into_iter().collect();
    all.extend_from_slice(headers);
    match http_request(edge, method, path, &all, "{\"body\": \"hello\"}") {
        Ok((status, head, _)) => EdgeAnswer {
            status,
            served_by: header_of(&head, "x-served-by").map(str::to_owned),
            reason: header_of(&head, "x-cellfleet-reason").map(str::to_owned),
            retry_after: header_of(&head, "retry-after").map(str::to_owned),
        },
        Err(_) => EdgeAnswer {
            status: 0,
            served_by: None,
            reason: None,
            retry_after: None,
        },
    }
}

/// Whether a burst of requests for `tenant` through `edge` meets its quota: some answered 429
/// with `Retry-After` and the reason, every other one served by `cell`.
pub fn quota_enforced(edge: &str, tenant: &str, cell: &str) -> bool {
    let burst: Vec<EdgeAnswer> = (0..10)
        .map(|_| through_edge(edge, "GET", "/v1/notes", Some(tenant), &[]))
        .collect();
    burst.iter().any(|e| {
        e.status == 429 && e.retry_after.is_some() && e.reason.as_deref() == Some("rate-limited")
    }) && burst
        .iter()
        .all(|e| e.status == 429 || e.served_by.as_deref() == Some(cell))
}
