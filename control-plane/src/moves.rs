//! Tenant moves, the pure core (SPEC §9): what each side of a move must do in each phase
//! ([`tasks`]), whether the tenant's route is frozen ([`route_frozen`]), and the next step of a
//! move given what is observed now ([`next_step`]). No I/O here: the driver in
//! `service::moves` loads the observation, asks, and persists the answer (one compare-and-swap
//! of the phase, in the same transaction as its registry effects, before any agent acts on it).
//!
//! The forward path: `capturing` (the source installs change capture, the target a write guard)
//! → `copying` (bulk copy, then the captured changes) → `catching-up` (a full checksum round;
//! wait until the lag predicts a pause within the budget) → `freezing` (the route is frozen;
//! every live router must acknowledge it) → `fenced` (the source refuses the tenant's writes; the
//! last changes drain; the rows changed since the checksum round are compared) → `flipping` (the
//! placement moves to the target, which captures its own changes before it serves; routers still
//! hold) → `rollback-window` (the route follows; the target's changes flow back to the source) →
//! `cleaning` (the source drops its copy) → `done`. A cut-over that cannot finish within the
//! budget, or whose routers do not acknowledge, lifts the fence and unfreezes the route on the
//! source: never a half-flipped tenant.

use cellfleet_api::{
    CellName, CutoverAttempt, Env, MovePhase, MoveRole, MoveSideReport, MoveTask, TenantId,
};
use serde::{Deserialize, Serialize};

/// What was asked (immutable once the move is started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveSpec {
    pub tenant: TenantId,
    pub env: Env,
    pub source: CellName,
    pub target: CellName,
    /// `--to` as given.
    pub to: String,
    pub max_write_pause_ms: u64,
    pub rollback_window_secs: u64,
    /// The move provisioned its target cell (`--to dedicated` with none free): it waits for the
    /// cell to serve first, and marks it for retirement if the tenant does not stay there.
    #[serde(default)]
    pub provisioned: bool,
}

/// The steps of a rollback (the cut-over in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackStep {
    Freeze,
    Fence,
    Flip,
    Clean,
}

/// What the move decided and measured so far.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveState {
    /// Why the move waits, failed or stopped (for people).
    pub note: Option<String>,
    pub cutovers: Vec<CutoverAttempt>,
    /// When the current freeze began, and the table version routers must acknowledge.
    pub freeze_started_ms: Option<i64>,
    pub freeze_version: Option<i64>,
    /// When the fence was ordered (the write pause starts).
    pub fence_ordered_ms: Option<i64>,
    pub rollback_until_ms: Option<i64>,
    /// The current full-checksum round the shipping side is asked for.
    pub verify_round: u32,
    /// The stream was verified in full up to this change of the shipping side.
    pub verified_upto: i64,
    /// An operator asked to abort (before the cut-over) or to roll back (in the window).
    pub abort_requested: Option<String>,
    pub rollback_requested: bool,
    pub rollback_step: Option<RollbackStep>,
    /// Where the move ends when its cleanup is done: `failed` instead of `aborted`.
    pub failing: bool,
    /// Why the move is being aborted or failed (kept as the note once it ends).
    #[serde(default)]
    pub reason: Option<String>,
    /// A provisioned target cell came up (before that, an abort has no copy to drop there).
    #[serde(default)]
    pub target_ready: bool,
    pub rows_total: Option<u64>,
    /// The forward stream's figures when the move ended (its live data is gone by then).
    #[serde(default)]
    pub final_stream: Option<StreamState>,
}

/// A stream's positions (one per direction), kept by the control plane.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamState {
    pub last_seq: i64,
    pub cursor: serde_json::Value,
    pub applied_seq: i64,
    pub rows_copied: u64,
    pub bytes_copied: u64,
    pub changes_sent: u64,
    pub copy_done: bool,
    /// The newest change of the shipping side's capture log sent, and applied.
    pub change_seq_sent: i64,
    pub change_seq_applied: i64,
    /// The latest checksum comparison the applying side made.
    pub verify: Option<VerifyOutcome>,
    /// Copy rate bookkeeping: when the copy started, and rows by then.
    pub started_ms: Option<i64>,
    pub copy_done_ms: Option<i64>,
}

/// A checksum comparison after applying a chunk that carried one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyOutcome {
    /// The checksum round (the cut-over attempt) it answers.
    pub round: u32,
    /// The changed-rows check after a fence (else a full round).
    #[serde(default)]
    pub fence: bool,
    pub change_seq: i64,
    pub mismatches: Vec<String>,
}

