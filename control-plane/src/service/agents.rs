//! The control-plane side of the cell agent protocol (SPEC §7).
//!
//! **Generations.** A cell's desired state is a document (the tenants placed there, with their
//! state, quotas, flags and isolation). Rather than bumping a counter at every place that might
//! change it, mutations only *touch* the cells they may have affected, and [`Registry::commit`]
//! recomputes each touched cell's document inside the same transaction: if its hash differs from
//! the stored one, the generation increases. So a generation always names exactly one content
//! (level-triggered, nothing to forget), and an agent can treat "same generation, different
//! content" as an error.
//!
//! **Long-poll.** After a commit that moved any generation, a watch channel wakes this replica's
//! waiting agents; waiters also re-read every couple of seconds so changes committed by another
//! replica are seen too.

use std::time::Duration;

use cellfleet_api::{
    AgentReport, CellName, DesiredRelease, DesiredState, DesiredTenant, Migration,
};
use serde_json::json;

use super::moves::OpenMoves;
use super::{Error, Registry, Result, not_found};
use crate::context::isolation;
use crate::store::{self, Caller, CellRow, PlacementRow, TenantRow, Tx};

/// How often a waiting agent re-reads, to see changes made through other replicas.
const REPLICA_POLL: Duration = Duration::from_secs(2);

/// The longest a long-poll may wait unless `serve --max-wait` says otherwise.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// What every cell's desired state is derived from besides its own rows, loaded once per commit.
#[derive(Debug, Default)]
pub(super) struct DesiredContext {
    /// The whole migration stream.
    migrations: Vec<Migration>,
    /// How far contract migrations are released.
    contract_released: i64,
    moves: OpenMoves,
    /// Cells a train bakes, with the probes they send.
    probes: std::collections::BTreeMap<CellName, cellfleet_api::ProbeTask>,
    flags: Vec<cellfleet_api::FlagView>,
    /// Every release, by version.
    releases: std::collections::HashMap<String, DesiredRelease>,
}

impl DesiredContext {
    pub(super) async fn load(conn: &mut sqlx::AnyConnection) -> Result<DesiredContext> {
        Ok(DesiredContext {
            migrations: store::list_migrations(conn).await?,
            contract_released: store::contract_released(conn).await?,
            moves: OpenMoves::load(conn).await?,
            probes: super::trains::probing_cells(conn).await?,
            flags: store::list_flags(conn).await?,
            releases: store::list_releases(conn)
                .await?
                .into_iter()
                .map(|r| {
                    (
                        r.version.clone(),
                        DesiredRelease {
                            version: r.version,
                            artifact: r.spec.artifact,
                        },
                    )
                })
                .collect(),
        })
    }

    /// The migrations `cell` should have: the stream in order up to the cell's ceiling (what
    /// its releases need), stopping before the first contract migration not yet released (the
    /// stream is applied in order).
    fn migrations_for(&self, up_to: Option<i64>) -> Vec<Migration> {
        self.migrations
            .iter()
            .take_while(|m| {
                up_to.is_none_or(|c| m.version <= c)
                    && (m.phase != cellfleet_api::Phase::Contract
                        || m.version <= self.contract_released)
            })
            .cloned()
            .collect()
    }
}

/// The tenants part of a cell's desired state (what the generation versions), their flags
/// resolved against the fleet's.
fn desired_tenants(
    rows: &[(PlacementRow, TenantRow)],
    flags: &[cellfleet_api::FlagView],
) -> Vec<DesiredTenant> {
    rows.iter()
        .map(|(p, t)| DesiredTenant {
            tenant: t.id.clone(),
            env: p.env.clone(),
            generation: p.generation,
            state: t.state,
            profile: t.spec.profile,
            quotas: t.spec.quotas.clone(),
            flags: super::flags::effective(&t.spec.flags, flags, &t.id, &p.cell),
            isolation: isolation(&t.id, t.spec.profile, &p.cell),
        })
        .collect()
}

/// A cell's desired state as stored now (its generation as recorded).
async fn desired_of(
    conn: &mut sqlx::AnyConnection,
    row: &CellRow,
    placements: &[(PlacementRow, TenantRow)],
    ctx: &DesiredContext,
) -> Result<DesiredState> {
    let tenants = desired_tenants(placements, &ctx.flags);
    let release = row
        .desired_release
        .as_ref()
        .and_then(|v| ctx.releases.get(v).cloned());
    let up_to = store::migrations_up_to(conn, &row.name).await?;
    Ok(DesiredState {
        cell: row.name.clone(),
        generation: row.desired_generation,
        kind: row.spec.kind,
        tenants,
        migrations: ctx.migrations_for(up_to),
        release,
        endpoint: row.spec.endpoint.clone(),
        moves: ctx.moves.tasks_for(&row.name),
        probe: ctx.probes.get(&row.name).cloned(),
    })
}

