//! Runbooks at the registry, on SQLite and PostgreSQL: every bad run request is refused with an
//! error naming its problem and starts nothing; dry runs plan every step with concrete targets
//! and change nothing; a run's lock holds; an approve step waits across a restart of the
//! registry and is approved only by a role it names; notify steps emit one event per tenant;
//! cell lifecycle commands refuse what would strand a tenant.

// A panic in a test is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use cellfleet::service::cells::CellAction;
use cellfleet::service::{Error, Registry, Settings};
use cellfleet::store::Store;
use cellfleet_api::{CellName, CellState, Role, RunPhase, StartRunRequest, StepStatus};
use support::*;

/// Everything a refused or dry request must leave as it was.
async fn snapshot(t: &TestRegistry) -> Vec<i64> {
    counts(
        t,
        &[
            "SELECT count(*) FROM operations",
            "SELECT count(*) FROM audit_log",
            "SELECT count(*) FROM events",
            "SELECT count(*) FROM fleet_state",
            "SELECT CAST(coalesce(sum(desired_generation), 0) AS BIGINT) FROM cells",
            "SELECT count(*) FROM cells WHERE state = 'ready'",
        ],
    )
    .await
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn req(pairs: &[(&str, &str)], dry_run: bool) -> StartRunRequest {
    StartRunRequest {
        params: params(pairs),
        dry_run,
    }
}

const TENANTS: &str = r#"
apiVersion: cellfleet.io/v1
kind: Tenant
metadata: {name: acme}
spec:
  displayName: Acme Corp
  profile: mt-standard
  residency: {jurisdiction: eu, preferredRegion: eu-west-1}
  owners: [ops@acme.example, cto@acme.example]
---
apiVersion: cellfleet.io/v1
kind: Tenant
metadata: {name: globex}
spec:
  displayName: Globex
  profile: mt-standard
  residency: {allowedRegions: [eu-west-1, eu-central-1], preferredRegion: eu-west-1}
"#;

/// A folder with a runbook whose step narrows its roles, one with an approval, and a broken one.
fn runbook_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("narrow.yaml"),
        r#"apiVersion: cellfleet.io/v1
kind: Runbook
metadata: {name: narrow}
spec:
  description: operators may run it, but one step is admins' only
  roles: [admin, operator]
  steps:
    - name: look
      kind: check
      condition: line-stopped
      on-failure: continue
    - name: stop
      kind: train
      roles: [admin]
      with: {action: stop-line, reason: narrow}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gate.yaml"),
        r#"apiVersion: cellfleet.io/v1
kind: Runbook
metadata: {name: gate}
spec:
  description: waits for an admin, then tells acme
  roles: [admin, operator]
  params:
    - {name: who, type: tenant, required: true}
  steps:
    - name: active
      kind: check
      condition: tenant-active
      with: {tenant: "${who}"}
    - name: ok
      kind: approve
      roles: [admin]
      with: {message: "tell ${who}?"}
    - name: tell
      kind: notify
      with: {tenants: ["${who}"], message: "hello ${item.displayName} from ${run.id}"}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fallible.yaml"),
        r#"apiVersion: cellfleet.io/v1
kind: Runbook
metadata: {name: fallible}
spec:
  description: a failure that is tolerated, then one that is compensated
  roles: [admin]
  steps:
    - name: tolerated
      kind: check
      condition: cell-pooled
      with: {cell: euw1-ded-1}
      on-failure: continue
    - name: must
      kind: check
      condition: tenant-active
      with: {tenant: nobody}
      on-failure:
        run:
          name: tell
          kind: notify
          with: {message: "run ${run.id}: step must failed", to: [oncall]}
    - name: never
      kind: notify
      with: {message: "not reached"}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wedge.yaml"),
        r#"apiVersion: cellfleet.io/v1
kind: Runbook
metadata: {name: wedge}
spec:
  description: a for-each whose concurrency is no number
  roles: [admin]
  params:
    - {name: c, type: string, default: many}
  steps:
    - name: each
      kind: for-each
      items: [a, b]
      concurrency: "${c}"
      step: {name: same, kind: check, condition: equals, with: {a: "${item}", b: a}}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: cellfleet.io/v1\nkind: Runbook\nmetadata: {name: broken}\nspec:\n  description: x\n  roles: [admin]\n  steps:\n    - {name: a, kind: teleport}\n",
    )
    .unwrap();
    dir
}