/// What a cell's agent last said about the cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CellFacts {
    pub desired_generation: i64,
    pub observed_generation: Option<i64>,
    /// The generation of the tenant set its workload acknowledged.
    pub tenants_generation: Option<i64>,
    /// Its workload runs the cell's desired release.
    pub serving: bool,
    /// The newest migration applied to its database.
    pub migration: Option<i64>,
}

impl CellFacts {
    /// The agent matches the current desired state, tenant set included.
    pub fn converged(&self) -> bool {
        self.observed_generation == Some(self.desired_generation)
            && self.tenants_generation == Some(self.desired_generation)
    }
}

/// An edge router as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterFacts {
    pub id: String,
    pub acked_version: i64,
    pub last_seen_ms: i64,
}

/// Everything the next step depends on, read at one time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub now_ms: i64,
    pub fwd: StreamState,
    pub rev: StreamState,
    pub source: MoveSideReport,
    pub target: MoveSideReport,
    pub routers: Vec<RouterFacts>,
    /// The routing table's version now.
    pub routing_version: i64,
    pub source_cell: CellFacts,
    pub target_cell: CellFacts,
}

/// Tunables of the driver (server settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveSettings {
    /// A router not seen for this long is gone: not waited for.
    pub router_gone_after_ms: i64,
    /// How long a freeze waits for live routers to acknowledge before it is lifted.
    pub ack_timeout_ms: i64,
    /// Cut-over attempts before the move gives up (and is aborted).
    pub max_attempts: usize,
    /// The fixed part of a cut-over's pause (round trips), for the prediction.
    pub pause_overhead_ms: u64,
    /// Changes the target applies per second, for the prediction.
    pub apply_rate: u64,
}

impl Default for MoveSettings {
    fn default() -> Self {
        MoveSettings {
            router_gone_after_ms: 60_000,
            ack_timeout_ms: 10_000,
            max_attempts: 5,
            pause_overhead_ms: 250,
            apply_rate: 2_000,
        }
    }
}

/// A registry effect that goes with a phase change (in the same transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The placement moves to the target (a new generation).
    PlaceOnTarget,
    /// The placement moves back to the source (a rollback).
    PlaceOnSource,
    /// The move is over: its data in flight is forgotten (and a dedicated cell it emptied is
    /// marked for retirement).
    Finish,
    /// The provisioned target cell serves: it becomes `ready`.
    TargetReady,
}

/// The next step of a move.
// One decision per step, consumed at once: boxing the state would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to do now; `note` (if any) says what it waits for and is stored when it changed.
    Wait(Option<String>),
    /// Change to `phase` with `state`; `effect` goes in the same transaction.
    Step {
        phase: MovePhase,
        state: MoveState,
        effect: Option<Effect>,
        /// For the audit record.
        why: String,
    },
}

/// Whether the tenant's route is frozen (routers hold its requests) in this phase.
pub fn route_frozen(phase: MovePhase, state: &MoveState) -> bool {
    match phase {
        MovePhase::Freezing | MovePhase::Fenced | MovePhase::Flipping => true,
        MovePhase::RollingBack => matches!(
            state.rollback_step,
            Some(RollbackStep::Freeze | RollbackStep::Fence | RollbackStep::Flip)
        ),
        _ => false,
    }
}

/// The placement's cell in this phase: the target once the cut-over flipped it.
pub fn placed_on_target(phase: MovePhase, state: &MoveState) -> bool {
    match phase {
        MovePhase::Flipping | MovePhase::RollbackWindow | MovePhase::Cleaning | MovePhase::Done => {
            true
        }
        MovePhase::RollingBack => matches!(
            state.rollback_step,
            Some(RollbackStep::Freeze | RollbackStep::Fence)
        ),
        _ => false,
    }
}

fn task(spec: &MoveSpec, id: &str, role: MoveRole, state: &MoveState) -> MoveTask {
    MoveTask {
        id: id.to_owned(),
        tenant: spec.tenant.clone(),
        env: spec.env.clone(),
        role,
        peer: match role {
            MoveRole::Source => spec.target.clone(),
            MoveRole::Target => spec.source.clone(),
        },
        capture: false,
        ship: false,
        apply: false,
        fence: false,
        guard: false,
        cleanup: false,
        verify_round: state.verify_round,
        verified_upto: state.verified_upto,
    }
}