impl Registry {
    /// Commits a mutation: first re-derives the desired-state generation of every cell it
    /// touched (see the module docs) and the routes it serves, then commits, then wakes waiting
    /// agents and routers if anything moved.
    pub(super) async fn commit(&self, mut tx: Tx) -> Result<()> {
        let mut moved = false;
        let touched = tx.take_touched();
        let mut routing_version: Option<i64> = None;
        let ctx = if touched.is_empty() {
            DesiredContext::default()
        } else {
            DesiredContext::load(tx.conn()).await?
        };
        for cell in touched {
            let Some(row) = store::get_cell(tx.conn(), &cell).await? else {
                continue;
            };
            let placements = store::placements_on(tx.conn(), &cell).await?;
            let hash = desired_of(tx.conn(), &row, &placements, &ctx)
                .await?
                .content_hash();
            // The routing table moves in the same transaction as what it is derived from.
            super::routes::refresh(
                tx.conn(),
                &row,
                &placements,
                &ctx.moves,
                &mut routing_version,
            )
            .await?;
            let Some((generation, old_hash)) = store::cell_generation(tx.conn(), &cell).await?
            else {
                continue;
            };
            if hash != old_hash {
                store::set_cell_generation(tx.conn(), &cell, generation + 1, &hash).await?;
                moved = true;
            }
        }
        if let Some(v) = routing_version {
            store::set_routing_version(tx.conn(), v).await?;
        }
        tx.commit(super::Refreshed(())).await?;
        // Agents wait for generations, routers for routing versions: wake both.
        if moved || routing_version.is_some() {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(())
    }

    /// A cell's desired state, read from one snapshot so generation and content agree.
    pub async fn desired_state(&self, cell: &CellName) -> Result<DesiredState> {
        let mut snapshot = self.store.read_snapshot().await?;
        let row = store::get_cell(&mut snapshot, cell)
            .await?
            .ok_or_else(|| not_found("cell", cell))?;
        let placements = store::placements_on(&mut snapshot, cell).await?;
        let ctx = DesiredContext::load(&mut snapshot).await?;
        desired_of(&mut snapshot, &row, &placements, &ctx).await
    }

    /// Long-poll: returns the desired state as soon as its generation is above `since`, or the
    /// current one when `wait` runs out.
    pub async fn wait_desired(
        &self,
        cell: &CellName,
        since: i64,
        wait: Duration,
    ) -> Result<DesiredState> {
        let deadline = tokio::time::Instant::now() + wait.min(self.settings.max_wait);
        let mut changes = self.changes.subscribe();
        loop {
            // Subscribe first, read second: a change committed in between is not missed.
            changes.borrow_and_update();
            let now = tokio::time::Instant::now();
            // Every commit wakes every waiting agent: most find their generation unchanged with
            // one indexed read, and only the cells that changed build their document.
            let generation = {
                let mut conn = self.store.read().await?;
                store::cell_generation(&mut conn, cell)
                    .await?
                    .ok_or_else(|| not_found("cell", cell))?
                    .0
            };
            if generation > since || now >= deadline {
                return self.desired_state(cell).await;
            }
            let nap = (deadline - now).min(REPLICA_POLL);
            let _ = tokio::time::timeout(nap, changes.changed()).await;
        }
    }

    /// Stores an agent's report. Reports that change what the cell runs or what stops it
    /// (observed generation, release, migrations, errors) are audited; health and row counts
    /// alone are not (they change on every report).
    pub async fn report(
        &self,
        caller: &Caller,
        cell: &CellName,
        report: AgentReport,
    ) -> Result<()> {
        report
            .validate()
            .map_err(|e| Error::Invalid(format!("invalid report: {e}")))?;
        // Heartbeats are most reports (only health and row counts change): they are stored
        // without the mutation lock, so a fleet's reports never queue behind placements and
        // operation steps. Only a report worth an audit record takes the lock (the chain needs
        // it).
        let mut conn = self.store.read().await?;
        if store::cell_generation(&mut conn, cell).await?.is_none() {
            return Err(not_found("cell", cell));
        }
        // An agent ahead of the registry (say, after the registry was restored from an older
        // backup) is stored as reported: `cell list` shows it, and the agent refuses to go back.
        let previous = store::get_report(&mut conn, cell).await?.map(|r| r.report);
        let significant = previous.as_ref().is_none_or(|p| {
            (
                p.observed_generation,
                &p.release,
                &p.migrations,
                &p.errors,
                &p.isolation_drift,
                p.workload.as_ref().map(|w| w.state),
            ) != (
                report.observed_generation,
                &report.release,
                &report.migrations,
                &report.errors,
                &report.isolation_drift,
                report.workload.as_ref().map(|w| w.state),
            )
        });
        if !significant && !self.settings.reports_under_lock {
            store::put_report(&mut conn, cell, &report, chrono::Utc::now()).await?;
            return Ok(());
        }
        drop(conn);
        let mut tx = self.store.begin(caller).await?;
        let now = tx.now;
        store::put_report(tx.conn(), cell, &report, now).await?;
        if significant {
            tx.audit(
                "cell.report",
                &format!("cell/{cell}"),
                json!({
                    "observedGeneration": report.observed_generation,
                    "release": report.release,
                    "migrations": report.migrations,
                    "errors": report.errors,
                    "isolationDrift": report.isolation_drift,
                    "workload": report.workload.as_ref().map(|w| w.state),
                }),
            );
        }
        self.commit(tx).await?;
        if significant {
            // A cell runs something new (or stopped): a train waiting for it looks soon.
            self.train_news();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_the_content_but_not_the_generation() {
        let doc = |generation, kind| DesiredState {
            cell: "c".parse().unwrap_or_else(|e| panic!("{e}")),
            generation,
            kind,
            tenants: Vec::new(),
            migrations: Vec::new(),
            release: None,
            endpoint: None,
            moves: Vec::new(),
            probe: None,
        };
        use cellfleet_api::CellKind::*;
        assert_eq!(doc(1, Pooled).content_hash(), doc(2, Pooled).content_hash());
        assert_ne!(
            doc(1, Pooled).content_hash(),
            doc(1, Dedicated).content_hash()
        );
        let mut with_endpoint = doc(1, Pooled);
        with_endpoint.endpoint = Some("http://127.0.0.1:9101".into());
        assert_ne!(with_endpoint.content_hash(), doc(1, Pooled).content_hash());
    }
}