async fn fleet(backend: cellfleet::store::Backend, dir: &std::path::Path) -> TestRegistry {
    let t = TestRegistry::with_settings(
        backend,
        Settings {
            runbook_dirs: vec![dir.to_owned()],
            ..Settings::default()
        },
    )
    .await;
    t.apply(FLEET).await.unwrap();
    t.apply(TENANTS).await.unwrap();
    t
}

async fn refused(t: &TestRegistry, role: Role, name: &str, r: StartRunRequest) -> Error {
    let before = snapshot(t).await;
    let err = t
        .registry
        .start_run(&caller(), role, name, &r)
        .await
        .err()
        .unwrap_or_else(|| panic!("a run of {name} was accepted"));
    assert_eq!(
        snapshot(t).await,
        before,
        "a refused run ({err}) changed the registry"
    );
    err
}

/// Drives open operations until `done` says so (a run looks about once a second).
async fn drive_until(registry: &Registry, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let settings = cellfleet::moves::MoveSettings::default();
    for _ in 0..60 {
        registry.drive_once("test-driver", &settings).await.unwrap();
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: not within 15 s");
}

both_backends!(
    every_bad_run_is_refused_by_name_and_starts_nothing,
    |backend| {
        let dir = runbook_dir();
        let t = fleet(backend, dir.path()).await;
        let cases: Vec<(Role, &str, StartRunRequest, &str)> = vec![
            (
                Role::Admin,
                "teleport",
                req(&[], false),
                "runbook teleport (known: broken, cell-drain, fallible, gate",
            ),
            (
                Role::Admin,
                "broken",
                req(&[], false),
                "broken.yaml: document 1: spec.steps[0].kind: unknown variant `teleport`",
            ),
            (
                Role::Admin,
                "cell-drain",
                req(&[], false),
                "missing parameter cell (cell, the pooled cell to empty)",
            ),
            (
                Role::Admin,
                "cell-drain",
                req(&[("cell", "euw1-pool-1"), ("concurrency", "lots")], false),
                "parameter concurrency: \"lots\" is not an integer",
            ),
            (
                Role::Admin,
                "cell-drain",
                req(&[("cell", "euw1-pool-1"), ("concurrency", "9")], false),
                "parameter concurrency: 9 is outside 1..=8",
            ),
            (
                Role::Admin,
                "cell-drain",
                req(&[("cell", "euw1-pool-1"), ("speed", "9")], false),
                "unknown parameter \"speed\"",
            ),
            (
                Role::Admin,
                "tenant-move",
                req(&[("tenant", "Acme!"), ("to", "pooled")], false),
                "parameter tenant: \"Acme!\" is not a tenant id",
            ),
            (
                Role::Admin,
                "hotfix",
                req(
                    &[("release", "two"), ("cells", "x"), ("reason", "r")],
                    false,
                ),
                "parameter release: \"two\" is not a semver version",
            ),
            (
                Role::Admin,
                "hotfix",
                req(
                    &[("release", "2.0.0"), ("cells", "x"), ("reason", " ")],
                    false,
                ),
                "parameter reason: must not be empty",
            ),
            (
                Role::Admin,
                "incident-comms",
                req(
                    &[("cells", "x"), ("stage", "panicking"), ("summary", "s")],
                    false,
                ),
                "parameter stage: \"panicking\" is not one of investigating, identified, resolved",
            ),
            (
                Role::Operator,
                "cell-drain",
                req(&[("cell", "euw1-pool-1")], false),
                "runbook cell-drain may be run by admin, sre; this token is operator",
            ),
            (
                Role::Viewer,
                "incident-comms",
                req(
                    &[("cells", "x"), ("stage", "resolved"), ("summary", "s")],
                    true,
                ),
                "may be run by admin, sre, operator; this token is viewer",
            ),
            (
                Role::Operator,
                "narrow",
                req(&[], false),
                "step stop (train) of runbook narrow may be run by admin; this token is operator",
            ),
        ];
        for (role, name, r, want) in cases {
            let err = refused(&t, role, name, r).await;
            assert!(
                err.to_string().contains(want),
                "{name} as {role}:\n  got  {err}\n  want {want}"
            );
        }
        // The catalog lists the broken file with its error, so the mistake is seen.
        let broken = t
            .registry
            .runbooks()
            .into_iter()
            .find(|r| r.name == "broken")
            .unwrap();
        assert!(broken.error.unwrap().contains("unknown variant `teleport`"));
        // One run per lock: a second drain of the same cell is refused, naming the first.
        let first = t
            .registry
            .start_run(
                &caller(),
                Role::Admin,
                "cell-drain",
                &req(&[("cell", "euc1-pool-1")], false),
            )
            .await
            .unwrap()
            .run
            .unwrap();
        let err = refused(
            &t,
            Role::Sre,
            "cell-drain",
            req(&[("cell", "euc1-pool-1")], false),
        )
        .await;
        assert!(
            matches!(err, Error::Conflict(_)) && err.to_string().contains(&first.id),
            "{err}"
        );
    }
);

both_backends!(
    dry_runs_plan_every_step_with_targets_and_change_nothing,
    |backend| {
        let dir = runbook_dir();
        let t = fleet(backend, dir.path()).await;
        let before = snapshot(&t).await;
        let acme_cell = t.registry.tenant(&"acme".parse().unwrap()).await.unwrap();
        let drain_cell = acme_cell.placements[0].cell.to_string();
        let plan = t
            .registry
            .start_run(
                &caller(),
                Role::Admin,
                "cell-drain",
                &req(&[("cell", &drain_cell)], true),
            )
            .await
            .unwrap();
        assert!(plan.run.is_none());
        let text = serde_json::to_string(&plan.plan).unwrap();
        let steps: Vec<&str> = plan.plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            steps,
            ["pooled", "no-train", "drain", "move-out", "empty", "retire"]
        );
        assert_eq!(plan.plan[0].holds, Some(true), "{text}");
        let each = &plan.plan[3];
        assert!(
            !each.items.is_empty(),
            "the tenants to move are listed: {text}"
        );
        for item in &each.items {
            assert!(item.action.starts_with("move "), "{}", item.action);
            assert!(
                item.action.contains(&format!("from {drain_cell} to ")),
                "{}",
                item.action
            );
        }
        assert!(
            plan.plan[2].action.contains("acme/prod"),
            "{}",
            plan.plan[2].action
        );
        // Every shipped runbook plans without changing anything.
        for (name, pairs) in [
            ("tenant-move", vec![("tenant", "acme"), ("to", "pooled")]),
            ("release-rollback", vec![("reason", "bad")]),
            (
                "hotfix",
                vec![
                    ("release", "1.0.0"),
                    ("cells", "euw1-pool-1"),
                    ("reason", "cve"),
                ],
            ),
            (
                "incident-comms",
                vec![
                    ("cells", &drain_cell),
                    ("stage", "investigating"),
                    ("summary", "slow"),
                ],
            ),
        ] {
            let plan = t
                .registry
                .start_run(&caller(), Role::Admin, name, &req(&pairs, true))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(plan.run.is_none());
            assert!(!plan.plan.is_empty());
            if name == "tenant-move" {
                let mv = plan.plan.iter().find(|p| p.name == "move").unwrap();
                assert!(
                    mv.action.starts_with("move acme/prod from "),
                    "{}",
                    mv.action
                );
            }
            if name == "release-rollback" {
                let rb = plan.plan.iter().find(|p| p.name == "rollback").unwrap();
                assert_eq!(
                    rb.holds,
                    Some(false),
                    "no train to roll back: {}",
                    rb.action
                );
            }
            if name == "incident-comms" {
                let tell = plan.plan.iter().find(|p| p.name == "tell").unwrap();
                assert!(tell.action.contains("ops@acme.example"), "{}", tell.action);
            }
        }
        assert_eq!(snapshot(&t).await, before, "a dry run changed the registry");
    }
);

