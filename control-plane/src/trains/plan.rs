//! Planning: the waves of a train from a fleet snapshot, and when each could start (dry runs).

use super::*;

/// A cell as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanCell {
    pub name: CellName,
    pub region: String,
    pub kind: CellKind,
    pub canary: bool,
    pub window: Option<ChangeWindow>,
    /// The release it should run now.
    pub release: Option<String>,
}

/// The waves of a train of `release` over `cells` (cells already on it are left out).
pub fn plan(
    cells: &[PlanCell],
    release: &str,
    policy: &TrainPolicy,
    bake_override: Option<u64>,
) -> Vec<Wave> {
    let mut todo: Vec<&PlanCell> = cells
        .iter()
        .filter(|c| c.release.as_deref() != Some(release))
        .collect();
    todo.sort_by(|a, b| (&a.region, &a.name).cmp(&(&b.region, &b.name)));
    let bake = |w: &cellfleet_api::WavePolicy| {
        bake_override.unwrap_or_else(|| seconds(&w.bake).unwrap_or(600))
    };
    let mut waves = Vec::new();
    // Canary: the labelled cells, else the first pooled cell of each region.
    let labelled: Vec<&PlanCell> = todo.iter().copied().filter(|c| c.canary).collect();
    let canaries: Vec<&PlanCell> = if labelled.is_empty() {
        let mut seen = std::collections::BTreeSet::new();
        todo.iter()
            .copied()
            .filter(|c| c.kind == CellKind::Pooled && seen.insert(c.region.clone()))
            .collect()
    } else {
        labelled
    };
    let is_canary = |c: &PlanCell| canaries.iter().any(|k| k.name == c.name);
    if !canaries.is_empty() {
        waves.push(wave(
            "canary".into(),
            WaveKind::Canary,
            &canaries,
            bake(&policy.canary),
            &policy.canary,
        ));
    }
    let pooled: Vec<&PlanCell> = todo
        .iter()
        .copied()
        .filter(|c| c.kind == CellKind::Pooled && !is_canary(c))
        .collect();
    waves.extend(pooled_waves(&pooled, policy, bake(&policy.pooled), 1));
    let dedicated: Vec<&PlanCell> = todo
        .iter()
        .copied()
        .filter(|c| c.kind == CellKind::Dedicated && !is_canary(c))
        .collect();
    if !dedicated.is_empty() {
        waves.push(wave(
            "dedicated".into(),
            WaveKind::Dedicated,
            &dedicated,
            bake(&policy.dedicated),
            &policy.dedicated,
        ));
    }
    waves
}

/// Pooled cells in batches that never cross a region, numbered from `first`.
pub fn pooled_waves(
    pooled: &[&PlanCell],
    policy: &TrainPolicy,
    bake_secs: u64,
    first: usize,
) -> Vec<Wave> {
    let size = policy.pooled.batch_size.unwrap_or(5).max(1) as usize;
    let mut waves = Vec::new();
    let mut batch: Vec<&PlanCell> = Vec::new();
    for c in pooled {
        if batch.len() == size || batch.first().is_some_and(|b| b.region != c.region) {
            waves.push(wave(
                format!("pooled-{}", first + waves.len()),
                WaveKind::Pooled,
                &batch,
                bake_secs,
                &policy.pooled,
            ));
            batch.clear();
        }
        batch.push(c);
    }
    if !batch.is_empty() {
        waves.push(wave(
            format!("pooled-{}", first + waves.len()),
            WaveKind::Pooled,
            &batch,
            bake_secs,
            &policy.pooled,
        ));
    }
    waves
}

pub(crate) fn wave(
    name: String,
    kind: WaveKind,
    cells: &[&PlanCell],
    bake_secs: u64,
    p: &cellfleet_api::WavePolicy,
) -> Wave {
    let n = u32::try_from(cells.len()).unwrap_or(u32::MAX).max(1);
    Wave {
        name,
        kind,
        cells: cells
            .iter()
            .map(|c| TrainCell {
                cell: c.name.clone(),
                step: CellStep::Pending,
                previous: c.release.clone(),
                deployed_at: None,
                converged_at: None,
                waiting: None,
            })
            .collect(),
        bake_secs,
        approval: p.approval,
        max_parallel: p.max_parallel.unwrap_or(n).clamp(1, n),
        started_at: None,
        baking_since: None,
        finished_at: None,
        outcome: None,
    }
}

/// The plan as a dry run shows it: each wave with the earliest time it could start if every
/// wave before it passed at the end of its bake (dedicated cells: their next window).
pub fn schedule(
    waves: &[Wave],
    windows: &BTreeMap<CellName, ChangeWindow>,
    now: DateTime<Utc>,
) -> Vec<WavePlan> {
    let mut at = now;
    let mut out = Vec::new();
    for w in waves {
        let bake = TimeDelta::seconds(i64::try_from(w.bake_secs).unwrap_or(i64::MAX / 2));
        let mut start = at;
        let mut window = None;
        if w.kind == WaveKind::Dedicated {
            // Cells go one window at a time; the wave starts with the first that can.
            let starts: Vec<DateTime<Utc>> = w
                .cells
                .iter()
                .filter_map(|c| may_start(windows.get(&c.cell), bake, at))
                .collect();
            start = starts.iter().min().copied().unwrap_or(at);
            let names: Vec<String> = w
                .cells
                .iter()
                .filter_map(|c| {
                    windows
                        .get(&c.cell)
                        .map(|cw| format!("{}: {} for {}", c.cell, cw.schedule, cw.duration))
                })
                .collect();
            if !names.is_empty() {
                window = Some(names.join("; "));
            }
            at = starts.iter().max().copied().unwrap_or(at) + bake;
        } else {
            at = start + bake;
        }
        out.push(WavePlan {
            name: w.name.clone(),
            kind: w.kind,
            cells: w.cells.iter().map(|c| c.cell.clone()).collect(),
            bake_secs: w.bake_secs,
            approval: w.approval,
            earliest_start: start,
            window,
        });
    }
    out
}
