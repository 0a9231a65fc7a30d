//! The cellfleet routing table for edge proxies (SPEC §6).
//!
//! - [`RoutingTable`]: an immutable snapshot of `(tenant, env) → Route`, looked up without locks
//!   or allocation;
//! - [`RouteWatcher`]: keeps one in sync with the control plane (`/v1/routes`, `/v1/routes/watch`),
//!   publishing each new table atomically and keeping the last good one through any failure;
//! - `router` (feature `router`, on by default): the `cellfleet-router` edge sidecar built on
//!   both — HTTP lookups for nginx, Envoy and plain clients, holds, quotas, an on-disk copy.
//!
//! In-process use by a Rust proxy:
//!
//! ```no_run
//! use cellfleet_routing::{RouteWatcher, RoutingTable, WatcherConfig};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let watcher = RouteWatcher::new(
//!     WatcherConfig {
//!         control_plane: "http://127.0.0.1:7400".into(),
//!         token: std::fs::read_to_string("edge.token")?.trim().into(),
//!         poll: std::time::Duration::from_secs(30),
//!         router_id: None,
//!     },
//!     RoutingTable::empty(),
//! )?;
//! let table = watcher.table();
//! tokio::spawn(watcher.run(std::future::pending()));
//! // On every request:
//! if let Some(route) = table.load().lookup("acme", "prod") {
//!     println!("acme is served by {} at {:?}", route.cell, route.endpoint);
//! }
//! # Ok(()) }
//! ```

#[cfg(feature = "router")]
pub mod router;
mod table;
mod watcher;

pub use table::{Route, RoutingError, RoutingTable};
pub use watcher::{RouteWatcher, SyncStatus, WatcherConfig, unix_ms};
