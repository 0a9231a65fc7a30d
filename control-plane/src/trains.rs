//! Release trains, the pure part (SPEC §8): planning waves from a fleet snapshot, change windows,
//! gates over agent reports, and `next_step` — what a train does next given what it observes and
//! the time, passed in. No I/O: `service::trains` loads, asks, and persists the answer under a
//! compare-and-swap like every long-running operation. `trains_tests.rs` walks it.
//!
//! **Timing is per cell.** A cell bakes from the moment it runs the release; a wave is judged
//! when every one of its cells has baked for the wave's bake time (earlier, if a cell already
//! fails with enough signal). A dedicated cell starts only inside its change window and only
//! when the window has the whole bake left; a window that closes mid-bake (a slow convergence)
//! does not stop the bake — the change is made — and a rollback is never held back by a window.

use std::collections::BTreeMap;
use std::str::FromStr;

use cellfleet_api::{
    CellGate, CellKind, CellName, CellStep, ChangeWindow, GateDecision, GatePolicy, OnFailure,
    OnInconclusive, ProbeStats, ReleaseHealth, TrainCell, TrainPhase, TrainPolicy, Verdict, Wave,
    WaveKind, WavePlan, WorkloadState,
};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// The operation kind of trains.
pub const KIND: &str = "train";
/// The one subject every train holds: one train drives the fleet at a time, so two never drive
/// the same cell.
pub const SUBJECT: &str = "release-train";
/// The default policy, checked in.
pub const DEFAULT_POLICY: &str = include_str!("../../templates/train-policy.yaml");
/// A cell label that makes the cell a canary (`canary: "true"`).
pub const CANARY_LABEL: &str = "canary";

/// A duration as policies write it (`10m`, `90s`), in whole seconds.
pub fn seconds(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text.trim())
        .map(|d| d.as_secs())
        .map_err(|e| format!("{text:?} is not a duration (e.g. 10m, 90s): {e}"))
}

