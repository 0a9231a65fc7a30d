//! Runbook runs survive crashes. The control plane dies (a failpoint aborts it, as `kill -9`
//! would) right after each kind of step transition of a `tenant-move` run commits — a check
//! passed, the move started and recorded, the move done, a wait-for satisfied, the owners told —
//! and is started again. Every run must finish, each having started exactly one move and emitted
//! exactly one event, with every acknowledged write through the edge kept and the fleet
//! invariants holding at the end. (A real `SIGKILL` in the middle of a `cell-drain` is in
//! `runbooks.rs`.)

use std::time::Duration;

use cellfleet_api::failpoints::ENV;
use cellfleet_e2e::{
    FleetOptions, LocalFleet, Writer, assert_every_write_landed_once, nginx_edge, wait_router_live,
};

/// Where the control plane dies, in run order.
const POINTS: &[&str] = &[
    "cp:runbook:tenant-active:succeeded",
    "cp:runbook:move:running",
    "cp:runbook:move:succeeded",
    "cp:runbook:rows:succeeded",
    "cp:runbook:tell-owners:succeeded",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_move_run_resumes_after_the_control_plane_dies_at_each_step() {
    let mut fleet = LocalFleet::start_opts(
        &[("cell-a", 5), ("cell-b", 5)],
        &FleetOptions {
            serve_args: &["--router-gone-after", "3s"],
            ..FleetOptions::default()
        },
    )
    .await;
    fleet.apply_tenants(&[("acme", "owners: [ops@acme.example]"), ("globex", "")]);
    let token = fleet.edge_token_file();
    let (nginx, _router) = nginx_edge(fleet.url(), &token, &fleet.dir().join("router-cache"));
    wait_router_live(&fleet, 1);
    let writer = Writer::paced(&nginx.url, "acme", Duration::from_millis(20));
    for point in POINTS {
        let from = fleet.cell_of("acme").unwrap_or_default();
        let to = if from == "cell-a" { "cell-b" } else { "cell-a" };
        let moves_before = fleet.moves_started("acme");
        fleet.restart_server(&[(ENV, point)]);
        let id = fleet.start_run(
            "tenant-move",
            &[("tenant", "acme"), ("to", to), ("rollbackWindow", "1s")],
        );
        assert!(
            fleet.server.wait_exit(Duration::from_secs(90)),
            "{point}: the control plane did not reach its failpoint: {}\n{}",
            fleet.run_status(&id),
            fleet.agent_logs()
        );
        fleet.restart_server(&[]);
        let done = fleet.wait_run(&id, "succeeded", Duration::from_secs(120));
        assert_eq!(
            fleet.cell_of("acme").as_deref(),
            Some(to),
            "{point}: {done}"
        );
        assert_eq!(
            fleet.moves_started("acme"),
            moves_before + 1,
            "{point}: exactly one move started: {done}"
        );
        let events = fleet.events_of(&id);
        assert_eq!(events.len(), 1, "{point}: exactly one event: {events:?}");
        eprintln!("{point}: run {id} finished after the crash; acme {from} -> {to}");
        fleet.wait_no_open_moves();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = writer.finish();
    let cell = fleet.cell_of("acme").unwrap_or_default();
    let ids = fleet.cell_dbs[fleet.index_of(&cell)].note_ids("acme").await;
    assert_every_write_landed_once(&written, &ids);
    fleet.check_invariants(&["acme", "globex"]).await;
}
