//! Tenant moves at the registry, on SQLite and PostgreSQL: every bad request is refused with an
//! error naming its problem and changes nothing (no operation, no audit record, no cell, no
//! route, no generation), a dry run plans without changing anything, one tenant has one move at
//! a time, and only the two cells of a move may touch its data.

// A panic in a test is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

mod support;

use cellfleet::lifecycle::Transition;
use cellfleet::service::Error;
use cellfleet_api::{
    AgentReport, AppliedMigration, CellName, ChunkApplied, MoveChunk, MoveSideReport,
    StartMoveRequest, TenantId,
};
use support::*;

fn cell(s: &str) -> CellName {
    CellName::new(s).unwrap()
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn request(t: &str, to: &str) -> StartMoveRequest {
    StartMoveRequest {
        tenant: tenant(t),
        env: "prod".parse().unwrap(),
        to: to.to_owned(),
        max_write_pause_ms: None,
        rollback_window_secs: None,
        dry_run: false,
    }
}

/// Every cell reports the same two migrations (a move needs both sides at one version).
async fn report_migrations(t: &TestRegistry, unmovable: &[(&str, &str)]) {
    for c in ["euw1-pool-1", "euc1-pool-1", "use1-pool-1", "euw1-ded-1"] {
        let report = AgentReport {
            observed_generation: 1,
            migrations: two_migrations(),
            unmovable: unmovable
                .iter()
                .filter(|(cell, _)| *cell == c)
                .map(|(_, why)| (*why).to_owned())
                .collect(),
            ..AgentReport::default()
        };
        t.registry
            .report(&caller(), &cell(c), report)
            .await
            .unwrap();
    }
}

/// Everything a refused move must leave as it was.
async fn snapshot(t: &TestRegistry) -> Vec<i64> {
    counts(
        t,
        &[
            "SELECT count(*) FROM operations",
            "SELECT count(*) FROM audit_log",
            "SELECT count(*) FROM cells",
            "SELECT count(*) FROM route_changes",
            "SELECT CAST(coalesce(sum(desired_generation), 0) AS BIGINT) FROM cells",
            "SELECT CAST(coalesce(sum(generation), 0) AS BIGINT) FROM placements",
        ],
    )
    .await
}

/// Starts `req` expecting a refusal; checks nothing changed and returns the error.
async fn refused(t: &TestRegistry, req: StartMoveRequest) -> Error {
    let before = snapshot(t).await;
    let err = t
        .registry
        .start_move(&caller(), &req)
        .await
        .err()
        .unwrap_or_else(|| panic!("moving {} to {} was accepted", req.tenant, req.to));
    assert_eq!(
        snapshot(t).await,
        before,
        "a refused move ({err}) changed the registry"
    );
    err
}

fn assert_conflict(err: &Error, names: &[&str]) {
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    for n in names {
        assert!(err.to_string().contains(n), "{err} does not name {n:?}");
    }
}

/// The EU pooled cell that is not `source`.
fn other_eu_cell(source: &str) -> &'static str {
    if source == "euw1-pool-1" {
        "euc1-pool-1"
    } else {
        "euw1-pool-1"
    }
}

async fn placed_on(t: &TestRegistry, id: &str) -> String {
    t.registry.tenant(&tenant(id)).await.unwrap().placements[0]
        .cell
        .to_string()
}

/// The test fleet with `acme` placed and every cell at migration V2; returns acme's cell and
/// the other EU pooled cell.
async fn fleet_with_acme(
    backend: cellfleet::store::Backend,
) -> (TestRegistry, String, &'static str) {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    t.apply(&tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"))
        .await
        .unwrap();
    report_migrations(&t, &[]).await;
    let source = placed_on(&t, "acme").await;
    let target = other_eu_cell(&source);
    (t, source, target)
}