/// Checks a policy's values (its shape was checked when it was parsed); the error names the
/// field path.
pub fn validate_policy(p: &TrainPolicy) -> Result<(), (String, String)> {
    let err = |path: &str, msg: String| Err((path.to_owned(), msg));
    for (name, w) in [
        ("canary", &p.canary),
        ("pooled", &p.pooled),
        ("dedicated", &p.dedicated),
    ] {
        if let Err(e) = seconds(&w.bake) {
            return err(&format!("spec.{name}.bake"), e);
        }
        if w.batch_size == Some(0) {
            return err(
                &format!("spec.{name}.batchSize"),
                "must be at least 1".into(),
            );
        }
        if w.max_parallel == Some(0) {
            return err(
                &format!("spec.{name}.maxParallel"),
                "must be at least 1".into(),
            );
        }
    }
    let g = &p.gates;
    if !(0.0..=1.0).contains(&g.max_error_rate) {
        return err(
            "spec.gates.maxErrorRate",
            format!("{} is not a share between 0 and 1", g.max_error_rate),
        );
    }
    if !(g.max_p99_ms.is_finite() && g.max_p99_ms > 0.0) {
        return err("spec.gates.maxP99Ms", "must be a positive number".into());
    }
    if !(g.max_burn_rate.is_finite() && g.max_burn_rate > 0.0) {
        return err("spec.gates.maxBurnRate", "must be a positive number".into());
    }
    if !(g.default_availability > 0.0 && g.default_availability < 100.0) {
        return err(
            "spec.gates.defaultAvailability",
            "must be a percentage between 0 and 100 (exclusive), e.g. 99.9".into(),
        );
    }
    if let Err(e) = seconds(&g.converge_timeout) {
        return err("spec.gates.convergeTimeout", e);
    }
    let pr = &p.probes;
    if !pr.path.starts_with('/') || pr.path.len() > 200 || pr.path.contains(['\r', '\n', ' ']) {
        return err(
            "spec.probes.path",
            format!("{:?} is not an absolute path", pr.path),
        );
    }
    if !(pr.rate_per_second.is_finite() && pr.rate_per_second > 0.0 && pr.rate_per_second <= 100.0)
    {
        return err(
            "spec.probes.ratePerSecond",
            "must be more than 0 and at most 100".into(),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Change windows

/// Whether `w` is open at `now`: `Some(closes_at)` if so.
pub fn window_open(w: &ChangeWindow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let schedule = cron::Schedule::from_str(&w.schedule).ok()?;
    let length = TimeDelta::from_std(humantime::parse_duration(&w.duration).ok()?).ok()?;
    // The latest opening at or before `now` is the first one after `now - length` (if it is
    // not after `now`).
    let opening = schedule
        .after(&(now - length - TimeDelta::seconds(1)))
        .next()?;
    (opening <= now && now < opening + length).then_some(opening + length)
}

/// The next time `w` opens after `now` (none for a schedule that never fires).
pub fn next_opening(w: &ChangeWindow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron::Schedule::from_str(&w.schedule)
        .ok()?
        .after(&now)
        .next()
}

/// When a dedicated cell may start a bake of `bake` at or after `now`: now if its window is open
/// with the whole bake left (or it has no window), else the next opening whose window is long
/// enough. `None`: never (the window is shorter than the bake).
pub fn may_start(
    w: Option<&ChangeWindow>,
    bake: TimeDelta,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let Some(w) = w else { return Some(now) };
    if let Some(closes) = window_open(w, now)
        && closes - now >= bake
    {
        return Some(now);
    }
    let length = TimeDelta::from_std(humantime::parse_duration(&w.duration).ok()?).ok()?;
    if length < bake {
        return None;
    }
    next_opening(w, now)
}

// ---------------------------------------------------------------------------------------------
// Planning

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

fn wave(
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

// ---------------------------------------------------------------------------------------------
// Gates

/// What the control plane knows about one cell when a train looks at it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CellObs {
    pub exists: bool,
    pub kind: Option<CellKind>,
    pub region: String,
    pub window: Option<ChangeWindow>,
    /// The release the cell should run.
    pub desired_release: Option<String>,
    pub desired_generation: i64,
    /// A tenant move goes through the cell.
    pub moving: bool,
    pub report: Option<ReportObs>,
    /// The smallest error budget (1 − availability) among the cell's tenants' SLOs, if any
    /// declares one.
    pub min_budget: Option<f64>,
    /// The tightest latency SLO (p99, ms) among the cell's tenants.
    pub min_latency_slo_ms: Option<f64>,
    /// Whether the cell applied every migration up to this train's contract version.
    pub contract_applied: bool,
}

/// The parts of a cell's last report a train reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportObs {
    pub at: DateTime<Utc>,
    pub observed_generation: i64,
    pub release: Option<String>,
    pub errors: Vec<String>,
    pub workload: Option<WorkloadState>,
    pub release_health: Option<ReleaseHealth>,
    pub probes: Option<ProbeStats>,
}

/// Whether `cell` runs `release` as desired now.
pub fn converged(o: &CellObs, release: &str) -> bool {
    o.report.as_ref().is_some_and(|r| {
        r.observed_generation >= o.desired_generation
            && r.release.as_deref() == Some(release)
            && r.errors.is_empty()
            && r.workload.is_none_or(|w| w == WorkloadState::Running)
    })
}

/// Judges one cell that has run `release` for `elapsed` of a `bake`.
pub fn judge_cell(
    cell: &CellName,
    o: &CellObs,
    release: &str,
    g: &GatePolicy,
    baked: bool,
) -> CellGate {
    let health = o
        .report
        .as_ref()
        .and_then(|r| r.release_health.as_ref())
        .filter(|h| h.release == release);
    let probes = o
        .report
        .as_ref()
        .and_then(|r| r.probes.as_ref())
        .filter(|p| p.release == release);
    let (t_req, t_err, t_p99) =
        health.map_or((0, 0, None), |h| (h.requests, h.errors, h.latency_p99_ms));
    let (p_req, p_err, p_p99) =
        probes.map_or((0, 0, None), |p| (p.requests, p.errors, p.latency_p99_ms));
    let (signal, requests, errors, p99) = if t_req >= g.min_requests {
        ("tenants", t_req, t_err, t_p99)
    } else if p_req >= g.min_requests {
        ("probes", p_req, p_err, p_p99)
    } else {
        ("none", t_req + p_req, t_err + p_err, t_p99.or(p_p99))
    };
    let budget = o
        .min_budget
        .unwrap_or(1.0 - g.default_availability / 100.0)
        .max(f64::MIN_POSITIVE);
    let error_rate = (requests > 0).then(|| errors as f64 / requests as f64);
    let burn_rate = error_rate.map(|r| r / budget);
    let max_p99 = o
        .min_latency_slo_ms
        .map_or(g.max_p99_ms, |s| s.min(g.max_p99_ms));
    let mut gate = CellGate {
        cell: cell.clone(),
        signal: signal.into(),
        requests: t_req,
        errors: t_err,
        error_rate,
        p99_ms: p99,
        burn_rate,
        probe_requests: p_req,
        probe_errors: p_err,
        verdict: Verdict::Pending,
        reason: String::new(),
    };
    if signal != "none" {
        let rate = error_rate.unwrap_or(0.0);
        let burn = burn_rate.unwrap_or(0.0);
        let failure = if rate > g.max_error_rate {
            Some(format!(
                "error rate {:.2} % > {:.2} % ({errors} of {requests} {signal} requests)",
                rate * 100.0,
                g.max_error_rate * 100.0
            ))
        } else if burn > g.max_burn_rate {
            Some(format!(
                "error budget burning {burn:.1}× > {:.1}× (budget {:.3} %)",
                g.max_burn_rate,
                budget * 100.0
            ))
        } else {
            p99.filter(|p| *p > max_p99)
                .map(|p| format!("p99 {p:.0} ms > {max_p99:.0} ms"))
        };
        if let Some(reason) = failure {
            // Enough signal to fail: no need to wait out the bake.
            gate.verdict = Verdict::Fail;
            gate.reason = reason;
        } else if baked {
            gate.verdict = Verdict::Pass;
            gate.reason = format!("{requests} {signal} requests within thresholds");
        } else {
            gate.reason = "baking".into();
        }
    } else if baked {
        gate.verdict = Verdict::Inconclusive;
        gate.reason = format!(
            "too little signal: {t_req} tenant and {p_req} probe requests (at least {} needed)",
            g.min_requests
        );
    } else {
        gate.reason = "baking; not enough requests yet".into();
    }
    gate
}

/// The wave's verdict from its cells'.
pub fn wave_verdict(cells: &[CellGate]) -> (Verdict, String) {
    if let Some(f) = cells.iter().find(|c| c.verdict == Verdict::Fail) {
        return (Verdict::Fail, format!("{}: {}", f.cell, f.reason));
    }
    if cells.iter().any(|c| c.verdict == Verdict::Pending) {
        return (Verdict::Pending, "baking".into());
    }
    if let Some(i) = cells.iter().find(|c| c.verdict == Verdict::Inconclusive) {
        return (Verdict::Inconclusive, format!("{}: {}", i.cell, i.reason));
    }
    (Verdict::Pass, format!("{} cells passed", cells.len()))
}

// ---------------------------------------------------------------------------------------------
// The train's state and its next step

/// A train's progress (the operation's `state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainState {
    pub waves: Vec<Wave>,
    pub current: usize,
    pub gates: Vec<GateDecision>,
    /// The phase `resume` returns to.
    pub paused_from: Option<TrainPhase>,
    /// Why the train waits, for people.
    pub note: Option<String>,
    /// Set when the contract migrations went out.
    pub contract_released: bool,
}

/// What a train was asked (the operation's `spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainSpec {
    pub release: String,
    pub policy: TrainPolicy,
    pub bake_override_secs: Option<u64>,
    /// The newest contract migration this release releases (none: it releases none).
    pub contract_up_to: Option<i64>,
    pub started_by: String,
}

