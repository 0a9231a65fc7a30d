//! The move's decisions, phase by phase, over hand-made observations.
#![allow(clippy::unwrap_used)]

use super::*;

fn spec() -> MoveSpec {
    MoveSpec {
        tenant: "acme".parse().unwrap(),
        env: "prod".parse().unwrap(),
        source: "cell-a".parse().unwrap(),
        target: "cell-b".parse().unwrap(),
        to: "cell-b".into(),
        max_write_pause_ms: 2000,
        rollback_window_secs: 60,
        provisioned: false,
    }
}

fn settings() -> MoveSettings {
    MoveSettings::default()
}

/// Steps until the move waits; returns the phase and state it rests in.
fn run(mut phase: MovePhase, mut state: MoveState, obs: &Observed) -> (MovePhase, MoveState) {
    for _ in 0..20 {
        match next_step(&spec(), phase, &state, obs, &settings()) {
            Decision::Wait(_) => return (phase, state),
            Decision::Step {
                phase: p, state: s, ..
            } => {
                phase = p;
                state = s;
            }
        }
    }
    panic!("no rest after 20 steps: {phase}");
}

fn caught_up(now_ms: i64) -> Observed {
    Observed {
        now_ms,
        fwd: StreamState {
            last_seq: 10,
            applied_seq: 10,
            copy_done: true,
            change_seq_sent: 50,
            change_seq_applied: 50,
            verify: Some(VerifyOutcome {
                round: 1,
                fence: false,
                change_seq: 50,
                mismatches: Vec::new(),
            }),
            ..StreamState::default()
        },
        source: MoveSideReport {
            capturing_from: Some(1),
            capture_head: Some(50),
            ..MoveSideReport::default()
        },
        target: MoveSideReport {
            guarded: true,
            ..MoveSideReport::default()
        },
        routers: vec![RouterFacts {
            id: "r1".into(),
            acked_version: 7,
            last_seen_ms: now_ms,
        }],
        routing_version: 7,
        ..Observed::default()
    }
}

