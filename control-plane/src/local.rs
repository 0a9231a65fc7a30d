//! The `local` provider: a cell is a directory on this machine with its own database (a SQLite
//! file, or a database on a PostgreSQL server with an application role for the workload), an agent
//! token, and a `cell-agent` process (which runs the cell's workload). Used by `cellfleet up`.
//!
//! Provisioning is idempotent: an existing directory and token are reused, so a second `up` on the
//! same folder resumes the same cells (the agents resume from their ledgers).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cellfleet_api::{CellName, CreateTokenRequest, Role};
use tokio::process::{Child, Command};

use crate::service::{Registry, write_secret_file};
use crate::store::Caller;

/// A binary shipped next to the running `cellfleet` (the workspace builds them together).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the cellfleet binary")?;
    let path = exe.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{name} not found next to {} — build the whole workspace (cargo build --release) so it is there",
        exe.display()
    );
    Ok(path)
}

/// Where local cells keep their databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellDatabases {
    /// A SQLite file in each cell's directory (the default).
    Sqlite,
    /// A database per cell on this PostgreSQL server (the URL of a user that may create
    /// databases and roles).
    Postgres { admin_url: String },
}

/// A provisioned cell database: how the agent (its owner) and the workload connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellDatabase {
    pub agent_url: String,
    pub workload_url: String,
}

/// Creates (idempotently) `cell`'s database. On PostgreSQL: database `cf_cell_{cell}` owned by
/// the admin user (who runs the migrations), and role `cf_cell_{cell}_app` — LOGIN, NOSUPERUSER,
/// NOBYPASSRLS — that the workload connects as, with read/write on every table migrations create
/// (default privileges), so row-level security applies to it.
pub async fn provision_database(
    dbs: &CellDatabases,
    cell: &CellName,
    dir: &Path,
) -> anyhow::Result<CellDatabase> {
    use sqlx::{Connection, Executor};
    match dbs {
        CellDatabases::Sqlite => {
            let url = format!("sqlite://{}", dir.join("cell.db").display());
            Ok(CellDatabase {
                agent_url: url.clone(),
                workload_url: url,
            })
        }
        CellDatabases::Postgres { admin_url } => {
            let db = format!("cf_cell_{}", cell.as_str().replace('-', "_"));
            let role = format!("{db}_app");
            let mut admin = sqlx::PgConnection::connect(admin_url)
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to the cell database server {}",
                        crate::server::redact(admin_url)
                    )
                })?;
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(&db)
                    .fetch_optional(&mut admin)
                    .await?;
            if exists.is_none() {
                // Names are built from a validated DNS label: lowercase letters, digits, '_'.
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                    .await?;
            }
            let role_exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
                    .bind(&role)
                    .fetch_optional(&mut admin)
                    .await?;
            if role_exists.is_none() {
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"
                    )))
                    .await?;
            }
            let mut agent_url = reqwest::Url::parse(admin_url)?;
            agent_url.set_path(&db);
            let mut cell_conn = sqlx::PgConnection::connect(agent_url.as_str()).await?;
            for sql in [
                format!("GRANT USAGE ON SCHEMA public TO {role}"),
                format!(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
                ),
                format!(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}"
                ),
            ] {
                cell_conn.execute(sqlx::AssertSqlSafe(sql)).await?;
            }
            let mut workload_url = agent_url.clone();
            let _ = workload_url.set_username(&role);
            let _ = workload_url.set_password(None);
            Ok(CellDatabase {
                agent_url: agent_url.to_string(),
                workload_url: workload_url.to_string(),
            })
        }
    }
}

#[derive(Debug)]
struct LocalCell {
    name: CellName,
    agent: Child,
}

/// The running agents of a local fleet.
#[derive(Debug)]
pub struct LocalFleet {
    control_plane: String,
    root: PathBuf,
    databases: CellDatabases,
    agent_bin: PathBuf,
    /// `PATH` for agents: the workspace's binaries first.
    path: std::ffi::OsString,
    cells: Vec<LocalCell>,
}

