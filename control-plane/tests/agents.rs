//! The control-plane side of the cell agent protocol, on SQLite and PostgreSQL: desired-state
//! generations, long-poll, reports.

// A panic in a test is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use cellfleet::lifecycle::Transition;
use cellfleet::service::Error;
use cellfleet_api::{AgentReport, CellName, TenantId, TenantState};
use support::*;

fn cell(s: &str) -> CellName {
    CellName::new(s).unwrap()
}

async fn generation(t: &TestRegistry, c: &str) -> i64 {
    t.registry.desired_state(&cell(c)).await.unwrap().generation
}

both_backends!(generations_follow_the_content, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    // Every registered cell starts at generation 1 with nothing to run.
    let us = t
        .registry
        .desired_state(&cell("use1-pool-1"))
        .await
        .unwrap();
    assert_eq!((us.generation, us.tenants.len()), (1, 0));

    t.apply(&tenant_doc("globex", "mt-standard", "{jurisdiction: us}"))
        .await
        .unwrap();
    let us = t
        .registry
        .desired_state(&cell("use1-pool-1"))
        .await
        .unwrap();
    assert_eq!(us.generation, 2);
    assert_eq!(us.tenants[0].tenant.as_str(), "globex");
    assert_eq!(us.tenants[0].state, TenantState::Active);
    assert_eq!(
        us.tenants[0].isolation.object_store.prefix,
        "tenants/globex/"
    );
    assert_eq!(
        generation(&t, "euw1-pool-1").await,
        1,
        "other cells are untouched"
    );

    // Unchanged apply: no bump. Flags change: bump, with the new flags.
    t.apply(&tenant_doc("globex", "mt-standard", "{jurisdiction: us}"))
        .await
        .unwrap();
    assert_eq!(generation(&t, "use1-pool-1").await, 2);
    let with_flag = tenant_doc("globex", "mt-standard", "{jurisdiction: us}")
        .replace("  residency:", "  flags: {beta: true}\n  residency:");
    t.apply(&with_flag).await.unwrap();
    let us = t
        .registry
        .desired_state(&cell("use1-pool-1"))
        .await
        .unwrap();
    assert_eq!(us.generation, 3);
    assert_eq!(us.tenants[0].flags["beta"], true);

    // Lifecycle changes reach the cell; deleting removes the tenant from it.
    let c = caller();
    let id = TenantId::new("globex").unwrap();
    t.registry
        .transition(&c, &id, Transition::Suspend, None)
        .await
        .unwrap();
    let us = t
        .registry
        .desired_state(&cell("use1-pool-1"))
        .await
        .unwrap();
    assert_eq!(
        (us.generation, us.tenants[0].state),
        (4, TenantState::Suspended)
    );
    // A cell spec change that does not change what runs there does not bump.
    t.apply(&FLEET.replace("capacity: 50", "capacity: 60"))
        .await
        .unwrap();
    assert_eq!(generation(&t, "use1-pool-1").await, 4);
    assert_eq!(
        t.registry
            .cell(&cell("use1-pool-1"))
            .await
            .unwrap()
            .desired_generation,
        4
    );
});

both_backends!(
    long_poll_wakes_on_change_and_times_out_without_one,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let since = generation(&t, "use1-pool-1").await;

        // No change: the wait runs out and returns the current state.
        let started = Instant::now();
        let same = t
            .registry
            .wait_desired(&cell("use1-pool-1"), since, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(same.generation, since);
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A change while waiting wakes the waiter long before its timeout.
        let registry = t.registry.clone();
        let change = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            registry
                .apply(
                    &caller(),
                    cellfleet_api::Role::Admin,
                    &[file(
                        "t.yaml",
                        &tenant_doc("globex", "mt-standard", "{jurisdiction: us}"),
                    )],
                    false,
                )
                .await
                .unwrap();
        });
        let started = Instant::now();
        let newer = t
            .registry
            .wait_desired(&cell("use1-pool-1"), since, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(newer.generation, since + 1);
        assert_eq!(newer.tenants.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the change, not by the timeout"
        );
        change.await.unwrap();

        // Already newer: returns at once.
        let now = t
            .registry
            .wait_desired(&cell("use1-pool-1"), 0, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(now.generation, since + 1);
    }
);

