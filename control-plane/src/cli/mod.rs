//! The `cellfleet` command line: the server (`serve`, `up`) and the operator CLI, which talks
//! to a server over HTTP (`--server`/`CELLFLEET_SERVER`, `--token`/`CELLFLEET_TOKEN`).
//!
//! Output is a table for people by default and the API's JSON with `-o json`. Every error ends
//! the process with a non-zero exit code and a one-line reason on stderr.

mod client;
mod moves;
mod output;
mod runbooks;
mod trains;
mod up;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cellfleet_api::{
    ApplyRequest, ApplyResponse, AuditRecord, AuditVerification, CellName, CellView,
    CreateTenantRequest, CreateTokenRequest, Env, ManifestFile, Profile, Quotas, RegionName,
    RegionView, Residency, Role, TenantContext, TenantExplain, TenantId, TenantSpec, TenantView,
    TokenCreated, TokenView,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

pub use client::{ApiFailure, Client, install_crypto_provider};

use crate::http::DEFAULT_MAX_BODY_BYTES;
use crate::server::{Server, ServerConfig, read_token_file, shutdown_signal};
use crate::service::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "cellfleet",
    version,
    about = "Cell-based fleet manager for multi-tenant SaaS"
)]
pub struct Cli {
    /// Control plane URL.
    #[arg(
        long,
        global = true,
        env = "CELLFLEET_SERVER",
        default_value = "http://127.0.0.1:7400"
    )]
    pub server: String,
    /// API token.
    #[arg(long, global = true, env = "CELLFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token (e.g. the bootstrap admin token file).
    #[arg(long, global = true, env = "CELLFLEET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane.
    Serve(ServeArgs),
    /// Bring up a local control plane on SQLite with a sample fleet registered.
    Up(up::UpArgs),
    /// Apply manifests (Region, Cell, Tenant) from files or directories.
    Apply(ApplyArgs),
    /// Onboard, inspect and change tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Inspect cells.
    #[command(subcommand)]
    Cell(CellCommand),
    /// Inspect regions.
    #[command(subcommand)]
    Region(RegionCommand),
    /// The fleet-wide migration stream of the cell databases.
    #[command(subcommand)]
    Migration(MigrationCommand),
    /// Releases: register them and deploy them to cells.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Move tenants between cells (with writes running), watch, abort, roll back.
    #[command(subcommand)]
    Move(moves::MoveCommand),
    /// The edge routers the control plane sees.
    #[command(subcommand)]
    Router(moves::RouterCommand),
    /// Release trains: roll a release through the fleet in gated waves, watch, steer them.
    #[command(subcommand)]
    Train(trains::TrainCommand),
    /// Halt every running train at once (`resume-the-line` lets them go on).
    StopTheLine {
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let trains halted by `stop-the-line` go on.
    ResumeTheLine,
    /// Fleet feature flags: roll out, kill.
    #[command(subcommand)]
    Flag(trains::FlagCommand),
    /// Runbooks: list, show, run (with --dry-run), follow, approve, abort.
    #[command(subcommand)]
    Runbook(runbooks::RunbookCommand),
    /// Events the fleet emitted (runbooks' notify steps).
    #[command(subcommand)]
    Event(runbooks::EventCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Registry database: sqlite://PATH (created if missing) or postgres://…
    #[arg(
        long,
        env = "CELLFLEET_DATABASE_URL",
        default_value = "sqlite://cellfleet.db"
    )]
    pub database_url: String,
    /// Address to listen on.
    #[arg(long, env = "CELLFLEET_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: String,
    /// Where to write the bootstrap admin token on an empty registry [default: next to a SQLite
    /// database, else ./cellfleet-admin.token].
    #[arg(long, env = "CELLFLEET_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How long archived tenants' data is kept before `tenant delete` is allowed.
    #[arg(long, env = "CELLFLEET_ARCHIVE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub archive_retention: Duration,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "CELLFLEET_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// The Ed25519 key (PKCS#8 PEM) that signs audit checkpoints; created if missing. Keep it
    /// off the database host [default: next to a SQLite database, else ./cellfleet-audit.key].
    #[arg(long, env = "CELLFLEET_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// Where each checkpoint is also appended (JSON lines) [default: beside the key].
    #[arg(long, env = "CELLFLEET_AUDIT_CHECKPOINT_LOG")]
    pub audit_checkpoint_log: Option<PathBuf>,
    /// How often the audit chain is checkpointed.
    #[arg(long, env = "CELLFLEET_AUDIT_CHECKPOINT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub audit_checkpoint_interval: Duration,
    /// A router not seen on its watch for this long is gone: a move's cut-over does not wait for
    /// it (`cellfleet router list` shows it as gone). Routers are seen as each watch starts and
    /// ends, so keep this above their `--poll` (30 s by default).
    #[arg(long, env = "CELLFLEET_ROUTER_GONE_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub router_gone_after: Duration,
    /// How long a cut-over waits for every live router to hold the frozen tenant before it gives
    /// the attempt up (the route stays on the source; the move tries again).
    #[arg(long, env = "CELLFLEET_ROUTER_ACK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub router_ack_timeout: Duration,
    /// Cut-over attempts a move makes before it stops (aborted, the tenant where it was).
    #[arg(long, env = "CELLFLEET_CUTOVER_ATTEMPTS", default_value_t = 5)]
    pub cutover_attempts: usize,
    /// A folder of runbooks (`*.yaml`, with a `NAME.md` page beside each) besides the shipped
    /// ones; repeatable. Read on every use: a new or edited file needs no restart. A runbook
    /// here may run what its steps say for the roles it names: keep the folder as guarded as
    /// the server's configuration.
    #[arg(long = "runbooks", env = "CELLFLEET_RUNBOOKS", value_delimiter = ':')]
    pub runbooks: Vec<PathBuf>,
    /// The longest a long-poll (an agent's `GET /v1/agent/desired`, a router's
    /// `GET /v1/routes/watch`) holds its request, whatever `timeout` the client asked for: keep
    /// it below the idle timeout of any proxy or load balancer in front of the control plane.
    #[arg(long, env = "CELLFLEET_MAX_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file or directory (its *.yaml / *.yml files); repeatable; `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Show what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and place it.
    Create(CreateTenantArgs),
    /// Show one tenant.
    Get { id: TenantId },
    /// List tenants (all but deleted, or one state).
    List {
        #[arg(long)]
        state: Option<String>,
    },
    /// Suspend an active tenant.
    Suspend(TransitionArgs),
    /// Resume a suspended tenant.
    Resume(TransitionArgs),
    /// Archive a tenant (its data is kept for the retention period).
    Archive(TransitionArgs),
    /// Delete an archived tenant after its retention has passed.
    Delete { id: TenantId },
    /// Explain why a tenant is where it is (or why it is not placed).
    Explain { id: TenantId },
    /// The tenant context other platform modules consume.
    Context {
        id: TenantId,
        #[arg(long, default_value = "prod")]
        env: Env,
    },
}

