//! `cellfleet up`: a control plane on SQLite in a local folder, the sample fleet of
//! `examples/fleet/sample-fleet.yaml` registered, the example workload's migrations and release
//! 1.0.0 deployed, and every cell running locally (the `local` provider: an agent per cell, which
//! runs the workload). Running it again resumes the same registry and cells (applying the sample
//! again changes nothing).

use std::path::PathBuf;

use anyhow::Context;
use cellfleet_api::{CellName, ManifestFile, MigrationFile, Role};
use clap::Args;

use crate::http::DEFAULT_MAX_BODY_BYTES;
use crate::local::{CellDatabases, LocalFleet};
use crate::server::{Server, ServerConfig, shutdown_signal};
use crate::service::Settings;
use crate::store::Caller;

/// The sample fleet and release, compiled in so `up` works from any directory.
const SAMPLE_FLEET: &str = include_str!("../../../examples/fleet/sample-fleet.yaml");
const SAMPLE_RELEASE: &str = include_str!("../../../examples/fleet/release-1.0.0.yaml");

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Folder for the registry database and the admin token.
    #[arg(long, default_value = ".cellfleet")]
    pub dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: String,
    /// Give each cell a database on this PostgreSQL server (a user that may create databases and
    /// roles) instead of a SQLite file in its directory.
    #[arg(long, env = "CELLFLEET_CELL_DATABASE_URL")]
    pub cell_database_url: Option<String>,
    /// Serve the sample cells on ports BASE+1 … BASE+7 of 127.0.0.1 [default: the ports the
    /// registry already has, else 9101–9107 if all are free, else free ports the system gives].
    #[arg(long)]
    pub port_base: Option<u16>,
    /// How long to wait for every cell's workload to serve before giving up.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub ready_timeout: std::time::Duration,
    /// A folder of runbooks besides the shipped ones (as `serve --runbooks`); repeatable.
    #[arg(long = "runbooks")]
    pub runbooks: Vec<PathBuf>,
}

/// The sample cells, in the order of `examples/fleet/sample-fleet.yaml`, each with the port the
/// file gives it (9101–9107).
fn sample_cells() -> Vec<(String, u16)> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in SAMPLE_FLEET.lines() {
        if let Some(rest) = line.strip_prefix("metadata: {name: ") {
            name = rest.split([',', '}']).next().map(str::to_owned);
        }
        if let Some((_, port)) = line.split_once("endpoint: \"http://127.0.0.1:")
            && let Some(port) = port.split('"').next().and_then(|p| p.parse().ok())
            && let Some(n) = name.take()
        {
            out.push((n, port));
        }
    }
    out
}

