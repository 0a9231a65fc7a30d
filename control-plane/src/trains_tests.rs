//! The pure train core with time injected: planning, change windows, gates, the error-budget
//! arithmetic, the contract-migration rules and every branch of `next_step`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cellfleet_api::{
    CellKind, CellName, CellStep, ChangeWindow, OnFailure, OnInconclusive, ProbeStats,
    ReleaseHealth, TrainPhase, TrainPolicy, Verdict, WaveKind, WorkloadState,
};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use crate::trains::*;

fn cell(s: &str) -> CellName {
    s.parse().unwrap()
}

fn policy() -> TrainPolicy {
    crate::manifest::parse_train_policy(&cellfleet_api::ManifestFile {
        name: "train-policy.yaml".into(),
        content: DEFAULT_POLICY.into(),
    })
    .unwrap()
}

fn pc(name: &str, region: &str, kind: CellKind) -> PlanCell {
    PlanCell {
        name: cell(name),
        region: region.into(),
        kind,
        canary: false,
        window: None,
        release: Some("1.0.0".into()),
    }
}

fn t0() -> DateTime<Utc> {
    // A Wednesday.
    Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
}

fn sunday_window() -> ChangeWindow {
    ChangeWindow {
        schedule: "0 0 2 * * Sun".into(),
        duration: "4h".into(),
    }
}

