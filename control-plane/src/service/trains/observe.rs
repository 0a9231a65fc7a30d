//! What a train observes on each look: its cells, the current wave's reports (every cell's while
//! the contract migrations go out), moves through cells, the line, the contract watermark, and
//! the SLOs of the tenants on the wave's cells.

use std::collections::{BTreeMap, HashMap};

use cellfleet_api::{CellName, CellState, TrainPhase};

use super::{TrainRecord, line};
use crate::service::{Registry, Result};
use crate::store;
use crate::trains::{CellObs, Observed, ReportObs};

impl Registry {
    /// What a train observes: its cells (only the current wave's reports, except while the
    /// contract migrations go out), moves, the line, the contract watermark.
    pub(super) async fn observe_train(&self, t: &TrainRecord) -> Result<Observed> {
        let mut conn = self.store.read().await?;
        let cells = store::list_cells(&mut conn).await?;
        let moves = crate::service::moves::OpenMoves::load(&mut conn).await?;
        let line = line(&mut conn).await?;
        let released = store::contract_released(&mut conn).await?;
        let up_to = t.spec.contract_up_to.unwrap_or(0);
        let migrations = store::list_migrations(&mut conn).await?;
        let contract_pending = migrations.iter().any(|m| {
            m.phase == cellfleet_api::Phase::Contract && m.version > released && m.version <= up_to
        });
        let contracting = t.phase == TrainPhase::Contracting;
        let wanted: Vec<&CellName> = t
            .state
            .waves
            .get(t.state.current)
            .map(|w| w.cells.iter().map(|c| &c.cell).collect())
            .unwrap_or_default();
        let reports = if contracting {
            store::reports(&mut conn).await?
        } else {
            let mut out = HashMap::new();
            for c in &wanted {
                if let Some(r) = store::get_report(&mut conn, c).await? {
                    out.insert(c.to_string(), r);
                }
            }
            out
        };
        // Migrations a cell must have once the contract goes out: every one up to `up_to`
        // that its stream holds (its ceiling).
        let needed: Vec<i64> = migrations
            .iter()
            .filter(|m| m.version <= up_to)
            .map(|m| m.version)
            .collect();
        let mut obs = Observed {
            cells: BTreeMap::new(),
            line_stopped: line.stopped.then(|| {
                line.reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into())
            }),
            contract_pending,
        };
        for c in cells.iter().filter(|c| match c.state {
            CellState::Ready => true,
            CellState::Draining => !t.spec.policy.skip_draining,
            _ => false,
        }) {
            let report = reports.get(c.name.as_str());
            let mut o = CellObs {
                exists: true,
                kind: Some(c.spec.kind),
                region: c.spec.region.to_string(),
                window: c.spec.change_window.clone(),
                desired_release: c.desired_release.clone(),
                desired_generation: c.desired_generation,
                moving: moves.touches(&c.name),
                report: report.map(|r| ReportObs {
                    at: r.reported_at,
                    observed_generation: r.report.observed_generation,
                    release: r.report.release.clone(),
                    errors: r.report.errors.clone(),
                    workload: r.report.workload.as_ref().map(|w| w.state),
                    release_health: r.report.release_health.clone(),
                    probes: r.report.probes.clone(),
                }),
                contract_applied: true,
                ..Default::default()
            };
            if contracting {
                let applied: Vec<i64> = report
                    .map(|r| r.report.migrations.iter().map(|m| m.version).collect())
                    .unwrap_or_default();
                o.contract_applied = needed.iter().all(|v| applied.contains(v));
            }
            if wanted.contains(&&c.name) {
                let mut budget: Option<f64> = None;
                let mut latency: Option<f64> = None;
                for (_, tenant) in store::placements_on(&mut conn, &c.name).await? {
                    if let Some(slo) = &tenant.spec.slo {
                        if let Some(a) = slo.availability {
                            let b = 1.0 - a / 100.0;
                            budget = Some(budget.map_or(b, |x: f64| x.min(b)));
                        }
                        if let Some(l) = slo.latency_p99_ms {
                            let l = f64::from(l);
                            latency = Some(latency.map_or(l, |x: f64| x.min(l)));
                        }
                    }
                }
                o.min_budget = budget;
                o.min_latency_slo_ms = latency;
            }
            obs.cells.insert(c.name.clone(), o);
        }
        Ok(obs)
    }
}
