//! Operations on the registry: each loads what it needs, asks the pure core (placement,
//! lifecycle, manifests) for the decision, and persists the result with its audit record in one
//! transaction. Handlers and the CLI's `up` call these; nothing else writes the registry.

mod agents;
mod apply;
mod audit;
pub mod cells;
mod diff;
mod flags;
pub mod migrations;
pub mod moves;
mod operations;
mod placing;
mod releases;
mod routes;
mod runbooks;
mod tenants;
mod tokens;
pub mod trains;
mod views;

use std::time::Duration;

use cellfleet_api::{CellName, CellView, RegionView};

use crate::manifest::ManifestError;
use crate::placement::Policy;
use crate::store::{self, Store, StoreError};

pub use agents::MAX_WAIT;
pub use routes::Held;
pub use tokens::Bootstrap;
pub(crate) use tokens::write_secret_file;

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::from_store(e)
    }
}

/// Proof, required by [`store::Tx::commit`], that a mutation is committed through
/// `Registry::commit`, which re-derives the desired state and routes of every cell the mutation
/// touched in the same transaction. Only this module can make one, so no other path can commit a
/// mutation and leave agents or routers on stale state.
#[derive(Debug)]
pub struct Refreshed(());

/// Errors of registry operations; the HTTP layer maps each to a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name} not found")]
    NotFound { kind: &'static str, name: String },
    /// The request is valid but conflicts with the current state (illegal transition, exists).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("{0}")]
    Io(String),
    /// Lost a race that re-reading and trying again resolves: a compare-and-swap that found the
    /// row changed, a serialization failure, a lock held elsewhere. Not a bug.
    #[error("{0}")]
    Busy(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::from(StoreError::Sql(e))
    }
}

impl Error {
    /// Whether trying again (after re-reading) may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Busy(_))
    }

    /// Classifies a store error: transient contention becomes [`Error::Busy`].
    fn from_store(e: StoreError) -> Error {
        match &e {
            StoreError::Sql(sqlx::Error::Database(db)) if transient(db.code().as_deref()) => {
                Error::Busy(format!("the registry is busy ({db}); try again"))
            }
            _ => Error::Store(e),
        }
    }
}

/// Database error codes that mean "contention, try again": PostgreSQL serialization failure,
/// deadlock and lock-not-available; SQLite busy and locked.
fn transient(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("40001" | "40P01" | "55P03" | "5" | "6" | "517" | "262")
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Server-wide settings of the registry.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an archived tenant's data is kept before it may be deleted.
    pub archive_retention: Duration,
    pub policy: Policy,
    /// Stores every agent report under the mutation lock, as before reports moved off it. Only
    /// for the benchmark that measures what that move bought (BENCHMARKS.md); never set by
    /// `serve`.
    #[doc(hidden)]
    pub reports_under_lock: bool,
    /// Folders of runbooks besides the shipped ones (`serve --runbooks`).
    pub runbook_dirs: Vec<std::path::PathBuf>,
    /// The longest a long-poll (an agent's desired state, a router's watch) holds a request,
    /// whatever `timeout` it asked for (`serve --max-wait`).
    pub max_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            archive_retention: Duration::from_secs(30 * 24 * 3600),
            policy: Policy::default(),
            reports_under_lock: false,
            runbook_dirs: Vec::new(),
            max_wait: MAX_WAIT,
        }
    }
}

/// The driver's last look at a train.
#[derive(Debug, Clone, Copy)]
struct TrainLook {
    version: i64,
    at: std::time::Instant,
    /// When a bake ends: look then.
    deadline: Option<std::time::Instant>,
}

/// The registry service: the store plus the rules.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    settings: Settings,
    /// Bumped after every commit that moved a cell's desired-state generation.
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// Signs audit checkpoints (none: the chain is verified without anchors).
    audit_key: Option<std::sync::Arc<crate::audit_key::AuditKey>>,
    /// Wakes the operations driver (something an operation waits for changed).
    operations: std::sync::Arc<tokio::sync::Notify>,
    /// Makes new cells (set once, by whoever runs the cells: `cellfleet up`).
    provider:
        std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn crate::provider::CellProvider>>>,
    /// When the driver last looked at each open train, at which version, and when it should
    /// look next at the latest (see `operations`).
    train_looks: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, TrainLook>>>,
    /// Set by reports that change what a cell runs: trains look again soon.
    train_news: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Registry {
    pub fn new(store: Store, settings: Settings) -> Self {
        Registry {
            store,
            settings,
            changes: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            audit_key: None,
            operations: std::sync::Arc::new(tokio::sync::Notify::new()),
            provider: std::sync::Arc::default(),
            train_looks: std::sync::Arc::default(),
            train_news: std::sync::Arc::default(),
        }
    }

    /// Gives the registry a cell provider (once; later calls change nothing).
    pub fn set_provider(&self, provider: std::sync::Arc<dyn crate::provider::CellProvider>) {
        let _ = self.provider.set(provider);
        self.operations_changed();
    }

    pub fn provider(&self) -> Option<&std::sync::Arc<dyn crate::provider::CellProvider>> {
        self.provider.get()
    }

    /// Wakes the operations driver: something an operation may wait for changed.
    pub fn operations_changed(&self) {
        self.operations.notify_one();
    }

    /// Resolves when [`Registry::operations_changed`] was called (since the last wait).
    pub async fn operations_wakeup(&self) {
        self.operations.notified().await;
    }

    /// Checkpoints the audit chain with `key` (see `audit`).
    pub fn with_audit_key(mut self, key: std::sync::Arc<crate::audit_key::AuditKey>) -> Self {
        self.audit_key = Some(key);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub async fn regions(&self) -> Result<Vec<RegionView>> {
        let mut conn = self.store.read().await?;
        let cells = store::list_cells(&mut conn).await?;
        Ok(store::list_regions(&mut conn)
            .await?
            .into_iter()
            .map(|r| views::region_view(r, &cells))
            .collect())
    }

    /// Cells with their desired generation and what their agents last reported.
    pub async fn cells(&self) -> Result<Vec<CellView>> {
        let mut conn = self.store.read().await?;
        let reports = store::reports(&mut conn).await?;
        let now = chrono::Utc::now();
        Ok(store::list_cells(&mut conn)
            .await?
            .into_iter()
            .map(|c| {
                let report = reports.get(c.name.as_str());
                views::cell_view(c, report, now)
            })
            .collect())
    }

    pub async fn cell(&self, name: &CellName) -> Result<CellView> {
        let mut conn = self.store.read().await?;
        let report = store::get_report(&mut conn, name).await?;
        store::get_cell(&mut conn, name)
            .await?
            .map(|c| views::cell_view(c, report.as_ref(), chrono::Utc::now()))
            .ok_or_else(|| not_found("cell", name))
    }

    /// Tenants and cells counted by state, for the metrics gauges.
    pub async fn state_counts(&self) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>)> {
        let mut conn = self.store.read().await?;
        Ok((
            store::count_by_state(&mut conn, store::Counted::Tenants).await?,
            store::count_by_state(&mut conn, store::Counted::Cells).await?,
        ))
    }
}

pub(crate) fn not_found(kind: &'static str, name: impl ToString) -> Error {
    Error::NotFound {
        kind,
        name: name.to_string(),
    }
}
