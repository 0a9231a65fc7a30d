//! Release trains on a real local fleet (control plane, agents, the example workload): a good
//! release reaches every cell wave by wave with its migrations (contract ones only at the end);
//! a bad release (the workload's error-rate knob) halts in the canary wave and is rolled back
//! with no other cell ever running it; an empty canary is judged by its agent's synthetic
//! probes; the line, pause, resume, promote, abort and rollback behave as documented; a control
//! plane restarted mid-train resumes without repeating a step; a flag kill reaches every cell.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cellfleet_e2e::{FleetOptions, LocalFleet, eventually, http_get, http_request, workspace_bin};

/// A policy with short bakes, enough probes for a signal in seconds, one pooled cell per wave.
fn policy(canary_approval: bool) -> String {
    format!(
        "apiVersion: cellfleet.io/v1\nkind: TrainPolicy\nmetadata: {{name: test}}\nspec:\n\
         \x20 canary: {{bake: 4s, approval: {canary_approval}}}\n\
         \x20 pooled: {{bake: 3s, approval: false, batchSize: 1, maxParallel: 1}}\n\
         \x20 dedicated: {{bake: 3s, approval: false}}\n\
         \x20 gates: {{maxErrorRate: 0.05, maxP99Ms: 2000, maxBurnRate: 100, defaultAvailability: 99.9, minRequests: 15, convergeTimeout: 60s}}\n\
         \x20 probes: {{path: /v1/notes, ratePerSecond: 10, tenant: cellfleet-probe}}\n\
         \x20 onFailure: rollback\n\
         \x20 onInconclusive: fail\n"
    )
}

/// A release of the example workload (`env` goes into its artifact: the error-rate knob).
fn release(fleet: &LocalFleet, version: &str, up_to: i64, env: &str) -> String {
    fleet.write(
        &format!("release-{version}.yaml"),
        &format!(
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"{version}\"}}\nspec:\n  artifact: {{command: \"{}\", env: {{{env}}}}}\n  migrations: {{upTo: {up_to}}}\n",
            workspace_bin("notes-workload").display()
        ),
    )
}

fn train(fleet: &LocalFleet, id: &str) -> serde_json::Value {
    fleet.run(&["train", "status", id, "-o", "json"]).json()
}

fn phase(fleet: &LocalFleet, id: &str) -> String {
    train(fleet, id)["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the train is in `want`; panics with its status (and the agents' logs) if not.
fn wait_phase(fleet: &LocalFleet, id: &str, want: &str, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let t = train(fleet, id);
        if t["phase"] == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "train {id} is not {want}: {}\n{}",
                serde_json::to_string_pretty(&t).unwrap_or_default(),
                fleet.agent_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn start(fleet: &LocalFleet, release: &str, policy: &str) -> String {
    let started = fleet
        .run(&[
            "train",
            "start",
            "--release",
            release,
            "--policy",
            policy,
            "-o",
            "json",
        ])
        .json();
    started["train"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no train started: {started}"))
        .to_owned()
}

/// A cell as `cell list` shows it: `(name, desired release, reported release, newest applied
/// migration)`.
type CellSeen = (String, Option<String>, Option<String>, Option<i64>);

/// Every cell as `cell list` shows it.
fn cells(fleet: &LocalFleet) -> Vec<CellSeen> {
    fleet
        .run(&["cell", "list", "-o", "json"])
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["desiredRelease"].as_str().map(str::to_owned),
                c["release"].as_str().map(str::to_owned),
                c["migrationVersion"].as_i64(),
            )
        })
        .collect()
}

fn desired_release(fleet: &LocalFleet, cell: &str) -> Option<String> {
    fleet.run(&["cell", "get", cell, "-o", "json"]).json()["desiredRelease"]
        .as_str()
        .map(str::to_owned)
}

fn add_migrations(fleet: &LocalFleet, files: &[(&str, &str)]) {
    let dir = fleet.dir().join("more-migrations");
    std::fs::create_dir_all(&dir).unwrap_or_default();
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).unwrap_or_default();
    }
    fleet
        .run(&["migration", "add", "-f", &dir.display().to_string()])
        .ok();
}