/// What the source's and the target's agents must do now (`None`: nothing; the agent removes
/// whatever the move left in its cell but data).
pub fn tasks(
    spec: &MoveSpec,
    id: &str,
    phase: MovePhase,
    state: &MoveState,
) -> (Option<MoveTask>, Option<MoveTask>) {
    use MovePhase::*;
    let mut s = task(spec, id, MoveRole::Source, state);
    let mut t = task(spec, id, MoveRole::Target, state);
    match phase {
        PreparingTarget => return (None, None),
        Capturing | Copying | CatchingUp | Freezing => {
            (s.capture, s.ship) = (true, true);
            (t.guard, t.apply) = (true, true);
        }
        Fenced => {
            (s.capture, s.ship, s.fence, s.guard) = (true, true, true, true);
            (t.guard, t.apply) = (true, true);
        }
        // The target captures its own changes (for a rollback) before it serves; the source keeps
        // its rows behind the guard and applies what comes back.
        Flipping | RollbackWindow => {
            (s.guard, s.apply) = (true, true);
            (t.capture, t.ship) = (true, true);
        }
        RollingBack => match state.rollback_step {
            Some(RollbackStep::Freeze) | None => {
                (s.guard, s.apply) = (true, true);
                (t.capture, t.ship) = (true, true);
            }
            Some(RollbackStep::Fence) => {
                (s.guard, s.apply) = (true, true);
                (t.capture, t.ship, t.fence, t.guard) = (true, true, true, true);
            }
            // The source serves again; the target keeps its rows behind the guard until clean.
            Some(RollbackStep::Flip) => {
                t.guard = true;
            }
            Some(RollbackStep::Clean) => {
                t.cleanup = true;
            }
        },
        Cleaning => {
            s.cleanup = true;
        }
        Aborting => {
            // The source drops its capture (its rows stay: they are the tenant's); the target
            // drops its partial copy.
            t.cleanup = true;
        }
        Done | Aborted | RolledBack | Failed => return (None, None),
    }
    (Some(s), Some(t))
}

fn note(text: impl Into<String>) -> Decision {
    Decision::Wait(Some(text.into()))
}

fn step(
    phase: MovePhase,
    state: MoveState,
    effect: Option<Effect>,
    why: impl Into<String>,
) -> Decision {
    Decision::Step {
        phase,
        state,
        effect,
        why: why.into(),
    }
}

/// Stops the move: the target drops its copy; the note at this moment is kept as the reason.
fn to_aborting(mut state: MoveState, why: impl Into<String>) -> Decision {
    state.reason = state.note.clone();
    step(MovePhase::Aborting, state, None, why)
}

/// Routers that must acknowledge a freeze: seen within `router_gone_after`, and not yet at
/// `version`.
fn lagging_routers(obs: &Observed, settings: &MoveSettings, version: i64) -> Vec<String> {
    obs.routers
        .iter()
        .filter(|r| obs.now_ms - r.last_seen_ms <= settings.router_gone_after_ms)
        .filter(|r| r.acked_version < version)
        .map(|r| r.id.clone())
        .collect()
}

/// The write pause a cut-over would take now, predicted from the lag.
pub fn predicted_pause_ms(obs: &Observed, settings: &MoveSettings) -> u64 {
    let head = obs.source.capture_head.unwrap_or(obs.fwd.change_seq_sent);
    let lag = u64::try_from(head - obs.fwd.change_seq_applied).unwrap_or(0);
    settings.pause_overhead_ms + lag * 1000 / settings.apply_rate.max(1)
}

/// A cut-over attempt that ends before the flip: the fence is lifted and the route unfrozen on
/// the source (the move goes back to catching up, or gives up after too many attempts).
fn lift_cutover(
    spec: &MoveSpec,
    mut state: MoveState,
    obs: &Observed,
    settings: &MoveSettings,
    outcome: String,
) -> Decision {
    let pause_ms = state
        .fence_ordered_ms
        .map(|f| u64::try_from(obs.now_ms - f).unwrap_or(0));
    if let Some(last) = state.cutovers.last_mut()
        && last.pause_ms.is_none()
        && last.outcome == "running"
    {
        last.pause_ms = pause_ms;
        last.outcome = outcome.clone();
    }
    state.freeze_started_ms = None;
    state.freeze_version = None;
    state.fence_ordered_ms = None;
    // A fresh checksum round before the next attempt.
    state.verify_round += 1;
    if state.cutovers.len() >= settings.max_attempts {
        state.note = Some(format!(
            "gave up after {} cut-over attempts (last: {outcome}); the tenant stays on {}",
            state.cutovers.len(),
            spec.source
        ));
        state.failing = true;
        return to_aborting(state, outcome);
    }
    state.note = Some(format!(
        "{outcome}; the route stays on {} and the move tries again",
        spec.source
    ));
    step(MovePhase::CatchingUp, state, None, outcome)
}

