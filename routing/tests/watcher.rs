//! The watcher against a real control plane: it converges, follows changes, and keeps serving
//! its last good table when the control plane goes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cellfleet_api::RouteState;
use cellfleet_e2e::{Db, ServerProcess, TestDb, cli, eventually};
use cellfleet_routing::{RouteWatcher, RoutingTable, WatcherConfig};

const FLEET: &str = "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: eu-west-1}\nspec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}\n\
---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {name: cell-a}\nspec: {region: eu-west-1, kind: pooled, env: prod, endpoint: \"http://10.1.0.1:8080\"}\n\
---\napiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {name: acme}\nspec: {displayName: Acme, profile: mt-standard, residency: {jurisdiction: eu}, quotas: {requestsPerSecond: 20}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_follows_the_control_plane_and_survives_its_absence() {
    let db = TestDb::new(Db::Sqlite).await;
    let admin = db.dir.path().join("admin.token");
    let server = ServerProcess::start(
        &[
            "serve",
            "--database-url",
            &db.url,
            "--admin-token-file",
            admin.to_str().unwrap_or_default(),
        ],
        "listening on",
    );
    let manifest = db.dir.path().join("fleet.yaml");
    std::fs::write(&manifest, FLEET).unwrap_or_default();
    cli(
        &server.url,
        &admin,
        &["apply", "-f", manifest.to_str().unwrap_or_default()],
    )
    .ok();
    let edge = cli(
        &server.url,
        &admin,
        &["token", "create", "--role", "edge", "-o", "json"],
    )
    .json();

    let updates = Arc::new(AtomicUsize::new(0));
    let counted = updates.clone();
    let watcher = RouteWatcher::new(
        WatcherConfig {
            control_plane: server.url.clone(),
            token: edge["token"].as_str().unwrap_or_default().to_owned(),
            poll: Duration::from_secs(2),
            router_id: None,
        },
        RoutingTable::empty(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .on_update(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    let table = watcher.table();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(watcher.run(async {
        let _ = stopped.await;
    }));

    let state =
        |t: &Arc<arc_swap::ArcSwap<RoutingTable>>| t.load().lookup("acme", "prod").map(|r| r.state);
    let wait = |what: &str, want: Option<RouteState>| {
        let table = table.clone();
        let what = what.to_owned();
        tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(30), &what, || state(&table) == want)
        })
    };
    wait("the watcher has acme", Some(RouteState::Active))
        .await
        .unwrap_or_default();
    let route = table.load().lookup("acme", "prod").cloned();
    assert_eq!(
        route.as_ref().and_then(|r| r.endpoint.as_deref()),
        Some("http://10.1.0.1:8080")
    );
    assert_eq!(route.and_then(|r| r.requests_per_second), Some(20));

    cli(&server.url, &admin, &["tenant", "suspend", "acme"]).ok();
    wait(
        "the watcher sees the suspension",
        Some(RouteState::Suspended),
    )
    .await
    .unwrap_or_default();
    assert!(
        updates.load(Ordering::SeqCst) >= 2,
        "every published table is handed to on_update"
    );

    // The control plane goes away: the last good table keeps answering.
    let version = table.load().version();
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&table), Some(RouteState::Suspended));
    assert_eq!(table.load().version(), version);
    let _ = stop.send(());
    let _ = running.await;
}
