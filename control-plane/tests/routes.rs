//! The routing table for edge proxies, on SQLite and PostgreSQL: it follows placements,
//! lifecycle, quotas and endpoints with a table-wide version; watchers get exactly the changes.

// A panic in a test is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cellfleet::lifecycle::Transition;
use cellfleet::service::Held;
use cellfleet_api::{Env, RouteEntry, RouteState, TenantId};
use sqlx::Executor;
use support::*;

fn tid(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// Replays the whole change log into a table: it must equal the snapshot.
async fn replayed(t: &TestRegistry) -> BTreeMap<(String, String), RouteEntry> {
    let watch = t
        .registry
        .watch_routes(Held::at(0), Duration::ZERO)
        .await
        .unwrap();
    let mut table = BTreeMap::new();
    for c in watch.changes {
        match c.entry {
            Some(e) => table.insert((c.tenant.to_string(), c.env.to_string()), e),
            None => table.remove(&(c.tenant.to_string(), c.env.to_string())),
        };
    }
    table
}

async fn consistent(t: &TestRegistry) {
    let snapshot = t.registry.routes(Held::default()).await.unwrap();
    let table: BTreeMap<_, _> = snapshot
        .entries
        .into_iter()
        .map(|e| ((e.tenant.to_string(), e.env.to_string()), e))
        .collect();
    assert_eq!(
        replayed(t).await,
        table,
        "the change log replays to the snapshot"
    );
}

both_backends!(
    the_table_follows_placements_lifecycle_quotas_and_endpoints,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        assert_eq!(
            t.registry.routes(Held::default()).await.unwrap().version,
            0,
            "no tenant, no route"
        );
        t.apply(&format!(
            "{}{}{}",
            tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"),
            tenant_doc("globex", "mt-standard", "{jurisdiction: us}"),
            tenant_doc("nowhere", "mt-standard", "{jurisdiction: ap}")
        ))
        .await
        .unwrap();
        let snap = t.registry.routes(Held::default()).await.unwrap();
        assert_eq!(snap.version, 2);
        assert_eq!(
            snap.entries
                .iter()
                .map(|e| e.tenant.as_str())
                .collect::<Vec<_>>(),
            ["acme", "globex"],
            "drafts have no route"
        );
        let acme = t.registry.route(&tid("acme"), &Env::prod()).await.unwrap();
        assert_eq!((acme.state, acme.generation.0), (RouteState::Active, 1));
        consistent(&t).await;

        let c = caller();
        t.registry
            .transition(&c, &tid("acme"), Transition::Suspend, None)
            .await
            .unwrap();
        let acme = t.registry.route(&tid("acme"), &Env::prod()).await.unwrap();
        assert_eq!(
            (acme.state, acme.version),
            (RouteState::Suspended, 3),
            "suspended tenants stay, refused at the edge"
        );
        t.registry
            .transition(&c, &tid("acme"), Transition::Resume, None)
            .await
            .unwrap();
        assert_eq!(
            t.registry
                .route(&tid("acme"), &Env::prod())
                .await
                .unwrap()
                .state,
            RouteState::Active
        );

        // Quotas travel with the route; an unchanged apply moves nothing.
        let with_quota = tenant_doc("globex", "mt-standard", "{jurisdiction: us}").replace(
            "  residency:",
            "  quotas: {requestsPerSecond: 50}\n  residency:",
        );
        t.apply(&with_quota).await.unwrap();
        let v = t.registry.routes(Held::default()).await.unwrap().version;
        t.apply(&with_quota).await.unwrap();
        assert_eq!(t.registry.routes(Held::default()).await.unwrap().version, v);
        assert_eq!(
            t.registry
                .route(&tid("globex"), &Env::prod())
                .await
                .unwrap()
                .requests_per_second,
            Some(50)
        );

        // A cell's endpoint change reaches the routes on it.
        t.apply(&FLEET.replace("spec: {region: us-east-1, kind: pooled, env: prod, capacity: 50}", "spec: {region: us-east-1, kind: pooled, env: prod, capacity: 50, endpoint: \"http://10.0.0.7:8080\"}"))
        .await
        .unwrap();
        assert_eq!(
            t.registry
                .route(&tid("globex"), &Env::prod())
                .await
                .unwrap()
                .endpoint
                .as_deref(),
            Some("http://10.0.0.7:8080")
        );

        // Archived tenants leave the table.
        t.registry
            .transition(&c, &tid("acme"), Transition::Archive, None)
            .await
            .unwrap();
        assert!(t.registry.route(&tid("acme"), &Env::prod()).await.is_err());
        let watch = t
            .registry
            .watch_routes(Held::at(v), Duration::ZERO)
            .await
            .unwrap();
        assert!(
            watch
                .changes
                .iter()
                .any(|c| c.tenant.as_str() == "acme" && c.entry.is_none())
        );
        assert!(
            watch
                .changes
                .windows(2)
                .all(|w| w[1].version == w[0].version + 1),
            "one version per change"
        );
        consistent(&t).await;
    }
);