both_backends!(
    an_approve_step_waits_across_a_restart_for_a_role_it_names,
    |backend| {
        let dir = runbook_dir();
        let t = fleet(backend, dir.path()).await;
        let run = t
            .registry
            .start_run(
                &caller(),
                Role::Operator,
                "gate",
                &req(&[("who", "acme")], false),
            )
            .await
            .unwrap()
            .run
            .unwrap();
        let id = run.id.clone();
        let r = &t.registry;
        drive_until(r, "the run reaches its approval", async || {
            r.get_run(&id).await.unwrap().phase == RunPhase::AwaitingApproval
        })
        .await;
        let err = r
            .approve_run(&caller(), Role::Operator, &id)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("may be approved by admin; this token is operator"),
            "{err}"
        );
        // A new registry on the same database: the run still waits, and nothing emitted.
        let restarted = Registry::new(
            Store::connect(&t.db.url).await.unwrap(),
            Settings {
                runbook_dirs: vec![dir.path().to_owned()],
                ..Settings::default()
            },
        );
        let settings = cellfleet::moves::MoveSettings::default();
        for _ in 0..4 {
            restarted
                .drive_once("another-replica", &settings)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let waiting = restarted.get_run(&id).await.unwrap();
        assert_eq!(waiting.phase, RunPhase::AwaitingApproval);
        assert_eq!(waiting.steps[1].status, StepStatus::Waiting);
        assert!(restarted.events(Some(&id), 10).await.unwrap().is_empty());
        let approved = restarted
            .approve_run(&caller(), Role::Admin, &id)
            .await
            .unwrap();
        assert_eq!(approved.steps[1].approved_by.as_deref(), Some("test"));
        drive_until(&restarted, "the run ends", async || {
            restarted.get_run(&id).await.unwrap().phase == RunPhase::Succeeded
        })
        .await;
        let events = restarted.events(Some(&id), 10).await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].subject, "tenant/acme");
        assert_eq!(events[0].to, ["ops@acme.example", "cto@acme.example"]);
        assert_eq!(events[0].message, format!("hello Acme Corp from {id}"));
        // Approving twice is refused; so is aborting a finished run.
        assert!(
            restarted
                .approve_run(&caller(), Role::Admin, &id)
                .await
                .is_err()
        );
        assert!(
            restarted
                .abort_run(&caller(), Role::Admin, &id, None)
                .await
                .is_err()
        );
        // The audit log has the start, each step and the approval, under the run's correlation.
        let audit = restarted.audit(None, 500).await.unwrap();
        let actions: Vec<&str> = audit
            .iter()
            .filter(|a| a.target == format!("runbook-run/{id}"))
            .map(|a| a.action.as_str())
            .collect();
        for want in [
            "runbook.run",
            "runbook.step",
            "runbook.approve",
            "runbook.phase",
        ] {
            assert!(actions.contains(&want), "{want} not in {actions:?}");
        }
    }
);