#[derive(Debug, Args)]
pub struct TransitionArgs {
    pub id: TenantId,
    /// Why (recorded in the audit log and on the tenant).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateTenantArgs {
    pub id: TenantId,
    #[arg(long)]
    pub display_name: String,
    #[arg(long, default_value = "mt-standard")]
    pub profile: Profile,
    /// Allowed regions, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub allowed_regions: Vec<RegionName>,
    /// Allowed jurisdiction (every region of it).
    #[arg(long)]
    pub jurisdiction: Option<String>,
    #[arg(long)]
    pub preferred_region: Option<RegionName>,
    /// Environment tier; repeatable [default: prod].
    #[arg(long = "env")]
    pub envs: Vec<Env>,
    #[arg(long)]
    pub requests_per_second: Option<u32>,
    #[arg(long)]
    pub storage_gb: Option<u32>,
    /// Feature flag NAME=JSON (e.g. newEditor=true); repeatable.
    #[arg(long = "flag")]
    pub flags: Vec<String>,
    /// Who to tell about the tenant (an address); repeatable.
    #[arg(long = "owner")]
    pub owners: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CellCommand {
    List,
    Get {
        name: CellName,
    },
    /// ready → draining: no new placements (the cell-drain runbook also moves its tenants out).
    Drain {
        name: CellName,
        #[arg(long)]
        reason: Option<String>,
    },
    /// draining → ready.
    Undrain {
        name: CellName,
        #[arg(long)]
        reason: Option<String>,
    },
    /// draining → retired, once nothing is placed on it and no move goes through it.
    Retire {
        name: CellName,
        #[arg(long)]
        reason: Option<String>,
    },
    /// After restoring the registry from an older copy: move the cell's desired generation past
    /// its agent's (which refuses to go back), so the agent takes the registry's state.
    Resync {
        name: CellName,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    List,
}

#[derive(Debug, Subcommand)]
pub enum MigrationCommand {
    /// Append migrations (files `V{version}__{name}.{expand|contract}.sql`, or a directory of them).
    Add {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// The stream, in version order.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Register a release from a `kind: Release` manifest.
    Create {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    List,
    /// Move cells to a release (every cell unless --cell is given).
    Deploy {
        version: String,
        #[arg(long = "cell")]
        cells: Vec<CellName>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; the secret is printed once.
    Create {
        #[arg(long)]
        role: Role,
        /// The cell an agent token is bound to.
        #[arg(long)]
        cell: Option<CellName>,
        #[arg(long)]
        description: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest audit records.
    List {
        /// Only this target and its children (e.g. tenant/acme).
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Re-compute the hash chain and check it against the signed checkpoints; exits 1 and names
    /// where tampering starts if anything does not verify.
    Verify {
        /// Checkpoint copies kept outside the registry (JSON lines, or the JSON of `audit
        /// checkpoints -o json`), checked too.
        #[arg(long)]
        checkpoints: Vec<PathBuf>,
    },
    /// The signed checkpoints of the chain's head.
    Checkpoints,
    /// Checkpoint the chain's head now (admin; the server also does so every minute).
    Checkpoint,
    /// The public key that verifies checkpoints.
    Key,
}

/// Whether `e` is a write to a closed pipe (`cellfleet audit list | head`): not a failure of the
/// command, so the process ends quietly.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs the parsed command. Returns the process exit code for outcomes that are not errors
/// but must still fail a script (a tampered audit log).
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => serve(args).await.map(|()| 0),
        Command::Up(args) => up::up(args).await.map(|()| 0),
        command => {
            let token = match (&cli.token, &cli.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => Some(read_token_file(f)?),
                (None, None) => None,
            };
            let client = Client::new(&cli.server, token)?;
            operate(&client, cli.output, command).await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let server = Server::start(ServerConfig {
        database_url: args.database_url,
        listen: args.listen,
        admin_token_file: args.admin_token_file,
        settings: Settings {
            archive_retention: args.archive_retention,
            runbook_dirs: args.runbooks,
            max_wait: args.max_wait,
            ..Settings::default()
        },
        max_body_bytes: args.max_body_bytes,
        audit_key_file: args.audit_key_file,
        audit_checkpoint_log: args.audit_checkpoint_log,
        audit_checkpoint_every: args.audit_checkpoint_interval,
        move_settings: crate::moves::MoveSettings {
            router_gone_after_ms: millis(args.router_gone_after),
            ack_timeout_ms: millis(args.router_ack_timeout),
            max_attempts: args.cutover_attempts.max(1),
            ..Default::default()
        },
    })
    .await?;
    if server.audit_key_created {
        println!(
            "audit key created at {} (public key: {}.pub): keep it off the database host",
            server.audit_key_file.display(),
            server.audit_key_file.display()
        );
    }
    if let Some(path) = &server.bootstrap_token_file {
        println!(
            "bootstrap admin token written to {} (mode 0600)",
            path.display()
        );
    }
    println!("cellfleet control plane listening on {}", server.url());
    server.serve(shutdown_signal()).await
}

/// Prints `value` as JSON or as the table `render` makes.
pub(crate) fn show<T: Serialize>(
    format: Format,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let mut text = match format {
        Format::Json => serde_json::to_string_pretty(value)?,
        Format::Table => render(value),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // A write error (the reader went away: `… | head`) is returned, not a panic; `main` ends
    // quietly on a broken pipe like other Unix tools.
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn operate(client: &Client, format: Format, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Serve(_) | Command::Up(_) => {
            bail!("serve and up run a server; they are not client commands")
        }
        Command::Apply(args) => {
            let req = ApplyRequest {
                files: read_manifests(&args.files)?,
                dry_run: args.dry_run,
            };
            let resp: ApplyResponse = client.post("/v1/apply", &req).await?;
            show(format, &resp, output::apply)?;
        }
        Command::Tenant(cmd) => tenant(client, format, cmd).await?,
        Command::Move(cmd) => return moves::run(client, format, cmd).await,
        Command::Router(cmd) => moves::routers(client, format, cmd).await?,
        Command::Train(cmd) => return trains::run(client, format, cmd).await,
        Command::StopTheLine { reason } => trains::stop_line(client, format, reason).await?,
        Command::ResumeTheLine => trains::resume_line(client, format).await?,
        Command::Flag(cmd) => trains::flags(client, format, cmd).await?,
        Command::Runbook(cmd) => return runbooks::run(client, format, cmd).await,
        Command::Event(cmd) => runbooks::events(client, format, cmd).await?,
        Command::Cell(CellCommand::Drain { name, reason }) => {
            runbooks::lifecycle(client, format, "drain", &name, reason).await?
        }
        Command::Cell(CellCommand::Undrain { name, reason }) => {
            runbooks::lifecycle(client, format, "undrain", &name, reason).await?
        }
        Command::Cell(CellCommand::Retire { name, reason }) => {
            runbooks::lifecycle(client, format, "retire", &name, reason).await?
        }
        Command::Cell(CellCommand::Resync { name }) => {
            runbooks::resync(client, format, &name).await?
        }
        Command::Cell(CellCommand::List) => show(
            format,
            &client.get::<Vec<CellView>>("/v1/cells").await?,
            |c| output::cells(c),
        )?,
        Command::Cell(CellCommand::Get { name }) => show(
            format,
            &client.get::<CellView>(&format!("/v1/cells/{name}")).await?,
            output::cell,
        )?,
        Command::Region(RegionCommand::List) => show(
            format,
            &client.get::<Vec<RegionView>>("/v1/regions").await?,
            |r| output::regions(r),
        )?,
        Command::Migration(MigrationCommand::Add { files }) => {
            let files = read_files(&files, &["sql"])?
                .into_iter()
                .map(|f| cellfleet_api::MigrationFile {
                    // The stream names a migration by its file name; where it lies is local.
                    name: std::path::Path::new(&f.name)
                        .file_name()
                        .map_or(f.name.clone(), |n| n.to_string_lossy().into_owned()),
                    content: f.content,
                })
                .collect();
            let added: Vec<cellfleet_api::MigrationAdded> = client
                .post(
                    "/v1/migrations",
                    &cellfleet_api::AddMigrationsRequest { files },
                )
                .await?;
            show(format, &added, |a| output::migrations_added(a))?
        }
        Command::Migration(MigrationCommand::List) => {
            let stream: Vec<cellfleet_api::Migration> = client.get("/v1/migrations").await?;
            show(format, &stream, |m| output::migrations(m))?
        }
        Command::Release(ReleaseCommand::Create { file }) => {
            let req = cellfleet_api::CreateReleaseRequest {
                file: read_manifest(&file)?,
            };
            let v: cellfleet_api::ReleaseView = client.post("/v1/releases", &req).await?;
            show(format, &v, |v| {
                format!(
                    "release {} registered ({})\n",
                    v.version, v.spec.artifact.command
                )
            })?
        }
        Command::Release(ReleaseCommand::List) => {
            let releases: Vec<cellfleet_api::ReleaseView> = client.get("/v1/releases").await?;
            show(format, &releases, |r| output::releases(r))?
        }
        Command::Release(ReleaseCommand::Deploy { version, cells }) => {
            let changed: Vec<CellName> = client
                .post(
                    &format!("/v1/releases/{version}/deploy"),
                    &cellfleet_api::DeployRequest { cells },
                )
                .await?;
            show(format, &changed, |c| {
                if c.is_empty() {
                    format!("every cell already runs {version}\n")
                } else {
                    format!(
                        "{} cell(s) moved to {version}: {}\n",
                        c.len(),
                        c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                    )
                }
            })?
        }
        Command::Token(TokenCommand::Create {
            role,
            cell,
            description,
        }) => {
            let req = CreateTokenRequest {
                role,
                cell,
                description,
            };
            show(
                format,
                &client.post::<_, TokenCreated>("/v1/tokens", &req).await?,
                output::token_created,
            )?
        }
        Command::Token(TokenCommand::List) => show(
            format,
            &client.get::<Vec<TokenView>>("/v1/tokens").await?,
            |t| output::tokens(t),
        )?,
        Command::Token(TokenCommand::Revoke { id }) => {
            let v: TokenView = client.delete(&format!("/v1/tokens/{id}")).await?;
            show(format, &v, |v| format!("token {} revoked\n", v.id))?
        }
        Command::Audit(AuditCommand::List { target, limit }) => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(target.map(|t| ("target", t)));
            let records: Vec<AuditRecord> = client.get_query("/v1/audit", &query).await?;
            show(format, &records, |r| output::audit(r))?
        }
        Command::Audit(AuditCommand::Verify { checkpoints }) => {
            let mut copies = Vec::new();
            for path in &checkpoints {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                copies.extend(
                    crate::audit_key::parse_checkpoints(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                );
            }
            let v: AuditVerification = client
                .post(
                    "/v1/audit/verify",
                    &cellfleet_api::VerifyAuditRequest {
                        checkpoints: copies,
                    },
                )
                .await?;
            show(format, &v, output::verification)?;
            if !v.ok {
                return Ok(1);
            }
        }
        Command::Audit(AuditCommand::Checkpoints) => {
            let list: Vec<cellfleet_api::AuditCheckpoint> =
                client.get("/v1/audit/checkpoints").await?;
            show(format, &list, |l| output::checkpoints(l))?
        }
        Command::Audit(AuditCommand::Checkpoint) => {
            let made: Option<cellfleet_api::AuditCheckpoint> =
                client.post("/v1/audit/checkpoints", &()).await?;
            show(format, &made, |m| match m {
                Some(c) => format!("checkpointed record {} ({})\n", c.seq, c.hash),
                None => "the newest record is already checkpointed\n".to_owned(),
            })?
        }
        Command::Audit(AuditCommand::Key) => {
            let key: cellfleet_api::AuditKeyView = client.get("/v1/audit/key").await?;
            show(format, &key, |k| {
                format!("{} key {}\n{}", k.algorithm, k.key_id, k.public_key_pem)
            })?
        }
    }
    Ok(0)
}

async fn tenant(client: &Client, format: Format, cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create(args) => {
            let req = CreateTenantRequest {
                id: args.id.clone(),
                spec: tenant_spec(args)?,
            };
            let v: TenantView = client.post("/v1/tenants", &req).await?;
            show(format, &v, output::tenant)
        }
        TenantCommand::Get { id } => show(
            format,
            &client
                .get::<TenantView>(&format!("/v1/tenants/{id}"))
                .await?,
            output::tenant,
        ),
        TenantCommand::List { state } => {
            let query: Vec<(&str, String)> = state.map(|s| ("state", s)).into_iter().collect();
            let tenants: Vec<TenantView> = client.get_query("/v1/tenants", &query).await?;
            show(format, &tenants, |t| output::tenants(t))
        }
        TenantCommand::Suspend(a) => transition(client, format, "suspend", a).await,
        TenantCommand::Resume(a) => transition(client, format, "resume", a).await,
        TenantCommand::Archive(a) => transition(client, format, "archive", a).await,
        TenantCommand::Delete { id } => {
            let v: TenantView = client.delete(&format!("/v1/tenants/{id}")).await?;
            show(format, &v, |v| format!("tenant {} deleted\n", v.id))
        }
        TenantCommand::Explain { id } => show(
            format,
            &client
                .get::<TenantExplain>(&format!("/v1/tenants/{id}/explain"))
                .await?,
            output::explain,
        ),
        TenantCommand::Context { id, env } => show(
            format,
            &client
                .get_query::<TenantContext>(
                    &format!("/v1/tenants/{id}/context"),
                    &[("env", env.to_string())],
                )
                .await?,
            output::context,
        ),
    }
}

async fn transition(
    client: &Client,
    format: Format,
    verb: &str,
    a: TransitionArgs,
) -> anyhow::Result<()> {
    let body = cellfleet_api::LifecycleRequest { reason: a.reason };
    let v: TenantView = client
        .post(&format!("/v1/tenants/{}/{verb}", a.id), &body)
        .await?;
    show(format, &v, |v| {
        format!("tenant {} is now {}\n", v.id, v.state)
    })
}

fn tenant_spec(a: CreateTenantArgs) -> anyhow::Result<TenantSpec> {
    let mut flags = std::collections::BTreeMap::new();
    for f in &a.flags {
        let Some((name, value)) = f.split_once('=') else {
            bail!("--flag {f:?}: expected NAME=VALUE");
        };
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        flags.insert(name.to_owned(), value);
    }
    Ok(TenantSpec {
        display_name: a.display_name,
        profile: a.profile,
        residency: Residency {
            allowed_regions: (!a.allowed_regions.is_empty()).then_some(a.allowed_regions),
            jurisdiction: a.jurisdiction,
            preferred_region: a.preferred_region,
        },
        environments: if a.envs.is_empty() {
            vec![Env::prod()]
        } else {
            a.envs
        },
        quotas: Quotas {
            requests_per_second: a.requests_per_second,
            storage_gb: a.storage_gb,
        },
        flags,
        slo: None,
        owners: a.owners,
    })
}

/// Reads manifest files; a directory contributes its `*.yaml`/`*.yml` files in name order.
fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Vec<ManifestFile>> {
    read_files(paths, &["yaml", "yml"])
}

/// Reads files; a directory contributes its files with one of `extensions`, in name order; `-`
/// reads stdin.
fn read_files(paths: &[PathBuf], extensions: &[&str]) -> anyhow::Result<Vec<ManifestFile>> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut content = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut content)
                .context("reading stdin")?;
            files.push(ManifestFile {
                name: "<stdin>".into(),
                content,
            });
        } else if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| extensions.iter().any(|e| x == *e))
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!(
                    "{}: no *.{} files",
                    path.display(),
                    extensions.join(" or *.")
                );
            }
            for p in entries {
                files.push(read_manifest(&p)?);
            }
        } else {
            files.push(read_manifest(path)?);
        }
    }
    Ok(files)
}

fn read_manifest(path: &std::path::Path) -> anyhow::Result<ManifestFile> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(ManifestFile {
        name: path.display().to_string(),
        content,
    })
}
