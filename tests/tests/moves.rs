//! Tenant moves for real: a fleet of cells run by their agents, the example workload taking
//! writes through the shipped nginx configuration and `cellfleet-router` for the whole of each
//! move — pooled → pooled, pooled → dedicated, dedicated → pooled — and then the checks that
//! matter: every acknowledged write is at the destination exactly once, no client saw an error,
//! no two cells served the tenant at once, the source holds none of its rows after cleanup, and
//! the fleet invariants hold. A router cut off from the control plane is not waited for; a request
//! it still sends to the old cell is refused there and delivered once more, to the new one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cellfleet_e2e::{
    DualServeProbe, EnvoyProcess, FleetOptions, Forwarder, LocalFleet, NginxProcess, ServerProcess,
    Writer, assert_every_write_landed_once, eventually, free_port, http_get, http_request,
    nginx_edge, router_health, shipped_envoy_config, start_router, wait_no_rows, wait_router_live,
};

/// How many requests `endpoint`'s workload refused as not placed there, so far (421, or the 307
/// an edge that follows redirects asks for).
fn refused_not_here(endpoint: &str) -> u64 {
    let (_, text) = http_get(endpoint, "/metrics", None).unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("workload_requests_total")
                && (l.contains("status=\"421\"") || l.contains("status=\"307\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs one move to its end with the writer going; checks it finished with a measured pause and
/// that no two cells served the tenant meanwhile; waits until the source is empty.
async fn move_and_check(fleet: &LocalFleet, to: &str) -> serde_json::Value {
    let from = fleet.cell_of("acme").unwrap_or_default();
    let planned = fleet.run(&[
        "move",
        "start",
        "acme",
        "--to",
        to,
        "--dry-run",
        "-o",
        "json",
    ]);
    let target = planned.json()["plan"]["target"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let probe = DualServeProbe::start(
        &fleet.endpoint_of(&from),
        &fleet.endpoint_of(&target),
        "acme",
    );
    let id = fleet.start_move(&["acme", "--to", to, "--rollback-window", "2s"]);
    let done = fleet.wait_move(&id, "done", Duration::from_secs(120));
    let (rounds, both) = probe.finish();
    assert_eq!(
        done["phase"],
        "done",
        "move to {to}: {done}\n{}",
        fleet.agent_logs()
    );
    assert_eq!(done["target"], target.as_str());
    assert_eq!(fleet.cell_of("acme").as_deref(), Some(target.as_str()));
    let pause = done["cutovers"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["pauseMs"].as_u64());
    assert!(pause.is_some(), "the write pause is measured: {done}");
    assert!(rounds > 10, "the probe ran ({rounds} rounds)");
    assert_eq!(
        both, 0,
        "{from} and {target} both served acme in {both} of {rounds} probes"
    );
    wait_no_rows(fleet, &from, "acme").await;
    eprintln!(
        "moved acme {from} -> {target}: write pause {} ms, {rounds} probes",
        pause.unwrap_or_default()
    );
    done
}

/// Three moves of acme under writes through nginx — pooled → pooled, pooled → dedicated (the
/// free one), dedicated → pooled — with every check; returns the fleet and its edge.
async fn three_moves_under_writes(
    postgres_cells: bool,
) -> (LocalFleet, PathBuf, NginxProcess, ServerProcess) {
    let fleet = LocalFleet::start_opts(
        &[("cell-a", 5), ("cell-b", 5), ("ded-1", 1)],
        &FleetOptions {
            dedicated: &["ded-1"],
            serve_args: &["--router-gone-after", "3s"],
            postgres_cells,
        },
    )
    .await;
    fleet.apply_tenants(&[("acme", ""), ("globex", "")]);
    let token = fleet.edge_token_file();
    let (nginx, router) = nginx_edge(fleet.url(), &token, &fleet.dir().join("router-cache"));
    wait_router_live(&fleet, 1);
    let edge = nginx.url.clone();
    // A neighbour whose notes must not move.
    for _ in 0..5 {
        let (status, _, _) = http_request(
            &edge,
            "POST",
            "/v1/notes",
            &[("X-Tenant-Id", "globex")],
            "{\"body\": \"stay\"}",
        )
        .unwrap_or_default();
        assert_eq!(status, 201, "{}", nginx.error_log());
    }
    let globex_cell = fleet.cell_of("globex").unwrap_or_default();

    let writer = Writer::start(&edge, "acme");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = fleet.cell_of("acme").unwrap_or_default();
    let other = if start == "cell-a" {
        "cell-b"
    } else {
        "cell-a"
    };
    move_and_check(&fleet, other).await;
    let to_dedicated = move_and_check(&fleet, "dedicated").await;
    assert_eq!(to_dedicated["target"], "ded-1");
    move_and_check(&fleet, "pooled").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = writer.finish();
    eprintln!(
        "{} writes acknowledged, served by {:?}, slowest {:?}",
        written.acked.len(),
        written.served_by,
        written.slowest
    );

    let end = fleet.cell_of("acme").unwrap_or_default();
    let ids = fleet.cell_dbs[fleet.index_of(&end)].note_ids("acme").await;
    assert_every_write_landed_once(&written, &ids);
    assert!(
        written.served_by.len() >= 3,
        "the writes were served by every cell in turn: {:?}",
        written.served_by
    );
    // The emptied dedicated cell is marked for retirement, not deleted.
    let ded = fleet.run(&["cell", "get", "ded-1", "-o", "json"]).json();
    assert_eq!(ded["state"], "draining", "{ded}");
    assert!(ded["labels"]["cellfleet.io/retire"].is_string(), "{ded}");
    assert_eq!(
        fleet.cell_dbs[fleet.index_of(&globex_cell)]
            .note_ids("globex")
            .await
            .len(),
        5,
        "the neighbour's notes stay where they were"
    );
    (fleet, token, nginx, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_on_postgres_cells_with_rls_lose_no_write() {
    let (fleet, _, nginx, router) = three_moves_under_writes(true).await;
    drop((nginx, router));
    // The moves' machinery is the agent's: the workload's role cannot read captured changes
    // (other tenants' rows), nor see another tenant's rows under RLS.
    for db in &fleet.cell_dbs {
        let mut conn = db.connect_as(true).await;
        let read: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM cellfleet_changes")
            .fetch_one(&mut conn)
            .await;
        assert!(
            read.as_ref()
                .is_err_and(|e| e.to_string().contains("permission denied")),
            "the workload reads the capture log: {read:?}"
        );
    }
    let pooled = fleet.cell_of("acme").unwrap_or_default();
    let mut conn = fleet.cell_dbs[fleet.index_of(&pooled)]
        .connect_as(true)
        .await;
    let visible: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(-1);
    assert_eq!(visible, 0, "RLS: no tenant chosen, no row visible");
    fleet.check_invariants(&["acme", "globex"]).await;
}

/// A router cut off from the control plane (behind `forwarder`) is reported gone and not waited
/// for: acme moves to the other cell. Then a write sent through that router's edge (`edge`)
/// follows the stale route to the old cell, which refuses it before applying it; the edge asks
/// the router again, which holds the request until the forwarder lets the new route through, and
/// the write lands once, at the new cell.
async fn a_stale_route_is_delivered_once_more(
    fleet: &LocalFleet,
    forwarder: &Forwarder,
    edge: &str,
    edge_log: &dyn Fn() -> String,
) {
    forwarder.pause();
    eventually(
        Duration::from_secs(30),
        "the cut-off router is gone",
        || {
            let routers = fleet.run(&["router", "list", "-o", "json"]).json();
            routers
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["status"] == "gone"))
        },
    );
    let before = fleet.cell_of("acme").unwrap_or_default();
    let back = if before == "cell-a" {
        "cell-b"
    } else {
        "cell-a"
    };
    move_and_check(fleet, back).await;
    let refused_before = refused_not_here(&fleet.endpoint_of(&before));
    let edge = edge.to_owned();
    let late = std::thread::spawn(move || {
        http_request(
            &edge,
            "POST",
            "/v1/notes",
            &[("X-Tenant-Id", "acme")],
            "{\"body\": \"late\"}",
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    forwarder.resume();
    let (status, head, body) = late
        .join()
        .unwrap_or_else(|_| panic!("late writer"))
        .unwrap_or_default();
    assert_eq!(status, 201, "{head}{body}\n{}", edge_log());
    assert!(head.contains(&format!("x-served-by: {back}")), "{head}");
    assert!(
        refused_not_here(&fleet.endpoint_of(&before)) > refused_before,
        "the stale route reached {before} first (and was refused there)"
    );
    let id: i64 = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_i64())
        .unwrap_or_default();
    assert!(
        fleet.cell_dbs[fleet.index_of(back)]
            .note_ids("acme")
            .await
            .contains(&id),
        "the delivered write is at {back}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_through_nginx_lose_no_write_and_show_no_error() {
    let (fleet, token, nginx, router) = three_moves_under_writes(false).await;
    // A second edge whose router is cut off from the control plane: reported gone, not waited
    // for; afterwards its stale route sends a write to the old cell, which refuses it, and nginx
    // delivers it once more through the router — which holds it until it has the new route.
    let forwarder = Forwarder::start(fleet.url());
    let (nginx2, router2) = nginx_edge(&forwarder.url, &token, &fleet.dir().join("router2-cache"));
    wait_router_live(&fleet, 2);
    let before = fleet.cell_of("acme").unwrap_or_default();
    a_stale_route_is_delivered_once_more(&fleet, &forwarder, &nginx2.url, &|| nginx2.error_log())
        .await;

    // Cut off again, and this time still cut off when the refused write comes back to it: the
    // router holds it for its --hold, then nginx answers 503 + Retry-After (never a 401, nor a
    // write at the old cell).
    forwarder.pause();
    eventually(
        Duration::from_secs(30),
        "the cut-off router is gone again",
        || {
            let routers = fleet.run(&["router", "list", "-o", "json"]).json();
            routers
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["status"] == "gone"))
        },
    );
    move_and_check(&fleet, &before).await;
    let (status, head, _) = http_request(
        &nginx2.url,
        "POST",
        "/v1/notes",
        &[("X-Tenant-Id", "acme")],
        "{\"body\": \"too late\"}",
    )
    .unwrap_or_default();
    assert_eq!(status, 503, "{head}\n{}", nginx2.error_log());
    assert!(head.contains("x-cellfleet-reason: frozen"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    forwarder.resume();
    drop((nginx2, router2, nginx, router));
    fleet.check_invariants(&["acme", "globex"]).await;
}

/// Envoy with the shipped configuration in front of a router of its own (`--hold` given).
fn envoy_edge(
    fleet: &LocalFleet,
    control_plane: &str,
    token: &Path,
    cache: PathBuf,
    hold: &str,
) -> (EnvoyProcess, ServerProcess) {
    let router_addr = format!("127.0.0.1:{}", free_port());
    let router = start_router(
        control_plane,
        token,
        &cache,
        &router_addr,
        &["--hold", hold],
    );
    eventually(Duration::from_secs(30), "the router syncs", || {
        router_health(&router.url)["status"] == "ok"
    });
    let envoy = EnvoyProcess::start(&shipped_envoy_config(&router.url, &fleet.cells));
    (envoy, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_through_envoy_deliver_held_and_refused_requests() {
    let fleet = LocalFleet::start_opts(
        &[("cell-a", 5), ("cell-b", 5)],
        &FleetOptions {
            // The ack timeout outlasts the first router's 2 s hold with room to spare: the held
            // request below must get its 503 before the attempt is lifted (with both at 2 s a
            // loaded machine noticed the freeze late, the lift came first and the held request
            // was served on the unfrozen table).
            serve_args: &["--router-gone-after", "6s", "--router-ack-timeout", "4s"],
            ..FleetOptions::default()
        },
    )
    .await;
    fleet.apply_tenants(&[("acme", "")]);
    let token = fleet.edge_token_file();
    let (envoy, router) = envoy_edge(&fleet, fleet.url(), &token, fleet.dir().join("r1"), "2s");
    wait_router_live(&fleet, 1);
    let edge = envoy.url.clone();

    // A move under writes through Envoy: no error, every write once.
    let writer = Writer::start(&edge, "acme");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = fleet.cell_of("acme").unwrap_or_default();
    let other = if start == "cell-a" {
        "cell-b"
    } else {
        "cell-a"
    };
    move_and_check(&fleet, other).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = writer.finish();
    let ids = fleet.cell_dbs[fleet.index_of(other)].note_ids("acme").await;
    assert_every_write_landed_once(&written, &ids);
    eprintln!(
        "{} writes through Envoy, served by {:?}",
        written.acked.len(),
        written.served_by
    );

    // A router cut off from the control plane: gone, not waited for. Its stale route then sends
    // a write to the old cell, which answers Envoy with a redirect; Envoy asks the router again
    // (which holds the request until it has the new route) and the write lands at the new cell.
    let forwarder = Forwarder::start(fleet.url());
    let (envoy2, router2) =
        envoy_edge(&fleet, &forwarder.url, &token, fleet.dir().join("r2"), "5s");
    wait_router_live(&fleet, 2);
    a_stale_route_is_delivered_once_more(&fleet, &forwarder, &envoy2.url, &|| envoy2.log()).await;

    // A live router that stops answering holds a cut-over up to --router-ack-timeout; meanwhile
    // the first router holds the tenant's requests up to its --hold (2 s, within Envoy's 6 s
    // ext_authz timeout), then answers 503 frozen + Retry-After itself — not Envoy's own error.
    // The attempt is lifted (the route stays put) and the next one, with the router back, works.
    wait_router_live(&fleet, 2);
    forwarder.pause();
    let id = fleet.start_move(&["acme", "--to", other, "--rollback-window", "2s"]);
    eventually(
        Duration::from_secs(30),
        "the cut-over waits for the router",
        || fleet.move_status(&id)["phase"] == "freezing",
    );
    let started = std::time::Instant::now();
    let (status, head, _) =
        http_request(&edge, "GET", "/v1/notes/1", &[("X-Tenant-Id", "acme")], "")
            .unwrap_or_default();
    let held = started.elapsed();
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("x-cellfleet-reason: frozen"), "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(
        held >= Duration::from_millis(1500),
        "held for the router's --hold: {held:?}"
    );
    eventually(Duration::from_secs(30), "the attempt is lifted", || {
        let m = fleet.move_status(&id);
        m["cutovers"][0]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("did not acknowledge"))
    });
    assert_eq!(
        fleet.cell_of("acme").as_deref(),
        Some(start.as_str()),
        "the route stayed put"
    );
    forwarder.resume();
    let done = fleet.wait_move(&id, "done", Duration::from_secs(120));
    assert_eq!(done["phase"], "done", "{done}");
    assert!(
        done["cutovers"].as_array().map_or(0, Vec::len) >= 2,
        "{done}"
    );
    wait_no_rows(&fleet, &start, "acme").await;
    drop((envoy2, router2, envoy, router));
    fleet.check_invariants(&["acme"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_abort_and_a_failed_verification_leave_the_tenant_whole() {
    let fleet = LocalFleet::start(&[("cell-a", 5), ("cell-b", 5)]).await;
    fleet.apply_tenants(&[("acme", "")]);
    let token = fleet.edge_token_file();
    let (nginx, router) = nginx_edge(fleet.url(), &token, &fleet.dir().join("router-cache"));
    wait_router_live(&fleet, 1);
    let home = fleet.cell_of("acme").unwrap_or_default();
    let away = if home == "cell-a" { "cell-b" } else { "cell-a" };
    let (home_db, away_db) = (
        &fleet.cell_dbs[fleet.index_of(&home)],
        &fleet.cell_dbs[fleet.index_of(away)],
    );

    // Rollback within the window: every write made at the target comes back to the source.
    let writer = Writer::start(&nginx.url, "acme");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = fleet.start_move(&["acme", "--to", away, "--rollback-window", "10m"]);
    let window = fleet.wait_move(&id, "rollback-window", Duration::from_secs(60));
    assert_eq!(window["phase"], "rollback-window", "{window}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rollback = fleet.run(&["move", "rollback", &id]);
    assert_eq!(rollback.code, 0, "{}", rollback.stderr);
    let back = fleet.wait_move(&id, "rolled-back", Duration::from_secs(60));
    assert_eq!(
        back["phase"],
        "rolled-back",
        "{back}\n{}",
        fleet.agent_logs()
    );
    assert_eq!(fleet.cell_of("acme").as_deref(), Some(home.as_str()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = writer.finish();
    if !written.failed.is_empty() {
        eprintln!("NGINX LOG: {}", nginx.error_log());
    }
    assert!(
        written.served_by.iter().any(|c| c == away),
        "writes were made at the target during the window: {:?}",
        written.served_by
    );
    assert_every_write_landed_once(&written, &home_db.note_ids("acme").await);
    wait_no_rows(&fleet, away, "acme").await;
    // Over: neither rolled back again nor aborted.
    for cmd in ["rollback", "abort"] {
        let again = fleet.run(&["move", cmd, &id]);
        assert_ne!(again.code, 0, "{cmd} of a finished move");
        assert!(again.stderr.contains("rolled-back"), "{}", again.stderr);
    }

    // Abort during the bulk copy: the target drops its partial copy, the source keeps everything.
    home_db.seed_notes("acme", 60_000, 1_000_000_000).await;
    let before = home_db.note_ids("acme").await;
    let id = fleet.start_move(&["acme", "--to", away]);
    eventually(Duration::from_secs(60), "the copy is under way", || {
        let m = fleet.move_status(&id);
        m["phase"] == "copying" && m["progress"]["rowsCopied"].as_u64().unwrap_or(0) > 0
    });
    let abort = fleet.run(&["move", "abort", &id, "--reason", "changed my mind"]);
    assert_eq!(abort.code, 0, "{}", abort.stderr);
    let aborted = fleet.wait_move(&id, "aborted", Duration::from_secs(60));
    eprintln!(
        "aborted after {} rows: {}",
        aborted["progress"]["rowsCopied"], aborted["note"]
    );
    assert_eq!(aborted["phase"], "aborted", "{aborted}");
    assert!(
        aborted["note"]
            .as_str()
            .is_some_and(|n| n.contains("changed my mind")),
        "{aborted}"
    );
    assert_eq!(fleet.cell_of("acme").as_deref(), Some(home.as_str()));
    assert_eq!(
        home_db.note_ids("acme").await,
        before,
        "the source is as it was"
    );
    wait_no_rows(&fleet, away, "acme").await;

    // A row changed behind the move's back (at the target, past its guard) fails the checksum
    // round: the route stays on the source and the move says which table differs.
    let id = fleet.start_move(&["acme", "--to", away]);
    let first = 1_000_000_001;
    eventually(Duration::from_secs(60), "the first rows are copied", || {
        futures_lite_block(away_db.note_ids("acme")).contains(&first)
    });
    assert!(away_db.tamper_note(first).await, "tampered with the copy");
    let failed = fleet.wait_move(&id, "failed", Duration::from_secs(120));
    assert_eq!(failed["phase"], "failed", "{failed}");
    let note = failed["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("verification failed") && note.contains("notes"),
        "{note}"
    );
    eprintln!("failed as it should: {note}");
    assert_eq!(fleet.cell_of("acme").as_deref(), Some(home.as_str()));
    wait_no_rows(&fleet, away, "acme").await;
    assert_eq!(home_db.note_ids("acme").await, before);
    drop((nginx, router));
    fleet.check_invariants(&["acme"]).await;
}

/// Runs a future to completion from synchronous code inside a multi-thread runtime.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
