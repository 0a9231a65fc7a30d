//! `cell-agent`: the per-cell agent (SPEC §7). Outbound only: it long-polls the control plane for
//! its cell's desired state, keeps a ledger in its data directory, and reports what it observes.

mod agent;
mod cell_db;
mod control_plane;
mod deployer;
mod health;
mod ledger;
mod move_db;
mod mover;
mod probes;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "cell-agent", version, about = "The cellfleet cell agent")]
struct Args {
    /// Control plane URL.
    #[arg(long, env = "CELLFLEET_CONTROL_PLANE")]
    control_plane: String,
    /// File holding this cell's agent token.
    #[arg(long, env = "CELL_AGENT_TOKEN_FILE")]
    token_file: PathBuf,
    /// The cell this agent runs (must match the token's cell).
    #[arg(long, env = "CELL_AGENT_CELL")]
    cell: String,
    /// Directory for the ledger and the cell's local state.
    #[arg(long, env = "CELL_AGENT_DATA_DIR")]
    data_dir: PathBuf,
    /// The cell database [default: sqlite://DATA_DIR/cell.db].
    #[arg(long, env = "CELL_AGENT_DATABASE_URL")]
    database_url: Option<String>,
    /// The database URL the workload gets [default: the agent's]. On PostgreSQL, give the
    /// workload a role without BYPASSRLS so row-level security applies to it.
    #[arg(long, env = "CELL_AGENT_WORKLOAD_DATABASE_URL")]
    workload_database_url: Option<String>,
    /// Longest wait of one long-poll.
    #[arg(long, env = "CELL_AGENT_POLL", default_value = "30s", value_parser = humantime::parse_duration)]
    poll: Duration,
}

/// Ctrl-C or SIGTERM: the agent stops its workload and exits.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = (|| -> anyhow::Result<()> {
        let token = std::fs::read_to_string(&args.token_file)
            .map_err(|e| {
                anyhow::anyhow!("cannot read token file {}: {e}", args.token_file.display())
            })?
            .trim()
            .to_owned();
        anyhow::ensure!(
            !token.is_empty(),
            "token file {} is empty",
            args.token_file.display()
        );
        let database_url = args
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("cell.db").display()));
        let config = agent::Config {
            workload_database_url: args
                .workload_database_url
                .clone()
                .unwrap_or_else(|| database_url.clone()),
            control_plane: args.control_plane.clone(),
            token,
            cell: args.cell.clone(),
            database_url,
            data_dir: args.data_dir.clone(),
            poll: args.poll,
        };
        tokio::runtime::Runtime::new()?.block_on(agent::run(config, shutdown_signal()))
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
