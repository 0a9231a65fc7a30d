//! Running the control plane: open and migrate the registry, bootstrap the first admin token,
//! serve the API until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::net::TcpListener;

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
}

/// The default place of the bootstrap token for a database URL.
pub fn default_token_file(database_url: &str) -> PathBuf {
    match sqlite_path(database_url) {
        Some(db) => {
            let stem = db
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cellfleet".into());
            db.with_file_name(format!("{stem}.admin-token"))
        }
        None => PathBuf::from("cellfleet-admin.token"),
    }
}

/// A control plane that is bound and ready to serve.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub registry: Registry,
    /// Set when this start wrote a bootstrap admin token.
    pub bootstrap_token_file: Option<PathBuf>,
    listener: TcpListener,
    state: AppState,
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
        let registry = Registry::new(store, config.settings.clone());
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
        Ok(Server {
            addr,
            registry,
            bootstrap_token_file,
            listener,
            state,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .context("server failed")?;
        self.registry.store().close().await;
        Ok(())
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
