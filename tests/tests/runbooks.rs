//! Runbooks on a real local fleet (control plane, agents, the example workload, `cellfleet-router`
//! behind the shipped nginx configuration), through the CLI as an operator runs them:
//! - `cell-drain` empties a pooled cell while its tenants keep writing through the edge — no
//!   write lost — and retires it, though the control plane is killed (`SIGKILL`) mid-drain: the
//!   run resumes and finishes without moving any tenant twice;
//! - `tenant-move` to a dedicated cell waits for its approval across a control-plane restart,
//!   moves the tenant under writes, checks the route, the tenant's requests and its rows, and
//!   tells its owners;
//! - `hotfix` patches a dedicated cell outside its change window with the reason audited, and
//!   tells its tenant; `incident-comms` tells every tenant of a cell;
//! - `release-rollback` brings a release a train put on the canary back and resumes the line
//!   on approval;
//! - dry runs change nothing; `cell drain|retire|undrain` behave as documented.

use std::time::Duration;

use cellfleet_e2e::{
    FleetOptions, LocalFleet, Writer, assert_every_write_landed_once, eventually, nginx_edge,
    wait_router_live, workspace_bin,
};

fn cell_state(fleet: &LocalFleet, cell: &str) -> String {
    fleet.run(&["cell", "get", cell, "-o", "json"]).json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cell_drain_under_writes_survives_a_control_plane_kill_and_retires_the_cell() {
    let mut fleet = LocalFleet::start_opts(
        &[("cell-a", 10), ("cell-b", 10), ("cell-c", 10)],
        &FleetOptions {
            serve_args: &["--router-gone-after", "3s"],
            ..FleetOptions::default()
        },
    )
    .await;
    let names: Vec<String> = (1..=9).map(|i| format!("t{i}")).collect();
    let tenants: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    fleet.apply_tenants(&tenants);
    // Drain the cell holding the most tenants (placement spreads them by hash).
    let mut by_cell: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for n in &names {
        by_cell
            .entry(fleet.cell_of(n).unwrap_or_default())
            .or_default()
            .push(n.clone());
    }
    let (drained, on_it) = by_cell
        .iter()
        .max_by_key(|(_, t)| t.len())
        .map(|(c, t)| (c.clone(), t.clone()))
        .unwrap_or_default();
    assert!(
        on_it.len() >= 2,
        "a cell holds several tenants: {by_cell:?}"
    );

    // Dry run: every tenant with its target, and nothing changed.
    let before = fleet.audit_count();
    let plan = fleet.run(&[
        "runbook",
        "run",
        "cell-drain",
        "--param",
        &format!("cell={drained}"),
        "--dry-run",
    ]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    for t in &on_it {
        assert!(
            plan.stdout
                .contains(&format!("move {t}/prod from {drained} to ")),
            "{}",
            plan.stdout
        );
    }
    assert!(
        plan.stdout.contains("dry run: nothing was changed"),
        "{}",
        plan.stdout
    );
    assert_eq!(
        fleet.audit_count(),
        before,
        "a dry run changed the registry"
    );
    assert_eq!(cell_state(&fleet, &drained), "ready");

    let token = fleet.edge_token_file();
    let (nginx, _router) = nginx_edge(fleet.url(), &token, &fleet.dir().join("router-cache"));
    wait_router_live(&fleet, 1);
    let writers: Vec<(String, Writer)> = on_it
        .iter()
        .map(|t| {
            (
                t.clone(),
                Writer::paced(&nginx.url, t, Duration::from_millis(20)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let id = fleet.start_run(
        "cell-drain",
        &[
            ("cell", &drained),
            ("concurrency", "2"),
            ("rollbackWindow", "1s"),
        ],
    );
    // Kill the control plane once moves are under way.
    eventually(
        Duration::from_secs(60),
        "a move of the drain is under way",
        || {
            let r = fleet.run_status(&id);
            r["steps"][3]["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["operation"].is_string()))
        },
    );
    assert_eq!(cell_state(&fleet, &drained), "draining");
    fleet.server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.restart_server(&[]);

    let done = fleet.wait_run(&id, "succeeded", Duration::from_secs(240));
    assert_eq!(cell_state(&fleet, &drained), "retired", "{done}");
    let items = done["steps"][3]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), on_it.len(), "{done}");
    let mut ops: Vec<&str> = items
        .iter()
        .filter_map(|i| i["operation"].as_str())
        .collect();
    ops.sort_unstable();
    ops.dedup();
    assert_eq!(ops.len(), on_it.len(), "one move per tenant: {done}");
    for t in &on_it {
        assert_eq!(fleet.moves_started(t), 1, "{t} was moved once");
        let now = fleet.cell_of(t).unwrap_or_default();
        assert_ne!(now, drained, "{t} left {drained}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (t, w) in writers {
        let written = w.finish();
        let cell = fleet.cell_of(&t).unwrap_or_default();
        let ids = fleet.cell_dbs[fleet.index_of(&cell)].note_ids(&t).await;
        assert_every_write_landed_once(&written, &ids);
        eprintln!("{t}: {} writes, all on {cell}", written.acked.len());
    }
    // A retired cell takes nothing: a new tenant lands elsewhere.
    fleet.apply_tenants(&[("late", "")]);
    assert_ne!(fleet.cell_of("late").as_deref(), Some(drained.as_str()));
    let all: Vec<&str> = names.iter().map(String::as_str).chain(["late"]).collect();
    fleet.check_invariants(&all).await;
}

/// A release of the example workload.
fn release(fleet: &LocalFleet, version: &str) -> String {
    fleet.write(
        &format!("release-{version}.yaml"),
        &format!(
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"{version}\"}}\nspec:\n  artifact: {{command: \"{}\"}}\n  migrations: {{upTo: 2}}\n",
            workspace_bin("notes-workload").display()
        ),
    )
}

fn desired_release(fleet: &LocalFleet, cell: &str) -> String {
    fleet.run(&["cell", "get", cell, "-o", "json"]).json()["desiredRelease"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_move_hotfix_incident_comms_and_release_rollback_on_a_real_fleet() {
    let mut fleet = LocalFleet::start_opts(
        &[("cell-a", 5), ("cell-b", 5), ("ded-1", 1)],
        &FleetOptions {
            dedicated: &["ded-1"],
            serve_args: &["--router-gone-after", "3s"],
            ..FleetOptions::default()
        },
    )
    .await;
    fleet.apply_tenants(&[
        ("acme", "owners: [ops@acme.example]"),
        ("globex", "owners: [it@globex.example]"),
    ]);
    let token = fleet.edge_token_file();
    let (nginx, _router) = nginx_edge(fleet.url(), &token, &fleet.dir().join("router-cache"));
    wait_router_live(&fleet, 1);

    // tenant-move to a dedicated cell: the approval waits, also across a restart.
    let writer = Writer::paced(&nginx.url, "acme", Duration::from_millis(20));
    let from = fleet.cell_of("acme").unwrap_or_default();
    let id = fleet.start_run(
        "tenant-move",
        &[
            ("tenant", "acme"),
            ("to", "dedicated"),
            ("rollbackWindow", "1s"),
        ],
    );
    let waiting = fleet.wait_run(&id, "awaiting-approval", Duration::from_secs(60));
    assert_eq!(waiting["steps"][4]["status"], "waiting", "{waiting}");
    fleet.restart_server(&[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.run_status(&id)["phase"], "awaiting-approval");
    assert_eq!(
        fleet.cell_of("acme").as_deref(),
        Some(from.as_str()),
        "nothing moved before the approval"
    );
    let ok = fleet.run(&["runbook", "approve", &id]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let done = fleet.wait_run(&id, "succeeded", Duration::from_secs(180));
    assert_eq!(fleet.cell_of("acme").as_deref(), Some("ded-1"), "{done}");
    for (i, name) in [(6, "route"), (7, "requests"), (8, "rows")] {
        assert_eq!(done["steps"][i]["status"], "succeeded", "{name}: {done}");
    }
    eprintln!("rows: {}", done["steps"][8]["detail"]);
    let moved = fleet.events_of(&id);
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["to"][0], "ops@acme.example");
    assert!(
        moved[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("now runs on cell ded-1"),
        "{moved:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = writer.finish();
    let ids = fleet.cell_dbs[fleet.index_of("ded-1")]
        .note_ids("acme")
        .await;
    assert_every_write_landed_once(&written, &ids);

    // hotfix: ded-1 gets 1.0.1 now, the reason audited, acme told (once the move's rollback
    // window closed: a hotfix refuses cells a move goes through).
    eventually(Duration::from_secs(60), "the move is done", || {
        fleet
            .run(&["move", "list", "-o", "json"])
            .json()
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    fleet
        .run(&["release", "create", "-f", &release(&fleet, "1.0.1")])
        .ok();
    let id = fleet.start_run(
        "hotfix",
        &[
            ("release", "1.0.1"),
            ("cells", "ded-1"),
            ("reason", "CVE-2026-0001 in the parser"),
        ],
    );
    let done = fleet.wait_run(&id, "succeeded", Duration::from_secs(120));
    assert_eq!(desired_release(&fleet, "ded-1"), "1.0.1", "{done}");
    assert_eq!(desired_release(&fleet, "cell-a"), "1.0.0");
    let audit = fleet
        .run(&["audit", "list", "--target", "release/1.0.1", "-o", "json"])
        .json();
    let expedite = audit
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|r| r["action"] == "release.expedite")
                .cloned()
        })
        .unwrap_or_default();
    assert_eq!(
        expedite["payload"]["reason"], "CVE-2026-0001 in the parser",
        "{audit}"
    );
    let told = fleet.events_of(&id);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["subject"], "tenant/acme");

    // incident-comms: every tenant of cell-a and cell-b, to its owners and the channel.
    let id = fleet.start_run(
        "incident-comms",
        &[
            ("cells", "cell-a,cell-b"),
            ("stage", "investigating"),
            ("summary", "Slow writes."),
        ],
    );
    fleet.wait_run(&id, "succeeded", Duration::from_secs(30));
    let told = fleet.events_of(&id);
    assert_eq!(
        told.len(),
        1,
        "only globex is on the pooled cells now: {told:?}"
    );
    assert_eq!(
        told[0]["to"],
        serde_json::json!(["it@globex.example", "status-page"])
    );
    assert!(
        told[0]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("[Investigating] globex"),
        "{told:?}"
    );

    // release-rollback: a train puts 2.0.0 on the canary and waits for promotion; the runbook
    // brings it back, verifies, and resumes the line on approval.
    fleet
        .run(&["release", "create", "-f", &release(&fleet, "2.0.0")])
        .ok();
    let policy = fleet.write(
        "policy.yaml",
        "apiVersion: cellfleet.io/v1\nkind: TrainPolicy\nmetadata: {name: test}\nspec:\n\
         \x20 canary: {bake: 2s, approval: true}\n\
         \x20 pooled: {bake: 2s, approval: false, batchSize: 1, maxParallel: 1}\n\
         \x20 dedicated: {bake: 2s, approval: false}\n\
         \x20 gates: {maxErrorRate: 0.5, maxP99Ms: 5000, maxBurnRate: 1000, defaultAvailability: 99.9, minRequests: 1, convergeTimeout: 60s}\n\
         \x20 probes: {path: /v1/notes, ratePerSecond: 10, tenant: cellfleet-probe}\n\
         \x20 onFailure: halt\n\
         \x20 onInconclusive: approve\n",
    );
    let started = fleet
        .run(&[
            "train",
            "start",
            "--release",
            "2.0.0",
            "--policy",
            &policy,
            "-o",
            "json",
        ])
        .json();
    let train = started["train"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!train.is_empty(), "{started}");
    let canary = started["train"]["waves"][0]["cells"][0]["cell"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eventually(
        Duration::from_secs(90),
        "the canary runs 2.0.0 and waits",
        || {
            fleet.run(&["train", "status", &train, "-o", "json"]).json()["phase"]
                == "awaiting-approval"
        },
    );
    assert_eq!(desired_release(&fleet, &canary), "2.0.0");
    let id = fleet.start_run("release-rollback", &[("reason", "2.0.0 corrupts exports")]);
    let waiting = fleet.wait_run(&id, "awaiting-approval", Duration::from_secs(120));
    assert_eq!(desired_release(&fleet, &canary), "1.0.0", "{waiting}");
    assert_eq!(
        fleet.run(&["train", "status", &train, "-o", "json"]).json()["phase"],
        "halted"
    );
    assert_eq!(
        waiting["steps"][0]["status"], "succeeded",
        "the line was stopped: {waiting}"
    );
    let line = fleet
        .run(&["audit", "list", "--target", "fleet/line", "-o", "json"])
        .json();
    assert!(
        line.to_string().contains("2.0.0 corrupts exports"),
        "the line says why: {line}"
    );
    let ok = fleet.run(&["runbook", "approve", &id]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let done = fleet.wait_run(&id, "succeeded", Duration::from_secs(30));
    assert_eq!(
        done["steps"][1]["output"]["cells"],
        serde_json::json!([canary]),
        "{done}"
    );
    let cells = fleet.run(&["cell", "list", "-o", "json"]).json();
    for c in cells.as_array().cloned().unwrap_or_default() {
        assert_ne!(c["desiredRelease"], "2.0.0", "no cell keeps 2.0.0: {c}");
    }
    // The cell lifecycle by hand: drain, a refused retire naming the tenant, undrain.
    let globex_cell = fleet.cell_of("globex").unwrap_or_default();
    let drained = fleet.run(&["cell", "drain", &globex_cell, "--reason", "maintenance"]);
    assert!(
        drained
            .ok()
            .contains("ready → draining (1 tenant environment(s) on it)"),
        "{}",
        drained.stdout
    );
    let refused = fleet.run(&["cell", "retire", &globex_cell]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("still holds 1 tenant environment(s) (globex/prod)"),
        "{}",
        refused.stderr
    );
    let undrained = fleet.run(&["cell", "undrain", &globex_cell]);
    assert!(
        undrained.ok().contains("draining → ready"),
        "{}",
        undrained.stdout
    );
    fleet.check_invariants(&["acme", "globex"]).await;
}