#[test]
fn the_forward_path_runs_to_the_fence_and_freezes_only_what_it_must() {
    let mut obs = caught_up(1_000);
    obs.routers[0].acked_version = 6;
    // Capturing → copying → catching up → freezing (the route frozen from here); the router
    // still serves version 6.
    let (phase, state) = run(MovePhase::Capturing, MoveState::default(), &obs);
    assert_eq!(phase, MovePhase::Freezing);
    assert_eq!(state.freeze_version, Some(7));
    assert!(route_frozen(phase, &state));
    assert!(!route_frozen(MovePhase::CatchingUp, &state));
    // The router acknowledges version 7: the fence is ordered.
    obs.routers[0].acked_version = 7;
    let d = next_step(&spec(), phase, &state, &obs, &settings());
    let Decision::Step { phase, state, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(phase, MovePhase::Fenced);
    assert_eq!(state.fence_ordered_ms, Some(1_000));
    let (src, tgt) = tasks(&spec(), "mv_1", phase, &state);
    let (src, tgt) = (src.unwrap(), tgt.unwrap());
    assert!(src.fence && src.guard && src.ship && src.capture);
    assert!(tgt.guard && tgt.apply && !tgt.fence);
}

#[test]
fn the_flip_waits_for_the_drain_and_the_changed_rows_check() {
    let mut obs = caught_up(1_000);
    let state = MoveState {
        fence_ordered_ms: Some(900),
        verify_round: 1,
        verified_upto: 50,
        ..MoveState::default()
    };
    obs.source.fenced_at = Some(60);
    // Applied up to 55 of 60: still draining.
    obs.fwd.change_seq_applied = 55;
    assert!(matches!(
        next_step(&spec(), MovePhase::Fenced, &state, &obs, &settings()),
        Decision::Wait(Some(n)) if n.contains("draining")
    ));
    // All applied and the changed rows match: flip, with the placement in the same step.
    obs.fwd.change_seq_applied = 60;
    // A full round, or the changed-rows check of an earlier attempt, is not this fence's check.
    for (round, fence) in [(1, false), (0, true)] {
        obs.fwd.verify = Some(VerifyOutcome {
            round,
            fence,
            change_seq: 60,
            mismatches: Vec::new(),
        });
        assert!(matches!(
            next_step(&spec(), MovePhase::Fenced, &state, &obs, &settings()),
            Decision::Wait(_)
        ));
    }
    obs.fwd.verify = Some(VerifyOutcome {
        round: 1,
        fence: true,
        change_seq: 60,
        mismatches: Vec::new(),
    });
    let d = next_step(&spec(), MovePhase::Fenced, &state, &obs, &settings());
    assert!(
        matches!(
            d,
            Decision::Step {
                phase: MovePhase::Flipping,
                effect: Some(Effect::PlaceOnTarget),
                ..
            }
        ),
        "{d:?}"
    );
    let (src, tgt) = tasks(&spec(), "mv_1", MovePhase::Flipping, &state);
    let (src, tgt) = (src.unwrap(), tgt.unwrap());
    // The target captures before it serves; the source keeps its rows behind the guard.
    assert!(tgt.capture && tgt.ship && !tgt.guard);
    assert!(src.guard && src.apply && !src.fence);
}

#[test]
fn a_cutover_over_budget_lifts_the_fence_and_stays_on_the_source() {
    let mut obs = caught_up(10_000);
    obs.source.fenced_at = Some(60);
    let state = MoveState {
        fence_ordered_ms: Some(7_000),
        verify_round: 1,
        cutovers: vec![CutoverAttempt {
            started_at: chrono::DateTime::from_timestamp_millis(6_900).unwrap(),
            pause_ms: None,
            outcome: "running".into(),
        }],
        ..MoveState::default()
    };
    let Decision::Step { phase, state, .. } =
        next_step(&spec(), MovePhase::Fenced, &state, &obs, &settings())
    else {
        panic!()
    };
    assert_eq!(phase, MovePhase::CatchingUp);
    assert!(!route_frozen(phase, &state));
    assert_eq!(state.cutovers[0].pause_ms, Some(3_000));
    assert!(state.cutovers[0].outcome.contains("write-pause budget"));
    assert_eq!(
        state.verify_round, 2,
        "a fresh checksum round before trying again"
    );
    let (src, _) = tasks(&spec(), "mv_1", phase, &state);
    assert!(!src.unwrap().fence, "the fence is lifted");
}

#[test]
fn lagging_routers_hold_the_fence_gone_ones_do_not() {
    let mut obs = caught_up(5_000);
    obs.routers.push(RouterFacts {
        id: "slow".into(),
        acked_version: 6,
        last_seen_ms: 4_900,
    });
    obs.routers.push(RouterFacts {
        id: "gone".into(),
        acked_version: 1,
        last_seen_ms: 5_000 - 200_000,
    });
    let state = MoveState {
        freeze_started_ms: Some(4_000),
        freeze_version: Some(7),
        ..MoveState::default()
    };
    match next_step(&spec(), MovePhase::Freezing, &state, &obs, &settings()) {
        Decision::Wait(Some(n)) => assert!(n.contains("slow") && !n.contains("gone"), "{n}"),
        d => panic!("{d:?}"),
    }
    // Past the acknowledgement timeout: the attempt ends, the route unfreezes on the source.
    obs.now_ms = 4_000 + settings().ack_timeout_ms + 1;
    let Decision::Step { phase, state, .. } =
        next_step(&spec(), MovePhase::Freezing, &state, &obs, &settings())
    else {
        panic!()
    };
    assert_eq!(phase, MovePhase::CatchingUp);
    assert!(state.note.unwrap().contains("slow"));
}

#[test]
fn a_checksum_mismatch_or_unmovable_tables_abort_and_fail() {
    let mut obs = caught_up(1_000);
    obs.fwd.verify = Some(VerifyOutcome {
        round: 1,
        fence: false,
        change_seq: 50,
        mismatches: vec!["notes: 10 rows (sum 1) here, 9 rows (sum 2) there".into()],
    });
    let state = MoveState {
        verify_round: 1,
        ..MoveState::default()
    };
    let Decision::Step { phase, state, .. } =
        next_step(&spec(), MovePhase::CatchingUp, &state, &obs, &settings())
    else {
        panic!()
    };
    assert_eq!(phase, MovePhase::Aborting);
    assert!(state.failing && state.note.unwrap().contains("notes: 10 rows"));
    // Unmovable tables stop it before anything is copied.
    let mut obs = caught_up(1_000);
    obs.source.unmovable = vec!["orders: no primary key".into()];
    let Decision::Step { phase, state, .. } = next_step(
        &spec(),
        MovePhase::Capturing,
        &MoveState::default(),
        &obs,
        &settings(),
    ) else {
        panic!()
    };
    assert_eq!(phase, MovePhase::Aborting);
    assert!(
        state
            .note
            .as_deref()
            .unwrap_or("")
            .contains("orders: no primary key")
    );
    // Aborting ends in `failed` once the target dropped its copy and the source its capture.
    obs.target.cleaned = true;
    obs.source.capturing_from = None;
    let d = next_step(&spec(), MovePhase::Aborting, &state, &obs, &settings());
    assert!(
        matches!(
            d,
            Decision::Step {
                phase: MovePhase::Failed,
                effect: Some(Effect::Finish),
                ..
            }
        ),
        "{d:?}"
    );
}

#[test]
fn an_abort_before_the_flip_and_a_rollback_in_the_window() {
    let obs = caught_up(1_000);
    let state = MoveState {
        abort_requested: Some("operator".into()),
        fence_ordered_ms: Some(900),
        ..MoveState::default()
    };
    let d = next_step(&spec(), MovePhase::Fenced, &state, &obs, &settings());
    let Decision::Step { phase, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(phase, MovePhase::Aborting);
    let (src, tgt) = tasks(&spec(), "mv_1", phase, &state);
    assert!(!src.unwrap().fence && tgt.unwrap().cleanup);

    let state = MoveState {
        rollback_requested: true,
        rollback_until_ms: Some(99_000),
        ..MoveState::default()
    };
    let Decision::Step { phase, state, .. } = next_step(
        &spec(),
        MovePhase::RollbackWindow,
        &state,
        &obs,
        &settings(),
    ) else {
        panic!()
    };
    assert_eq!(
        (phase, state.rollback_step),
        (MovePhase::RollingBack, Some(RollbackStep::Freeze))
    );
    assert!(route_frozen(phase, &state));
    // The window closing without a rollback: clean the source.
    let state = MoveState {
        rollback_until_ms: Some(900),
        ..MoveState::default()
    };
    let d = next_step(
        &spec(),
        MovePhase::RollbackWindow,
        &state,
        &obs,
        &settings(),
    );
    assert!(
        matches!(
            d,
            Decision::Step {
                phase: MovePhase::Cleaning,
                ..
            }
        ),
        "{d:?}"
    );
}
