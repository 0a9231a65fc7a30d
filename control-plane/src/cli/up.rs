//! `cellfleet up`: a control plane on SQLite in a local folder, with the sample fleet of
//! `examples/fleet/sample-fleet.yaml` registered, ready to explore. Running it again resumes the
//! same registry (applying the sample again changes nothing).

use std::path::PathBuf;

use anyhow::Context;
use cellfleet_api::{ManifestFile, Role};
use clap::Args;

use crate::http::DEFAULT_MAX_BODY_BYTES;
use crate::server::{Server, ServerConfig, shutdown_signal};
use crate::service::Settings;
use crate::store::Caller;

/// The sample fleet, compiled in so `up` works from any directory.
const SAMPLE_FLEET: &str = include_str!("../../../examples/fleet/sample-fleet.yaml");

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Folder for the registry database and the admin token.
    #[arg(long, default_value = ".cellfleet")]
    pub dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: String,
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
        listen: args.listen,
        admin_token_file: Some(token_file.clone()),
        settings: Settings::default(),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
    })
    .await?;
    let applied = server
        .registry
        .apply(
            &Caller::system("up"),
            Role::Admin,
            &[ManifestFile {
                name: "examples/fleet/sample-fleet.yaml".into(),
                content: SAMPLE_FLEET.into(),
            }],
            false,
        )
        .await
        .context("registering the sample fleet")?;
    let changed = applied
        .results
        .iter()
        .filter(|r| r.outcome != cellfleet_api::ApplyOutcome::Unchanged)
        .count();
    let url = server.url();
    println!("cellfleet is up at {url}");
    println!("  registry:    {}", dir.join("cellfleet.db").display());
    println!("  admin token: {}", token_file.display());
    println!(
        "  sample fleet: {} objects ({changed} new or changed), {} placements made now",
        applied.results.len(),
        applied.placed.len()
    );
    println!();
    println!("Try, in another terminal:");
    println!(
        "  export CELLFLEET_SERVER={url} CELLFLEET_TOKEN_FILE={}",
        token_file.display()
    );
    println!("  cellfleet cell list");
    println!("  cellfleet tenant list");
    println!("  cellfleet tenant explain initech");
    println!("  cellfleet tenant explain hooli        # a draft: no region of its jurisdiction");
    println!("  cellfleet tenant context acme");
    println!("  cellfleet apply -f examples/fleet/sample-fleet.yaml --dry-run");
    println!("  cellfleet audit verify");
    println!();
    println!("Ctrl-C stops it; running `cellfleet up` again resumes the same fleet.");
    server.serve(shutdown_signal()).await
}
