//! Running the control plane: open and migrate the registry, bootstrap the first admin token,
//! serve the API until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::audit_key::{AuditKey, KeySource};
use crate::http::{AppState, app};
use crate::service::{Bootstrap, Registry, Settings};
use crate::store::{Store, sqlite_path};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub database_url: String,
    pub listen: String,
    /// Where the bootstrap admin token goes on an empty registry (default: next to a SQLite
    /// database, else `./cellfleet-admin.token`).
    pub admin_token_file: Option<PathBuf>,
    pub settings: Settings,
    pub max_body_bytes: usize,
    /// The audit key (default: next to a SQLite database, else `./cellfleet-audit.key`);
    /// created if missing.
    pub audit_key_file: Option<PathBuf>,
    /// Where checkpoints are copied (default: beside the key).
    pub audit_checkpoint_log: Option<PathBuf>,
    /// How often the audit chain's head is checkpointed (when it moved).
    pub audit_checkpoint_every: Duration,
    /// Tunables of the move driver (router timeouts, cut-over attempts).
    pub move_settings: crate::moves::MoveSettings,
}

/// Default interval of audit checkpoints: records newer than this are not yet anchored.
pub const AUDIT_CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// A file the server keeps beside its registry: next to a SQLite database (`{stem}.{suffix}`),
/// else `./{fallback}` (PostgreSQL has no directory of its own).
fn beside_registry(database_url: &str, suffix: &str, fallback: &str) -> PathBuf {
    match sqlite_path(database_url) {
        Some(db) => {
            let stem = db
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cellfleet".into());
            db.with_file_name(format!("{stem}.{suffix}"))
        }
        None => PathBuf::from(fallback),
    }
}

/// The default audit key and checkpoint log for a database URL.
pub fn default_audit_files(database_url: &str) -> (PathBuf, PathBuf) {
    (
        beside_registry(database_url, "audit-key", "cellfleet-audit.key"),
        beside_registry(
            database_url,
            "audit-checkpoints.jsonl",
            "cellfleet-audit-checkpoints.jsonl",
        ),
    )
}

/// The default place of the bootstrap token for a database URL.
pub fn default_token_file(database_url: &str) -> PathBuf {
    beside_registry(database_url, "admin-token", "cellfleet-admin.token")
}

/// A control plane that is bound and ready to serve.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub registry: Registry,
    /// Set when this start wrote a bootstrap admin token.
    pub bootstrap_token_file: Option<PathBuf>,
    /// The audit key, and whether this start created it.
    pub audit_key_file: PathBuf,
    pub audit_key_created: bool,
    listener: TcpListener,
    state: AppState,
    checkpoint_every: Duration,
}

impl Server {
    /// Opens the registry (running migrations), bootstraps the admin token if the registry has
    /// none, and binds the listener.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        let store = Store::connect(&config.database_url)
            .await
            .with_context(|| {
                format!(
                    "cannot open the registry at {}",
                    redact(&config.database_url)
                )
            })?;
        let (default_key, default_log) = default_audit_files(&config.database_url);
        let audit_key_file = config.audit_key_file.clone().unwrap_or(default_key);
        let (key, source) = AuditKey::load_or_create(
            &audit_key_file,
            Some(config.audit_checkpoint_log.clone().unwrap_or(default_log)),
        )?;
        let registry = Registry::new(store, config.settings.clone()).with_audit_key(Arc::new(key));
        // A new routing epoch per start: a registry restored from an older copy cannot hand a
        // router changes that follow another history (every router takes a snapshot).
        registry
            .new_routing_epoch(None, 0, 0)
            .await
            .context("starting a routing epoch")?;
        let token_file = config
            .admin_token_file
            .clone()
            .unwrap_or_else(|| default_token_file(&config.database_url));
        let bootstrap_token_file = match registry.bootstrap_admin(&token_file).await? {
            Bootstrap::Written(path) => Some(path),
            Bootstrap::NotNeeded => None,
        };
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let mut state = AppState::new(registry.clone());
        state.max_body_bytes = config.max_body_bytes;
        state.move_settings = config.move_settings;
        Ok(Server {
            addr,
            registry,
            bootstrap_token_file,
            audit_key_file,
            audit_key_created: source == KeySource::Created,
            listener,
            state,
            checkpoint_every: config.audit_checkpoint_every,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests. Meanwhile the audit
    /// chain is checkpointed every `audit_checkpoint_every`, and once more at the end.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let checkpoints = tokio::spawn(checkpoint_loop(
            self.registry.clone(),
            self.checkpoint_every,
            stopped.clone(),
        ));
        // Long-running operations (moves) resume where their rows say they are.
        let registry = self.registry.clone();
        let settings = self.state.move_settings;
        let mut driver_stop = stopped;
        let operations = tokio::spawn(async move {
            registry
                .drive_operations(
                    format!("cp-{}", uuid::Uuid::new_v4()),
                    settings,
                    async move {
                        let _ = driver_stop.wait_for(|s| *s).await;
                    },
                )
                .await;
        });
        let served = axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .context("server failed");
        let _ = stop.send(true);
        let _ = checkpoints.await;
        let _ = operations.await;
        self.registry.store().close().await;
        served
    }
}

/// Checkpoints the audit chain every `every` (when its head moved) until `stopped`, then once
/// more, so the last records of a run are anchored too.
async fn checkpoint_loop(
    registry: Registry,
    every: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped.wait_for(|s| *s) => true,
        };
        match registry.checkpoint_audit().await {
            Ok(Some(cp)) => tracing::debug!(seq = cp.seq, "audit chain checkpointed"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot checkpoint the audit chain"),
        }
        if last {
            return;
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Reads a token file (the first line, trimmed).
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(token)
}