both_backends!(
    every_bad_move_is_refused_by_name_and_changes_nothing,
    |backend| {
        let (t, source, target) = fleet_with_acme(backend).await;

        // Unknown tenant, unknown cell, a `--to` that is nothing.
        let err = refused(&t, request("nobody", target)).await;
        assert!(
            matches!(&err, Error::NotFound { kind: "tenant", name } if name == "nobody"),
            "{err:?}"
        );
        let err = refused(&t, request("acme", "nowhere-1")).await;
        assert!(
            matches!(&err, Error::NotFound { kind: "cell", name } if name == "nowhere-1"),
            "{err:?}"
        );
        let err = refused(&t, request("acme", "Not A Cell!")).await;
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("Not A Cell!"), "{err}");

        // A target outside the residency, named with the rule; the cell it is already on.
        let err = refused(&t, request("acme", "use1-pool-1")).await;
        assert_conflict(&err, &["use1-pool-1", "us-east-1", "residency", "eu"]);
        let err = refused(&t, request("acme", &source)).await;
        assert_conflict(&err, &["target", &source]);

        // A dedicated target holding another tenant; `--to dedicated` with none free and no
        // provider to make one.
        t.apply(&tenant_doc("initech", "st-dedicated", "{jurisdiction: eu}"))
            .await
            .unwrap();
        assert_eq!(placed_on(&t, "initech").await, "euw1-ded-1");
        let err = refused(&t, request("acme", "euw1-ded-1")).await;
        assert_conflict(&err, &["euw1-ded-1", "1/1", "room"]);
        let err = refused(&t, request("acme", "dedicated")).await;
        assert_conflict(&err, &["no dedicated cell", "provider"]);

        // An unmovable table at the source, named.
        report_migrations(&t, &[(source.as_str(), "audit_events: no primary key")]).await;
        let err = refused(&t, request("acme", target)).await;
        assert_conflict(&err, &["audit_events: no primary key", "movable"]);
        report_migrations(&t, &[]).await;

        // A target at another migration version.
        let behind = AgentReport {
            observed_generation: 1,
            migrations: vec![AppliedMigration {
                version: 1,
                checksum: "ab".repeat(32),
            }],
            ..AgentReport::default()
        };
        t.registry
            .report(&caller(), &cell(target), behind)
            .await
            .unwrap();
        let err = refused(&t, request("acme", target)).await;
        assert_conflict(&err, &["schema", "V2", "V1"]);
        report_migrations(&t, &[]).await;

        // A suspended tenant, then an archived one.
        t.registry
            .transition(&caller(), &tenant("acme"), Transition::Suspend, None)
            .await
            .unwrap();
        let err = refused(&t, request("acme", target)).await;
        assert_conflict(&err, &["acme", "suspended"]);
        t.registry
            .transition(&caller(), &tenant("acme"), Transition::Archive, None)
            .await
            .unwrap();
        let err = refused(&t, request("acme", target)).await;
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        assert!(err.to_string().contains("acme"), "{err}");
        t.apply(&tenant_doc("globex", "mt-standard", "{jurisdiction: eu}"))
            .await
            .unwrap();
        let source = placed_on(&t, "globex").await;
        let target = other_eu_cell(&source);

        // A full target: fill it with tenants only its region may take.
        let region = if target == "euw1-pool-1" {
            "eu-west-1"
        } else {
            "eu-central-1"
        };
        for i in 0..3 {
            let done = t
                .apply(&tenant_doc(
                    &format!("filler-{i}"),
                    "mt-standard",
                    &format!("{{allowedRegions: [{region}]}}"),
                ))
                .await
                .unwrap();
            if done.placed.is_empty() {
                break; // a draft: the cell is full
            }
        }
        let err = refused(&t, request("globex", target)).await;
        assert_conflict(&err, &[target, "room"]);

        // A dry run of a bad move answers with the plan, the failing check marked, and changes
        // nothing.
        let before = snapshot(&t).await;
        let mut dry = request("globex", target);
        dry.dry_run = true;
        let planned = t.registry.start_move(&caller(), &dry).await.unwrap();
        assert!(planned.started.is_none());
        let failing: Vec<&str> = planned
            .plan
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.check.as_str())
            .collect();
        assert_eq!(failing, ["room"], "{:?}", planned.plan.checks);
        assert_eq!(snapshot(&t).await, before);
    }
);