both_backends!(incident_comms_tells_every_tenant_of_the_cells, |backend| {
    let dir = runbook_dir();
    let t = fleet(backend, dir.path()).await;
    let cells: Vec<String> = t
        .registry
        .cells()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.load > 0)
        .map(|c| c.name.to_string())
        .collect();
    let run = t
        .registry
        .start_run(
            &caller(),
            Role::Operator,
            "incident-comms",
            &req(
                &[
                    ("cells", &cells.join(",")),
                    ("stage", "identified"),
                    ("summary", "Writes time out."),
                ],
                false,
            ),
        )
        .await
        .unwrap()
        .run
        .unwrap();
    let r = &t.registry;
    drive_until(r, "the run ends", async || {
        r.get_run(&run.id).await.unwrap().phase.is_terminal()
    })
    .await;
    let done = r.get_run(&run.id).await.unwrap();
    assert_eq!(done.phase, RunPhase::Succeeded, "{done:?}");
    let mut events = r.events(Some(&run.id), 10).await.unwrap();
    events.sort_by(|a, b| a.subject.cmp(&b.subject));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].subject, "tenant/acme");
    assert_eq!(
        events[0].to,
        ["ops@acme.example", "cto@acme.example", "status-page"]
    );
    assert!(
        events[0]
            .message
            .starts_with("[Identified] Acme Corp: we found the cause"),
        "{}",
        events[0].message
    );
    assert!(events[0].message.contains("Writes time out."));
    assert_eq!(events[1].subject, "tenant/globex");
    assert_eq!(events[1].to, ["status-page"]);
    assert_eq!(events[0].title, "[identified] service incident");
});