/// The next step of a move in `phase` with `state`, given `obs`.
pub fn next_step(
    spec: &MoveSpec,
    phase: MovePhase,
    state: &MoveState,
    obs: &Observed,
    settings: &MoveSettings,
) -> Decision {
    use MovePhase::*;
    let mut next = state.clone();
    // An abort before the flip: lift everything, drop the target's copy.
    if let Some(reason) = &state.abort_requested
        && matches!(
            phase,
            PreparingTarget | Capturing | Copying | CatchingUp | Freezing | Fenced
        )
    {
        if let Some(last) = next.cutovers.last_mut()
            && last.outcome == "running"
        {
            last.outcome = "aborted".into();
        }
        next.note = Some(format!("aborted: {reason}"));
        next.freeze_started_ms = None;
        next.fence_ordered_ms = None;
        return to_aborting(next, format!("abort: {reason}"));
    }
    match phase {
        PreparingTarget => {
            let t = &obs.target_cell;
            if t.converged()
                && t.serving
                && t.migration.is_some()
                && t.migration == obs.source_cell.migration
            {
                next.target_ready = true;
                next.note = None;
                step(
                    Capturing,
                    next,
                    Some(Effect::TargetReady),
                    format!("{} is provisioned and serves", spec.target),
                )
            } else {
                note(format!(
                    "provisioning {}: waiting for its agent to converge and its workload to serve (migration V{} of V{})",
                    spec.target,
                    t.migration.map_or("-".into(), |m| m.to_string()),
                    obs.source_cell
                        .migration
                        .map_or("-".into(), |m| m.to_string())
                ))
            }
        }
        Capturing => {
            if !obs.source.unmovable.is_empty() {
                next.note = Some(format!(
                    "cannot move safely: {}",
                    obs.source.unmovable.join("; ")
                ));
                next.failing = true;
                return to_aborting(next, "unmovable tables");
            }
            match (obs.source.capturing_from, obs.target.guarded) {
                (Some(_), true) => {
                    next.note = None;
                    next.rows_total = obs.source.rows;
                    step(
                        Copying,
                        next,
                        None,
                        "capture installed at the source, target guarded",
                    )
                }
                (None, _) => note(format!(
                    "waiting for {} to install change capture",
                    spec.source
                )),
                (_, false) => note(format!(
                    "waiting for {} to guard the tenant's rows",
                    spec.target
                )),
            }
        }
        Copying => {
            if obs.fwd.copy_done && obs.fwd.applied_seq >= obs.fwd.last_seq {
                next.verify_round = next.verify_round.max(1);
                next.note = None;
                step(CatchingUp, next, None, "bulk copy applied at the target")
            } else {
                Decision::Wait(None)
            }
        }
        CatchingUp => {
            match &obs.fwd.verify {
                Some(v)
                    if v.round == state.verify_round && !v.fence && !v.mismatches.is_empty() =>
                {
                    next.note = Some(format!(
                        "verification failed: {}; the tenant stays on {}",
                        v.mismatches.join("; "),
                        spec.source
                    ));
                    next.failing = true;
                    return to_aborting(next, "verification failed");
                }
                Some(v) if v.round == state.verify_round && !v.fence => {
                    next.verified_upto = v.change_seq;
                }
                _ => {
                    return note(format!(
                        "verifying the copy (checksum round {})",
                        state.verify_round
                    ));
                }
            }
            let predicted = predicted_pause_ms(obs, settings);
            if predicted > spec.max_write_pause_ms {
                return note(format!(
                    "catching up: a cut-over now would pause writes ~{predicted} ms (budget {} ms)",
                    spec.max_write_pause_ms
                ));
            }
            next.freeze_started_ms = Some(obs.now_ms);
            next.freeze_version = None;
            next.note = None;
            next.cutovers.push(CutoverAttempt {
                started_at: chrono::DateTime::from_timestamp_millis(obs.now_ms).unwrap_or_default(),
                pause_ms: None,
                outcome: "running".into(),
            });
            step(
                Freezing,
                next,
                None,
                format!("cut-over: freezing the route (predicted pause {predicted} ms)"),
            )
        }
        Freezing => {
            // The freeze was committed with the phase: the routing version now includes it.
            let Some(version) = state.freeze_version else {
                next.freeze_version = Some(obs.routing_version);
                return step(Freezing, next, None, "freeze version recorded");
            };
            let lagging = lagging_routers(obs, settings, version);
            if lagging.is_empty() {
                next.fence_ordered_ms = Some(obs.now_ms);
                return step(
                    Fenced,
                    next,
                    None,
                    "every live router holds the tenant: fencing the source",
                );
            }
            let waited = obs.now_ms - state.freeze_started_ms.unwrap_or(obs.now_ms);
            if waited > settings.ack_timeout_ms {
                return lift_cutover(
                    spec,
                    next,
                    obs,
                    settings,
                    format!(
                        "routers did not acknowledge the frozen route within {} ms: {}",
                        settings.ack_timeout_ms,
                        lagging.join(", ")
                    ),
                );
            }
            note(format!(
                "waiting for routers to hold the tenant: {}",
                lagging.join(", ")
            ))
        }
        Fenced => {
            let since = obs.now_ms - state.fence_ordered_ms.unwrap_or(obs.now_ms);
            if let Some(v) = &obs.fwd.verify
                && v.fence
                && v.round == state.verify_round
                && obs.source.fenced_at.is_some_and(|s| v.change_seq >= s)
                && !v.mismatches.is_empty()
            {
                next.note = Some(format!(
                    "verification failed after the fence: {}; the tenant stays on {}",
                    v.mismatches.join("; "),
                    spec.source
                ));
                next.failing = true;
                if let Some(last) = next.cutovers.last_mut() {
                    last.outcome = "verification failed".into();
                    last.pause_ms = u64::try_from(since).ok();
                }
                return to_aborting(next, "verification failed");
            }
            let drained = obs.source.fenced_at.is_some_and(|s| {
                obs.fwd.change_seq_applied >= s
                    && obs.fwd.verify.as_ref().is_some_and(|v| {
                        v.fence
                            && v.round == state.verify_round
                            && v.change_seq >= s
                            && v.mismatches.is_empty()
                    })
            });
            if drained {
                next.note = None;
                return step(
                    Flipping,
                    next,
                    Some(Effect::PlaceOnTarget),
                    "drained and verified: the target takes the tenant",
                );
            }
            if since > i64::try_from(spec.max_write_pause_ms).unwrap_or(i64::MAX) {
                return lift_cutover(
                    spec,
                    next,
                    obs,
                    settings,
                    format!(
                        "the cut-over would exceed the write-pause budget ({} ms)",
                        spec.max_write_pause_ms
                    ),
                );
            }
            match obs.source.fenced_at {
                None => note(format!("waiting for {} to fence the tenant", spec.source)),
                Some(s) => note(format!(
                    "draining: applied up to change {} of {s}",
                    obs.fwd.change_seq_applied
                )),
            }
        }
        Flipping => {
            if obs.target_cell.converged()
                && obs.target.capturing_from.is_some()
                && !obs.target.guarded
            {
                let pause = state
                    .fence_ordered_ms
                    .map(|f| u64::try_from(obs.now_ms - f).unwrap_or(0));
                if let Some(last) = next.cutovers.last_mut() {
                    last.pause_ms = pause;
                    last.outcome = "flipped".into();
                }
                next.fence_ordered_ms = None;
                next.freeze_started_ms = None;
                next.rollback_until_ms = Some(
                    obs.now_ms
                        + i64::try_from(spec.rollback_window_secs * 1000).unwrap_or(i64::MAX),
                );
                next.note = None;
                step(
                    RollbackWindow,
                    next,
                    None,
                    format!(
                        "the target serves; route unfrozen (write pause {} ms)",
                        pause.unwrap_or(0)
                    ),
                )
            } else {
                note(format!("waiting for {} to take the tenant", spec.target))
            }
        }
        RollbackWindow => {
            if state.rollback_requested {
                next.rollback_step = Some(RollbackStep::Freeze);
                next.freeze_started_ms = Some(obs.now_ms);
                next.freeze_version = None;
                next.note = None;
                return step(RollingBack, next, None, "rollback: freezing the route");
            }
            if state.rollback_until_ms.is_some_and(|u| obs.now_ms >= u) {
                return step(
                    Cleaning,
                    next,
                    None,
                    "rollback window over: cleaning the source",
                );
            }
            Decision::Wait(None)
        }
        RollingBack => rollback_step(spec, next, obs, settings),
        Cleaning => {
            if obs.source.cleaned && obs.target.capturing_from.is_none() {
                next.note = None;
                step(Done, next, Some(Effect::Finish), "source cleaned")
            } else {
                note(format!(
                    "waiting for {} to drop the tenant's rows",
                    spec.source
                ))
            }
        }
        Aborting => {
            // A provisioned target that never came up holds no copy.
            let target_clean = obs.target.cleaned || (spec.provisioned && !state.target_ready);
            if target_clean && obs.source.capturing_from.is_none() && !obs.source.guarded {
                let end = if state.failing { Failed } else { Aborted };
                next.note = state.reason.clone();
                step(end, next, Some(Effect::Finish), "target cleaned")
            } else {
                let waiting = format!("waiting for {} to drop its partial copy", spec.target);
                note(match &state.reason {
                    Some(why) => format!("{why}; {waiting}"),
                    None => waiting,
                })
            }
        }
        Done | Aborted | RolledBack | Failed => Decision::Wait(None),
    }
}

