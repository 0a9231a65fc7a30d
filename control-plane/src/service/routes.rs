//! The routing table edge proxies consult (SPEC §6), derived from placements, tenant states,
//! quotas and cell endpoints.
//!
//! Like cell generations, it is level-triggered: `Registry::commit` recomputes the entries of every
//! touched cell in the mutation's own transaction and records each difference as one change with
//! the next table-wide version. Suspended tenants stay in the table (state `suspended`, so the edge
//! can refuse them with a reason); archived and deleted tenants leave it.

use std::collections::HashMap;
use std::time::Duration;

use cellfleet_api::{
    Env, RouteEntry, RouteState, RoutesSnapshot, RoutesWatch, TenantId, TenantState,
};
use sqlx::AnyConnection;

use super::moves::OpenMoves;
use super::{Registry, Result, not_found};
use crate::store::{self, CellRow, PlacementRow, TenantRow};

/// How often a waiting watcher re-reads, to see changes made through other replicas.
const REPLICA_POLL: Duration = Duration::from_secs(2);

/// The entries `cell` should have now (`version` is filled in when written).
fn entries(
    cell: &CellRow,
    placements: &[(PlacementRow, TenantRow)],
    moves: &OpenMoves,
) -> Vec<RouteEntry> {
    placements
        .iter()
        .filter_map(|(p, t)| {
            let state = match t.state {
                // A move cutting over: routers hold the tenant's requests.
                TenantState::Active if moves.frozen(&t.id, &p.env) => RouteState::Frozen,
                TenantState::Active => RouteState::Active,
                TenantState::Suspended => RouteState::Suspended,
                // Not serving yet, or not any more.
                TenantState::Draft | TenantState::Archived | TenantState::Deleted => return None,
            };
            Some(RouteEntry {
                tenant: t.id.clone(),
                env: p.env.clone(),
                cell: cell.name.clone(),
                endpoint: cell.spec.endpoint.clone(),
                state,
                generation: p.generation,
                requests_per_second: t.spec.quotas.requests_per_second,
                version: 0,
            })
        })
        .collect()
}

/// The next table version: one past the newest used in this mutation (or past `head`).
fn next_version(version: &mut Option<i64>, head: i64) -> i64 {
    let v = version.unwrap_or(head) + 1;
    *version = Some(v);
    v
}

/// Brings `cell`'s rows of the routing table to what its placements say, recording each
/// difference as a change. `version` holds the table version as advanced so far in this
/// mutation (read from the head on first use).
pub(super) async fn refresh(
    conn: &mut AnyConnection,
    cell: &CellRow,
    placements: &[(PlacementRow, TenantRow)],
    moves: &OpenMoves,
    version: &mut Option<i64>,
) -> Result<()> {
    let stored: HashMap<(TenantId, Env), RouteEntry> = store::routes_on_cell(conn, &cell.name)
        .await?
        .into_iter()
        .map(|e| ((e.tenant.clone(), e.env.clone()), e))
        .collect();
    let current = entries(cell, placements, moves);
    let head = match version {
        Some(v) => *v,
        None => store::routing_version(conn).await?,
    };
    for mut entry in current.iter().cloned() {
        let key = (entry.tenant.clone(), entry.env.clone());
        let unchanged = stored.get(&key).is_some_and(|old| {
            RouteEntry {
                version: 0,
                ..old.clone()
            } == entry
        });
        if unchanged {
            continue;
        }
        entry.version = next_version(version, head);
        store::write_route(conn, entry.version, &entry.tenant, &entry.env, Some(&entry)).await?;
    }
    for (tenant, env) in stored.keys() {
        if !current.iter().any(|e| &e.tenant == tenant && &e.env == env) {
            let v = next_version(version, head);
            store::write_route(conn, v, tenant, env, None).await?;
        }
    }
    Ok(())
}

/// A fresh epoch id.
fn fresh_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// What a client says it holds: the table version, and the epoch it belongs to (none from
/// clients older than epochs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Held<'a> {
    pub version: i64,
    pub epoch: Option<&'a str>,
}

impl Held<'_> {
    /// Version `version`, of no epoch in particular.
    pub fn at(version: i64) -> Self {
        Held {
            version,
            epoch: None,
        }
    }
}