#[test]
fn the_default_policy_parses_and_bad_fields_are_named() {
    let p = policy();
    assert_eq!(p.pooled.batch_size, Some(5));
    let bad = DEFAULT_POLICY.replace("maxErrorRate: 0.01", "maxErrorRate: 3");
    let e = crate::manifest::parse_train_policy(&cellfleet_api::ManifestFile {
        name: "p.yaml".into(),
        content: bad,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("p.yaml: document 1: spec.gates.maxErrorRate: 3 is not a share"),
        "{e}"
    );
    let unknown = DEFAULT_POLICY.replace("batchSize: 5", "batchSise: 5");
    let e = crate::manifest::parse_train_policy(&cellfleet_api::ManifestFile {
        name: "p.yaml".into(),
        content: unknown,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("spec.pooled") && e.contains("batchSise"), "{e}");
    let bake = DEFAULT_POLICY.replace("bake: 30m", "bake: soon");
    let e = crate::manifest::parse_train_policy(&cellfleet_api::ManifestFile {
        name: "p.yaml".into(),
        content: bake,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("spec.dedicated.bake: \"soon\" is not a duration"),
        "{e}"
    );
}

#[test]
fn waves_canary_then_pooled_batches_per_region_then_dedicated() {
    let mut cells = vec![
        pc("euw1-pool-1", "eu-west-1", CellKind::Pooled),
        pc("euw1-pool-2", "eu-west-1", CellKind::Pooled),
        pc("euw1-pool-3", "eu-west-1", CellKind::Pooled),
        pc("use1-pool-1", "us-east-1", CellKind::Pooled),
        pc("use1-pool-2", "us-east-1", CellKind::Pooled),
        pc("use1-ded-1", "us-east-1", CellKind::Dedicated),
    ];
    cells.push(PlanCell {
        release: Some("2.0.0".into()),
        ..pc("use1-pool-9", "us-east-1", CellKind::Pooled)
    });
    let mut p = policy();
    p.pooled.batch_size = Some(2);
    let waves = plan(&cells, "2.0.0", &p, None);
    let names: Vec<(&str, Vec<&str>)> = waves
        .iter()
        .map(|w| {
            (
                w.name.as_str(),
                w.cells.iter().map(|c| c.cell.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("canary", vec!["euw1-pool-1", "use1-pool-1"]),
            ("pooled-1", vec!["euw1-pool-2", "euw1-pool-3"]),
            ("pooled-2", vec!["use1-pool-2"]),
            ("dedicated", vec!["use1-ded-1"]),
        ],
        "one canary per region, batches never cross a region, a cell on the release is left out"
    );
    assert_eq!(waves[0].bake_secs, 600);
    assert_eq!(waves[3].kind, WaveKind::Dedicated);
    assert!(
        waves[0].approval,
        "the default policy asks after the canary"
    );
    assert!(!waves[1].approval);
    // Labelled canaries replace the one-per-region rule; a bake override applies everywhere.
    cells[4].canary = true;
    let waves = plan(&cells, "2.0.0", &p, Some(30));
    assert_eq!(waves[0].cells.len(), 1);
    assert_eq!(waves[0].cells[0].cell.as_str(), "use1-pool-2");
    assert!(waves.iter().all(|w| w.bake_secs == 30));
}

#[test]
fn change_windows_open_close_and_say_when() {
    let w = sunday_window();
    // Wednesday: closed, opens Sunday 02:00.
    assert_eq!(window_open(&w, t0()), None);
    let sunday = Utc.with_ymd_and_hms(2026, 12, 6, 2, 0, 0).unwrap();
    assert_eq!(next_opening(&w, t0()), Some(sunday));
    assert_eq!(
        may_start(Some(&w), TimeDelta::minutes(30), t0()),
        Some(sunday)
    );
    // Inside: open until 06:00; a bake that fits starts now, one that does not waits a week.
    let inside = sunday + TimeDelta::hours(1);
    assert_eq!(window_open(&w, inside), Some(sunday + TimeDelta::hours(4)));
    assert_eq!(
        may_start(Some(&w), TimeDelta::minutes(30), inside),
        Some(inside)
    );
    let late = sunday + TimeDelta::minutes(3 * 60 + 45);
    assert_eq!(
        may_start(Some(&w), TimeDelta::minutes(30), late),
        Some(sunday + TimeDelta::days(7))
    );
    // A bake longer than the window never fits.
    assert_eq!(may_start(Some(&w), TimeDelta::hours(5), inside), None);
    assert_eq!(may_start(None, TimeDelta::hours(5), inside), Some(inside));
}

// ---------------------------------------------------------------------------------------------
// next_step

fn spec(p: TrainPolicy) -> TrainSpec {
    TrainSpec {
        release: "2.0.0".into(),
        policy: p,
        bake_override_secs: Some(60),
        contract_up_to: None,
        started_by: "test".into(),
    }
}

fn obs_cell(kind: CellKind) -> CellObs {
    CellObs {
        exists: true,
        kind: Some(kind),
        region: "eu-west-1".into(),
        desired_release: Some("1.0.0".into()),
        desired_generation: 3,
        contract_applied: true,
        ..Default::default()
    }
}

/// The cell reports running `release` at `at` with tenant traffic and probes.
fn running(
    o: &mut CellObs,
    release: &str,
    at: DateTime<Utc>,
    tenant: (u64, u64),
    probes: (u64, u64),
) {
    o.desired_release = Some(release.into());
    o.report = Some(ReportObs {
        at,
        observed_generation: o.desired_generation,
        release: Some(release.into()),
        errors: Vec::new(),
        workload: Some(WorkloadState::Running),
        release_health: Some(ReleaseHealth {
            release: release.into(),
            requests: tenant.0,
            errors: tenant.1,
            latency_p99_ms: Some(20.0),
            tenants: BTreeMap::new(),
        }),
        probes: Some(ProbeStats {
            release: release.into(),
            requests: probes.0,
            errors: probes.1,
            latency_p99_ms: Some(5.0),
        }),
    });
}

thread_local! {
    /// Whether `Sim::new` keeps the canary's approval (only the approval test wants it).
    static APPROVE_CANARY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

struct Sim {
    spec: TrainSpec,
    phase: TrainPhase,
    state: TrainState,
    obs: Observed,
    effects: Vec<Effect>,
    events: Vec<String>,
}

impl Sim {
    fn new(mut p: TrainPolicy, cells: &[(&str, CellKind)]) -> Sim {
        if !APPROVE_CANARY.with(|a| a.get()) {
            p.canary.approval = false;
        }
        let plan_cells: Vec<PlanCell> = cells.iter().map(|(n, k)| pc(n, "eu-west-1", *k)).collect();
        let spec = spec(p);
        let waves = plan(&plan_cells, "2.0.0", &spec.policy, spec.bake_override_secs);
        Sim {
            obs: Observed {
                cells: cells.iter().map(|(n, k)| (cell(n), obs_cell(*k))).collect(),
                ..Default::default()
            },
            spec,
            phase: TrainPhase::Running,
            state: TrainState {
                waves,
                ..Default::default()
            },
            effects: Vec::new(),
            events: Vec::new(),
        }
    }

    fn step(&mut self, now: DateTime<Utc>) {
        let s = next_step(&self.spec, self.phase, &self.state, &self.obs, now);
        for e in &s.effects {
            match e {
                Effect::Deploy(c) => {
                    let o = self.obs.cells.get_mut(c).unwrap();
                    o.desired_release = Some("2.0.0".into());
                    o.desired_generation += 1;
                }
                Effect::Revert { cell, to } => {
                    let o = self.obs.cells.get_mut(cell).unwrap();
                    o.desired_release = to.clone();
                    o.desired_generation += 1;
                }
                Effect::ReleaseContract(_) => {}
            }
        }
        self.effects.extend(s.effects);
        self.events.extend(s.events.into_iter().map(|(a, _)| a));
        self.phase = s.phase;
        self.state = s.state;
    }

    fn report(&mut self, c: &str, at: DateTime<Utc>, tenant: (u64, u64), probes: (u64, u64)) {
        let o = self.obs.cells.get_mut(&cell(c)).unwrap();
        running(o, "2.0.0", at, tenant, probes);
    }

    fn cell_step(&self, c: &str) -> CellStep {
        self.state
            .waves
            .iter()
            .flat_map(|w| &w.cells)
            .find(|x| x.cell.as_str() == c)
            .unwrap()
            .step
    }
}

#[test]
fn a_good_release_goes_wave_by_wave_to_done() {
    let mut p = policy();
    p.pooled.batch_size = Some(1);
    let mut sim = Sim::new(p, &[("c1", CellKind::Pooled), ("c2", CellKind::Pooled)]);
    let t = t0();
    sim.step(t);
    assert_eq!(
        sim.effects,
        [Effect::Deploy(cell("c1"))],
        "the canary first, alone"
    );
    assert_eq!(sim.cell_step("c2"), CellStep::Pending);
    // Not yet converged: waiting, nothing new.
    sim.step(t + TimeDelta::seconds(5));
    assert_eq!(sim.effects.len(), 1);
    assert!(
        sim.state.note.as_deref().unwrap().contains("deploying"),
        "{:?}",
        sim.state.note
    );
    sim.report("c1", t + TimeDelta::seconds(6), (0, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(7));
    assert_eq!(sim.cell_step("c1"), CellStep::Converged);
    // Baking: traffic arrives, no verdict before the bake is over.
    sim.report("c1", t + TimeDelta::seconds(40), (500, 1), (60, 0));
    sim.step(t + TimeDelta::seconds(40));
    assert_eq!(sim.state.current, 0);
    assert!(
        sim.state.note.as_deref().unwrap().contains("baking"),
        "{:?}",
        sim.state.note
    );
    sim.step(t + TimeDelta::seconds(68));
    assert_eq!(sim.state.current, 1, "canary passed after its bake");
    assert_eq!(sim.state.gates[0].verdict, Verdict::Pass);
    assert_eq!(sim.state.gates[0].cells[0].signal, "tenants");
    sim.step(t + TimeDelta::seconds(69));
    assert_eq!(sim.effects.last(), Some(&Effect::Deploy(cell("c2"))));
    sim.report("c2", t + TimeDelta::seconds(70), (100, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(71));
    sim.step(t + TimeDelta::seconds(132));
    sim.step(t + TimeDelta::seconds(133));
    assert_eq!(sim.phase, TrainPhase::Done);
    assert!(sim.events.contains(&"done".to_owned()));
}

#[test]
fn a_bad_canary_fails_early_and_is_rolled_back_before_any_other_cell() {
    let mut sim = Sim::new(
        policy(),
        &[("c1", CellKind::Pooled), ("c2", CellKind::Pooled)],
    );
    let t = t0();
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(2), (0, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(3));
    // 30 % errors on enough requests: fails at once, long before the bake ends.
    sim.report("c1", t + TimeDelta::seconds(10), (200, 60), (20, 6));
    sim.step(t + TimeDelta::seconds(10));
    assert_eq!(sim.phase, TrainPhase::Failed);
    assert_eq!(
        sim.effects,
        [
            Effect::Deploy(cell("c1")),
            Effect::Revert {
                cell: cell("c1"),
                to: Some("1.0.0".into())
            }
        ]
    );
    assert_eq!(
        sim.cell_step("c2"),
        CellStep::Pending,
        "no other cell ever got it"
    );
    let g = &sim.state.gates[0];
    assert_eq!(g.verdict, Verdict::Fail);
    assert!(
        g.reason.contains("error rate 30.00 % > 1.00 %"),
        "{}",
        g.reason
    );
    assert_eq!(g.cells[0].requests, 200);
}

#[test]
fn a_change_elsewhere_in_a_baking_cells_desired_state_is_not_a_failure() {
    let mut sim = Sim::new(
        policy(),
        &[("c1", CellKind::Pooled), ("c2", CellKind::Pooled)],
    );
    let t = t0();
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(1), (100, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(2));
    assert_eq!(sim.cell_step("c1"), CellStep::Converged);
    // A flag set mid-bake: the generation moves; the agent has not reported it yet.
    sim.obs
        .cells
        .get_mut(&cell("c1"))
        .unwrap()
        .desired_generation += 1;
    sim.step(t + TimeDelta::seconds(20));
    assert_eq!(sim.phase, TrainPhase::Running);
    assert!(sim.state.gates.is_empty(), "{:?}", sim.state.gates);
    // But a cell whose agent went back to the old release fails at once.
    let o = sim.obs.cells.get_mut(&cell("c1")).unwrap();
    if let Some(r) = o.report.as_mut() {
        r.release = Some("1.0.0".into());
        r.at = t + TimeDelta::seconds(25);
    }
    sim.step(t + TimeDelta::seconds(25));
    assert_eq!(sim.phase, TrainPhase::Failed);
    assert!(
        sim.state.gates[0]
            .reason
            .contains("no longer runs 2.0.0 (1.0.0)"),
        "{}",
        sim.state.gates[0].reason
    );
}

#[test]
fn halt_policy_leaves_the_cells_to_an_operator() {
    let mut p = policy();
    p.on_failure = OnFailure::Halt;
    let mut sim = Sim::new(p, &[("c1", CellKind::Pooled)]);
    let t = t0();
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(2), (0, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(3));
    sim.report("c1", t + TimeDelta::seconds(5), (100, 50), (0, 0));
    sim.step(t + TimeDelta::seconds(5));
    assert_eq!(sim.phase, TrainPhase::Halted);
    assert!(
        !sim.effects
            .iter()
            .any(|e| matches!(e, Effect::Revert { .. }))
    );
}

#[test]
fn an_empty_canary_is_judged_by_its_probes() {
    let mut sim = Sim::new(
        policy(),
        &[("c1", CellKind::Pooled), ("c2", CellKind::Pooled)],
    );
    let t = t0();
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(2), (0, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(3));
    sim.report("c1", t + TimeDelta::seconds(60), (3, 0), (120, 0));
    sim.step(t + TimeDelta::seconds(64));
    assert_eq!(sim.state.current, 1);
    assert_eq!(sim.state.gates[0].cells[0].signal, "probes");
    assert_eq!(sim.state.gates[0].cells[0].probe_requests, 120);
    // And failing probes fail it.
    let mut sim = Sim::new(policy(), &[("c1", CellKind::Pooled)]);
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(2), (0, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(3));
    sim.report("c1", t + TimeDelta::seconds(30), (0, 0), (60, 60));
    sim.step(t + TimeDelta::seconds(30));
    assert_eq!(sim.phase, TrainPhase::Failed);
    assert!(
        sim.state.gates[0].reason.contains("probes requests"),
        "{}",
        sim.state.gates[0].reason
    );
}

#[test]
fn too_little_signal_is_inconclusive_and_the_policy_decides() {
    let run = |on: OnInconclusive| {
        let mut p = policy();
        p.on_inconclusive = on;
        let mut sim = Sim::new(p, &[("c1", CellKind::Pooled), ("c2", CellKind::Pooled)]);
        let t = t0();
        sim.step(t);
        sim.report("c1", t + TimeDelta::seconds(2), (0, 0), (0, 0));
        sim.step(t + TimeDelta::seconds(3));
        sim.report("c1", t + TimeDelta::seconds(60), (10, 0), (10, 0));
        sim.step(t + TimeDelta::seconds(64));
        sim
    };
    let wait = run(OnInconclusive::Wait);
    assert_eq!((wait.phase, wait.state.current), (TrainPhase::Running, 0));
    assert!(wait.state.note.as_deref().unwrap().contains("inconclusive"));
    assert!(wait.state.gates.is_empty(), "nothing decided yet");
    let fail = run(OnInconclusive::Fail);
    assert_eq!(fail.phase, TrainPhase::Failed);
    assert_eq!(fail.state.gates[0].verdict, Verdict::Inconclusive);
    let approve = run(OnInconclusive::Approve);
    assert_eq!(approve.phase, TrainPhase::AwaitingApproval);
    assert!(
        approve.state.gates[0].reason.contains("too little signal"),
        "{}",
        approve.state.gates[0].reason
    );
}

#[test]
fn error_budget_burn_arithmetic() {
    let g = policy().gates;
    let mut o = obs_cell(CellKind::Pooled);
    // 0.5 % errors: under the 1 % error-rate gate.
    running(&mut o, "2.0.0", t0(), (1000, 5), (0, 0));
    // Default SLO 99.9 %: budget 0.1 %, burn 5× (under 14.4×).
    let gate = judge_cell(&cell("c1"), &o, "2.0.0", &g, true);
    assert_eq!(gate.verdict, Verdict::Pass);
    assert!(
        (gate.burn_rate.unwrap() - 5.0).abs() < 1e-9,
        "{:?}",
        gate.burn_rate
    );
    // A tenant with a 99.99 % SLO on the cell: budget 0.01 %, burn 50× — fails.
    o.min_budget = Some(1.0 - 99.99 / 100.0);
    let gate = judge_cell(&cell("c1"), &o, "2.0.0", &g, true);
    assert_eq!(gate.verdict, Verdict::Fail);
    assert!(
        (gate.burn_rate.unwrap() - 50.0).abs() < 1e-6,
        "{:?}",
        gate.burn_rate
    );
    assert!(
        gate.reason.contains("error budget burning 50.0×"),
        "{}",
        gate.reason
    );
    // A tenant latency SLO tighter than the policy's p99.
    o.min_budget = None;
    o.min_latency_slo_ms = Some(10.0);
    let gate = judge_cell(&cell("c1"), &o, "2.0.0", &g, true);
    assert_eq!(gate.verdict, Verdict::Fail);
    assert!(gate.reason.contains("p99 20 ms > 10 ms"), "{}", gate.reason);
    // Numbers of another release never count.
    o.min_latency_slo_ms = None;
    let gate = judge_cell(&cell("c1"), &o, "3.0.0", &g, true);
    assert_eq!(gate.verdict, Verdict::Inconclusive);
}

#[test]
fn a_dedicated_cell_waits_for_its_window_and_a_window_closing_mid_bake_does_not_stop_it() {
    let mut p = policy();
    p.dedicated.approval = false;
    let mut sim = Sim::new(p, &[("c1", CellKind::Pooled), ("d1", CellKind::Dedicated)]);
    sim.obs.cells.get_mut(&cell("d1")).unwrap().window = Some(sunday_window());
    sim.spec.bake_override_secs = None;
    for w in &mut sim.state.waves {
        w.bake_secs = 60;
    }
    let t = t0();
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(1), (100, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(2));
    sim.step(t + TimeDelta::seconds(70));
    assert_eq!(sim.state.current, 1, "canary passed");
    sim.step(t + TimeDelta::seconds(71));
    assert_eq!(sim.cell_step("d1"), CellStep::Pending);
    let note = sim.state.note.clone().unwrap();
    assert!(
        note.contains("outside its change window: waiting until 2026-12-06T02:00:00Z"),
        "{note}"
    );
    // Inside the window, 61 s before it closes: it starts.
    let sunday = Utc.with_ymd_and_hms(2026, 12, 6, 2, 0, 0).unwrap();
    let start = sunday + TimeDelta::hours(4) - TimeDelta::seconds(61);
    sim.step(start);
    assert_eq!(sim.cell_step("d1"), CellStep::Deploying);
    // Converges late; the window closes during the bake; the bake goes on and passes.
    sim.report("d1", start + TimeDelta::seconds(30), (100, 0), (0, 0));
    sim.step(start + TimeDelta::seconds(30));
    assert_eq!(sim.cell_step("d1"), CellStep::Converged);
    assert_eq!(
        window_open(&sunday_window(), start + TimeDelta::seconds(62)),
        None
    );
    sim.step(start + TimeDelta::seconds(95));
    assert_eq!(sim.state.current, 2, "the dedicated wave passed");
    sim.step(start + TimeDelta::seconds(96));
    assert_eq!(sim.phase, TrainPhase::Done);
}

#[test]
fn a_cell_with_a_move_waits_and_a_stopped_line_halts_everything() {
    let mut sim = Sim::new(policy(), &[("c1", CellKind::Pooled)]);
    sim.obs.cells.get_mut(&cell("c1")).unwrap().moving = true;
    sim.step(t0());
    assert!(sim.effects.is_empty());
    assert!(
        sim.state.note.as_deref().unwrap().contains("tenant move"),
        "{:?}",
        sim.state.note
    );
    sim.obs.cells.get_mut(&cell("c1")).unwrap().moving = false;
    sim.obs.line_stopped = Some("incident 42".into());
    sim.step(t0() + TimeDelta::seconds(1));
    assert!(sim.effects.is_empty());
    assert_eq!(
        sim.state.note.as_deref(),
        Some("the line is stopped: incident 42")
    );
    sim.obs.line_stopped = None;
    sim.step(t0() + TimeDelta::seconds(2));
    assert_eq!(sim.effects, [Effect::Deploy(cell("c1"))]);
}

#[test]
fn a_cell_that_cannot_run_the_release_fails_the_wave() {
    let mut sim = Sim::new(policy(), &[("c1", CellKind::Pooled)]);
    let t = t0();
    sim.step(t);
    let o = sim.obs.cells.get_mut(&cell("c1")).unwrap();
    o.report = Some(ReportObs {
        at: t + TimeDelta::seconds(3),
        observed_generation: o.desired_generation,
        release: Some("1.0.0".into()),
        errors: vec!["migration V3 failed: syntax error".into()],
        ..Default::default()
    });
    sim.step(t + TimeDelta::seconds(4));
    assert_eq!(sim.phase, TrainPhase::Failed);
    assert!(
        sim.state.gates[0].reason.contains("migration V3 failed"),
        "{}",
        sim.state.gates[0].reason
    );
    // Silence is a failure too, after the converge timeout.
    let mut sim = Sim::new(policy(), &[("c1", CellKind::Pooled)]);
    sim.step(t);
    sim.step(t + TimeDelta::minutes(11));
    assert_eq!(sim.phase, TrainPhase::Failed);
    assert!(
        sim.state.gates[0]
            .reason
            .contains("did not run 2.0.0 within 10m")
    );
}

#[test]
fn contract_migrations_go_out_only_after_every_cell_and_rollback_past_them_is_refused() {
    let mut sim = Sim::new(policy(), &[("c1", CellKind::Pooled)]);
    sim.spec.contract_up_to = Some(4);
    sim.obs.contract_pending = true;
    let t = t0();
    sim.step(t);
    assert!(!sim.effects.contains(&Effect::ReleaseContract(4)));
    sim.report("c1", t + TimeDelta::seconds(1), (100, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(2));
    // The cell has not applied V4 yet (it has not been released to it).
    sim.obs.cells.get_mut(&cell("c1")).unwrap().contract_applied = false;
    sim.step(t + TimeDelta::seconds(63));
    assert_eq!(
        sim.phase,
        TrainPhase::Contracting,
        "the last wave passed: contract"
    );
    assert!(sim.effects.contains(&Effect::ReleaseContract(4)));
    sim.step(t + TimeDelta::seconds(65));
    assert_eq!(sim.phase, TrainPhase::Contracting);
    sim.obs.cells.get_mut(&cell("c1")).unwrap().contract_applied = true;
    sim.step(t + TimeDelta::seconds(66));
    assert_eq!(sim.phase, TrainPhase::Done);

    let contracts = vec![(4, "drop_old_column".to_owned())];
    let why = rollback_blocked(&cell("c1"), Some("1.0.0"), Some(2), 4, &contracts).unwrap();
    assert!(
        why.contains("contract migration V4 (drop_old_column) has been applied"),
        "{why}"
    );
    assert_eq!(
        rollback_blocked(&cell("c1"), Some("1.0.0"), Some(2), 0, &contracts),
        None,
        "not released yet"
    );
    assert_eq!(
        rollback_blocked(&cell("c1"), Some("1.9.0"), Some(4), 4, &contracts),
        None,
        "the target has it"
    );
}

#[test]
fn cells_added_during_a_train_follow_the_policy() {
    let mut sim = Sim::new(policy(), &[("c1", CellKind::Pooled)]);
    let t = t0();
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(1), (100, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(2));
    // A new cell arrives mid-bake.
    sim.obs.cells.insert(cell("c9"), obs_cell(CellKind::Pooled));
    sim.step(t + TimeDelta::seconds(63));
    sim.step(t + TimeDelta::seconds(64));
    assert_eq!(sim.state.waves.last().unwrap().name, "late-pooled-2");
    assert_eq!(sim.phase, TrainPhase::Running);
    sim.step(t + TimeDelta::seconds(65));
    assert!(sim.effects.contains(&Effect::Deploy(cell("c9"))));
    assert_eq!(probing(sim.phase, &sim.state), [cell("c9")]);
}

#[test]
fn approval_between_waves() {
    APPROVE_CANARY.with(|a| a.set(true));
    let mut sim = Sim::new(
        policy(),
        &[("c1", CellKind::Pooled), ("c2", CellKind::Pooled)],
    );
    let t = t0();
    sim.step(t);
    sim.report("c1", t + TimeDelta::seconds(1), (100, 0), (0, 0));
    sim.step(t + TimeDelta::seconds(2));
    sim.step(t + TimeDelta::seconds(63));
    assert_eq!(sim.phase, TrainPhase::AwaitingApproval);
    sim.step(t + TimeDelta::seconds(64));
    assert_eq!(sim.effects.len(), 1, "nothing until promoted");
    assert_eq!(cells_in_play(sim.phase, &sim.state), Vec::<CellName>::new());
}

#[test]
fn a_dry_run_schedule_says_when_each_wave_could_start() {
    let mut cells = vec![
        pc("c1", "eu-west-1", CellKind::Pooled),
        pc("c2", "eu-west-1", CellKind::Pooled),
        pc("d1", "eu-west-1", CellKind::Dedicated),
    ];
    cells[2].window = Some(sunday_window());
    let waves = plan(&cells, "2.0.0", &policy(), None);
    let windows: BTreeMap<CellName, ChangeWindow> = [(cell("d1"), sunday_window())].into();
    let s = schedule(&waves, &windows, t0());
    assert_eq!(s[0].earliest_start, t0());
    assert_eq!(s[1].earliest_start, t0() + TimeDelta::minutes(10));
    assert_eq!(
        s[2].earliest_start,
        Utc.with_ymd_and_hms(2026, 12, 6, 2, 0, 0).unwrap()
    );
    assert!(s[2].window.as_deref().unwrap().contains("0 0 2 * * Sun"));
}