/// Tenant traffic against every tenant's cell until stopped: `(requests, 5xx)`.
struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<(AtomicU64, AtomicU64)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(targets: Vec<(String, String)>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let (s, c) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (tenant, endpoint) in &targets {
                    if let Ok((status, _, _)) =
                        http_request(endpoint, "GET", "/v1/notes", &[("X-Tenant-Id", tenant)], "")
                    {
                        c.0.fetch_add(1, Ordering::Relaxed);
                        if status >= 500 {
                            c.1.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Traffic {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.counts.0.load(Ordering::Relaxed),
            self.counts.1.load(Ordering::Relaxed),
        )
    }
}

fn audit_actions(fleet: &LocalFleet, target: &str) -> Vec<serde_json::Value> {
    fleet
        .run(&[
            "audit", "list", "--target", target, "--limit", "1000", "-o", "json",
        ])
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_reaches_every_cell_and_a_bad_one_stops_in_canary() {
    let fleet = LocalFleet::start_opts(
        &[("c-1", 4), ("c-2", 4), ("c-3", 4), ("d-1", 1)],
        &FleetOptions {
            dedicated: &["d-1"],
            ..Default::default()
        },
    )
    .await;
    fleet.apply_tenants(&[
        ("acme", ""),
        ("globex", ""),
        ("initech", ""),
        ("umbrella", ""),
    ]);
    let targets: Vec<(String, String)> = ["acme", "globex", "initech", "umbrella"]
        .iter()
        .map(|t| {
            let cell = fleet.cell_of(t).unwrap_or_default();
            ((*t).to_owned(), fleet.endpoint_of(&cell))
        })
        .collect();
    let traffic = Traffic::start(targets);

    // 1.1.0 needs an expand migration (V3) and a contract one (V4).
    add_migrations(
        &fleet,
        &[
            (
                "V3__notes_id_index.expand.sql",
                "CREATE INDEX notes_by_id ON notes (id);",
            ),
            (
                "V4__drop_tenant_index.contract.sql",
                "DROP INDEX notes_tenant;",
            ),
        ],
    );
    fleet
        .run(&["release", "create", "-f", &release(&fleet, "1.1.0", 4, "")])
        .ok();
    fleet.wait_converged();
    // Migrations go out with the release: nothing has them before the train.
    for (cell, _, _, migration) in cells(&fleet) {
        assert_eq!(
            migration,
            Some(2),
            "{cell} got migrations before its release"
        );
    }
    let p = fleet.write("policy.yaml", &policy(false));
    // The dry run plans and changes nothing.
    let plan = fleet
        .run(&[
            "train",
            "start",
            "--release",
            "1.1.0",
            "--policy",
            &p,
            "--dry-run",
            "-o",
            "json",
        ])
        .json();
    let waves: Vec<&str> = plan["waves"]
        .as_array()
        .map(|w| w.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        waves,
        ["canary", "pooled-1", "pooled-2", "dedicated"],
        "{plan}"
    );
    assert_eq!(plan["waves"][0]["cells"][0], "c-1");
    assert!(plan["train"].is_null());
    assert_eq!(desired_release(&fleet, "c-1").as_deref(), Some("1.0.0"));

    let id = start(&fleet, "1.1.0", &p);
    // While the train runs, V4 (contract) reaches no cell; a cell has V3 only once its wave
    // gave it 1.1.0.
    let mut contract_early = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let t = train(&fleet, &id);
        let ph = t["phase"].as_str().unwrap_or_default().to_owned();
        if ph != "running" && ph != "contracting" {
            break;
        }
        for (cell, desired, _, migration) in cells(&fleet) {
            if ph == "running" && migration == Some(4) {
                contract_early.push(cell.clone());
            }
            if migration.is_some_and(|m| m >= 3) {
                assert_eq!(
                    desired.as_deref(),
                    Some("1.1.0"),
                    "{cell} has V3 without 1.1.0"
                );
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "train {id} did not finish: {t}\n{}",
            fleet.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(phase(&fleet, &id), "done", "{}", train(&fleet, &id));
    assert!(
        contract_early.is_empty(),
        "contract migration before the whole train: {contract_early:?}"
    );
    eventually(
        Duration::from_secs(30),
        "every cell runs 1.1.0 with V4",
        || {
            cells(&fleet).iter().all(|(_, d, r, m)| {
                d.as_deref() == Some("1.1.0") && r.as_deref() == Some("1.1.0") && *m == Some(4)
            })
        },
    );
    let t = train(&fleet, &id);
    let gates = t["gates"].as_array().cloned().unwrap_or_default();
    assert_eq!(gates.len(), 4, "one gate decision per wave: {t}");
    assert!(gates.iter().all(|g| g["verdict"] == "pass"), "{t}");
    assert!(
        gates[0]["cells"][0]["probeRequests"].as_u64().unwrap_or(0) > 0,
        "probes ran during the canary bake: {t}"
    );
    let audited = audit_actions(&fleet, &format!("train/{id}"));
    let gate_records = audited
        .iter()
        .filter(|r| r["action"] == "train.gate")
        .count();
    assert_eq!(gate_records, 4, "every gate decision is audited");
    // Rolling back past the applied contract migration is refused, with the reason.
    let refused = fleet.run(&["train", "rollback", &id]);
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("contract migration V4 (drop_tenant_index) has been applied"),
        "{}",
        refused.stderr
    );
    // A train never goes backwards.
    let older = fleet.run(&["train", "start", "--release", "1.0.0"]);
    assert!(
        older
            .stderr
            .contains("release 1.0.0 is older than what cells run"),
        "{}",
        older.stderr
    );

    // A bad release: every request fails. It halts in the canary and is rolled back.
    fleet
        .run(&[
            "release",
            "create",
            "-f",
            &release(&fleet, "1.2.0", 4, "WORKLOAD_ERROR_RATE: \"1.0\""),
        ])
        .ok();
    let bad = start(&fleet, "1.2.0", &p);
    let mut ran_it: BTreeSet<String> = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while phase(&fleet, &bad) == "running" {
        for (cell, desired, reported, _) in cells(&fleet) {
            if desired.as_deref() == Some("1.2.0") || reported.as_deref() == Some("1.2.0") {
                ran_it.insert(cell);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            train(&fleet, &bad)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = train(&fleet, &bad);
    assert_eq!(t["phase"], "failed", "{t}");
    assert_eq!(
        ran_it,
        BTreeSet::from(["c-1".to_owned()]),
        "only the canary ever got 1.2.0"
    );
    let gate = &t["gates"][0];
    assert_eq!(gate["verdict"], "fail", "{t}");
    assert!(
        gate["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("error rate"),
        "{gate}"
    );
    assert_eq!(t["waves"][0]["cells"][0]["step"], "rolled-back");
    eventually(
        Duration::from_secs(60),
        "the canary runs 1.1.0 again",
        || {
            cells(&fleet)
                .iter()
                .all(|(_, d, r, _)| d.as_deref() == Some("1.1.0") && r.as_deref() == Some("1.1.0"))
        },
    );
    let (requests, _errors) = traffic.stop();
    assert!(
        requests > 100,
        "tenant traffic ran during the trains ({requests} requests)"
    );
    fleet
        .check_invariants(&["acme", "globex", "initech", "umbrella"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_canary_is_judged_by_probes_and_operators_steer_the_train() {
    let fleet = LocalFleet::start(&[("c-1", 4), ("c-2", 4)]).await;
    fleet
        .run(&["release", "create", "-f", &release(&fleet, "1.1.0", 2, "")])
        .ok();
    fleet
        .run(&["release", "create", "-f", &release(&fleet, "1.2.0", 2, "")])
        .ok();

    // Bad input changes nothing.
    let unknown = fleet.run(&["train", "start", "--release", "9.9.9"]);
    assert!(
        unknown.stderr.contains("release 9.9.9 not found"),
        "{}",
        unknown.stderr
    );
    let bad_policy = fleet.write(
        "bad.yaml",
        &policy(true).replace("maxErrorRate: 0.05", "maxErorRate: 0.05"),
    );
    let refused = fleet.run(&[
        "train",
        "start",
        "--release",
        "1.1.0",
        "--policy",
        &bad_policy,
    ]);
    assert!(
        refused.stderr.contains("bad.yaml: document 1: spec.gates")
            && refused.stderr.contains("maxErorRate"),
        "{}",
        refused.stderr
    );
    assert!(
        fleet
            .run(&["train", "list", "--all", "-o", "json"])
            .json()
            .as_array()
            .is_some_and(Vec::is_empty)
    );

    let p = fleet.write("policy.yaml", &policy(true));
    let id = start(&fleet, "1.1.0", &p);
    // A second train cannot start while one runs.
    let second = fleet.run(&["train", "start", "--release", "1.2.0", "--policy", &p]);
    assert!(
        second
            .stderr
            .contains("one train drives the fleet at a time"),
        "{}",
        second.stderr
    );
    // No tenant anywhere: the canary passes on its probes alone, then waits for approval.
    wait_phase(&fleet, &id, "awaiting-approval", Duration::from_secs(90));
    let t = train(&fleet, &id);
    let canary = &t["gates"][0]["cells"][0];
    assert_eq!(canary["signal"], "probes", "{t}");
    assert_eq!(
        canary["requests"], 0,
        "probes are not counted as tenant traffic: {t}"
    );
    assert!(canary["probeRequests"].as_u64().unwrap_or(0) >= 15, "{t}");
    assert_eq!(desired_release(&fleet, "c-2").as_deref(), Some("1.0.0"));

    // Stop the line, then promote: the train is approved but nothing moves.
    fleet
        .run(&["stop-the-line", "--reason", "incident 42"])
        .ok();
    fleet.run(&["train", "promote", &id]).ok();
    std::thread::sleep(Duration::from_secs(3));
    let t = train(&fleet, &id);
    assert_eq!(t["lineStopped"], "incident 42", "{t}");
    assert_eq!(
        desired_release(&fleet, "c-2").as_deref(),
        Some("1.0.0"),
        "the line holds the next wave"
    );
    // Pause it too; resuming the line alone does not move a paused train.
    fleet.run(&["train", "pause", &id]).ok();
    fleet.run(&["resume-the-line"]).ok();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(phase(&fleet, &id), "paused");
    assert_eq!(desired_release(&fleet, "c-2").as_deref(), Some("1.0.0"));
    fleet.run(&["train", "resume", &id]).ok();
    wait_phase(&fleet, &id, "done", Duration::from_secs(90));
    eventually(Duration::from_secs(30), "c-2 runs 1.1.0", || {
        cells(&fleet)
            .iter()
            .all(|(_, _, r, _)| r.as_deref() == Some("1.1.0"))
    });
    // Roll one cell back to its last good release.
    fleet.run(&["train", "rollback", &id, "--cell", "c-2"]).ok();
    eventually(Duration::from_secs(60), "c-2 runs 1.0.0 again", || {
        cells(&fleet).iter().any(|(c, d, r, _)| {
            c == "c-2" && d.as_deref() == Some("1.0.0") && r.as_deref() == Some("1.0.0")
        })
    });
    assert_eq!(desired_release(&fleet, "c-1").as_deref(), Some("1.1.0"));

    // Abort with rollback: every cell the train changed goes back.
    let next = start(&fleet, "1.2.0", &p);
    eventually(Duration::from_secs(30), "the canary gets 1.2.0", || {
        desired_release(&fleet, "c-1").as_deref() == Some("1.2.0")
    });
    fleet.run(&["train", "abort", &next, "--rollback"]).ok();
    assert_eq!(phase(&fleet, &next), "aborted");
    assert_eq!(desired_release(&fleet, "c-1").as_deref(), Some("1.1.0"));
    assert_eq!(
        desired_release(&fleet, "c-2").as_deref(),
        Some("1.0.0"),
        "never touched by the aborted train"
    );
    let refused = fleet.run(&["train", "resume", &next]);
    assert!(
        refused.stderr.contains("is aborted: cannot resume it"),
        "{}",
        refused.stderr
    );
    fleet.wait_converged();
    fleet.check_invariants(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_resumes_the_train_and_a_flag_kill_reaches_every_cell() {
    let mut fleet = LocalFleet::start(&[("c-1", 4), ("c-2", 4), ("c-3", 4)]).await;
    fleet.apply_tenants(&[("acme", ""), ("globex", ""), ("initech", "")]);
    fleet
        .run(&["release", "create", "-f", &release(&fleet, "1.1.0", 2, "")])
        .ok();
    let p = fleet.write(
        "policy.yaml",
        &policy(false).replace("bake: 4s", "bake: 8s"),
    );
    // The control plane dies (like a kill -9) right after the train's first committed step:
    // the canary was just told to run 1.1.0.
    fleet.restart_server(&[("CELLFLEET_FAILPOINTS", "cp:train:running")]);
    // (It may die before it answers the start: the train is found by listing.)
    fleet.run(&["train", "start", "--release", "1.1.0", "--policy", &p]);
    assert!(
        fleet.server.wait_exit(Duration::from_secs(30)),
        "the control plane never reached the failpoint"
    );
    fleet.restart_server(&[]);
    let id = fleet.run(&["train", "list", "-o", "json"]).json()[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        desired_release(&fleet, "c-1").as_deref(),
        Some("1.1.0"),
        "the step died committed"
    );
    eventually(Duration::from_secs(60), "the canary bakes", || {
        train(&fleet, &id)["waves"][0]["cells"][0]["step"] == "converged"
    });
    // And a plain restart mid-bake.
    fleet.restart_server(&[]);
    wait_phase(&fleet, &id, "done", Duration::from_secs(120));
    let audited = audit_actions(&fleet, &format!("train/{id}"));
    for cell in ["c-1", "c-2", "c-3"] {
        let deploys = audited
            .iter()
            .filter(|r| r["action"] == "train.cell.deploy" && r["payload"]["cell"] == cell)
            .count();
        assert_eq!(
            deploys, 1,
            "{cell} deployed exactly once across the restart: {audited:?}"
        );
    }

    // Flags: set for everyone, then the kill switch; each workload sees what its agent handed.
    let flags_of = |cell: &str, tenant: &str| -> serde_json::Value {
        let (status, body) = http_get(
            &fleet.endpoint_of(cell),
            &format!("/cellfleet/flags?tenant={tenant}"),
            None,
        )
        .unwrap_or_default();
        if status != 200 {
            return serde_json::Value::Null;
        }
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["flags"].clone()
    };
    let placed: Vec<(String, String)> = ["acme", "globex", "initech"]
        .iter()
        .map(|t| ((*t).to_owned(), fleet.cell_of(t).unwrap_or_default()))
        .collect();
    fleet.run(&["flag", "set", "new-checkout=true"]).ok();
    eventually(
        Duration::from_secs(10),
        "the flag reaches every tenant's workload",
        || {
            placed
                .iter()
                .all(|(t, c)| flags_of(c, t)["new-checkout"] == true)
        },
    );
    fleet
        .run(&["flag", "set", "beta=\"on\"", "--tenant", "acme"])
        .ok();
    eventually(
        Duration::from_secs(10),
        "a targeted flag reaches only its tenant",
        || {
            placed
                .iter()
                .all(|(t, c)| (flags_of(c, t)["beta"] == "on") == (t == "acme"))
        },
    );
    let killed_at = std::time::Instant::now();
    fleet.run(&["flag", "kill", "new-checkout"]).ok();
    eventually(
        Duration::from_secs(5),
        "the kill reaches every cell",
        || {
            placed
                .iter()
                .all(|(t, c)| flags_of(c, t)["new-checkout"] == false)
        },
    );
    eprintln!(
        "flag kill reached every workload in {:?}",
        killed_at.elapsed()
    );
    let flag_audit = audit_actions(&fleet, "flag/new-checkout");
    assert!(
        flag_audit.iter().any(|r| r["action"] == "flag.kill"),
        "{flag_audit:?}"
    );
    assert!(
        flag_audit.iter().any(|r| r["action"] == "flag.set"),
        "{flag_audit:?}"
    );
    fleet.check_invariants(&["acme", "globex", "initech"]).await;
}