/// Whether nothing listens on `127.0.0.1:port` now.
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The port each sample cell serves on (see `--port-base`).
async fn cell_ports(
    registry: &crate::service::Registry,
    base: Option<u16>,
) -> anyhow::Result<Vec<(String, u16)>> {
    let sample = sample_cells();
    if let Some(base) = base {
        return sample
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let port = u16::try_from(i + 1)
                    .ok()
                    .and_then(|i| base.checked_add(i))
                    .ok_or_else(|| anyhow::anyhow!("--port-base {base}: ports past 65535"))?;
                Ok((name.clone(), port))
            })
            .collect();
    }
    // Resuming: the ports the registry has.
    let registered: std::collections::HashMap<String, u16> = registry
        .cells()
        .await?
        .into_iter()
        .filter_map(|c| {
            let port = reqwest::Url::parse(c.endpoint.as_deref()?).ok()?.port()?;
            Some((c.name.to_string(), port))
        })
        .collect();
    if sample.iter().all(|(name, _)| registered.contains_key(name)) {
        return Ok(sample
            .into_iter()
            .map(|(name, _)| {
                let port = registered[&name];
                (name, port)
            })
            .collect());
    }
    if sample.iter().all(|(_, port)| port_free(*port)) {
        return Ok(sample);
    }
    // Another fleet (or anything) holds the usual ports: take free ones. Each probe socket is
    // held until all are chosen, so no two cells get the same port.
    let mut probes = Vec::new();
    let mut chosen = Vec::new();
    for (name, _) in sample {
        let probe = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        chosen.push((name, probe.local_addr()?.port()));
        probes.push(probe);
    }
    Ok(chosen)
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let token_file = dir.join("admin.token");
    let server = Server::start(ServerConfig {
        database_url: format!("sqlite://{}", dir.join("cellfleet.db").display()),
        listen: args.listen.clone(),
        admin_token_file: Some(token_file.clone()),
        settings: Settings {
            runbook_dirs: args.runbooks.clone(),
            ..Settings::default()
        },
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        audit_key_file: Some(dir.join("audit.key")),
        audit_checkpoint_log: Some(dir.join("audit-checkpoints.jsonl")),
        audit_checkpoint_every: crate::server::AUDIT_CHECKPOINT_EVERY,
        move_settings: Default::default(),
    })
    .await?;
    let registry = server.registry.clone();
    let system = Caller::system("up");
    // The sample fleet with this machine's ports for its cells.
    let ports = cell_ports(&registry, args.port_base).await?;
    let mut fleet_yaml = SAMPLE_FLEET.to_owned();
    for ((_, sample_port), (_, port)) in sample_cells().iter().zip(&ports) {
        fleet_yaml = fleet_yaml.replace(
            &format!("\"http://127.0.0.1:{sample_port}\""),
            &format!("\"http://127.0.0.1:{port}\""),
        );
    }
    let applied = registry
        .apply(
            &system,
            Role::Admin,
            &[ManifestFile {
                name: "examples/fleet/sample-fleet.yaml".into(),
                content: fleet_yaml,
            }],
            false,
        )
        .await
        .context("registering the sample fleet")?;
    registry
        .add_migrations(&system, &workload_migrations())
        .await
        .context("adding the example workload's migrations")?;
    let (release, _) = registry
        .create_release(
            &system,
            &ManifestFile {
                name: "examples/fleet/release-1.0.0.yaml".into(),
                content: SAMPLE_RELEASE.into(),
            },
        )
        .await
        .context("registering the sample release")?;
    // Cells that run no release yet get the sample one; a release deployed since is kept.
    let mut bare: Vec<CellName> = Vec::new();
    for cell in registry.cells().await? {
        if registry.desired_state(&cell.name).await?.release.is_none() {
            bare.push(cell.name);
        }
    }
    if !bare.is_empty() {
        registry
            .deploy_release(&system, &release.version, &bare)
            .await?;
    }
    let changed = applied
        .results
        .iter()
        .filter(|r| r.outcome != cellfleet_api::ApplyOutcome::Unchanged)
        .count();

    let url = server.url();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let databases = match &args.cell_database_url {
        Some(admin_url) => CellDatabases::Postgres {
            admin_url: admin_url.clone(),
        },
        None => CellDatabases::Sqlite,
    };
    let fleet = match LocalFleet::start(&registry, &url, &dir, &databases).await {
        Ok(fleet) => fleet,
        Err(e) => {
            let _ = stop_server.send(());
            let _ = serving.await;
            return Err(e);
        }
    };
    // The same fleet makes the cells moves ask for (`move start … --to dedicated`).
    let fleet = std::sync::Arc::new(crate::local::LocalProvider::new(registry.clone(), fleet));
    registry.set_provider(fleet.clone());
    // Up means serving: every cell's own workload answers at the deployed release. Anything
    // else is a failure with the cells' reasons, not a banner.
    if let Err(e) = wait_until_serving(&registry, &dir, args.ready_timeout).await {
        fleet.stop().await;
        let _ = stop_server.send(());
        let _ = serving.await;
        return Err(e);
    }

    println!("cellfleet is up at {url}");
    println!("  registry:    {}", dir.join("cellfleet.db").display());
    println!("  admin token: {}", token_file.display());
    println!(
        "  sample fleet: {} objects ({changed} new or changed), {} placements made now",
        applied.results.len(),
        applied.placed.len()
    );
    println!(
        "  {} cells serving locally: agents, databases and logs in {}/cells/",
        fleet.running_cells().await,
        dir.display()
    );
    println!();
    println!("Try, in another terminal:");
    println!(
        "  export CELLFLEET_SERVER={url} CELLFLEET_TOKEN_FILE={}",
        token_file.display()
    );
    println!(
        "  cellfleet cell list                    # desired/observed generation, release, migrations"
    );
    println!("  cellfleet tenant list");
    println!("  cellfleet tenant explain initech");
    println!("  cellfleet tenant explain hooli        # a draft: no region of its jurisdiction");
    if let Some(endpoint) = tenant_endpoint(&registry, "acme").await {
        println!(
            "  curl -H 'X-Tenant-Id: acme' -d '{{\"body\":\"hello\"}}' {endpoint}/v1/notes   # served by acme's cell"
        );
        println!("  curl -H 'X-Tenant-Id: acme' {endpoint}/v1/notes");
        println!(
            "  cellfleet move start acme --to dedicated --watch   # a cell of its own, writes kept"
        );
    }
    println!("  cellfleet release create -f examples/fleet/release-1.1.0.yaml");
    println!(
        "  cellfleet train start --release 1.1.0 --bake 30s --watch   # a release train, canaries first"
    );
    println!("  cellfleet audit verify");
    println!();
    println!("Ctrl-C stops it; running `cellfleet up` again resumes the same fleet.");

    shutdown_signal().await;
    println!("stopping the local fleet…");
    fleet.stop().await;
    let _ = stop_server.send(());
    serving.await.context("server task")?
}

