//! The registry restored from an older copy while a router and an agent run (README, "Restoring
//! the registry from a backup"): the router takes the restored table — a new epoch, shown in its
//! `/healthz` and `/metrics` — even where it held newer versions and generations; the agent,
//! whose ledger is ahead of the restored registry, is flagged and refuses to go back until the
//! operator runs `cellfleet cell resync`, after which it converges to the registry's state.

use std::time::Duration;

use cellfleet_e2e::{LocalFleet, eventually, http_get, http_request, router_health};
use sqlx::Executor;

/// The router's answer for `tenant`: its status, or for a refusal its code (`unknown-tenant`,
/// `suspended`).
fn route(router: &str, tenant: &str) -> String {
    match http_get(router, &format!("/route/{tenant}"), None) {
        Ok((200, _)) => "200".to_owned(),
        Ok((_, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or(body),
        Err(e) => e.to_string(),
    }
}

/// One gauge of the router's `/metrics` (classic text format).
fn router_gauge(router: &str, name: &str) -> Option<f64> {
    let (_, text) = http_get(router, "/metrics", None).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_and_an_agent_follow_a_registry_restored_from_an_older_copy() {
    let mut fleet = LocalFleet::start(&[("cell-a", 10)]).await;
    fleet.apply_tenants(&[("acme", "")]);
    let router = fleet.start_router();
    eventually(Duration::from_secs(30), "the router serves acme", || {
        route(&router.url, "acme") == "200"
    });

    // An online copy of the registry (SQLite's VACUUM INTO), as a backup job would take it.
    let backup = fleet.dir().join("registry-backup.db");
    let mut raw = fleet.db.raw().await;
    raw.execute(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        backup.display()
    )))
    .await
    .expect("VACUUM INTO");
    drop(raw);

    // Life goes on after the copy: a tenant onboarded, acme suspended.
    fleet.apply_tenants(&[("acme", ""), ("globex", "")]);
    fleet.run(&["tenant", "suspend", "acme"]).ok();
    fleet.wait_converged();
    eventually(Duration::from_secs(30), "the router serves globex", || {
        route(&router.url, "globex") == "200" && route(&router.url, "acme") == "suspended"
    });
    let before = router_health(&router.url);
    let held_version = before["version"].as_i64().unwrap_or_default();
    let old_epoch = before["epoch"].as_str().unwrap_or_default().to_owned();
    assert!(!old_epoch.is_empty(), "{before}");
    let desired_before =
        fleet.run(&["cell", "get", "cell-a", "-o", "json"]).json()["desiredGeneration"]
            .as_i64()
            .unwrap_or_default();

    // The registry is lost and restored from the copy: the control plane stops, the copy
    // replaces its database, and it starts again. Router and agent keep running throughout.
    fleet.server.halt();
    let registry = fleet.db.dir.path().join("registry.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", registry.display()));
    }
    std::fs::copy(&backup, &registry).expect("restore the copy");
    fleet.restart_server(&[]);

    // The router takes the restored table although it held newer versions and generations.
    eventually(
        Duration::from_secs(40),
        "the router serves the restored table",
        || route(&router.url, "globex") == "unknown-tenant" && route(&router.url, "acme") == "200",
    );
    let after = router_health(&router.url);
    assert_ne!(after["epoch"], before["epoch"], "{after}");
    assert!(
        after["epochChanges"].as_u64().unwrap_or_default() >= 1,
        "{after}"
    );
    assert!(
        after["version"].as_i64().unwrap_or_default() < held_version,
        "the restored table is older: {after} (held {held_version})"
    );
    assert!(router_gauge(&router.url, "cellfleet_router_epoch_changes").unwrap_or_default() >= 1.0);
    let audit = fleet
        .run(&["audit", "list", "--target", "routes", "-o", "json"])
        .json();
    assert!(
        audit
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["action"] == "routes.epoch")),
        "{audit}"
    );

    // The agent's ledger is ahead of the restored registry: flagged, and it does not go back.
    let flagged = |fleet: &LocalFleet| {
        let cell = fleet.run(&["cell", "get", "cell-a", "-o", "json"]).json();
        cell["errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e.as_str()
                    .unwrap_or_default()
                    .contains("ahead of the desired")
            })
        })
    };
    eventually(Duration::from_secs(30), "cell-a flagged as ahead", || {
        flagged(&fleet)
    });
    let cell = fleet.run(&["cell", "get", "cell-a", "-o", "json"]).json();
    assert!(
        cell["desiredGeneration"].as_i64() < Some(desired_before),
        "the restored registry is behind the agent: {cell}"
    );
    assert!(
        cell["observedGeneration"].as_i64() >= Some(desired_before),
        "{cell}"
    );

    // The documented way out: `cellfleet cell resync`. The agent takes the registry's state.
    let resync = fleet.run(&["cell", "resync", "cell-a"]);
    assert!(
        resync
            .ok()
            .contains("the agent now takes the registry's state")
    );
    fleet.wait_converged();
    assert!(!flagged(&fleet));
    let cell = fleet.run(&["cell", "get", "cell-a", "-o", "json"]).json();
    assert!(
        cell["desiredGeneration"].as_i64() > Some(desired_before),
        "{cell}"
    );
    // Only what the restored registry holds is served: acme active again, globex unknown.
    let endpoint = fleet.endpoint_of("cell-a");
    eventually(Duration::from_secs(30), "the cell refuses globex", || {
        matches!(
            http_request(&endpoint, "GET", "/v1/notes", &[("X-Tenant-Id", "globex")], ""),
            Ok((s, _, _)) if s >= 400
        )
    });
    // A second resync has nothing to do, and says so.
    let again = fleet.run(&["cell", "resync", "cell-a"]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("not ahead"), "{}", again.stderr);
    router.stop();
}
