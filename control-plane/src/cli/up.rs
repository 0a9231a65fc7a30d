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
        settings: Settings::default(),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        audit_key_file: Some(dir.join("audit.key")),
        audit_checkpoint_log: Some(dir.join("audit-checkpoints.jsonl")),
        audit_checkpoint_every: crate::server::AUDIT_CHECKPOINT_EVERY,
    })
    .await?;
    let registry = server.registry.clone();
    let system = Caller::system("up");
    let applied = registry
        .apply(
            &system,
            Role::Admin,
            &[ManifestFile {
                name: "examples/fleet/sample-fleet.yaml".into(),
                content: SAMPLE_FLEET.into(),
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

    println!("cellfleet is up at {url}");
    println!("  registry:    {}", dir.join("cellfleet.db").display());
    println!("  admin token: {}", token_file.display());
    println!(
        "  sample fleet: {} objects ({changed} new or changed), {} placements made now",
        applied.results.len(),
        applied.placed.len()
    );
    println!(
        "  {} cells running locally: agents, databases and logs in {}/cells/",
        fleet.len(),
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
    }
    println!("  cellfleet audit verify");
    println!();
    println!("Ctrl-C stops it; running `cellfleet up` again resumes the same fleet.");

    shutdown_signal().await;
    println!("stopping the local fleet…");
    fleet.stop().await;
    let _ = stop_server.send(());
    serving.await.context("server task")?
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
