//! Release trains at the registry, on SQLite and PostgreSQL: every bad request is refused with an
//! error naming its problem and changes nothing (no operation, no audit record, no generation);
//! a dry run plans without changing anything; one train at a time; and a move and a train never
//! fight over a cell.

// A panic in a test is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

mod support;

use cellfleet::service::Error;
use cellfleet_api::{AbortTrainRequest, CellName, StartMoveRequest, StartTrainRequest, TenantId};
use support::*;

fn release_file(version: &str) -> cellfleet_api::ManifestFile {
    file(
        "release.yaml",
        &format!(
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"{version}\"}}\nspec: {{artifact: {{command: notes-workload}}}}\n"
        ),
    )
}

fn start(release: &str) -> StartTrainRequest {
    StartTrainRequest {
        release: release.into(),
        policy: None,
        bake: None,
        dry_run: false,
    }
}

/// Everything a refused request must leave as it was.
async fn snapshot(t: &TestRegistry) -> Vec<i64> {
    counts(
        t,
        &[
            "SELECT count(*) FROM operations",
            "SELECT count(*) FROM audit_log",
            "SELECT count(*) FROM fleet_state",
            "SELECT CAST(coalesce(sum(desired_generation), 0) AS BIGINT) FROM cells",
        ],
    )
    .await
}

async fn refused(t: &TestRegistry, req: StartTrainRequest) -> Error {
    let before = snapshot(t).await;
    let err = t
        .registry
        .start_train(&caller(), &req)
        .await
        .err()
        .unwrap_or_else(|| panic!("a train of {} was accepted", req.release));
    assert_eq!(
        snapshot(t).await,
        before,
        "a refused train ({err}) changed the registry"
    );
    err
}

async fn fleet_with_releases(backend: cellfleet::store::Backend) -> TestRegistry {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        t.registry
            .create_release(&caller(), &release_file(v))
            .await
            .unwrap();
    }
    t.registry
        .deploy_release(&caller(), "2.0.0", &[])
        .await
        .unwrap();
    t
}

both_backends!(
    every_bad_train_request_is_refused_by_name_and_changes_nothing,
    |backend| {
        let t = fleet_with_releases(backend).await;
        let err = refused(&t, start("9.9.9")).await;
        assert!(
            matches!(err, Error::NotFound { .. }) && err.to_string() == "release 9.9.9 not found",
            "{err}"
        );
        let err = refused(&t, start("1.0.0")).await;
        assert!(
            err.to_string()
                .contains("release 1.0.0 is older than what cells run"),
            "{err}"
        );
        let mut bad_bake = start("3.0.0");
        bad_bake.bake = Some("soon".into());
        let err = refused(&t, bad_bake).await;
        assert!(
            err.to_string()
                .starts_with("bake: \"soon\" is not a duration"),
            "{err}"
        );
        let mut bad_policy = start("3.0.0");
        bad_policy.policy = Some(file(
            "policy.yaml",
            &cellfleet::trains::DEFAULT_POLICY.replace("minRequests: 50", "minRequest: 50"),
        ));
        let err = refused(&t, bad_policy).await;
        assert!(
            err.to_string()
                .starts_with("policy.yaml: document 1: spec.gates"),
            "{err}"
        );
        assert!(err.to_string().contains("minRequest"), "{err}");
        let mut wrong_kind = start("3.0.0");
        wrong_kind.policy = Some(release_file("3.0.0"));
        let err = refused(&t, wrong_kind).await;
        assert!(
            err.to_string()
                .contains("kind: expected kind TrainPolicy, got \"Release\""),
            "{err}"
        );

        // A dry run plans and changes nothing.
        let before = snapshot(&t).await;
        let mut dry = start("3.0.0");
        dry.dry_run = true;
        let plan = t.registry.start_train(&caller(), &dry).await.unwrap();
        assert!(plan.train.is_none());
        assert_eq!(plan.waves[0].name, "canary");
        assert_eq!(
            plan.waves[0].cells,
            [CellName::new("euw1-pool-1").unwrap()],
            "the labelled canary"
        );
        assert_eq!(snapshot(&t).await, before);

        // One train at a time.
        let started = t
            .registry
            .start_train(&caller(), &start("3.0.0"))
            .await
            .unwrap();
        let id = started.train.unwrap().id;
        let second = refused(&t, start("3.0.0")).await;
        assert!(
            second.to_string().contains(&format!("train {id}")),
            "{second}"
        );
        // Commands that do not fit the phase are refused by name.
        let err = t
            .registry
            .train_command(
                &caller(),
                &id,
                cellfleet::service::trains::TrainCommand::Promote,
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("train {id} is running: cannot promote it")
        );
        let err = t.registry.resume_line(&caller()).await.unwrap_err();
        assert_eq!(err.to_string(), "the line is not stopped");
        let unknown = t
            .registry
            .train_command(
                &caller(),
                "tr_nope",
                cellfleet::service::trains::TrainCommand::Pause,
            )
            .await
            .unwrap_err();
        assert_eq!(unknown.to_string(), "train tr_nope not found");
    }
);

both_backends!(a_move_and_a_train_never_fight_over_a_cell, |backend| {
    let t = fleet_with_releases(backend).await;
    t.apply(&tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"))
        .await
        .unwrap();
    for c in ["euw1-pool-1", "euc1-pool-1", "use1-pool-1", "euw1-ded-1"] {
        let report = cellfleet_api::AgentReport {
            observed_generation: 1,
            migrations: two_migrations(),
            ..Default::default()
        };
        t.registry
            .report(&caller(), &CellName::new(c).unwrap(), report)
            .await
            .unwrap();
    }
    let acme = t
        .registry
        .tenant(&TenantId::new("acme").unwrap())
        .await
        .unwrap();
    let source = acme.placements[0].cell.to_string();
    // Source or target is euw1-pool-1: the canary of the train below.
    let target = if source == "euw1-pool-1" {
        "euc1-pool-1"
    } else {
        "euw1-pool-1"
    };
    let move_req = |dry_run| StartMoveRequest {
        tenant: TenantId::new("acme").unwrap(),
        env: "prod".parse().unwrap(),
        to: target.into(),
        max_write_pause_ms: None,
        rollback_window_secs: None,
        dry_run,
    };
    let id = t
        .registry
        .start_train(&caller(), &start("3.0.0"))
        .await
        .unwrap()
        .train
        .unwrap()
        .id;
    let plan = t
        .registry
        .start_move(&caller(), &move_req(true))
        .await
        .unwrap()
        .plan;
    let check = plan.checks.iter().find(|c| c.check == "train").unwrap();
    assert!(!check.ok, "{plan:?}");
    assert!(
        check.detail.contains(&format!(
            "release train {id} is about to change euw1-pool-1"
        )),
        "{}",
        check.detail
    );
    let err = t
        .registry
        .start_move(&caller(), &move_req(false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("(train)"), "{err}");
    // Once the train is over, the move may go.
    t.registry
        .train_command(
            &caller(),
            &id,
            cellfleet::service::trains::TrainCommand::Abort(AbortTrainRequest { rollback: false }),
        )
        .await
        .unwrap();
    let plan = t
        .registry
        .start_move(&caller(), &move_req(true))
        .await
        .unwrap()
        .plan;
    assert!(plan.checks.iter().all(|c| c.ok), "{plan:?}");
});