impl LocalFleet {
    /// Provisions every registered cell under `root/cells/` (directory, database, agent token)
    /// and starts its agent against `control_plane`.
    pub async fn start(
        registry: &Registry,
        control_plane: &str,
        root: &Path,
        databases: &CellDatabases,
    ) -> anyhow::Result<LocalFleet> {
        let agent_bin = sibling_binary("cell-agent")?;
        sibling_binary("notes-workload")?;
        let bin_dir = agent_bin.parent().map(Path::to_owned).unwrap_or_default();
        let path = match std::env::var_os("PATH") {
            Some(p) => std::env::join_paths(
                std::iter::once(bin_dir.clone()).chain(std::env::split_paths(&p)),
            )?,
            None => bin_dir.clone().into_os_string(),
        };
        let mut fleet = LocalFleet {
            control_plane: control_plane.to_owned(),
            root: root.to_owned(),
            databases: databases.clone(),
            agent_bin,
            path,
            cells: Vec::new(),
        };
        for cell in registry.cells().await? {
            fleet.start_cell(registry, &cell.name).await?;
        }
        Ok(fleet)
    }

    /// Provisions `cell` (directory, database, agent token; each kept if there) and starts its
    /// agent, unless this fleet runs it already.
    pub async fn start_cell(&mut self, registry: &Registry, cell: &CellName) -> anyhow::Result<()> {
        if let Some(running) = self.cells.iter_mut().find(|c| &c.name == cell) {
            if running.agent.try_wait()?.is_none() {
                return Ok(());
            }
            tracing::warn!(%cell, "the cell's agent had exited; starting it again");
            self.cells.retain(|c| &c.name != cell);
        }
        let dir = self.root.join("cells").join(cell.as_str());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let token_file = dir.join("agent.token");
        let have_token = std::fs::read_to_string(&token_file).is_ok_and(|t| !t.trim().is_empty());
        if !have_token {
            // An empty file left by an interrupted start: make room for the new token.
            let _ = std::fs::remove_file(&token_file);
            let created = registry
                .create_token(
                    &Caller::system("up"),
                    &CreateTokenRequest {
                        role: Role::Agent,
                        cell: Some(cell.clone()),
                        description: Some(format!("local agent of {cell}")),
                    },
                )
                .await?;
            write_secret_file(&token_file, &created.token)?;
        }
        let database = provision_database(&self.databases, cell, &dir).await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .with_context(|| format!("cannot open {}/agent.log", dir.display()))?;
        let agent = Command::new(&self.agent_bin)
            .env("CELLFLEET_CONTROL_PLANE", &self.control_plane)
            .env("CELL_AGENT_TOKEN_FILE", &token_file)
            .env("CELL_AGENT_CELL", cell.as_str())
            .env("CELL_AGENT_DATA_DIR", &dir)
            .env("CELL_AGENT_DATABASE_URL", &database.agent_url)
            .env("CELL_AGENT_WORKLOAD_DATABASE_URL", &database.workload_url)
            .env("PATH", &self.path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the agent of {cell}"))?;
        self.cells.push(LocalCell {
            name: cell.clone(),
            agent,
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Stops every agent (SIGTERM: each stops its workload), killing any that has not exited
    /// after 10 s.
    pub async fn stop(&mut self) {
        for c in &self.cells {
            if let Some(pid) = c.agent.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for c in &mut self.cells {
            if tokio::time::timeout(Duration::from_secs(10), c.agent.wait())
                .await
                .is_err()
            {
                tracing::warn!(cell = %c.name, "agent did not stop in time; killing it");
                let _ = c.agent.kill().await;
            }
        }
    }
}

/// The `local` cell provider: new cells are directories of this machine's local fleet, with an
/// agent started by it (`cellfleet up`).
#[derive(Debug)]
pub struct LocalProvider {
    registry: Registry,
    fleet: tokio::sync::Mutex<LocalFleet>,
}

impl LocalProvider {
    pub fn new(registry: Registry, fleet: LocalFleet) -> LocalProvider {
        LocalProvider {
            registry,
            fleet: tokio::sync::Mutex::new(fleet),
        }
    }

    /// Cells whose agent runs here.
    pub async fn running_cells(&self) -> usize {
        self.fleet.lock().await.len()
    }

    pub async fn stop(&self) {
        self.fleet.lock().await.stop().await;
    }
}

impl crate::provider::CellProvider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    /// A free port of 127.0.0.1 (the workload binds it when it starts).
    fn endpoint_for(&self, _cell: &CellName) -> anyhow::Result<String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("cannot find a free port for the new cell")?;
        Ok(format!("http://{}", listener.local_addr()?))
    }

    fn provision<'a>(
        &'a self,
        cell: &'a CellName,
    ) -> crate::provider::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut fleet = self.fleet.lock().await;
            fleet.start_cell(&self.registry, cell).await
        })
    }
}
