//! Stored rows → API views.

use cellfleet_api::{CellReport, CellView, PlacementView, RegionView, TenantView};

use crate::lifecycle;
use crate::store::{CellRow, PlacementRow, RegionRow, TenantRow};

pub fn region_view(r: RegionRow, cells: &[CellRow]) -> RegionView {
    RegionView {
        cells: cells.iter().filter(|c| c.spec.region == r.name).count() as u32,
        name: r.name,
        jurisdiction: r.spec.jurisdiction,
        location: r.spec.location,
    }
}

/// A cell whose agent has not reported for this long is flagged: agents report at least every
/// 10 s, so this is several missed reports in a row.
pub const REPORT_OVERDUE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

pub fn cell_view(
    c: CellRow,
    report: Option<&CellReport>,
    now: chrono::DateTime<chrono::Utc>,
) -> CellView {
    CellView {
        desired_generation: c.desired_generation,
        observed_generation: report.map(|r| r.report.observed_generation),
        release: report.and_then(|r| r.report.release.clone()),
        desired_release: c.desired_release.clone(),
        migration_version: report.and_then(|r| r.report.migrations.iter().map(|m| m.version).max()),
        reported_at: report.map(|r| r.reported_at),
        errors: cell_errors(c.desired_generation, report, now),
        isolation_drift: report
            .map(|r| r.report.isolation_drift.clone())
            .unwrap_or_default(),
        health: report.and_then(|r| r.report.health.clone()),
        tenant_rows: report
            .map(|r| r.report.tenant_rows.clone())
            .unwrap_or_default(),
        workload: report.and_then(|r| r.report.workload.clone()),
        stray_rows: report
            .map(|r| r.report.stray_rows.clone())
            .unwrap_or_default(),
        capacity: c.spec.effective_capacity(),
        template: c.spec.effective_template(),
        region: c.spec.region,
        kind: c.spec.kind,
        env: c.spec.env,
        endpoint: c.spec.endpoint,
        change_window: c.spec.change_window,
        name: c.name,
        load: c.load,
        labels: c.labels,
        state: c.state,
    }
}

pub fn placement_view(p: &PlacementRow) -> PlacementView {
    PlacementView {
        env: p.env.clone(),
        cell: p.cell.clone(),
        region: p.region.clone(),
        generation: p.generation,
        placed_at: p.placed_at,
    }
}

pub fn tenant_view(
    t: TenantRow,
    placements: &[PlacementRow],
    retention: std::time::Duration,
) -> TenantView {
    TenantView {
        placements: placements.iter().map(placement_view).collect(),
        deletable_after: t
            .archived_at
            .map(|a| lifecycle::deletable_after(a, retention)),
        id: t.id,
        state: t.state,
        state_reason: t.state_reason,
        spec: t.spec,
        created_at: t.created_at,
        updated_at: t.updated_at,
        archived_at: t.archived_at,
    }
}

/// The agent's reported errors, plus the control plane's own findings: an agent ahead of the
/// registry, an agent that stopped reporting.
fn cell_errors(
    desired: i64,
    report: Option<&CellReport>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let Some(r) = report else { return Vec::new() };
    let mut errors = r.report.errors.clone();
    let silent = now - r.reported_at;
    if silent > REPORT_OVERDUE {
        errors.push(format!(
            "no report from the agent for {}s: what it last said may no longer hold (is the agent running?)",
            silent.num_seconds()
        ));
    }
    if r.report.observed_generation > desired {
        errors.push(format!(
            "the agent runs generation {}, ahead of the desired {desired} (was the registry restored from an older backup?)",
            r.report.observed_generation
        ));
    }
    errors
}
