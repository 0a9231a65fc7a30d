//! Keeping a [`RoutingTable`] in sync with the control plane.
//!
//! The watcher takes a snapshot, then long-polls `GET /v1/routes/watch?since=V`, applying each
//! batch into a new table that it publishes atomically ([`ArcSwap`]): readers never lock and never
//! see a half-applied batch. Anything wrong — the control plane unreachable, an answer that does
//! not parse, a batch that would go back a generation — leaves the last good table in place; the
//! watcher retries with backoff (and re-snapshots after a refused batch). Every published table is
//! also handed to `on_update`, e.g. to persist it for a restart without the control plane.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use cellfleet_api::{ErrorBody, RoutesSnapshot, RoutesWatch};

use crate::table::RoutingTable;

/// How a watcher reaches the control plane.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub control_plane: String,
    /// An `edge` token.
    pub token: String,
    /// How long each long-poll may wait.
    pub poll: Duration,
    /// A stable id for this router: the control plane then records the table version it serves
    /// (tenant moves wait for every live router to hold a frozen route).
    pub router_id: Option<String>,
}

/// Syncs a routing table from the control plane (see the module docs).
pub struct RouteWatcher {
    config: WatcherConfig,
    http: reqwest::Client,
    table: Arc<ArcSwap<RoutingTable>>,
    status: Arc<SyncStatus>,
    on_update: OnUpdate,
}

type OnUpdate = Box<dyn Fn(&Arc<RoutingTable>) + Send + Sync>;

/// How the watcher's last exchanges with the control plane went: what a router reports as its
/// staleness. Updated without locks except for the last error's text.
#[derive(Debug, Default)]
pub struct SyncStatus {
    /// Whether the last exchange succeeded (a long-poll in flight after a success counts as
    /// connected: any change would reach us as soon as it is made).
    connected: AtomicBool,
    /// Unix milliseconds of the last successful exchange (0: never).
    last_success_ms: AtomicI64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Snapshots taken because the control plane's epoch was not the table's.
    epoch_changes: AtomicU64,
}

