//! A small real fleet for end-to-end tests: `cellfleet serve` on a throwaway registry, cells in
//! one region (`eu-west-1`) at free ports (pooled, or dedicated when asked), the example
//! workload's migrations and release 1.0.0, and a real `cell-agent` per cell running the
//! workload, on a SQLite cell database in its directory or (asked) a PostgreSQL database of its
//! own with the workload connecting as a role under row-level security.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{
    AgentProcess, Db, Run, ServerProcess, TestDb, agent_token_file, cli, eventually, free_port,
    header_of, http_get, http_request, postgres_admin_url, random_suffix, workspace_bin,
};

/// How a [`LocalFleet`] differs from the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetOptions<'a> {
    /// Cells (of those asked for) that are dedicated rather than pooled.
    pub dedicated: &'a [&'a str],
    /// Extra `cellfleet serve` arguments.
    pub serve_args: &'a [&'a str],
    /// Each cell on a PostgreSQL database of its own (the workload as a role under RLS).
    pub postgres_cells: bool,
}

/// A cell's database, as the test sees it (to look behind the workload's back).
#[derive(Debug)]
pub enum CellDb {
    Sqlite(PathBuf),
    /// Database `name` on the test server; the workload connects as role `role`. Dropped with
    /// the value.
    Postgres {
        name: String,
        role: String,
    },
}

impl CellDb {
    /// A database and a workload role (LOGIN, no superuser, no BYPASSRLS) with read/write on
    /// what the agent's migrations create, like the `local` provider makes.
    pub async fn postgres(cell: &str) -> CellDb {
        use sqlx::{Connection, Executor};
        let name = format!("cf_tcell_{}_{}", cell.replace('-', "_"), random_suffix());
        let role = format!("{name}_app");
        let admin = postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required ({admin}): {e}"));
        for sql in [
            format!("CREATE DATABASE {name}"),
            format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"),
        ] {
            conn.execute(sqlx::AssertSqlSafe(sql))
                .await
                .expect("cell database");
        }
        let db = CellDb::Postgres { name, role };
        let mut cell_conn = sqlx::PgConnection::connect(&db.url(false))
            .await
            .expect("cell database connection");
        for sql in [
            format!("GRANT USAGE ON SCHEMA public TO {}", db.role()),
            format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}",
                db.role()
            ),
        ] {
            cell_conn
                .execute(sqlx::AssertSqlSafe(sql))
                .await
                .expect("grant");
        }
        db
    }

    fn role(&self) -> &str {
        match self {
            CellDb::Postgres { role, .. } => role,
            CellDb::Sqlite(_) => "",
        }
    }

    /// The URL the agent (`workload: false`) or the workload uses.
    pub fn url(&self, workload: bool) -> String {
        match self {
            CellDb::Sqlite(path) => format!("sqlite://{}", path.display()),
            CellDb::Postgres { name, role } => {
                let mut url = reqwest::Url::parse(&postgres_admin_url()).expect("postgres url");
                url.set_path(name);
                if workload {
                    let _ = url.set_username(role);
                    let _ = url.set_password(None);
                }
                url.to_string()
            }
        }
    }

    /// The agent's environment for this database.
    pub fn agent_env(&self) -> Vec<(&'static str, String)> {
        match self {
            CellDb::Sqlite(_) => Vec::new(),
            CellDb::Postgres { .. } => vec![
                ("CELL_AGENT_DATABASE_URL", self.url(false)),
                ("CELL_AGENT_WORKLOAD_DATABASE_URL", self.url(true)),
            ],
        }
    }

    /// A connection as the agent (owner: sees every row).
    pub async fn connect(&self) -> sqlx::AnyConnection {
        self.connect_as(false).await
    }

    /// A connection as the agent, or as the workload's role (`workload`).
    pub async fn connect_as(&self, workload: bool) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url(workload))
            .await
            .expect("cell database connection")
    }

    /// The ids of `tenant`'s notes in this cell (owner's view, RLS aside), sorted.
    pub async fn note_ids(&self, tenant: &str) -> Vec<i64> {
        let mut conn = self.connect().await;
        let mut ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM notes WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Inserts `n` notes of `tenant` straight into the database (ids `base+1..=base+n`), as rows
    /// a tenant had before anything watched them.
    pub async fn seed_notes(&self, tenant: &str, n: i64, base: i64) {
        let mut conn = self.connect().await;
        sqlx::query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1) \
             INSERT INTO notes (id, tenant_id, body, created_at) \
             SELECT $2 + x, $3, 'seeded note number ' || x, 0 FROM c",
        )
        .bind(n)
        .bind(base)
        .bind(tenant)
        .execute(&mut conn)
        .await
        .expect("seed notes");
    }

    /// Changes a note behind every move's back (past a move's guard, outside its capture, like
    /// a repair by hand): the agent's apply marker lets the write through the guard.
    pub async fn tamper_note(&self, id: i64) -> bool {
        use sqlx::Connection;
        let mut conn = self.connect().await;
        let mut tx = conn.begin().await.expect("begin");
        let _ = sqlx::query("INSERT INTO cellfleet_applying (x) VALUES (1)")
            .execute(&mut *tx)
            .await;
        let changed =
            sqlx::query("UPDATE notes SET body = 'changed behind the move' WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected())
                .unwrap_or(0);
        let _ = sqlx::query("DELETE FROM cellfleet_applying")
            .execute(&mut *tx)
            .await;
        tx.commit().await.is_ok() && changed == 1
    }

    /// Names of the move machinery left in this cell: capture/guard triggers, captured changes.
    pub async fn move_leftovers(&self) -> Vec<String> {
        let mut conn = self.connect().await;
        let triggers: Vec<String> = match self {
            CellDb::Sqlite(_) => sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'cellfleet_%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default(),
            CellDb::Postgres { .. } => sqlx::query_scalar(
                "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'cellfleet_%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default(),
        };
        let changes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cellfleet_changes")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
        let mut out = triggers;
        if changes > 0 {
            out.push(format!("{changes} captured changes"));
        }
        out
    }
}

impl Drop for CellDb {
    fn drop(&mut self) {
        if let CellDb::Postgres { name, role } = self {
            let (name, role) = (name.clone(), role.clone());
            let admin = postgres_admin_url();
            let _ = std::thread::spawn(move || {
                use sqlx::{Connection, Executor};
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async move {
                    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                    for sql in [
                        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                        format!("DROP ROLE IF EXISTS {role}"),
                    ] {
                        let _ = conn.execute(sqlx::AssertSqlSafe(sql)).await;
                    }
                    Some(())
                })
            })
            .join();
        }
    }
}