both_backends!(
    reports_are_stored_checked_and_audited_when_they_matter,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let c = caller();
        let euw1 = cell("euw1-pool-1");
        let desired = generation(&t, "euw1-pool-1").await;
        let report = AgentReport {
            observed_generation: desired,
            release: Some("1.0.0".into()),
            migrations: two_migrations(),
            ..AgentReport::default()
        };
        t.registry.report(&c, &euw1, report.clone()).await.unwrap();
        let view = t.registry.cell(&euw1).await.unwrap();
        assert_eq!(view.observed_generation, Some(desired));
        assert_eq!(view.release.as_deref(), Some("1.0.0"));
        assert_eq!(view.migration_version, Some(2));
        assert!(view.reported_at.is_some());
        let audited = |records: Vec<cellfleet_api::AuditRecord>| {
            records.iter().filter(|r| r.action == "cell.report").count()
        };
        assert_eq!(
            audited(
                t.registry
                    .audit(Some("cell/euw1-pool-1"), 100)
                    .await
                    .unwrap()
            ),
            1
        );

        // The same report again (only health differs): stored, not audited again.
        let mut again = report.clone();
        again.health = Some(cellfleet_api::Health {
            window_seconds: 60,
            requests: 10,
            ..Default::default()
        });
        t.registry.report(&c, &euw1, again).await.unwrap();
        assert_eq!(
            audited(
                t.registry
                    .audit(Some("cell/euw1-pool-1"), 100)
                    .await
                    .unwrap()
            ),
            1
        );

        // An error is audited and shown on the cell.
        let mut failing = report.clone();
        failing.errors = vec!["migration 2: checksum mismatch".into()];
        t.registry.report(&c, &euw1, failing).await.unwrap();
        assert_eq!(
            t.registry.cell(&euw1).await.unwrap().errors,
            ["migration 2: checksum mismatch"]
        );
        assert_eq!(
            audited(
                t.registry
                    .audit(Some("cell/euw1-pool-1"), 100)
                    .await
                    .unwrap()
            ),
            2
        );

        // An agent ahead of the registry is stored and flagged; a negative generation is refused.
        let mut ahead = report.clone();
        ahead.observed_generation = desired + 5;
        t.registry.report(&c, &euw1, ahead).await.unwrap();
        let errors = t.registry.cell(&euw1).await.unwrap().errors;
        assert!(
            errors
                .iter()
                .any(|e| e.contains(&format!("ahead of the desired {desired}"))),
            "{errors:?}"
        );
        let mut negative = report.clone();
        negative.observed_generation = -1;
        assert!(matches!(
            t.registry.report(&c, &euw1, negative).await,
            Err(Error::Invalid(_))
        ));
        // Every field is bounded and validated; the error names the field, nothing is stored.
        type Spoil = Box<dyn Fn(&mut AgentReport)>;
        let bad: Vec<(&str, Spoil)> = vec![
            (
                "release",
                Box::new(|r| r.release = Some("9".repeat(100_000))),
            ),
            (
                "release",
                Box::new(|r| r.release = Some("1.0 ; drop".into())),
            ),
            (
                "migrations[0].version",
                Box::new(|r| r.migrations[0].version = -3),
            ),
            (
                "migrations[1].checksum",
                Box::new(|r| r.migrations[1].checksum = "x".into()),
            ),
            (
                "tenantRows.acme",
                Box::new(|r| {
                    r.tenant_rows.insert("acme".into(), -5);
                }),
            ),
            (
                "tenantRows: \"Not A Tenant\"",
                Box::new(|r| {
                    r.tenant_rows.insert("Not A Tenant".into(), 5);
                }),
            ),
            (
                "strayRows.x",
                Box::new(|r| {
                    r.stray_rows.insert("x".into(), -1);
                }),
            ),
            (
                "health.errors",
                Box::new(|r| {
                    r.health = Some(cellfleet_api::Health {
                        requests: 1,
                        errors: 2,
                        ..Default::default()
                    });
                }),
            ),
            (
                "health.latencyP99Ms",
                Box::new(|r| {
                    r.health = Some(cellfleet_api::Health {
                        latency_p99_ms: Some(-1.0),
                        ..Default::default()
                    });
                }),
            ),
            ("errors", Box::new(|r| r.errors = vec!["e".repeat(5000)])),
        ];
        let before = t.registry.cell(&euw1).await.unwrap();
        for (field, spoil) in bad {
            let mut r = report.clone();
            spoil(&mut r);
            match t.registry.report(&c, &euw1, r).await {
                Err(Error::Invalid(m)) => assert!(m.contains(field), "{field}: {m}"),
                other => panic!("{field}: expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(
            t.registry.cell(&euw1).await.unwrap().release,
            before.release,
            "a refused report changes nothing"
        );
        assert!(matches!(
            t.registry.report(&c, &cell("nope-1"), report).await,
            Err(Error::NotFound { .. })
        ));
    }
);

fn migration(name: &str, sql: &str) -> cellfleet_api::MigrationFile {
    cellfleet_api::MigrationFile {
        name: name.into(),
        content: sql.into(),
    }
}

both_backends!(
    the_migration_stream_is_append_only_and_reaches_every_cell,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let c = caller();
        let v1 = migration(
            "V1__notes.expand.sql",
            "CREATE TABLE notes (tenant_id TEXT NOT NULL, body TEXT);",
        );
        let v2 = migration(
            "V2__orders.expand.sql",
            "CREATE TABLE orders (tenant_id TEXT NOT NULL, total INT);",
        );
        let added = t
            .registry
            .add_migrations(&c, &[v2.clone(), v1.clone()])
            .await
            .unwrap();
        assert_eq!(
            added
                .iter()
                .map(|a| (a.version, a.outcome.as_str()))
                .collect::<Vec<_>>(),
            [(1, "created"), (2, "created")]
        );
        for name in ["euw1-pool-1", "euw1-ded-1"] {
            let d = t.registry.desired_state(&cell(name)).await.unwrap();
            assert_eq!(
                d.generation, 2,
                "{name}: adding migrations changes every cell"
            );
            assert_eq!(
                d.migrations.iter().map(|m| m.version).collect::<Vec<_>>(),
                [1, 2]
            );
        }
        // Again: unchanged, no generation moves.
        let again = t
            .registry
            .add_migrations(&c, std::slice::from_ref(&v1))
            .await
            .unwrap();
        assert_eq!(again[0].outcome, "unchanged");
        assert_eq!(generation(&t, "euw1-pool-1").await, 2);
        // Different text for an existing version, or a version before the newest: refused.
        let edited = migration("V1__notes.expand.sql", "CREATE TABLE notes (x INT);");
        let err = t.registry.add_migrations(&c, &[edited]).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("V1 (notes) is already in the stream with different content"),
            "{err}"
        );
        // A version that skips others would lose their numbers for good: refused.
        let t2 = TestRegistry::new(backend).await;
        let err = t2
            .registry
            .add_migrations(&c, std::slice::from_ref(&v2))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("V2 (orders) would skip V1"),
            "{err}"
        );
        let v9 = migration("V9__late.expand.sql", "CREATE TABLE late (tenant_id TEXT);");
        t2.registry.add_migrations(&c, &[v1, v2]).await.unwrap();
        let err = t2.registry.add_migrations(&c, &[v9]).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("would skip V3–V8: the stream grows by the next version, V3"),
            "{err}"
        );
        // A file name with a path is refused, not stripped.
        let sneaky = migration("../../V3__x.expand.sql", "SELECT 1;");
        let err = t2.registry.add_migrations(&c, &[sneaky]).await.unwrap_err();
        assert!(err.to_string().contains("without a path"), "{err}");
        assert_eq!(
            t2.registry.migrations().await.unwrap().len(),
            2,
            "nothing of a refused add is kept"
        );
    }
);

