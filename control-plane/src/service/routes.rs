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

impl Registry {
    /// The whole routing table, from one snapshot.
    pub async fn routes(&self) -> Result<RoutesSnapshot> {
        let mut snapshot = self.store.read_snapshot().await?;
        Ok(RoutesSnapshot {
            version: store::routing_version(&mut snapshot).await?,
            entries: store::all_routes(&mut snapshot).await?,
        })
    }

    pub async fn route(&self, tenant: &TenantId, env: &Env) -> Result<RouteEntry> {
        let mut conn = self.store.read().await?;
        store::get_route(&mut conn, tenant, env)
            .await?
            .ok_or_else(|| not_found("route", format!("{tenant}/{env}")))
    }

    /// Long-poll: the changes after `since` as soon as there are any (or a snapshot when `since`
    /// is older than the change log), else an empty answer when `wait` runs out.
    pub async fn watch_routes(&self, since: i64, wait: Duration) -> Result<RoutesWatch> {
        let deadline = tokio::time::Instant::now() + wait.min(self.settings.max_wait);
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let mut snapshot = self.store.read_snapshot().await?;
            let head = store::routing_version(&mut snapshot).await?;
            match store::route_changes_since(&mut snapshot, since).await? {
                None => {
                    return Ok(RoutesWatch {
                        version: head,
                        changes: Vec::new(),
                        snapshot: Some(RoutesSnapshot {
                            version: head,
                            entries: store::all_routes(&mut snapshot).await?,
                        }),
                    });
                }
                Some(list) if !list.is_empty() || tokio::time::Instant::now() >= deadline => {
                    return Ok(RoutesWatch {
                        version: list.last().map_or(head.max(since), |c| c.version),
                        changes: list,
                        snapshot: None,
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
