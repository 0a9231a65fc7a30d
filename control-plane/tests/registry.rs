//! Registry behaviour through the service layer, on SQLite and on PostgreSQL.

// A panic in a test or benchmark is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use cellfleet::lifecycle::Transition;
use cellfleet::service::{Bootstrap, Error, Held};
use cellfleet_api::{ApplyOutcome, CellName, CreateTokenRequest, Env, Role, TenantId, TenantState};
use sqlx::{Executor, Row};
use support::*;

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

async fn audit_count(t: &TestRegistry) -> i64 {
    t.registry.verify_audit(&[]).await.unwrap().records
}

/// Where every tenant is: (tenant, env) → (cell, generation).
async fn placements(t: &TestRegistry) -> BTreeMap<(String, String), (String, i64)> {
    let mut out = BTreeMap::new();
    for v in t.registry.tenants(None).await.unwrap() {
        for p in v.placements {
            out.insert(
                (v.id.to_string(), p.env.to_string()),
                (p.cell.to_string(), p.generation.0),
            );
        }
    }
    out
}

both_backends!(apply_twice_changes_nothing, |backend| {
    let t = TestRegistry::new(backend).await;
    let tenants = format!(
        "{}{}",
        tenant_doc(
            "acme",
            "mt-standard",
            "{jurisdiction: eu, preferredRegion: eu-west-1}"
        ),
        tenant_doc("initech", "st-dedicated", "{allowedRegions: [eu-west-1]}")
    );
    let all = format!("{FLEET}---\n{tenants}");
    let first = t.apply(&all).await.unwrap();
    assert!(
        first
            .results
            .iter()
            .all(|r| r.outcome == ApplyOutcome::Created)
    );
    assert_eq!(first.placed.len(), 2);
    let records = audit_count(&t).await;
    let before = placements(&t).await;

    let second = t.apply(&all).await.unwrap();
    assert_eq!(second.results.len(), first.results.len());
    assert!(
        second
            .results
            .iter()
            .all(|r| r.outcome == ApplyOutcome::Unchanged),
        "{:?}",
        second.results
    );
    assert!(second.placed.is_empty());
    assert_eq!(
        audit_count(&t).await,
        records,
        "an unchanged apply writes no audit record"
    );
    assert_eq!(placements(&t).await, before);

    // A real change is reported with the field that changed.
    let changed = t
        .apply(&all.replace("capacity: 50", "capacity: 60"))
        .await
        .unwrap();
    let cell = changed
        .results
        .iter()
        .find(|r| r.name == "use1-pool-1")
        .unwrap();
    assert_eq!(cell.outcome, ApplyOutcome::Configured);
    assert_eq!(cell.changes.len(), 1);
    assert_eq!(cell.changes[0].path, "spec.capacity");
    assert_eq!(audit_count(&t).await, records + 1);
});

both_backends!(dry_run_changes_nothing, |backend| {
    let t = TestRegistry::new(backend).await;
    let all = format!(
        "{FLEET}---\n{}",
        tenant_doc("acme", "mt-standard", "{jurisdiction: eu}")
    );
    let resp = t
        .registry
        .apply(&caller(), Role::Admin, &[file("f.yaml", &all)], true)
        .await
        .unwrap();
    assert!(resp.dry_run);
    assert_eq!(
        resp.placed.len(),
        1,
        "the dry run says where the tenant would go"
    );
    assert!(
        resp.results
            .iter()
            .all(|r| r.outcome == ApplyOutcome::Created && !r.changes.is_empty())
    );
    assert!(t.registry.regions().await.unwrap().is_empty());
    assert!(t.registry.tenants(None).await.unwrap().is_empty());
    assert_eq!(audit_count(&t).await, 0);
});