fn release_file(version: &str, spec: &str) -> cellfleet_api::ManifestFile {
    file(
        "release.yaml",
        &format!(
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"{version}\"}}\nspec: {spec}\n"
        ),
    )
}

both_backends!(
    releases_are_immutable_and_deploys_reach_the_cells,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let c = caller();
        let spec = "{artifact: {command: notes-workload, env: {WORKLOAD_ERROR_RATE: \"0\"}}}";
        let (v, created) = t
            .registry
            .create_release(&c, &release_file("1.0.0", spec))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(v.spec.artifact.command, "notes-workload");
        let (_, created) = t
            .registry
            .create_release(&c, &release_file("1.0.0", spec))
            .await
            .unwrap();
        assert!(!created, "the same release again is a no-op");
        let err = t
            .registry
            .create_release(&c, &release_file("1.0.0", "{artifact: {command: other}}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("releases are immutable"), "{err}");
        let err = t
            .registry
            .create_release(&c, &release_file("one", spec))
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "release.yaml: document 1: metadata.name: \"one\" is not a semver version"
            ),
            "{err}"
        );
        let err = t
            .registry
            .create_release(
                &c,
                &release_file("1.1.0", "{artifact: {command: x}, migrations: {upTo: 3}}"),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("needs migrations up to V3, but the stream ends at V0"),
            "{err}"
        );

        let before = generation(&t, "use1-pool-1").await;
        let changed = t
            .registry
            .deploy_release(&c, "1.0.0", &[cell("euw1-pool-1")])
            .await
            .unwrap();
        assert_eq!(changed, [cell("euw1-pool-1")]);
        let d = t
            .registry
            .desired_state(&cell("euw1-pool-1"))
            .await
            .unwrap();
        assert_eq!(d.generation, 2);
        assert_eq!(
            d.release.as_ref().map(|r| r.version.as_str()),
            Some("1.0.0")
        );
        assert_eq!(d.release.unwrap().artifact.env["WORKLOAD_ERROR_RATE"], "0");
        assert_eq!(
            generation(&t, "use1-pool-1").await,
            before,
            "other cells keep their state"
        );
        // Everywhere: only the cells not yet on it change.
        let changed = t.registry.deploy_release(&c, "1.0.0", &[]).await.unwrap();
        assert_eq!(changed.len(), 3);
        assert!(
            t.registry
                .deploy_release(&c, "1.0.0", &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            t.registry.deploy_release(&c, "9.9.9", &[]).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            t.registry
                .deploy_release(&c, "1.0.0", &[cell("nope-1")])
                .await,
            Err(Error::NotFound { .. })
        ));
        let audit = t
            .registry
            .audit(Some("cell/euw1-pool-1"), 10)
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|r| r.action == "cell.release" && r.payload["to"] == "1.0.0")
        );
    }
);

