//! Keeping a [`RoutingTable`] in sync with the control plane.
//!
//! The watcher takes a snapshot, then long-polls `GET /v1/routes/watch?since=V`, applying each
//! batch into a new table that it publishes atomically ([`ArcSwap`]): readers never lock and never
//! see a half-applied batch. Anything wrong — the control plane unreachable, an answer that does
//! not parse, a batch that would go back a generation — leaves the last good table in place; the
//! watcher retries with backoff (and re-snapshots after a refused batch). Every published table is
//! also handed to `on_update`, e.g. to persist it for a restart without the control plane.

use std::sync::Arc;
use std::time::Duration;

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
}

/// Syncs a routing table from the control plane (see the module docs).
pub struct RouteWatcher {
    config: WatcherConfig,
    http: reqwest::Client,
    table: Arc<ArcSwap<RoutingTable>>,
    on_update: Box<dyn Fn(&RoutingTable) + Send + Sync>,
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
                .timeout(config.poll + Duration::from_secs(30))
                .build()?,
            config,
            table: Arc::new(ArcSwap::from_pointee(initial)),
            on_update: Box::new(|_| {}),
        })
    }

    /// Called with every table the watcher publishes.
    pub fn on_update(mut self, f: impl Fn(&RoutingTable) + Send + Sync + 'static) -> Self {
        self.on_update = Box::new(f);
        self
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
        (self.on_update)(&table);
        self.table.store(Arc::new(table));
    }

    async fn resnapshot(&self) -> Result<(), String> {
        let snapshot: RoutesSnapshot = self.get("/v1/routes", &[]).await?;
        let table = RoutingTable::from_snapshot(&snapshot).map_err(|e| e.to_string())?;
        tracing::info!(
            version = table.version(),
            routes = table.len(),
            "routing snapshot"
        );
        self.publish(table);
        Ok(())
    }

    /// One sync step: a snapshot when the table has none yet (or must start over), else one
    /// long-poll and its changes.
    pub async fn step(&self, fresh: bool) -> Result<(), String> {
        if fresh {
            return self.resnapshot().await;
        }
        let since = self.table.load().version();
        let wait = format!("{}ms", self.config.poll.as_millis());
        let watch: RoutesWatch = self
            .get(
                "/v1/routes/watch",
                &[("since", since.to_string()), ("timeout", wait)],
            )
            .await?;
        if let Some(snapshot) = watch.snapshot {
            let table = RoutingTable::from_snapshot(&snapshot).map_err(|e| e.to_string())?;
            self.publish(table);
        } else if !watch.changes.is_empty() {
            let next = self
                .table
                .load()
                .apply(&watch.changes)
                .map_err(|e| e.to_string())?;
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
                        fresh = false;
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
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