/// Waits until every cell reports its workload running at the desired release and the desired
/// generation, printing progress; fails with each lagging cell's state and errors after
/// `timeout` (a port another process holds shows as the workload's crash loop).
async fn wait_until_serving(
    registry: &crate::service::Registry,
    dir: &std::path::Path,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut said = usize::MAX;
    loop {
        let cells = registry.cells().await?;
        let mut lagging = Vec::new();
        for c in &cells {
            let desired = registry.desired_state(&c.name).await?;
            let serving = c.workload.as_ref().is_some_and(|w| {
                w.state == cellfleet_api::WorkloadState::Running
                    && w.tenants_generation == Some(c.desired_generation)
            }) && c.release == desired.release.map(|r| r.version)
                && c.observed_generation == Some(c.desired_generation);
            if !serving {
                lagging.push(c);
            }
        }
        if lagging.is_empty() {
            return Ok(());
        }
        let ready = cells.len() - lagging.len();
        if ready != said {
            println!(
                "waiting for the cells to serve: {ready}/{} ready",
                cells.len()
            );
            said = ready;
        }
        if tokio::time::Instant::now() >= deadline {
            let why: Vec<String> = lagging
                .iter()
                .map(|c| {
                    let state = c
                        .workload
                        .as_ref()
                        .and_then(|w| serde_json::to_value(w.state).ok())
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "no report".to_owned());
                    format!(
                        "{} ({}): {state}{}",
                        c.name,
                        c.endpoint.as_deref().unwrap_or("no endpoint"),
                        c.errors
                            .first()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            anyhow::bail!(
                "the local fleet is not serving after {}: {} (agent logs: {}/cells/CELL/agent.log; another fleet on these ports? try --port-base)",
                humantime::format_duration(timeout),
                why.join("; "),
                dir.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The endpoint of the cell `tenant`'s prod environment is placed on.
async fn tenant_endpoint(registry: &crate::service::Registry, tenant: &str) -> Option<String> {
    let id = tenant.parse().ok()?;
    let cell = registry
        .tenant(&id)
        .await
        .ok()?
        .placements
        .first()?
        .cell
        .clone();
    registry.cell(&cell).await.ok()?.endpoint
}

/// The example workload's part of the migration stream, compiled in.
fn workload_migrations() -> Vec<MigrationFile> {
    [
        (
            "V1__notes.expand.sql",
            include_str!("../../../examples/workload/migrations/V1__notes.expand.sql"),
        ),
        (
            "V2__notes_tenant_index.expand.sql",
            include_str!("../../../examples/workload/migrations/V2__notes_tenant_index.expand.sql"),
        ),
    ]
    .into_iter()
    .map(|(name, content)| MigrationFile {
        name: name.to_owned(),
        content: content.to_owned(),
    })
    .collect()
}