/// A change a step makes besides the train's own row.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The cell should run the train's release.
    Deploy(CellName),
    /// The cell should run `to` again (its last good release).
    Revert { cell: CellName, to: Option<String> },
    /// Contract migrations up to this version may go to every cell.
    ReleaseContract(i64),
}

/// What everything observed says, besides the cells.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub cells: BTreeMap<CellName, CellObs>,
    /// `Some(reason)` while the line is stopped.
    pub line_stopped: Option<String>,
    /// Whether any contract migration in (released, `contract_up_to`] is still to go out.
    pub contract_pending: bool,
}

/// The next step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub phase: TrainPhase,
    pub state: TrainState,
    pub effects: Vec<Effect>,
    /// Audit records: (action suffix, detail).
    pub events: Vec<(String, serde_json::Value)>,
}

fn secs(n: u64) -> TimeDelta {
    TimeDelta::seconds(i64::try_from(n).unwrap_or(i64::MAX / 2))
}

/// Decides what the train does now. The answer's state equals the input's (and the phase too)
/// when there is nothing to do but wait; its `note` says what for.
pub fn next_step(
    spec: &TrainSpec,
    phase: TrainPhase,
    state: &TrainState,
    obs: &Observed,
    now: DateTime<Utc>,
) -> Step {
    let mut s = state.clone();
    let mut step = Step {
        phase,
        state: TrainState::default(),
        effects: Vec::new(),
        events: Vec::new(),
    };
    match phase {
        TrainPhase::Running => {
            if let Some(reason) = &obs.line_stopped {
                s.note = Some(format!("the line is stopped: {reason}"));
            } else {
                // A wave that passed starts the next one in the same step (one commit, no
                // wait for another look); bounded, each round changes the wave or stops.
                for _ in 0..4 {
                    let (current, waves) = (s.current, s.waves.len());
                    run(spec, &mut s, obs, now, &mut step);
                    if step.phase != TrainPhase::Running
                        || (s.current == current && s.waves.len() == waves)
                    {
                        break;
                    }
                }
            }
        }
        TrainPhase::Contracting => {
            let missing: Vec<&CellName> = obs
                .cells
                .iter()
                .filter(|(_, o)| o.exists && !o.contract_applied)
                .map(|(n, _)| n)
                .collect();
            let failing = obs
                .cells
                .iter()
                .find(|(_, o)| o.exists && o.report.as_ref().is_some_and(|r| !r.errors.is_empty()));
            if let Some((cell, o)) = failing.filter(|_| !missing.is_empty()) {
                let error = o
                    .report
                    .as_ref()
                    .map(|r| r.errors.join("; "))
                    .unwrap_or_default();
                s.note = Some(format!("contract migrations failed on {cell}: {error}"));
                step.phase = TrainPhase::Halted;
                step.events.push((
                    "halt".into(),
                    serde_json::json!({ "cell": cell, "error": error }),
                ));
            } else if missing.is_empty() {
                s.note = None;
                step.phase = TrainPhase::Done;
                step.events.push((
                    "done".into(),
                    serde_json::json!({ "release": spec.release }),
                ));
            } else {
                s.note = Some(format!(
                    "contract migrations up to V{} going out: {} cells to go ({})",
                    spec.contract_up_to.unwrap_or(0),
                    missing.len(),
                    missing
                        .iter()
                        .take(3)
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        TrainPhase::AwaitingApproval => {
            s.note = Some(format!(
                "waiting for `cellfleet train promote` before wave {}",
                s.waves
                    .get(s.current + 1)
                    .map_or("contract", |w| w.name.as_str())
            ));
        }
        TrainPhase::Paused => s.note = Some("paused (`cellfleet train resume` continues)".into()),
        TrainPhase::Halted => {
            if s.note.is_none() {
                s.note = Some("halted: roll back or abort".into());
            }
        }
        TrainPhase::Done | TrainPhase::Aborted | TrainPhase::Failed => {}
    }
    step.state = s;
    step
}

/// The running phase: advance the current wave.
fn run(spec: &TrainSpec, s: &mut TrainState, obs: &Observed, now: DateTime<Utc>, step: &mut Step) {
    let g = &spec.policy.gates;
    let converge_timeout = secs(seconds(&g.converge_timeout).unwrap_or(600));
    if s.current >= s.waves.len() {
        // Every planned wave passed. Cells added meanwhile follow the policy as one more wave;
        // then the contract migrations; then done.
        let late = late_cells(spec, s, obs);
        if !late.is_empty() {
            let bake = |w: &cellfleet_api::WavePolicy| {
                spec.bake_override_secs
                    .unwrap_or_else(|| seconds(&w.bake).unwrap_or(600))
            };
            let pooled: Vec<&PlanCell> =
                late.iter().filter(|c| c.kind == CellKind::Pooled).collect();
            let mut added = pooled_waves(
                &pooled,
                &spec.policy,
                bake(&spec.policy.pooled),
                s.waves.len() + 1,
            );
            for w in &mut added {
                w.name = format!("late-{}", w.name);
            }
            let dedicated: Vec<&PlanCell> = late
                .iter()
                .filter(|c| c.kind == CellKind::Dedicated)
                .collect();
            if !dedicated.is_empty() {
                added.push(wave(
                    "late-dedicated".into(),
                    WaveKind::Dedicated,
                    &dedicated,
                    bake(&spec.policy.dedicated),
                    &spec.policy.dedicated,
                ));
            }
            let names: Vec<String> = late.iter().map(|c| c.name.to_string()).collect();
            step.events
                .push(("wave.added".into(), serde_json::json!({ "cells": names })));
            s.waves.extend(added);
            s.note = None;
            return;
        }
        if obs.contract_pending && !s.contract_released {
            s.contract_released = true;
            let up_to = spec.contract_up_to.unwrap_or(0);
            step.effects.push(Effect::ReleaseContract(up_to));
            step.phase = TrainPhase::Contracting;
            s.note = Some(format!(
                "every cell runs {}: contract migrations up to V{up_to} go out",
                spec.release
            ));
            step.events
                .push(("contract".into(), serde_json::json!({ "upTo": up_to })));
        } else {
            step.phase = TrainPhase::Done;
            s.note = None;
            step.events.push((
                "done".into(),
                serde_json::json!({ "release": spec.release }),
            ));
        }
        return;
    }
    let idx = s.current;
    let wave = &mut s.waves[idx];
    if wave.started_at.is_none() {
        wave.started_at = Some(now);
        step.events.push((
            "wave.start".into(),
            serde_json::json!({ "wave": wave.name }),
        ));
    }
    let bake = secs(wave.bake_secs);
    let mut failure: Option<(CellName, String)> = None;
    // Deploying cells: converged, failed, or still going.
    for c in &mut wave.cells {
        let o = obs.cells.get(&c.cell).cloned().unwrap_or_default();
        if !o.exists && matches!(c.step, CellStep::Pending | CellStep::Deploying) {
            c.step = CellStep::Skipped;
            c.waiting = Some("the cell is gone".into());
            continue;
        }
        if c.step != CellStep::Deploying {
            continue;
        }
        if converged(&o, &spec.release) {
            c.step = CellStep::Converged;
            c.converged_at = Some(now);
            c.waiting = None;
            continue;
        }
        let deployed = c.deployed_at.unwrap_or(now);
        let fresh = o.report.as_ref().filter(|r| r.at > deployed);
        if let Some(r) = fresh.filter(|r| !r.errors.is_empty()) {
            failure = Some((
                c.cell.clone(),
                format!("cannot run {}: {}", spec.release, r.errors.join("; ")),
            ));
        } else if now - deployed > converge_timeout {
            let ran = o
                .report
                .as_ref()
                .and_then(|r| r.release.clone())
                .unwrap_or_else(|| "nothing".into());
            failure = Some((
                c.cell.clone(),
                format!(
                    "did not run {} within {} (runs {ran})",
                    spec.release, g.converge_timeout
                ),
            ));
        }
    }
    // Pending cells: start as many as the wave may run at once.
    if failure.is_none() {
        let mut in_flight = wave
            .cells
            .iter()
            .filter(|c| c.step == CellStep::Deploying)
            .count();
        for c in &mut wave.cells {
            if c.step != CellStep::Pending {
                continue;
            }
            let o = obs.cells.get(&c.cell).cloned().unwrap_or_default();
            let waiting = if o.moving {
                Some("a tenant move goes through the cell: waiting until it is done".to_owned())
            } else if o.kind == Some(CellKind::Dedicated) {
                match may_start(o.window.as_ref(), bake, now) {
                    Some(at) if at <= now => None,
                    Some(at) => Some(format!(
                        "outside its change window: waiting until {}",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )),
                    None => {
                        Some("its change window is shorter than the bake: it never fits".into())
                    }
                }
            } else {
                None
            };
            if waiting.is_some() {
                c.waiting = waiting;
                continue;
            }
            if in_flight >= wave.max_parallel as usize {
                c.waiting = Some(format!(
                    "waiting for a slot ({} at a time)",
                    wave.max_parallel
                ));
                continue;
            }
            if o.desired_release.as_deref() == Some(spec.release.as_str())
                && converged(&o, &spec.release)
            {
                // Already runs it (say, deployed by hand meanwhile): nothing to change.
                c.step = CellStep::Converged;
                c.converged_at = Some(now);
                c.waiting = None;
                continue;
            }
            c.previous = o.desired_release.clone();
            c.step = CellStep::Deploying;
            c.deployed_at = Some(now);
            c.waiting = None;
            in_flight += 1;
            step.effects.push(Effect::Deploy(c.cell.clone()));
            step.events.push(("cell.deploy".into(), serde_json::json!({ "cell": c.cell, "wave": wave.name, "from": c.previous, "to": spec.release })));
        }
    }
    // The gate, over the cells that run the release.
    let mut gates: Vec<CellGate> = Vec::new();
    let all_converged = wave
        .cells
        .iter()
        .all(|c| matches!(c.step, CellStep::Converged | CellStep::Skipped));
    if failure.is_none() {
        for c in wave.cells.iter().filter(|c| c.step == CellStep::Converged) {
            let o = obs.cells.get(&c.cell).cloned().unwrap_or_default();
            let baked = c.converged_at.is_some_and(|t| now - t >= bake);
            let mut gate = judge_cell(&c.cell, &o, &spec.release, g, baked);
            // A cell that stopped running the release after it converged (the agent rolled it
            // back, it crash-loops) fails.
            if !converged(&o, &spec.release)
                && o.report
                    .as_ref()
                    .is_some_and(|r| Some(r.at) > c.converged_at)
            {
                gate.verdict = Verdict::Fail;
                let r = o.report.as_ref();
                gate.reason = format!(
                    "no longer runs {} ({}{})",
                    spec.release,
                    r.and_then(|r| r.release.clone())
                        .unwrap_or_else(|| "nothing".into()),
                    r.filter(|r| !r.errors.is_empty())
                        .map(|r| format!(": {}", r.errors.join("; ")))
                        .unwrap_or_default()
                );
            }
            gates.push(gate);
        }
        if all_converged && wave.baking_since.is_none() {
            wave.baking_since = Some(now);
        }
    }
    let (verdict, reason) = match &failure {
        Some((cell, why)) => (Verdict::Fail, format!("{cell}: {why}")),
        None => {
            let (v, r) = wave_verdict(&gates);
            // Pass or inconclusive only once every cell baked; a fail counts at once.
            if v != Verdict::Fail && !all_converged {
                (Verdict::Pending, r)
            } else {
                (v, r)
            }
        }
    };
    let wave_name = wave.name.clone();
    let decision = |verdict| GateDecision {
        wave: idx,
        at: now,
        verdict,
        reason: reason.clone(),
        cells: gates.clone(),
    };
    match verdict {
        Verdict::Pending => {
            let waiting: Vec<String> = wave
                .cells
                .iter()
                .filter_map(|c| c.waiting.as_ref().map(|w| format!("{}: {w}", c.cell)))
                .collect();
            let deploying = wave
                .cells
                .iter()
                .filter(|c| c.step == CellStep::Deploying)
                .count();
            let left = wave
                .cells
                .iter()
                .filter_map(|c| c.converged_at.map(|t| bake - (now - t)))
                .max()
                .unwrap_or(bake)
                .max(TimeDelta::zero());
            s.note = Some(if !waiting.is_empty() {
                format!("wave {wave_name}: {}", waiting.join("; "))
            } else if deploying > 0 {
                format!(
                    "wave {wave_name}: {deploying} cells deploying {}",
                    spec.release
                )
            } else {
                format!("wave {wave_name}: baking, {}s left", left.num_seconds())
            });
        }
        Verdict::Pass => {
            wave.outcome = Some("passed".into());
            wave.finished_at = Some(now);
            s.gates.push(decision(Verdict::Pass));
            step.events.push(("gate".into(), serde_json::json!({ "wave": wave_name, "verdict": "pass", "reason": reason, "cells": gates })));
            let approval = wave.approval && s.current + 1 < s.waves.len();
            if approval {
                step.phase = TrainPhase::AwaitingApproval;
                s.note = Some(format!(
                    "wave {wave_name} passed; `cellfleet train promote` starts the next"
                ));
            } else {
                s.current += 1;
                s.note = None;
            }
        }
        Verdict::Inconclusive => match spec.policy.on_inconclusive {
            OnInconclusive::Wait => {
                s.note = Some(format!(
                    "wave {wave_name}: inconclusive, baking on ({reason})"
                ));
            }
            OnInconclusive::Approve => {
                wave.outcome = Some("inconclusive".into());
                s.gates.push(decision(Verdict::Inconclusive));
                step.events.push(("gate".into(), serde_json::json!({ "wave": wave_name, "verdict": "inconclusive", "reason": reason, "cells": gates })));
                step.phase = TrainPhase::AwaitingApproval;
                s.note = Some(format!(
                    "wave {wave_name} inconclusive ({reason}): `cellfleet train promote` passes it"
                ));
            }
            OnInconclusive::Fail => fail(
                spec,
                s,
                idx,
                decision(Verdict::Inconclusive),
                &reason,
                &gates,
                step,
                now,
            ),
        },
        Verdict::Fail => fail(
            spec,
            s,
            idx,
            decision(Verdict::Fail),
            &reason,
            &gates,
            step,
            now,
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn fail(
    spec: &TrainSpec,
    s: &mut TrainState,
    idx: usize,
    decision: GateDecision,
    reason: &str,
    gates: &[CellGate],
    step: &mut Step,
    now: DateTime<Utc>,
) {
    let rollback = spec.policy.on_failure == OnFailure::Rollback;
    let wave = &mut s.waves[idx];
    wave.finished_at = Some(now);
    step.events.push(("gate".into(), serde_json::json!({ "wave": wave.name, "verdict": decision.verdict, "reason": reason, "cells": gates })));
    if rollback {
        wave.outcome = Some("rolled-back".into());
        step.effects.extend(revert(wave, None));
        step.phase = TrainPhase::Failed;
        s.note = Some(format!(
            "wave {} failed ({reason}); its cells were rolled back",
            wave.name
        ));
        step.events.push((
            "rollback".into(),
            serde_json::json!({ "wave": wave.name, "reason": reason }),
        ));
    } else {
        wave.outcome = Some("failed".into());
        step.phase = TrainPhase::Halted;
        s.note = Some(format!(
            "wave {} failed ({reason}): halted; `train rollback` or `train abort`",
            wave.name
        ));
        step.events.push((
            "halt".into(),
            serde_json::json!({ "wave": wave.name, "reason": reason }),
        ));
    }
    s.gates.push(decision);
}

/// Rolls the wave's changed cells (or only `only`) back: their steps become `rolled-back`.
pub fn revert(wave: &mut Wave, only: Option<&CellName>) -> Vec<Effect> {
    let mut effects = Vec::new();
    for c in &mut wave.cells {
        if only.is_some_and(|o| *o != c.cell) {
            continue;
        }
        if matches!(c.step, CellStep::Deploying | CellStep::Converged) {
            c.step = CellStep::RolledBack;
            c.waiting = None;
            effects.push(Effect::Revert {
                cell: c.cell.clone(),
                to: c.previous.clone(),
            });
        }
    }
    effects
}

/// Cells that exist, are not in the train, and do not run its release.
fn late_cells(spec: &TrainSpec, s: &TrainState, obs: &Observed) -> Vec<PlanCell> {
    obs.cells
        .iter()
        .filter(|(name, o)| {
            o.exists
                && o.desired_release.as_deref() != Some(spec.release.as_str())
                && !s
                    .waves
                    .iter()
                    .any(|w| w.cells.iter().any(|c| c.cell == **name))
        })
        .map(|(name, o)| PlanCell {
            name: name.clone(),
            region: o.region.clone(),
            kind: o.kind.unwrap_or(CellKind::Pooled),
            canary: false,
            window: o.window.clone(),
            release: o.desired_release.clone(),
        })
        .collect()
}

/// The next time a bake of the current wave ends (the driver looks then, not a tick later).
pub fn next_deadline(s: &TrainState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let w = s.waves.get(s.current)?;
    w.cells
        .iter()
        .filter(|c| c.step == CellStep::Converged)
        .filter_map(|c| c.converged_at.map(|t| t + secs(w.bake_secs)))
        .filter(|t| *t > now)
        .min()
}

/// Cells the train may change soon: those of its current wave not yet judged (a move's plan
/// refuses them).
pub fn cells_in_play(phase: TrainPhase, s: &TrainState) -> Vec<CellName> {
    if phase.is_terminal() {
        return Vec::new();
    }
    s.waves
        .get(s.current)
        .filter(|w| w.finished_at.is_none())
        .map(|w| {
            w.cells
                .iter()
                .filter(|c| matches!(c.step, CellStep::Pending | CellStep::Deploying))
                .map(|c| c.cell.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Cells that should send synthetic probes now: those of the current wave that run (or are
/// being given) the release, while the train is open.
pub fn probing(phase: TrainPhase, s: &TrainState) -> Vec<CellName> {
    if !matches!(
        phase,
        TrainPhase::Running | TrainPhase::AwaitingApproval | TrainPhase::Paused
    ) {
        return Vec::new();
    }
    s.waves
        .get(s.current)
        .map(|w| {
            w.cells
                .iter()
                .filter(|c| matches!(c.step, CellStep::Deploying | CellStep::Converged))
                .map(|c| c.cell.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Why rolling `cell` back to `to` would go past an applied contract migration, if it would:
/// `released` is how far contract migrations went out, `contracts` the stream's contract
/// migrations (version, name), `needs` what `to` declares it needs (none: nothing).
pub fn rollback_blocked(
    cell: &CellName,
    to: Option<&str>,
    needs: Option<i64>,
    released: i64,
    contracts: &[(i64, String)],
) -> Option<String> {
    let needs = needs.unwrap_or(0);
    contracts
        .iter()
        .find(|(v, _)| *v > needs && *v <= released)
        .map(|(v, name)| {
            format!(
                "cannot roll {cell} back to {}: contract migration V{v} ({name}) has been applied fleet-wide, and {} predates it (needs migrations up to V{needs}); roll forward with a fixed release instead",
                to.unwrap_or("no release"),
                to.unwrap_or("it"),
            )
        })
}