both_backends!(a_dry_run_plans_and_one_tenant_has_one_move, |backend| {
    let (t, source, target) = fleet_with_acme(backend).await;

    let before = snapshot(&t).await;
    let mut dry = request("acme", target);
    dry.dry_run = true;
    let planned = t.registry.start_move(&caller(), &dry).await.unwrap();
    assert!(planned.started.is_none());
    assert_eq!(planned.plan.source.as_str(), source);
    assert_eq!(planned.plan.target.as_str(), target);
    assert!(
        planned.plan.checks.iter().all(|c| c.ok),
        "{:?}",
        planned.plan.checks
    );
    assert_eq!(snapshot(&t).await, before, "a dry run changes nothing");

    // `--to dedicated` plans the free dedicated cell.
    let mut dry = request("acme", "dedicated");
    dry.dry_run = true;
    let planned = t.registry.start_move(&caller(), &dry).await.unwrap();
    assert_eq!(planned.plan.target.as_str(), "euw1-ded-1");
    assert_eq!(snapshot(&t).await, before);

    // Started: one operation, audited; a second move of the tenant is refused, naming the first.
    let started = t
        .registry
        .start_move(&caller(), &request("acme", target))
        .await
        .unwrap()
        .started
        .unwrap();
    assert_eq!(started.phase.as_str(), "capturing");
    let audit = t.registry.audit(None, 10).await.unwrap();
    assert!(audit.iter().any(|r| r.action == "move.start"), "{audit:?}");
    let err = refused(&t, request("acme", "euw1-ded-1")).await;
    assert_conflict(&err, &[&started.id, "exclusive"]);

    // A rollback before the cut-over is refused, saying when it is possible; an abort is
    // recorded (the driver carries it out) and audited.
    let err = t
        .registry
        .request_move(&caller(), &started.id, true, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("rollback window"), "{err}");
    t.registry
        .request_move(&caller(), &started.id, false, Some("test".into()))
        .await
        .unwrap();
    let audit = t.registry.audit(None, 10).await.unwrap();
    assert!(audit.iter().any(|r| r.action == "move.abort"), "{audit:?}");
    let err = t
        .registry
        .request_move(&caller(), "mv_000000000000", false, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { kind: "move", .. }),
        "{err:?}"
    );
});

both_backends!(only_the_cells_of_a_move_touch_its_data, |backend| {
    let (t, source, target) = fleet_with_acme(backend).await;
    let id = t
        .registry
        .start_move(&caller(), &request("acme", target))
        .await
        .unwrap()
        .started
        .unwrap()
        .id;
    let chunk = MoveChunk {
        seq: 1,
        kind: "copy".into(),
        items: vec![
            serde_json::json!({"table": "notes", "op": "upsert", "pk": [1], "row": {"id": 1, "tenant_id": "acme"}}),
        ],
        cursor: serde_json::Value::Null,
        change_seq: 0,
        verify: None,
        bytes: 10,
    };

    // A cell outside the move: forbidden on every route, naming the cell and the move.
    let outsider = cell("use1-pool-1");
    let before = snapshot(&t).await;
    let errs = [
        t.registry.move_position(&outsider, &id).await.err(),
        t.registry
            .upload_chunk(&outsider, &id, chunk.clone())
            .await
            .err(),
        t.registry.download_chunks(&outsider, &id, None).await.err(),
        t.registry
            .chunk_applied(
                &outsider,
                &id,
                ChunkApplied {
                    seq: 1,
                    mismatches: Vec::new(),
                },
            )
            .await
            .err(),
        t.registry
            .move_side_report(&outsider, &id, MoveSideReport::default())
            .await
            .err(),
    ];
    for err in errs {
        let err = err.expect("an outsider's call was accepted");
        assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
        assert!(
            err.to_string().contains("use1-pool-1") && err.to_string().contains(&id),
            "{err}"
        );
    }
    assert_eq!(snapshot(&t).await, before);

    // An unknown move: not found, for a cell of a real move too.
    let err = t
        .registry
        .move_position(&cell(&source), "mv_000000000000")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");

    // The target does not ship the forward copy; a chunk of an unknown kind is refused; a chunk
    // out of order is refused, and nothing is stored.
    let err = t
        .registry
        .upload_chunk(&cell(target), &id, chunk.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    assert!(
        t.registry
            .download_chunks(&cell(target), &id, None)
            .await
            .unwrap()
            .is_empty()
    );
});
