//! Moves survive crashes. The control plane, the source agent and the target agent each die
//! (a failpoint aborts the process, as `kill -9` would) at every step boundary of a move in
//! turn — forward, during a rollback and during an abort — and are started again; every move
//! must end where it should, with no acknowledged write lost, no two cells serving the tenant at
//! any moment, and the fleet invariants holding at the end. A representative few are real
//! `SIGKILL`s in the middle of a bulk copy.

use std::time::Duration;

use cellfleet_api::failpoints::ENV;
use cellfleet_e2e::{
    DualServeProbe, LocalFleet, Writer, assert_every_write_landed_once, eventually, nginx_edge,
    wait_no_rows, wait_router_live,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    ControlPlane,
    Source,
    Target,
}

/// How the move goes: to its end, rolled back in its window, or aborted before its cut-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Forward,
    Rollback,
    Abort,
}

fn other(cell: &str) -> &'static str {
    if cell == "cell-a" { "cell-b" } else { "cell-a" }
}

/// One move of acme to the other cell with `point` armed in `who`; the process must die there,
/// come back, and the move end as its path says.
async fn crash_case(fleet: &mut LocalFleet, who: Who, point: &str, path: Path) {
    let from = fleet.cell_of("acme").unwrap_or_default();
    let to = other(&from);
    let (si, ti) = (fleet.index_of(&from), fleet.index_of(to));
    let armed = [(ENV, point)];
    match who {
        Who::ControlPlane => fleet.restart_server(&armed),
        Who::Source => fleet.restart_agent(si, &armed),
        Who::Target => fleet.restart_agent(ti, &armed),
    }
    fleet.wait_converged();
    let probe = DualServeProbe::start(&fleet.endpoint_of(&from), &fleet.endpoint_of(to), "acme");
    let mut args = vec!["acme", "--to", to];
    match path {
        Path::Forward => args.extend(["--rollback-window", "1s"]),
        Path::Rollback => args.extend(["--rollback-window", "10m"]),
        // No cut-over can fit a 1 ms pause: the move waits in catching-up for its abort.
        Path::Abort => args.extend(["--max-write-pause", "1ms"]),
    }
    let id = fleet.start_move(&args);
    match path {
        Path::Forward => {}
        Path::Rollback => {
            let window = fleet.wait_move(&id, "rollback-window", Duration::from_secs(60));
            assert_eq!(
                window["phase"], "rollback-window",
                "{who:?} {point}: {window}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            let asked = fleet.run(&["move", "rollback", &id]);
            assert_eq!(asked.code, 0, "{}", asked.stderr);
        }
        Path::Abort => {
            fleet.wait_move(&id, "catching-up", Duration::from_secs(60));
            let asked = fleet.run(&["move", "abort", &id]);
            assert_eq!(asked.code, 0, "{}", asked.stderr);
        }
    }
    let within = Duration::from_secs(60);
    let died = match who {
        Who::ControlPlane => fleet.server.wait_exit(within),
        Who::Source => fleet.agents[si]
            .as_mut()
            .is_some_and(|a| a.wait_exit(within)),
        Who::Target => fleet.agents[ti]
            .as_mut()
            .is_some_and(|a| a.wait_exit(within)),
    };
    assert!(
        died,
        "{who:?} never reached failpoint {point}: {}\n{}",
        fleet.move_status(&id),
        fleet.agent_logs()
    );
    match who {
        Who::ControlPlane => fleet.restart_server(&[]),
        Who::Source => fleet.restart_agent(si, &[]),
        Who::Target => fleet.restart_agent(ti, &[]),
    }
    let expected = match path {
        Path::Forward => "done",
        Path::Rollback => "rolled-back",
        Path::Abort => "aborted",
    };
    let end = fleet.wait_move(&id, expected, Duration::from_secs(120));
    assert_eq!(
        end["phase"],
        expected,
        "{who:?} died at {point}: {end}\n{}",
        fleet.agent_logs()
    );
    let (rounds, both) = probe.finish();
    assert_eq!(
        both, 0,
        "{who:?} at {point}: two cells served acme in {both} of {rounds} probes"
    );
    let emptied = if path == Path::Forward {
        from.as_str()
    } else {
        to
    };
    wait_no_rows(fleet, emptied, "acme").await;
    eprintln!("{who:?} died at {point}: the move ended {expected}");
}

/// Runs `cases` on one fleet with a writer going through nginx the whole time; then checks
/// every acknowledged write and the invariants.
async fn crash_matrix(cases: &[(Who, &str, Path)]) {
    let mut fleet = LocalFleet::start(&[("cell-a", 5), ("cell-b", 5)]).await;
    fleet.apply_tenants(&[("acme", "")]);
    let (nginx, router) = nginx_edge(
        fleet.url(),
        &fleet.edge_token_file(),
        &fleet.dir().join("router-cache"),
    );
    wait_router_live(&fleet, 1);
    // A steady trickle: every move copies the tenant whole, so a flood would make each
    // successive move longer.
    let writer = Writer::paced(&nginx.url, "acme", Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (who, point, path) in cases {
        crash_case(&mut fleet, *who, point, *path).await;
    }
    let written = writer.finish();
    let mut why: std::collections::BTreeMap<(u16, Option<String>), usize> = Default::default();
    for (status, reason, _) in &written.failed {
        *why.entry((*status, reason.clone())).or_default() += 1;
    }
    eprintln!(
        "{} writes acknowledged, {} refused or failed while processes died: {why:?}",
        written.acked.len(),
        written.failed.len()
    );
    let end = fleet.cell_of("acme").unwrap_or_default();
    let ids = fleet.cell_dbs[fleet.index_of(&end)].note_ids("acme").await;
    // Crashes may refuse requests (a held request can outlast a control plane restart); they
    // must never lose one they acknowledged.
    let acknowledged = cellfleet_e2e::Written {
        failed: Vec::new(),
        ..written
    };
    assert_every_write_landed_once(&acknowledged, &ids);
    drop((nginx, router));
    fleet.check_invariants(&["acme"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_dies_at_every_step_of_a_move() {
    use Path::*;
    use Who::ControlPlane as Cp;
    crash_matrix(&[
        (Cp, "cp:move:copying", Forward),
        (Cp, "cp:chunk-stored", Forward),
        (Cp, "cp:chunk-acked", Forward),
        (Cp, "cp:move:catching-up", Forward),
        (Cp, "cp:move:freezing", Forward),
        (Cp, "cp:move:fenced", Forward),
        (Cp, "cp:move:flipping", Forward),
        (Cp, "cp:move:rollback-window", Forward),
        (Cp, "cp:move:cleaning", Forward),
        (Cp, "cp:move:done", Forward),
        (Cp, "cp:move:rolling-back:freeze", Rollback),
        (Cp, "cp:move:rolling-back:fence", Rollback),
        (Cp, "cp:move:rolling-back:flip", Rollback),
        (Cp, "cp:move:rolling-back:clean", Rollback),
        (Cp, "cp:move:aborting", Abort),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_die_at_every_step_of_a_move() {
    use Path::*;
    use Who::{Source, Target};
    crash_matrix(&[
        (Source, "agent:capture-installed", Forward),
        (Target, "agent:guard-installed", Forward),
        (Source, "agent:chunk-uploaded", Forward),
        (Target, "agent:chunk-applied", Forward),
        (Source, "agent:fenced", Forward),
        (Target, "agent:guard-dropped", Forward),
        (Source, "agent:rows-deleted", Forward),
        (Target, "agent:chunk-uploaded", Rollback),
        (Source, "agent:chunk-applied", Rollback),
        (Target, "agent:fenced", Rollback),
        (Source, "agent:guard-dropped", Rollback),
        (Target, "agent:rows-deleted", Rollback),
        (Target, "agent:rows-deleted", Abort),
    ])
    .await;
}

/// Real `SIGKILL`s in the middle of a bulk copy (60 000 rows), one process at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_bulk_copy() {
    let mut fleet = LocalFleet::start(&[("cell-a", 5), ("cell-b", 5)]).await;
    fleet.apply_tenants(&[("acme", "")]);
    let home = fleet.cell_of("acme").unwrap_or_default();
    fleet.cell_dbs[fleet.index_of(&home)]
        .seed_notes("acme", 60_000, 2_000_000_000)
        .await;
    for who in [Who::ControlPlane, Who::Source, Who::Target] {
        let from = fleet.cell_of("acme").unwrap_or_default();
        let to = other(&from);
        let (si, ti) = (fleet.index_of(&from), fleet.index_of(to));
        let before = fleet.cell_dbs[si].note_ids("acme").await;
        let id = fleet.start_move(&["acme", "--to", to, "--rollback-window", "1s"]);
        eventually(Duration::from_secs(60), "the copy is under way", || {
            let m = fleet.move_status(&id);
            m["phase"] == "copying" && m["progress"]["rowsCopied"].as_u64().unwrap_or(0) > 0
        });
        match who {
            Who::ControlPlane => {
                fleet.server.kill9();
                fleet.restart_server(&[]);
            }
            Who::Source => {
                if let Some(a) = fleet.agents[si].take() {
                    a.kill();
                }
                fleet.restart_agent(si, &[]);
            }
            Who::Target => {
                if let Some(a) = fleet.agents[ti].take() {
                    a.kill();
                }
                fleet.restart_agent(ti, &[]);
            }
        }
        let end = fleet.wait_move(&id, "done", Duration::from_secs(180));
        assert_eq!(
            end["phase"],
            "done",
            "kill -9 of {who:?}: {end}\n{}",
            fleet.agent_logs()
        );
        wait_no_rows(&fleet, &from, "acme").await;
        assert_eq!(
            fleet.cell_dbs[ti].note_ids("acme").await,
            before,
            "kill -9 of {who:?}: every row arrived, once"
        );
        eprintln!("kill -9 of {who:?} mid-copy: the move ended done");
    }
    fleet.check_invariants(&["acme"]).await;
}
