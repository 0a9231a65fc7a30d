//! `cellfleet-router`: the edge sidecar (SPEC §6). See `cellfleet_routing::router`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;
use cellfleet_routing::router::nginx_upstreams::NginxUpstreams;
use cellfleet_routing::router::{RouterConfig, SidecarConfig, TenantSource, run_sidecar};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "cellfleet-router",
    version,
    about = "Edge sidecar answering \"which cell serves tenant X?\" for nginx, Envoy and HTTP clients"
)]
struct Args {
    /// Control plane URL.
    #[arg(long, env = "CELLFLEET_CONTROL_PLANE")]
    control_plane: String,
    /// File holding an `edge` token for the control plane.
    #[arg(long, env = "CELLFLEET_ROUTER_TOKEN_FILE")]
    token_file: PathBuf,
    /// Address to serve lookups on.
    #[arg(
        long,
        env = "CELLFLEET_ROUTER_LISTEN",
        default_value = "127.0.0.1:7480"
    )]
    listen: SocketAddr,
    /// Directory for the last good routing table (served when the control plane is unreachable).
    #[arg(long, env = "CELLFLEET_ROUTER_CACHE_DIR")]
    cache_dir: PathBuf,
    /// Environment the proxy modes route (`/route/{tenant}` also takes `?env=`).
    #[arg(long, env = "CELLFLEET_ROUTER_ENV", default_value = "prod")]
    env: String,
    /// Where proxied requests name their tenant: `header[:NAME]` (default header X-Tenant-Id),
    /// `host-prefix` (acme.example.com) or `path-prefix` (/acme/…).
    #[arg(
        long,
        env = "CELLFLEET_ROUTER_TENANT_FROM",
        default_value = "header:X-Tenant-Id"
    )]
    tenant_from: TenantSource,
    /// Longest hold of a request for a tenant whose route is frozen (a move cutting over).
    #[arg(long, env = "CELLFLEET_ROUTER_HOLD", default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Header carrying the cell name in Envoy mode (for a `cluster_header` route).
    #[arg(
        long,
        env = "CELLFLEET_ROUTER_CLUSTER_HEADER",
        default_value = "x-cellfleet-cell"
    )]
    cluster_header: HeaderName,
    /// File with a token lookups must present (`Authorization: Bearer …`). Required unless
    /// listening on a loopback address or `--allow-unauthenticated` is given.
    #[arg(long, env = "CELLFLEET_ROUTER_LOOKUP_TOKEN_FILE")]
    lookup_token_file: Option<PathBuf>,
    /// Serve lookups without a token on a non-loopback address.
    #[arg(long, env = "CELLFLEET_ROUTER_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Threads serving requests [default: one per CPU the process may run on]. With one, the
    /// router runs on a single-threaded runtime (no cross-thread wake-ups), which is fastest
    /// when it is pinned to one core.
    #[arg(long, env = "CELLFLEET_ROUTER_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Longest wait of one long-poll to the control plane.
    #[arg(long, env = "CELLFLEET_ROUTER_POLL", default_value = "30s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Write one nginx `upstream` block per cell (with keepalive) to this file, for the nginx
    /// edge to include: nginx then reuses its connections to cells. Rewritten only when cells
    /// change; needs --nginx-reload-command.
    #[arg(
        long,
        env = "CELLFLEET_ROUTER_NGINX_UPSTREAMS",
        requires = "nginx_reload_command"
    )]
    nginx_upstreams: Option<PathBuf>,
    /// Run with `sh -c` after the upstreams file changed, e.g. "nginx -s reload".
    #[arg(long, env = "CELLFLEET_ROUTER_NGINX_RELOAD_COMMAND")]
    nginx_reload_command: Option<String>,
    /// Idle connections nginx keeps to each cell.
    #[arg(long, env = "CELLFLEET_ROUTER_NGINX_KEEPALIVE", default_value_t = 32)]
    nginx_keepalive: u32,
    /// This router's id on its watches (the control plane records the table version each
    /// router serves; tenant moves wait for them) [default: one made on first start and kept in
    /// the cache directory].
    #[arg(long, env = "CELLFLEET_ROUTER_ID")]
    router_id: Option<String>,
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(token)
}

/// Ctrl-C or SIGTERM.
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
        let token = read_token(&args.token_file)?;
        let lookup_token = args
            .lookup_token_file
            .as_deref()
            .map(read_token)
            .transpose()?;
        anyhow::ensure!(
            lookup_token.is_some() || args.listen.ip().is_loopback() || args.allow_unauthenticated,
            "refusing to serve tenant routes on {} without a lookup token: give \
             --lookup-token-file, listen on a loopback address, or pass --allow-unauthenticated",
            args.listen
        );
        args.env
            .parse::<cellfleet_api::Env>()
            .map_err(|e| anyhow::anyhow!("--env {:?}: {e}", args.env))?;
        let config = SidecarConfig {
            control_plane: args.control_plane.clone(),
            token,
            listen: args.listen,
            cache_dir: args.cache_dir.clone(),
            poll: args.poll,
            router: RouterConfig {
                env: args.env.clone(),
                tenant_source: args.tenant_from.clone(),
                hold: args.hold,
                cluster_header: args.cluster_header.clone(),
                lookup_token,
            },
            nginx_upstreams: args.nginx_upstreams.clone().map(|file| NginxUpstreams {
                file,
                reload_command: args.nginx_reload_command.clone(),
                keepalive: args.nginx_keepalive,
                grace: Duration::from_secs(2),
            }),
            router_id: args.router_id.clone(),
        };
        let threads = args.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let runtime = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?
        };
        runtime.block_on(run_sidecar(config, shutdown_signal()))?;
        Ok(())
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