both_backends!(
    cell_lifecycle_refuses_what_would_strand_a_tenant,
    |backend| {
        let dir = runbook_dir();
        let t = fleet(backend, dir.path()).await;
        let r = &t.registry;
        let acme = r.tenant(&"acme".parse().unwrap()).await.unwrap();
        let cell: CellName = acme.placements[0].cell.clone();
        let err = r
            .cell_lifecycle(&caller(), &cell, CellAction::Retire, None)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("is ready: drain it first"),
            "{err}"
        );
        let d = r
            .cell_lifecycle(
                &caller(),
                &cell,
                CellAction::Drain,
                Some("maintenance".into()),
            )
            .await
            .unwrap();
        assert_eq!((d.from, d.to), (CellState::Ready, CellState::Draining));
        let err = r
            .cell_lifecycle(&caller(), &cell, CellAction::Drain, None)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("is draining: cannot drain it"),
            "{err}"
        );
        let err = r
            .cell_lifecycle(&caller(), &cell, CellAction::Retire, None)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("still holds") && err.to_string().contains("acme/prod"),
            "{err}"
        );
        // Trains patch a draining cell unless the policy's skipDraining says otherwise.
        r.create_release(
        &caller(),
        &file(
            "r.yaml",
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {name: \"1.0.0\"}\nspec: {artifact: {command: notes-workload}}\n",
        ),
    )
    .await
    .unwrap();
        for skip in [false, true] {
            let policy = cellfleet::trains::DEFAULT_POLICY
                .replace("skipDraining: false", &format!("skipDraining: {skip}"));
            let planned = r
                .start_train(
                    &caller(),
                    &cellfleet_api::StartTrainRequest {
                        release: "1.0.0".into(),
                        policy: Some(file("policy.yaml", &policy)),
                        bake: None,
                        dry_run: true,
                    },
                )
                .await
                .unwrap();
            let in_train = planned.waves.iter().any(|w| w.cells.contains(&cell));
            assert_eq!(in_train, !skip, "skipDraining: {skip}: {:?}", planned.waves);
        }
        // A draining cell takes no new placement.
        t.apply(&tenant_doc(
            "initech",
            "mt-standard",
            "{allowedRegions: [eu-west-1], preferredRegion: eu-west-1}",
        ))
        .await
        .ok();
        let initech = r.tenant(&"initech".parse().unwrap()).await.unwrap();
        assert!(
            initech.placements.iter().all(|p| p.cell != cell),
            "{initech:?}"
        );
        let u = r
            .cell_lifecycle(&caller(), &cell, CellAction::Undrain, None)
            .await
            .unwrap();
        assert_eq!(u.to, CellState::Ready);
        let missing: CellName = "no-such-cell".parse().unwrap();
        assert!(matches!(
            r.cell_lifecycle(&caller(), &missing, CellAction::Drain, None)
                .await,
            Err(Error::NotFound { .. })
        ));
        // An empty cell retires.
        let empty: CellName = "use1-pool-1".parse().unwrap();
        let cells = r.cells().await.unwrap();
        if cells.iter().any(|c| c.name == empty && c.load == 0) {
            r.cell_lifecycle(&caller(), &empty, CellAction::Drain, None)
                .await
                .unwrap();
            let done = r
                .cell_lifecycle(&caller(), &empty, CellAction::Retire, None)
                .await
                .unwrap();
            assert_eq!(done.to, CellState::Retired);
        }
    }
);