both_backends!(
    an_agent_ahead_of_a_restored_registry_is_flagged_and_resync_moves_the_cell_past_it,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let c = caller();
        let euw1 = cell("euw1-pool-1");
        let desired = generation(&t, "euw1-pool-1").await;
        // Nothing to resync while the agent is level with the registry (or silent).
        let err = t.registry.resync_cell(&c, &euw1).await.unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        assert!(err.to_string().contains("none yet"), "{err}");
        // The registry came back from an older copy: the agent's ledger is 4 generations ahead.
        let ahead = desired + 4;
        t.registry
            .report(
                &c,
                &euw1,
                AgentReport {
                    observed_generation: ahead,
                    ..AgentReport::default()
                },
            )
            .await
            .unwrap();
        let view = t.registry.cell(&euw1).await.unwrap();
        assert!(
            view.errors
                .iter()
                .any(|e| e.contains("ahead of the desired") && e.contains("restored")),
            "{:?}",
            view.errors
        );
        let done = t.registry.resync_cell(&c, &euw1).await.unwrap();
        assert_eq!(
            (done.from, done.to, done.agent),
            (desired, ahead + 1, ahead)
        );
        // A waiting agent sees the new generation with the registry's content.
        let state = t
            .registry
            .wait_desired(&euw1, ahead, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(state.generation, ahead + 1);
        let audit = t.registry.audit(Some("cell/euw1-pool-1"), 5).await.unwrap();
        assert!(audit.iter().any(|r| r.action == "cell.resync"
            && r.payload["to"] == ahead + 1
            && r.payload["agent"] == ahead));
        // Once past the agent, a second resync has nothing to do; an unknown cell is named.
        assert!(matches!(
            t.registry.resync_cell(&c, &euw1).await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            t.registry.resync_cell(&c, &cell("nope")).await,
            Err(Error::NotFound { .. })
        ));
    }
);