both_backends!(a_bad_document_writes_nothing_at_all, |backend| {
    let t = TestRegistry::new(backend).await;
    let cases = [
        (
            format!(
                "{FLEET}---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: x-1}}\nspec: {{region: mars-1, kind: pooled, env: prod}}\n"
            ),
            "test.yaml: document 8: spec.region: unknown region mars-1",
            "spec.region",
        ),
        (
            format!(
                "{FLEET}---\n{}",
                tenant_doc(
                    "acme",
                    "mt-standard",
                    "{allowedRegions: [eu-west-1, ap-south-1]}"
                )
            ),
            "test.yaml: document 8: spec.residency.allowedRegions[1]: unknown region ap-south-1",
            "spec.residency.allowedRegions[1]",
        ),
        (
            format!(
                "{FLEET}---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: y-1}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, capacity: -3}}\n"
            ),
            "test.yaml: document 8: spec.capacity: invalid value: integer `-3`, expected u32",
            "spec.capacity",
        ),
    ];
    for (yaml, message, path) in cases {
        match t.apply(&yaml).await {
            Err(Error::Manifest(e)) => {
                assert_eq!(e.to_string(), message);
                assert_eq!(e.path, path);
            }
            other => panic!("expected a manifest error, got {other:?}"),
        }
        assert!(
            t.registry.regions().await.unwrap().is_empty(),
            "nothing from a failed apply is written"
        );
        assert!(t.registry.cells().await.unwrap().is_empty());
        assert_eq!(audit_count(&t).await, 0);
    }
    // A document the role may not apply: refused before anything is written.
    let err = t
        .registry
        .apply(&caller(), Role::Operator, &[file("f.yaml", FLEET)], false)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "f.yaml document 1 (Region eu-west-1): role operator may not change regions and cells"
    );
    assert!(t.registry.regions().await.unwrap().is_empty());
});