both_backends!(
    watchers_wake_on_change_and_resnapshot_when_too_far_behind,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        t.apply(&tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"))
            .await
            .unwrap();
        let v = t.registry.routes(Held::default()).await.unwrap().version;

        let idle = t
            .registry
            .watch_routes(Held::at(v), Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(
            (idle.version, idle.changes.len(), idle.snapshot.is_none()),
            (v, 0, true)
        );

        let registry = t.registry.clone();
        let change = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            registry
                .transition(&caller(), &tid("acme"), Transition::Suspend, None)
                .await
                .unwrap();
        });
        let started = Instant::now();
        let woke = t
            .registry
            .watch_routes(Held::at(v), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woken by the change, not the timeout"
        );
        assert_eq!(woke.version, v + 1);
        assert_eq!(
            woke.changes[0].entry.as_ref().unwrap().state,
            RouteState::Suspended
        );
        change.await.unwrap();

        // A watcher older than the log gets a snapshot to start over from.
        let mut raw = t.raw().await;
        raw.execute("DELETE FROM route_changes").await.unwrap();
        let behind = t
            .registry
            .watch_routes(Held::at(0), Duration::ZERO)
            .await
            .unwrap();
        let snapshot = behind.snapshot.unwrap();
        assert_eq!((snapshot.version, snapshot.entries.len()), (v + 1, 1));
    }
);

both_backends!(
    a_watcher_ahead_of_the_head_or_of_another_epoch_gets_a_snapshot_of_a_new_epoch,
    |backend| {
        let t = TestRegistry::new(backend).await;
        t.apply(FLEET).await.unwrap();
        t.apply(&tenant_doc("acme", "mt-standard", "{jurisdiction: eu}"))
            .await
            .unwrap();
        let table = t.registry.routes(Held::default()).await.unwrap();
        let (v, epoch) = (table.version, table.epoch.clone());
        assert!(!epoch.is_empty());
        fn held(version: i64, epoch: &str) -> Held<'_> {
            Held {
                version,
                epoch: Some(epoch),
            }
        }

        // Up to date in the current epoch: a watch waits and answers in that epoch.
        let idle = t
            .registry
            .watch_routes(held(v, &epoch), Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!((idle.version, idle.epoch.as_str()), (v, epoch.as_str()));
        assert!(idle.snapshot.is_none() && idle.changes.is_empty());

        // A router holding a version this registry never reached (it was restored from an older
        // copy): no wait, no echo of the version, but a snapshot of a new epoch — audited. Its
        // version acknowledges nothing of this history (a cut-over must not count on it).
        let acked = |id: &'static str| {
            let registry = t.registry.clone();
            async move {
                registry
                    .routers(chrono::TimeDelta::seconds(60))
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|r| r.id == id)
                    .map(|r| r.acked_version)
            }
        };
        t.registry
            .router_seen("r-level", held(v, &epoch))
            .await
            .unwrap();
        t.registry
            .router_seen("r-ahead", held(v + 40, &epoch))
            .await
            .unwrap();
        assert_eq!(
            (acked("r-level").await, acked("r-ahead").await),
            (Some(v), Some(0))
        );
        let started = Instant::now();
        let ahead = t
            .registry
            .watch_routes(held(v + 40, &epoch), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered at once"
        );
        let snapshot = ahead.snapshot.expect("a snapshot");
        assert_eq!((ahead.version, snapshot.version), (v, v));
        assert_ne!(snapshot.epoch, epoch);
        assert_eq!(ahead.epoch, snapshot.epoch);
        let audit = t.registry.audit(Some("routes"), 10).await.unwrap();
        let last = audit.last().expect("routes.epoch audited");
        assert_eq!(last.action, "routes.epoch");
        assert_eq!(last.payload["previous"], epoch.as_str());
        assert!(
            last.payload["reason"]
                .as_str()
                .unwrap()
                .contains("ahead of the head"),
            "{}",
            last.payload
        );

        // A second router of the old epoch, behind or level with the head, also starts over
        // (its history after the copy is not this one), acknowledging nothing meanwhile; the
        // epoch does not move again.
        let new_epoch = snapshot.epoch;
        t.registry
            .router_seen("r-level", held(v, &epoch))
            .await
            .unwrap();
        assert_eq!(acked("r-level").await, Some(0));
        for since in [v - 1, v] {
            let other = t
                .registry
                .watch_routes(held(since, &epoch), Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(
                other.snapshot.map(|s| s.epoch),
                Some(new_epoch.clone()),
                "since {since}"
            );
        }
        // The snapshot endpoint does the same for a client ahead in the current epoch.
        let again = t.registry.routes(held(v + 1, &new_epoch)).await.unwrap();
        assert_ne!(again.epoch, new_epoch);
        // A client of the new epoch gets changes again, in that epoch.
        t.registry
            .transition(&caller(), &tid("acme"), Transition::Suspend, None)
            .await
            .unwrap();
        let next = t
            .registry
            .watch_routes(held(v, &again.epoch), Duration::ZERO)
            .await
            .unwrap();
        assert!(next.snapshot.is_none());
        assert_eq!(
            (next.changes.len(), next.epoch.as_str()),
            (1, again.epoch.as_str())
        );
    }
);
