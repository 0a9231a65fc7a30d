//! The `local` provider: a cell is a directory on this machine with its own database, an agent
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

#[derive(Debug)]
struct LocalCell {
    name: CellName,
    agent: Child,
}

/// The running agents of a local fleet.
#[derive(Debug)]
pub struct LocalFleet {
    cells: Vec<LocalCell>,
}

impl LocalFleet {
    /// Provisions every registered cell under `root/cells/` (directory, agent token) and starts
    /// its agent against `control_plane`.
    pub async fn start(
        registry: &Registry,
        control_plane: &str,
        root: &Path,
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
        let mut cells = Vec::new();
        for cell in registry.cells().await? {
            let dir = root.join("cells").join(cell.name.as_str());
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let token_file = dir.join("agent.token");
            let have_token =
                std::fs::read_to_string(&token_file).is_ok_and(|t| !t.trim().is_empty());
            if !have_token {
                let created = registry
                    .create_token(
                        &Caller::system("up"),
                        &CreateTokenRequest {
                            role: Role::Agent,
                            cell: Some(cell.name.clone()),
                            description: Some(format!("local agent of {}", cell.name)),
                        },
                    )
                    .await?;
                write_secret_file(&token_file, &created.token)?;
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("agent.log"))
                .with_context(|| format!("cannot open {}/agent.log", dir.display()))?;
            let agent = Command::new(&agent_bin)
                .env("CELLFLEET_CONTROL_PLANE", control_plane)
                .env("CELL_AGENT_TOKEN_FILE", &token_file)
                .env("CELL_AGENT_CELL", cell.name.as_str())
                .env("CELL_AGENT_DATA_DIR", &dir)
                .env("PATH", &path)
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start the agent of {}", cell.name))?;
            cells.push(LocalCell {
                name: cell.name,
                agent,
            });
        }
        Ok(LocalFleet { cells })
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Stops every agent (SIGTERM: each stops its workload), killing any that has not exited
    /// after 10 s.
    pub async fn stop(mut self) {
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