both_backends!(residency_holds_on_every_path, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    // EU pooled room: 3 in eu-west-1 + 2 in eu-central-1. Seven EU tenants: five placed in the
    // EU, two wait as drafts although the US cell has room.
    let mut docs = String::new();
    for i in 0..7 {
        docs.push_str(&tenant_doc(
            &format!("eu{i}"),
            "mt-standard",
            "{jurisdiction: eu, preferredRegion: eu-west-1}",
        ));
    }
    t.apply(&docs).await.unwrap();
    let views = t.registry.tenants(None).await.unwrap();
    let mut drafts = 0;
    for v in &views {
        match v.state {
            TenantState::Active => {
                assert!(
                    ["eu-west-1", "eu-central-1"].contains(&v.placements[0].region.as_str()),
                    "{v:?}"
                );
            }
            TenantState::Draft => {
                drafts += 1;
                assert!(v.placements.is_empty());
                let reason = v.state_reason.as_deref().unwrap();
                assert!(reason.contains("no pooled cell with room for env prod in any allowed region (jurisdiction eu)"), "{reason}");
            }
            other => panic!("unexpected state {other}"),
        }
    }
    assert_eq!(drafts, 2);
    // Tenants that prefer eu-west-1 fill it first, then fall back to the closest EU region.
    let regions: Vec<String> = views
        .iter()
        .flat_map(|v| v.placements.iter().map(|p| p.region.to_string()))
        .collect();
    assert_eq!(regions.iter().filter(|r| *r == "eu-west-1").count(), 3);
    assert_eq!(regions.iter().filter(|r| *r == "eu-central-1").count(), 2);

    // The API path (create) obeys the same rule.
    let created = t
        .registry
        .create_tenant(
            &caller(),
            &tid("eu7"),
            &serde_json::from_value(serde_json::json!({
                "displayName": "x", "profile": "mt-standard", "residency": {"allowedRegions": ["eu-central-1"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap()
        .0;
    assert_eq!(created.state, TenantState::Draft);

    // Room in the EU: the oldest drafts are placed there by the same apply.
    let more = t
        .apply("apiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {name: euc1-pool-2}\nspec: {region: eu-central-1, kind: pooled, env: prod, capacity: 2}\n")
        .await
        .unwrap();
    let placed: Vec<&str> = more.placed.iter().map(|p| p.tenant.as_str()).collect();
    assert_eq!(placed.len(), 2);
    assert!(more.placed.iter().all(|p| p.cell.as_str() == "euc1-pool-2"));

    // A residency change that would leave the tenant's region is refused…
    let acme_region = t.registry.tenant(&tid("eu0")).await.unwrap().placements[0]
        .region
        .to_string();
    let other = if acme_region == "eu-west-1" {
        "eu-central-1"
    } else {
        "eu-west-1"
    };
    let err = t
        .apply(&tenant_doc(
            "eu0",
            "mt-standard",
            &format!("{{allowedRegions: [{other}]}}"),
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.residency: tenant eu0 (prod) is on cell"),
        "{err}"
    );
    // …and so is a region jurisdiction change that would put placed tenants outside theirs.
    let err = t
        .apply("apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: eu-west-1}\nspec: {jurisdiction: us, location: {lat: 53.35, lon: -6.26}}\n")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.jurisdiction: changing the jurisdiction to us would put tenant"),
        "{err}"
    );
    // No placement anywhere is outside its tenant's residency.
    for v in t.registry.tenants(None).await.unwrap() {
        let explain = t.registry.explain(&v.id).await.unwrap();
        assert!(
            explain.placements.iter().all(|p| p.residency_satisfied),
            "{explain:?}"
        );
    }
});

both_backends!(adding_a_cell_moves_no_placed_tenant, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    let mut docs = String::new();
    for i in 0..10 {
        docs.push_str(&tenant_doc(
            &format!("us{i}"),
            "mt-standard",
            "{jurisdiction: us}",
        ));
    }
    t.apply(&docs).await.unwrap();
    let before = placements(&t).await;
    assert_eq!(before.len(), 10);
    t.apply("apiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {name: use1-pool-2}\nspec: {region: us-east-1, kind: pooled, env: prod, capacity: 500}\n")
        .await
        .unwrap();
    assert_eq!(
        placements(&t).await,
        before,
        "placements are stored, never recomputed"
    );
    // New tenants may go to the new cell.
    t.apply(&tenant_doc("us-new", "mt-standard", "{jurisdiction: us}"))
        .await
        .unwrap();
    assert_eq!(placements(&t).await.len(), 11);
});

both_backends!(lifecycle_guards_and_retention, |backend| {
    let t = TestRegistry::with_settings(backend, retention(3600)).await;
    t.apply(FLEET).await.unwrap();
    t.apply(&tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"))
        .await
        .unwrap();
    t.apply(&tenant_doc("nowhere", "mt-standard", "{jurisdiction: ap}"))
        .await
        .unwrap();
    let c = caller();
    let acme = tid("acme");

    let err = t
        .registry
        .transition(&c, &tid("nowhere"), Transition::Suspend, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant nowhere: cannot suspend a tenant that is draft (only from active)"
    );
    let err = t
        .registry
        .transition(&c, &acme, Transition::Resume, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    let err = t
        .registry
        .transition(&c, &acme, Transition::Delete, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant acme: cannot delete a tenant that is active (only from archived)"
    );

    let v = t
        .registry
        .transition(&c, &acme, Transition::Suspend, Some("unpaid".into()))
        .await
        .unwrap();
    assert_eq!(
        (v.state, v.state_reason.as_deref()),
        (TenantState::Suspended, Some("unpaid"))
    );
    let v = t
        .registry
        .transition(&c, &acme, Transition::Resume, None)
        .await
        .unwrap();
    assert_eq!(v.state, TenantState::Active);
    let v = t
        .registry
        .transition(&c, &acme, Transition::Archive, None)
        .await
        .unwrap();
    assert_eq!(v.state, TenantState::Archived);
    assert!(v.deletable_after.unwrap() > v.archived_at.unwrap());
    assert_eq!(
        v.placements.len(),
        1,
        "archived data is kept under retention"
    );
    let err = t
        .registry
        .transition(&c, &acme, Transition::Delete, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot delete before the archive retention has passed"),
        "{err}"
    );
    // Archived data still exists, so the context still says where it is.
    assert_eq!(
        t.registry.context(&acme, &Env::prod()).await.unwrap().state,
        TenantState::Archived
    );

    let actions: Vec<String> = t
        .registry
        .audit(Some("tenant/acme"), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    for a in [
        "tenant.created",
        "placement.create",
        "tenant.activate",
        "tenant.suspend",
        "tenant.resume",
        "tenant.archive",
    ] {
        assert!(
            actions.contains(&a.to_owned()),
            "{a} missing from {actions:?}"
        );
    }
});

both_backends!(delete_frees_capacity_and_reserves_the_id, |backend| {
    let t = TestRegistry::with_settings(backend, retention(0)).await;
    t.apply(FLEET).await.unwrap();
    // euc1-pool-1 holds 2.
    let residency = "{allowedRegions: [eu-central-1]}";
    t.apply(&format!(
        "{}{}",
        tenant_doc("a", "mt-standard", residency),
        tenant_doc("b", "mt-standard", residency)
    ))
    .await
    .unwrap();
    t.apply(&tenant_doc("c", "mt-standard", residency))
        .await
        .unwrap();
    assert_eq!(
        t.registry.tenant(&tid("c")).await.unwrap().state,
        TenantState::Draft
    );
    let c = caller();
    t.registry
        .transition(&c, &tid("a"), Transition::Archive, None)
        .await
        .unwrap();
    let deleted = t
        .registry
        .transition(&c, &tid("a"), Transition::Delete, None)
        .await
        .unwrap();
    assert_eq!(deleted.state, TenantState::Deleted);
    assert!(deleted.placements.is_empty());
    // The freed slot went to the waiting draft in the same transaction.
    let waiting = t.registry.tenant(&tid("c")).await.unwrap();
    assert_eq!(waiting.state, TenantState::Active);
    assert_eq!(waiting.placements[0].cell.as_str(), "euc1-pool-1");
    assert!(
        t.registry
            .tenants(None)
            .await
            .unwrap()
            .iter()
            .all(|v| v.id.as_str() != "a"),
        "deleted tenants are not listed"
    );
    let err = t
        .apply(&tenant_doc("a", "mt-standard", residency))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "test.yaml: document 1: metadata.name: tenant a was deleted; tenant ids are never reused"
    );
    assert!(t.registry.context(&tid("a"), &Env::prod()).await.is_err());
});

both_backends!(capacity_holds_under_concurrent_creates, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    let spec: cellfleet_api::TenantSpec = serde_json::from_value(serde_json::json!({
        "displayName": "x", "profile": "mt-standard", "residency": {"jurisdiction": "eu"}
    }))
    .unwrap();
    let mut handles = Vec::new();
    for i in 0..16 {
        let registry = t.registry.clone();
        let spec = spec.clone();
        handles.push(tokio::spawn(async move {
            registry
                .create_tenant(&caller(), &tid(&format!("t{i}")), &spec)
                .await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let views = t.registry.tenants(None).await.unwrap();
    assert_eq!(
        views
            .iter()
            .filter(|v| v.state == TenantState::Active)
            .count(),
        5,
        "EU pooled capacity is 3 + 2"
    );
    for c in t.registry.cells().await.unwrap() {
        assert!(
            c.load <= c.capacity,
            "{} holds {} > {}",
            c.name,
            c.load,
            c.capacity
        );
    }
    assert!(
        t.registry.verify_audit(&[]).await.unwrap().ok,
        "concurrent writers keep the chain intact"
    );
});

both_backends!(cell_changes_that_would_move_data_are_refused, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    t.apply(&tenant_doc(
        "a",
        "mt-standard",
        "{allowedRegions: [eu-central-1]}",
    ))
    .await
    .unwrap();
    let cell = |spec: &str| {
        format!(
            "apiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: euc1-pool-1}}\nspec: {spec}\n"
        )
    };
    let err = t
        .apply(&cell(
            "{region: eu-west-1, kind: pooled, env: prod, capacity: 2}",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "test.yaml: document 1: spec.region: cell euc1-pool-1 holds 1 tenant environment(s); move them before changing its region"
    );
    let err = t
        .apply(&cell(
            "{region: eu-central-1, kind: pooled, env: staging, capacity: 2}",
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.env:"), "{err}");
    // Shrinking to the load is fine; below it is not (capacity 1 == load 1 is allowed).
    t.apply(&cell(
        "{region: eu-central-1, kind: pooled, env: prod, capacity: 1}",
    ))
    .await
    .unwrap();
    let err = t
        .apply(&tenant_doc(
            "a",
            "st-dedicated",
            "{allowedRegions: [eu-central-1]}",
        ))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.profile: tenant a is placed as mt-standard"),
        "{err}"
    );
});

both_backends!(audit_chain_detects_tampering, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    t.apply(&tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"))
        .await
        .unwrap();
    let ok = t.registry.verify_audit(&[]).await.unwrap();
    assert!(ok.ok);
    let n = ok.records;
    assert!(n >= 9, "{n}");
    let mut raw = t.raw().await;

    // Edit a payload.
    raw.execute("UPDATE audit_log SET payload = '{\"forged\":true}' WHERE seq = 3")
        .await
        .unwrap();
    let v = t.registry.verify_audit(&[]).await.unwrap();
    assert!(!v.ok);
    assert_eq!(v.first_bad.as_ref().unwrap().seq, 3);
    assert!(v.first_bad.unwrap().problem.contains("edited"));

    // Each other kind of tampering on a fresh registry.
    for tamper in ["remove", "reorder", "truncate", "append"] {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let mut raw = t.raw().await;
        let sql = match tamper {
            "remove" => vec!["DELETE FROM audit_log WHERE seq = 2"],
            "reorder" => vec![
                "UPDATE audit_log SET seq = -2 WHERE seq = 2",
                "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                "UPDATE audit_log SET seq = 3 WHERE seq = -2",
            ],
            "truncate" => {
                vec!["DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"]
            }
            _ => vec![
                "INSERT INTO audit_log (seq, at, actor, action, target, correlation_id, payload, prev_hash, hash) \
                       SELECT seq + 1, at, actor, action, target, correlation_id, payload, hash, hash FROM audit_log \
                       WHERE seq = (SELECT MAX(seq) FROM audit_log)",
            ],
        };
        for s in sql {
            raw.execute(s).await.unwrap();
        }
        let v = t.registry.verify_audit(&[]).await.unwrap();
        assert!(!v.ok, "{tamper} not detected");
        let bad = v.first_bad.unwrap();
        let expected = match tamper {
            "remove" | "reorder" => 2,
            "truncate" => 7,
            _ => 8,
        };
        assert_eq!(bad.seq, expected, "{tamper}: {}", bad.problem);
    }
});

both_backends!(
    every_mutation_is_audited_with_actor_and_correlation,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let records = t.registry.audit(None, 1000).await.unwrap();
        assert_eq!(records.len(), 7, "3 regions + 4 cells");
        assert!(
            records
                .iter()
                .all(|r| r.actor == "test" && r.correlation_id == "test-correlation")
        );
        assert!(
            records
                .windows(2)
                .all(|w| w[1].prev_hash == w[0].hash && w[1].seq == w[0].seq + 1)
        );
        let cell = records
            .iter()
            .find(|r| r.target == "cell/euw1-pool-1")
            .unwrap();
        assert_eq!(cell.action, "cell.created");
        assert_eq!(cell.payload["labels"]["canary"], "true");
    }
);

both_backends!(
    tokens_bootstrap_once_and_agents_are_bound_to_a_cell,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        assert_eq!(
            t.registry.bootstrap_admin(&path).await.unwrap(),
            Bootstrap::Written(path.clone())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let secret = std::fs::read_to_string(&path).unwrap();
        let admin = t
            .registry
            .authenticate(secret.trim())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert_eq!(
            t.registry
                .bootstrap_admin(&dir.path().join("again"))
                .await
                .unwrap(),
            Bootstrap::NotNeeded
        );
        assert!(!dir.path().join("again").exists());

        let req = |role, cell: Option<&str>| CreateTokenRequest {
            role,
            cell: cell.map(|c| CellName::new(c).unwrap()),
            description: None,
        };
        let c = caller();
        assert_eq!(
            t.registry
                .create_token(&c, &req(Role::Agent, None))
                .await
                .unwrap_err()
                .to_string(),
            "an agent token must be bound to a cell (--cell CELL)"
        );
        assert_eq!(
            t.registry
                .create_token(&c, &req(Role::Agent, Some("nope-1")))
                .await
                .unwrap_err()
                .to_string(),
            "cell nope-1 not found"
        );
        assert_eq!(
            t.registry
                .create_token(&c, &req(Role::Viewer, Some("euw1-pool-1")))
                .await
                .unwrap_err()
                .to_string(),
            "only agent tokens are bound to a cell, not viewer tokens"
        );
        let agent = t
            .registry
            .create_token(&c, &req(Role::Agent, Some("euw1-pool-1")))
            .await
            .unwrap();
        let p = t
            .registry
            .authenticate(&agent.token)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.role, p.cell.unwrap().as_str()),
            (Role::Agent, "euw1-pool-1")
        );
        // Only the hash is stored.
        let mut raw = t.raw().await;
        let stored: String = raw
            .fetch_one(sqlx::query("SELECT hash FROM tokens WHERE id = $1").bind(agent.id.clone()))
            .await
            .unwrap()
            .get(0);
        assert_ne!(stored, agent.token);
        assert_eq!(stored, cellfleet::auth::hash_token(&agent.token));

        t.registry.revoke_token(&c, &agent.id).await.unwrap();
        assert!(
            t.registry
                .authenticate(&agent.token)
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            t.registry.revoke_token(&c, &agent.id).await,
            Err(Error::Conflict(_))
        ));
    }
);

both_backends!(context_and_explain, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    t.apply(&format!(
        "{}{}{}",
        tenant_doc(
            "acme",
            "mt-standard",
            "{jurisdiction: eu, preferredRegion: eu-west-1}"
        ),
        tenant_doc(
            "big",
            "st-dedicated",
            "{jurisdiction: eu, preferredRegion: eu-central-1}"
        ),
        tenant_doc("far", "mt-standard", "{jurisdiction: ap}")
    ))
    .await
    .unwrap();
    let ctx = t
        .registry
        .context(&tid("acme"), &Env::prod())
        .await
        .unwrap();
    assert_eq!(ctx.cell.as_str(), "euw1-pool-1");
    assert_eq!(ctx.isolation.object_store.prefix, "tenants/acme/");
    assert_eq!(ctx.tags["region"], "eu-west-1");
    let big = t.registry.context(&tid("big"), &Env::prod()).await.unwrap();
    assert_eq!(big.cell.as_str(), "euw1-ded-1");
    assert_eq!(big.isolation.database.database, "big");
    assert_eq!(big.isolation.queue.queue, "jobs-big");

    let e = t.registry.explain(&tid("big")).await.unwrap();
    let d = &e.placements[0].decision;
    assert_eq!(d.regions[0].region.as_str(), "eu-central-1");
    assert_eq!(d.regions[0].outcome, "no ready dedicated cell for env prod");
    assert_eq!(d.chosen_cell.as_ref().unwrap().as_str(), "euw1-ded-1");

    let far = t.registry.explain(&tid("far")).await.unwrap();
    assert_eq!(far.state, TenantState::Draft);
    assert_eq!(
        far.unplaced[0].summary,
        "no region satisfies residency (jurisdiction ap)"
    );
    let err = t
        .registry
        .context(&tid("far"), &Env::prod())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tenant far has no placement in env prod (state draft: env prod: no region satisfies residency (jurisdiction ap))"
    );
});

both_backends!(environments_are_placed_each_on_its_own, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    // prod has cells; dev has none: prod is placed and serves, dev waits with the reason.
    let doc = "apiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {name: both}\nspec: {displayName: both, profile: mt-standard, residency: {jurisdiction: eu}, environments: [prod, dev]}\n";
    let r = t.apply(doc).await.unwrap();
    assert_eq!(r.placed.len(), 1);
    assert_eq!(r.placed[0].env.as_str(), "prod");
    let v = t.registry.tenant(&tid("both")).await.unwrap();
    assert_eq!(v.state, TenantState::Active);
    let reason = v.state_reason.unwrap_or_default();
    assert!(reason.starts_with("env dev: "), "{reason}");
    let routes = t.registry.routes(Held::default()).await.unwrap();
    assert!(
        routes
            .entries
            .iter()
            .any(|e| e.tenant.as_str() == "both" && e.env.as_str() == "prod")
    );
    let explained = t.registry.explain(&tid("both")).await.unwrap();
    assert_eq!(explained.placements.len(), 1);
    assert_eq!(explained.unplaced.len(), 1);
    assert_eq!(explained.unplaced[0].env.as_str(), "dev");

    // A dev cell appears: dev is placed by that apply, the reason goes.
    let dev_cell = "apiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {name: euw1-dev-1}\nspec: {region: eu-west-1, kind: pooled, env: dev, capacity: 5}\n";
    let r = t.apply(dev_cell).await.unwrap();
    assert_eq!(r.placed.len(), 1);
    assert_eq!(r.placed[0].env.as_str(), "dev");
    let v = t.registry.tenant(&tid("both")).await.unwrap();
    assert_eq!(v.placements.len(), 2);
    assert_eq!(v.state_reason, None);
});

both_backends!(residency_mistakes_are_refused_or_warned, |backend| {
    let t = TestRegistry::new(backend).await;
    t.apply(FLEET).await.unwrap();
    // An allowed-region list and a jurisdiction that share no region: never placeable.
    let never = tenant_doc(
        "never",
        "mt-standard",
        "{allowedRegions: [us-east-1], jurisdiction: eu}",
    );
    let e = t.apply(&never).await.unwrap_err().to_string();
    assert!(
        e.contains("spec.residency: none of allowedRegions [us-east-1] is in jurisdiction eu"),
        "{e}"
    );
    assert!(
        t.registry.tenant(&tid("never")).await.is_err(),
        "nothing written"
    );
    // A preferred region the rule does not allow: accepted (its location ranks the allowed
    // regions), with a warning naming the field.
    let odd = tenant_doc(
        "odd",
        "mt-standard",
        "{allowedRegions: [eu-west-1, eu-central-1], preferredRegion: us-east-1}",
    );
    let r = t.apply(&odd).await.unwrap();
    assert_eq!(r.results[0].warnings.len(), 1, "{:?}", r.results[0]);
    assert!(
        r.results[0].warnings[0]
            .starts_with("spec.residency.preferredRegion: us-east-1 is not allowed"),
        "{:?}",
        r.results[0].warnings
    );
    // One allowed region outside the jurisdiction: never used, said so.
    let partly = tenant_doc(
        "partly",
        "mt-standard",
        "{allowedRegions: [eu-west-1, us-east-1], jurisdiction: eu}",
    );
    let r = t.apply(&partly).await.unwrap();
    assert!(
        r.results[0].warnings.iter().any(|w| w
            .starts_with("spec.residency.allowedRegions[1]: us-east-1 is not in jurisdiction eu")),
        "{:?}",
        r.results[0].warnings
    );
    // The create path warns the same way.
    let (_, warnings) = t
        .registry
        .create_tenant(
            &caller(),
            &tid("odd2"),
            &serde_json::from_value(serde_json::json!({
                "displayName": "x", "profile": "mt-standard",
                "residency": {"jurisdiction": "eu", "preferredRegion": "us-east-1"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
});

both_backends!(releases_can_be_applied_with_the_fleet, |backend| {
    let t = TestRegistry::new(backend).await;
    let release = "---\napiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {name: \"1.0.0\"}\nspec: {artifact: {command: notes-workload}}\n";
    let r = t.apply(&format!("{FLEET}{release}")).await.unwrap();
    let rel = r.results.iter().find(|r| r.kind == "Release").unwrap();
    assert_eq!(
        (rel.name.as_str(), rel.outcome),
        ("1.0.0", ApplyOutcome::Created)
    );
    assert_eq!(t.registry.releases().await.unwrap().len(), 1);
    // Again: unchanged. Other content for the same version: refused, naming the document.
    let r = t.apply(&format!("{FLEET}{release}")).await.unwrap();
    assert!(
        r.results
            .iter()
            .all(|r| r.outcome == ApplyOutcome::Unchanged)
    );
    let e = t
        .apply(&release.replace("notes-workload", "other"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("document 1: release 1.0.0 exists with a different spec"),
        "{e}"
    );
    // Releases are infrastructure: an operator may not apply one.
    let e = t
        .registry
        .apply(&caller(), Role::Operator, &[file("r.yaml", release)], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("role operator may not change regions and cells"),
        "{e}"
    );
});