/// The control plane and its cells; everything stops when it is dropped.
#[derive(Debug)]
pub struct LocalFleet {
    pub server: ServerProcess,
    pub admin: PathBuf,
    /// `(cell, endpoint, capacity)` in the order they were asked for.
    pub cells: Vec<(String, String, u32)>,
    /// The cells (of `cells`) that are dedicated.
    pub dedicated: Vec<String>,
    /// The extra `cellfleet serve` arguments (for restarts).
    pub serve_args: Vec<String>,
    /// Each cell's agent (in the order of `cells`; `None` while a test has it stopped).
    pub agents: Vec<Option<AgentProcess>>,
    /// Each cell's database (in the order of `cells`; after the agents, which stop first).
    pub cell_dbs: Vec<CellDb>,
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
        Self::start_with(cells, &FleetOptions::default()).await
    }

    /// [`LocalFleet::start`] with options (dedicated cells, server arguments, PostgreSQL cells).
    pub async fn start_opts(cells: &[(&str, u32)], options: &FleetOptions<'_>) -> LocalFleet {
        let cells: Vec<(&str, u32, u16)> = cells
            .iter()
            .map(|(name, capacity)| (*name, *capacity, free_port()))
            .collect();
        Self::start_with(&cells, options).await
    }

    async fn start_with(cells: &[(&str, u32, u16)], options: &FleetOptions<'_>) -> LocalFleet {
        let db = TestDb::new(Db::Sqlite).await;
        let (server, admin) = ServerProcess::serve(&db, options.serve_args);
        let serve_args: Vec<String> = options.serve_args.iter().map(|a| (*a).to_owned()).collect();
        let mut cell_dbs = Vec::new();
        for (name, _, _) in cells {
            cell_dbs.push(if options.postgres_cells {
                CellDb::postgres(name).await
            } else {
                CellDb::Sqlite(db.dir.path().join(name).join("cell.db"))
            });
        }
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
            dedicated: options.dedicated.iter().map(|d| (*d).to_owned()).collect(),
            serve_args,
            cell_dbs,
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
        for i in 0..fleet.cells.len() {
            let agent = fleet.start_agent(i);
            fleet.agents.push(Some(agent));
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

    /// Starts the control plane again (after it stopped or died) on the same registry and
    /// address, with extra environment.
    pub fn restart_server(&mut self, env: &[(&str, &str)]) {
        self.server.halt();
        let admin = self.admin.display().to_string();
        let mut args = vec![
            "serve",
            "--database-url",
            self.db.url.as_str(),
            "--admin-token-file",
            admin.as_str(),
        ];
        args.extend(self.serve_args.iter().map(String::as_str));
        let listen = self.server.url.trim_start_matches("http://").to_owned();
        self.server = ServerProcess::start_bin_env(
            &crate::cellfleet_bin(),
            &listen,
            &args,
            env,
            "listening on",
        );
    }

    /// Starts the agent of the `i`-th cell again (after it stopped or died), with extra
    /// environment; returns once the new agent has reported its cell converged (its workload
    /// is a new instance: an agent starts its workload afresh).
    pub fn restart_agent(&mut self, i: usize, env: &[(&str, &str)]) {
        let cell = self.cells[i].0.clone();
        let instance = |fleet: &LocalFleet| {
            fleet.run(&["cell", "get", &cell, "-o", "json"]).json()["workload"]["instance"]
                .as_str()
                .map(str::to_owned)
        };
        let before = instance(self);
        if let Some(old) = self.agents[i].take() {
            old.kill();
        }
        let agent = self.start_agent_env(i, env);
        self.agents[i] = Some(agent);
        eventually(
            Duration::from_secs(60),
            &format!("the restarted agent of {cell} reports"),
            || {
                let now = instance(self);
                now.is_some()
                    && now != before
                    && crate::converged(&self.server.url, &self.admin, &cell)
            },
        );
    }

    /// Starts the agent of the `i`-th cell (its token made on first start, then kept).
    pub fn start_agent(&self, i: usize) -> AgentProcess {
        self.start_agent_env(i, &[])
    }

    fn start_agent_env(&self, i: usize, extra: &[(&str, &str)]) -> AgentProcess {
        let (cell, _, _) = &self.cells[i];
        let dir = self.dir().to_owned();
        let token = dir.join(format!("{cell}.token"));
        let token = if token.exists() {
            token
        } else {
            agent_token_file(&self.server.url, &self.admin, cell, &dir)
        };
        let env = self.cell_dbs[i].agent_env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(extra);
        AgentProcess::start_with_env(&self.server.url, &token, cell, &dir.join(cell), &env)
    }

    /// The index of `cell` in `cells`.
    pub fn index_of(&self, cell: &str) -> usize {
        self.cells
            .iter()
            .position(|(c, _, _)| c == cell)
            .unwrap_or_else(|| panic!("no cell {cell} in this fleet"))
    }

    /// The endpoint of `cell`.
    pub fn endpoint_of(&self, cell: &str) -> String {
        self.cells[self.index_of(cell)].1.clone()
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
            let kind = if self.dedicated.contains(cell) {
                "dedicated"
            } else {
                "pooled"
            };
            yaml.push_str(&format!(
                "---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: {cell}}}\nspec: {{region: eu-west-1, kind: {kind}, env: prod, capacity: {capacity}, endpoint: \"{endpoint}\"}}\n"
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
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !crate::converged(&self.server.url, &self.admin, cell) {
                if std::time::Instant::now() > deadline {
                    let seen = self.run(&["cell", "get", cell, "-o", "json"]).stdout;
                    panic!(
                        "{cell} did not converge on its desired state: {seen}\n{}",
                        self.agent_logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The cell `tenant`'s prod environment is placed on.
    pub fn cell_of(&self, tenant: &str) -> Option<String> {
        self.run(&["tenant", "get", tenant, "-o", "json"]).json()["placements"][0]["cell"]
            .as_str()
            .map(str::to_owned)
    }

    /// A `cellfleet-router` for this fleet on a free port (its own edge token, its cache in the
    /// fleet's directory), once its table is current.
    pub fn start_router(&self) -> ServerProcess {
        let token = self.edge_token_file();
        let router = start_router(
            self.url(),
            &token,
            &self.dir().join("router-cache"),
            &format!("127.0.0.1:{}", free_port()),
            &[],
        );
        eventually(Duration::from_secs(30), "the router syncs", || {
            router_health(&router.url)["status"] == "ok"
        });
        router
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