both_backends!(
    on_failure_continues_or_compensates_and_abort_stops_a_run,
    |backend| {
        let dir = runbook_dir();
        let t = fleet(backend, dir.path()).await;
        let r = &t.registry;
        let run = r
            .start_run(&caller(), Role::Admin, "fallible", &req(&[], false))
            .await
            .unwrap()
            .run
            .unwrap();
        let id = run.id.clone();
        drive_until(r, "the run ends", async || {
            r.get_run(&id).await.unwrap().phase.is_terminal()
        })
        .await;
        let done = r.get_run(&id).await.unwrap();
        assert_eq!(done.phase, RunPhase::Failed, "{done:?}");
        assert_eq!(
            done.steps[0].status,
            StepStatus::Failed,
            "a tolerated failure is recorded"
        );
        assert_eq!(done.steps[1].status, StepStatus::Failed);
        let comp = done.steps[1].compensation.as_deref().unwrap();
        assert_eq!(
            (comp.name.as_str(), comp.status),
            ("tell", StepStatus::Succeeded)
        );
        assert_eq!(
            done.steps[2].status,
            StepStatus::Skipped,
            "nothing runs after a failure"
        );
        let note = done.note.clone().unwrap_or_default();
        assert!(
            note.contains("step must failed: no tenant nobody; compensating step tell ran"),
            "{note}"
        );
        let events = r.events(Some(&id), 10).await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].message, format!("run {id}: step must failed"));
        assert_eq!(events[0].to, ["oncall"]);

        // A step argument that can never work (a concurrency that is no number) is refused when
        // the run is planned, before anything starts.
        let before = snapshot(&t).await;
        let err = r
            .start_run(&caller(), Role::Admin, "wedge", &req(&[], false))
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("concurrency \"many\": a number from 1 to 32"),
            "{err}"
        );
        assert_eq!(snapshot(&t).await, before);

        // Abort: a run waiting for its approval stops there; its later steps never run.
        let waiting = r
            .start_run(
                &caller(),
                Role::Operator,
                "gate",
                &req(&[("who", "acme")], false),
            )
            .await
            .unwrap()
            .run
            .unwrap();
        drive_until(r, "the run waits", async || {
            r.get_run(&waiting.id).await.unwrap().phase == RunPhase::AwaitingApproval
        })
        .await;
        let err = r
            .abort_run(&caller(), Role::Sre, &waiting.id, None)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("may be run (and aborted) by admin, operator"),
            "{err}"
        );
        let aborted = r
            .abort_run(
                &caller(),
                Role::Operator,
                &waiting.id,
                Some("not today".into()),
            )
            .await
            .unwrap();
        assert_eq!(aborted.phase, RunPhase::Aborted);
        assert_eq!(aborted.steps[1].status, StepStatus::Failed);
        assert_eq!(aborted.steps[2].status, StepStatus::Skipped);
        assert!(aborted.note.unwrap_or_default().ends_with(": not today"));
        let settings = cellfleet::moves::MoveSettings::default();
        r.drive_once("test-driver", &settings).await.unwrap();
        assert!(r.events(Some(&waiting.id), 10).await.unwrap().is_empty());
        assert!(
            r.approve_run(&caller(), Role::Admin, &waiting.id)
                .await
                .is_err()
        );
    }
);