fn rollback_step(
    spec: &MoveSpec,
    mut next: MoveState,
    obs: &Observed,
    settings: &MoveSettings,
) -> Decision {
    use MovePhase::*;
    match next.rollback_step {
        Some(RollbackStep::Freeze) | None => {
            let Some(version) = next.freeze_version else {
                next.freeze_version = Some(obs.routing_version);
                return step(RollingBack, next, None, "freeze version recorded");
            };
            let lagging = lagging_routers(obs, settings, version);
            if lagging.is_empty() {
                next.rollback_step = Some(RollbackStep::Fence);
                next.fence_ordered_ms = Some(obs.now_ms);
                return step(
                    RollingBack,
                    next,
                    None,
                    "every live router holds the tenant: fencing the target",
                );
            }
            note(format!(
                "waiting for routers to hold the tenant: {}",
                lagging.join(", ")
            ))
        }
        Some(RollbackStep::Fence) => {
            if let Some(v) = &obs.rev.verify
                && v.fence
                && v.round == next.verify_round
                && obs.target.fenced_at.is_some_and(|s| v.change_seq >= s)
                && !v.mismatches.is_empty()
            {
                // The source does not match what the target had: keep serving from the target.
                next.note = Some(format!(
                    "rollback verification failed: {}; the tenant stays on {}",
                    v.mismatches.join("; "),
                    spec.target
                ));
                next.rollback_step = None;
                next.rollback_requested = false;
                next.fence_ordered_ms = None;
                return step(RollbackWindow, next, None, "rollback verification failed");
            }
            let drained = obs.target.fenced_at.is_some_and(|s| {
                obs.rev.change_seq_applied >= s
                    && obs.rev.verify.as_ref().is_some_and(|v| {
                        v.fence
                            && v.round == next.verify_round
                            && v.change_seq >= s
                            && v.mismatches.is_empty()
                    })
            });
            if drained {
                next.rollback_step = Some(RollbackStep::Flip);
                return step(
                    RollingBack,
                    next,
                    Some(Effect::PlaceOnSource),
                    "drained and verified: the source takes the tenant back",
                );
            }
            note(format!("waiting for {} to fence and drain", spec.target))
        }
        Some(RollbackStep::Flip) => {
            if obs.source_cell.converged() && !obs.source.guarded {
                next.rollback_step = Some(RollbackStep::Clean);
                next.fence_ordered_ms = None;
                return step(
                    RollingBack,
                    next,
                    None,
                    "the source serves again; route unfrozen",
                );
            }
            note(format!(
                "waiting for {} to take the tenant back",
                spec.source
            ))
        }
        Some(RollbackStep::Clean) => {
            if obs.target.cleaned {
                next.note = None;
                step(RolledBack, next, Some(Effect::Finish), "target cleaned")
            } else {
                note(format!(
                    "waiting for {} to drop the tenant's rows",
                    spec.target
                ))
            }
        }
    }
}

#[cfg(test)]
#[path = "moves_tests.rs"]
mod tests;
