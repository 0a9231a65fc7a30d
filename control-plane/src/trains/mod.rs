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

mod gates;
mod plan;
mod windows;

pub use gates::*;
pub use plan::*;
pub use windows::*;

/// The operation kind of trains.
pub const KIND: &str = "train";
/// The one subject every train holds: one train drives the fleet at a time, so two never drive
/// the same cell.
pub const SUBJECT: &str = "release-train";
/// The default policy, checked in.
pub const DEFAULT_POLICY: &str = include_str!("../../../templates/train-policy.yaml");
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

pub(crate) fn secs(n: u64) -> TimeDelta {
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
            if !runs(&o, &spec.release)
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
            // Stable while nothing changes (a countdown would rewrite the row every look).
            let until = wave
                .cells
                .iter()
                .filter_map(|c| c.converged_at.map(|t| t + bake))
                .max()
                .unwrap_or(now + bake);
            s.note = Some(if !waiting.is_empty() {
                format!("wave {wave_name}: {}", waiting.join("; "))
            } else if deploying > 0 {
                format!(
                    "wave {wave_name}: {deploying} cells deploying {}",
                    spec.release
                )
            } else {
                format!(
                    "wave {wave_name}: baking until {}",
                    until.format("%H:%M:%S UTC")
                )
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