impl SyncStatus {
    /// A status for a table restored from elsewhere (e.g. disk) that was known current at
    /// `as_of` (Unix milliseconds): staleness counts from there until the first success.
    pub fn restored(as_of_ms: i64) -> Self {
        SyncStatus {
            last_success_ms: AtomicI64::new(as_of_ms),
            ..SyncStatus::default()
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Unix milliseconds of the last time the table was known current (0: never).
    pub fn last_success_ms(&self) -> i64 {
        self.last_success_ms.load(Ordering::Relaxed)
    }

    /// How often the table was replaced by a snapshot of another epoch (a registry restored
    /// from an older copy, or a control-plane restart).
    pub fn epoch_changes(&self) -> u64 {
        self.epoch_changes.load(Ordering::Relaxed)
    }

    /// Failed exchanges since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// How long the table may have been out of date: zero while connected, else the time since
    /// the last success; `None` if the table was never known current.
    pub fn staleness(&self, now_ms: i64) -> Option<Duration> {
        if self.connected() {
            return Some(Duration::ZERO);
        }
        match self.last_success_ms() {
            0 => None,
            at => Some(Duration::from_millis(
                u64::try_from(now_ms.saturating_sub(at)).unwrap_or(0),
            )),
        }
    }

    fn succeeded(&self) {
        self.last_success_ms.store(unix_ms(), Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    fn failed(&self, error: &str) {
        self.connected.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_owned());
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl std::fmt::Debug for RouteWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWatcher")
            .field("control_plane", &self.config.control_plane)
            .field("version", &self.table.load().version())
            .finish()
    }
}

impl RouteWatcher {
    /// A watcher starting from `initial` (the empty table, or one restored from disk).
    pub fn new(config: WatcherConfig, initial: RoutingTable) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(RouteWatcher {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(config.poll + Duration::from_secs(10))
                .build()?,
            config,
            table: Arc::new(ArcSwap::from_pointee(initial)),
            status: Arc::new(SyncStatus::default()),
            on_update: Box::new(|_| {}),
        })
    }

    /// Called with every table the watcher publishes, right after readers can see it.
    pub fn on_update(mut self, f: impl Fn(&Arc<RoutingTable>) + Send + Sync + 'static) -> Self {
        self.on_update = Box::new(f);
        self
    }

    /// Starts from this sync status instead of "never synced" (see [`SyncStatus::restored`]).
    pub fn with_status(mut self, status: SyncStatus) -> Self {
        self.status = Arc::new(status);
        self
    }

    /// The shared sync status (connected, last success, failures).
    pub fn status(&self) -> Arc<SyncStatus> {
        self.status.clone()
    }

    /// The shared handle readers load the current table from.
    pub fn table(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.table.clone()
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, String> {
        let url = format!("{}{path}", self.config.control_plane.trim_end_matches('/'));
        let resp = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(&self.config.token)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            let why = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.message)
                .unwrap_or_default();
            return Err(format!("{url}: {status} {why}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))
    }

    fn publish(&self, table: RoutingTable) {
        let table = Arc::new(table);
        self.table.store(table.clone());
        (self.on_update)(&table);
    }

    /// What the table holds, for the control plane: its version and epoch (when it knows one).
    fn held(&self) -> Vec<(&'static str, String)> {
        let table = self.table.load();
        let mut query = vec![("since", table.version().to_string())];
        if !table.epoch().is_empty() {
            query.push(("epoch", table.epoch().to_owned()));
        }
        query
    }

    /// Publishes the table `snapshot` makes of the current one ([`RoutingTable::replaced_by`]).
    fn take_snapshot(&self, snapshot: &RoutesSnapshot) -> Result<(), String> {
        let current = self.table.load();
        let table = current.replaced_by(snapshot).map_err(|e| e.to_string())?;
        if !current.epoch().is_empty() && current.epoch() != table.epoch() {
            self.status.epoch_changes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                from = current.epoch(),
                to = table.epoch(),
                version = table.version(),
                had = current.version(),
                "the control plane's routing history changed (new epoch): took its snapshot"
            );
        }
        tracing::info!(
            version = table.version(),
            epoch = table.epoch(),
            routes = table.len(),
            "routing snapshot"
        );
        self.publish(table);
        Ok(())
    }

    async fn resnapshot(&self) -> Result<(), String> {
        let snapshot: RoutesSnapshot = self.get("/v1/routes", &self.held()).await?;
        self.take_snapshot(&snapshot)
    }

    /// One sync step: a snapshot when the table has none yet (or must start over), else one
    /// long-poll and its changes.
    pub async fn step(&self, fresh: bool) -> Result<(), String> {
        if fresh {
            return self.resnapshot().await;
        }
        let wait = format!("{}ms", self.config.poll.as_millis());
        let mut query = self.held();
        query.push(("timeout", wait));
        if let Some(id) = &self.config.router_id {
            query.push(("router", id.clone()));
        }
        let watch: RoutesWatch = self.get("/v1/routes/watch", &query).await?;
        if let Some(snapshot) = watch.snapshot {
            self.take_snapshot(&snapshot)?;
        } else if !watch.changes.is_empty() {
            let current = self.table.load();
            if !current.epoch().is_empty() && watch.epoch != current.epoch() {
                return Err(format!(
                    "changes of epoch {:?} for a table of epoch {:?}: starting over from a snapshot",
                    watch.epoch,
                    current.epoch()
                ));
            }
            let mut next = current.apply(&watch.changes).map_err(|e| e.to_string())?;
            if current.epoch().is_empty() {
                next = next.with_epoch(&watch.epoch);
            }
            tracing::debug!(
                version = next.version(),
                changes = watch.changes.len(),
                "routing changes applied"
            );
            self.publish(next);
        }
        Ok(())
    }

    /// Syncs until `shutdown` resolves, keeping the last good table through every failure.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut fresh = true;
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                result = self.step(fresh) => match result {
                    Ok(()) => {
                        self.status.succeeded();
                        fresh = false;
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        self.status.failed(&e);
                        tracing::warn!(error = %e, retry_in = ?backoff, "routing sync failed; serving the last good table");
                        // Start over from a snapshot: the next answer may not follow this table.
                        fresh = true;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
    }
}