impl Registry {
    /// The whole routing table, from one snapshot. A client that holds a version ahead of the
    /// head, in the current epoch, starts a new epoch first (the registry's history went back).
    pub async fn routes(&self, held: Held<'_>) -> Result<RoutesSnapshot> {
        let mut snapshot = self.store.read_snapshot().await?;
        let head = store::routing_version(&mut snapshot).await?;
        let epoch = store::routing_epoch(&mut snapshot).await?;
        if held.version > head && held.epoch.is_none_or(|e| e == epoch) {
            drop(snapshot);
            self.new_routing_epoch(Some(&epoch), held.version, head)
                .await?;
            snapshot = self.store.read_snapshot().await?;
        }
        read_routes(&mut snapshot).await
    }

    /// Starts a new routing epoch (replacing `old`, unless another replica already did): every
    /// watcher then takes a snapshot. Done at start-up, and when a watcher holds `held`, ahead of
    /// the `head`.
    pub async fn new_routing_epoch(&self, old: Option<&str>, held: i64, head: i64) -> Result<()> {
        let caller = store::Caller::system("routing");
        let mut tx = self.store.begin(&caller).await?;
        let new = fresh_epoch();
        let rotated = store::rotate_routing_epoch(tx.conn(), old, &new).await?;
        if rotated {
            store::reset_router_acks(tx.conn()).await?;
            let why = if held > head {
                format!(
                    "a watcher holds version {held}, ahead of the head {head}: was the registry restored from an older copy?"
                )
            } else {
                "the control plane started".to_owned()
            };
            if held > head {
                tracing::warn!(epoch = %new, held, head, "new routing epoch: {why}");
            }
            tx.audit(
                "routes.epoch",
                "routes",
                serde_json::json!({"epoch": new, "previous": old, "reason": why}),
            );
        }
        self.commit(tx).await?;
        if rotated {
            // Watchers waiting in the old epoch get their snapshot now, not at their timeout.
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(())
    }

    pub async fn route(&self, tenant: &TenantId, env: &Env) -> Result<RouteEntry> {
        let mut conn = self.store.read().await?;
        store::get_route(&mut conn, tenant, env)
            .await?
            .ok_or_else(|| not_found("route", format!("{tenant}/{env}")))
    }

    /// Long-poll: the changes after `since` as soon as there are any (or a snapshot when `since`
    /// is older than the change log), else an empty answer when `wait` runs out.
    ///
    /// A client of another epoch, or ahead of the head, gets a snapshot at once (see
    /// [`Registry::routes`]); it never waits on a version this history does not have.
    pub async fn watch_routes(&self, held: Held<'_>, wait: Duration) -> Result<RoutesWatch> {
        let deadline = tokio::time::Instant::now() + wait.min(self.settings.max_wait);
        let mut changes = self.changes.subscribe();
        let since = held.version;
        loop {
            changes.borrow_and_update();
            let mut snapshot = self.store.read_snapshot().await?;
            let head = store::routing_version(&mut snapshot).await?;
            let epoch = store::routing_epoch(&mut snapshot).await?;
            if since > head || held.epoch.is_some_and(|e| e != epoch) {
                drop(snapshot);
                let table = self.routes(held).await?;
                return Ok(RoutesWatch {
                    version: table.version,
                    changes: Vec::new(),
                    epoch: table.epoch.clone(),
                    snapshot: Some(table),
                });
            }
            match store::route_changes_since(&mut snapshot, since).await? {
                None => {
                    let table = read_routes(&mut snapshot).await?;
                    return Ok(RoutesWatch {
                        version: head,
                        changes: Vec::new(),
                        epoch: table.epoch.clone(),
                        snapshot: Some(table),
                    });
                }
                Some(list) if !list.is_empty() || tokio::time::Instant::now() >= deadline => {
                    return Ok(RoutesWatch {
                        version: list.last().map_or(head, |c| c.version),
                        changes: list,
                        snapshot: None,
                        epoch,
                    });
                }
                Some(_) => {}
            }
            drop(snapshot);
            let nap = (deadline - tokio::time::Instant::now()).min(REPLICA_POLL);
            let _ = tokio::time::timeout(nap, changes.changed()).await;
        }
    }
}

/// The table, its version and epoch, from one read snapshot.
async fn read_routes(conn: &mut AnyConnection) -> Result<RoutesSnapshot> {
    Ok(RoutesSnapshot {
        version: store::routing_version(conn).await?,
        entries: store::all_routes(conn).await?,
        epoch: store::routing_epoch(conn).await?,
    })
}
