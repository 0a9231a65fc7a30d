//! End to end: the real `cellfleet` binary as the server (`serve`, `up`) and as the operator CLI,
//! on SQLite and PostgreSQL.

// A panic in a test or benchmark is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use std::time::Duration;

use cellfleet_e2e::{Db, ServerProcess, TestDb, cli, cli_with, eventually, http_call, http_get};
use sqlx::Executor;

const FLEET: &str = r#"
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: eu-west-1}
spec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: euw1-pool-1, labels: {canary: "true"}}
spec: {region: eu-west-1, kind: pooled, env: prod, capacity: 50, endpoint: "http://127.0.0.1:9101"}
"#;

const TENANTS: &str = r#"
apiVersion: cellfleet.io/v1
kind: Tenant
metadata: {name: acme}
spec:
  displayName: Acme Corp
  profile: mt-standard
  residency: {allowedRegions: [eu-west-1], preferredRegion: eu-west-1}
  quotas: {requestsPerSecond: 200}
"#;

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// The whole operator workflow of the foundation issue through the binary.
async fn operator_workflow(db: Db) {
    let test_db = TestDb::new(db).await;
    let token_file = test_db.dir.path().join("admin.token");
    let server = ServerProcess::start(
        &[
            "serve",
            "--database-url",
            &test_db.url,
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        "listening on",
    );
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("bootstrap admin token written to")),
        "{:?}",
        server.banner
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let run = |args: &[&str]| cli(&server.url, &token_file, args);

    // apply a directory: created, then unchanged.
    let manifests = tempfile::tempdir().unwrap();
    write(manifests.path(), "10-fleet.yaml", FLEET);
    write(manifests.path(), "20-tenants.yaml", TENANTS);
    let dir = manifests.path().to_str().unwrap();
    let out = run(&["apply", "-f", dir]);
    let text = out.ok();
    assert!(text.contains("Region eu-west-1 created"), "{text}");
    assert!(text.contains("Cell euw1-pool-1 created"), "{text}");
    assert!(
        text.contains("tenant acme (prod) placed on euw1-pool-1 (generation 1)"),
        "{text}"
    );
    let again = run(&["apply", "-f", dir]);
    assert_eq!(
        again.ok().lines().collect::<Vec<_>>(),
        [
            "Region eu-west-1 unchanged",
            "Cell euw1-pool-1 unchanged",
            "Tenant acme unchanged"
        ]
    );

    // --dry-run prints the diff and changes nothing.
    let changed = write(
        manifests.path(),
        "changed.yaml",
        &TENANTS.replace("requestsPerSecond: 200", "requestsPerSecond: 300"),
    );
    let dry = run(&["apply", "-f", &changed, "--dry-run"]);
    let text = dry.ok();
    assert!(text.contains("Tenant acme would be configured"), "{text}");
    assert!(
        text.contains("spec.quotas.requestsPerSecond: 200 -> 300"),
        "{text}"
    );
    assert!(text.contains("dry run: nothing was changed"), "{text}");
    let acme = run(&["tenant", "get", "acme", "-o", "json"]).json();
    assert_eq!(acme["spec"]["quotas"]["requestsPerSecond"], 200);

    // A bad document: a one-line reason naming file, document and field; exit non-zero.
    let bad = write(
        manifests.path(),
        "bad.yaml",
        &format!("{FLEET}---\n{}", TENANTS.replace("mt-standard", "platinum")),
    );
    let out = run(&["apply", "-f", &bad]);
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{bad}: document 3: spec.profile: unknown variant `platinum`"
        )),
        "{}",
        out.stderr
    );

    // Tenant commands.
    let created = run(&[
        "tenant",
        "create",
        "globex",
        "--display-name",
        "Globex",
        "--allowed-regions",
        "eu-west-1",
        "--flag",
        "beta=true",
        "-o",
        "json",
    ]);
    let v = created.json();
    assert_eq!(v["state"], "active");
    assert_eq!(v["spec"]["flags"]["beta"], true);
    assert_eq!(v["placements"][0]["cell"], "euw1-pool-1");
    let list = run(&["tenant", "list", "-o", "json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let table = run(&["tenant", "list"]);
    assert!(
        table.ok().lines().next().unwrap().contains("ID"),
        "{}",
        table.stdout
    );
    let explain = run(&["tenant", "explain", "acme"]);
    assert!(
        explain
            .ok()
            .contains("acme/prod is on euw1-pool-1 in eu-west-1 (its preferred region"),
        "{}",
        explain.stdout
    );
    let ctx = run(&["tenant", "context", "acme", "--env", "prod", "-o", "json"]).json();
    assert_eq!(ctx["isolation"]["database"]["rowScope"], "acme");
    assert_eq!(ctx["quotas"]["requestsPerSecond"], 200);
    run(&["tenant", "suspend", "acme", "--reason", "unpaid invoice"]).ok();
    let out = run(&["tenant", "suspend", "acme"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("cannot suspend a tenant that is suspended (only from active)"),
        "{}",
        out.stderr
    );
    run(&["tenant", "resume", "acme"]).ok();
    run(&["tenant", "archive", "acme"]).ok();
    let out = run(&["tenant", "delete", "acme"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("cannot delete before the archive retention has passed"),
        "{}",
        out.stderr
    );

    // Tokens: shown once as JSON; a viewer may read but not change; a revoked token is dead.
    let token = run(&["token", "create", "--role", "viewer", "-o", "json"]).json();
    assert_eq!(token["role"], "viewer");
    let secret = token["token"].as_str().unwrap().to_owned();
    let as_viewer = |args: &[&str]| cli_with(&server.url, &[("CELLFLEET_TOKEN", &secret)], args);
    as_viewer(&["cell", "list"]).ok();
    let out = as_viewer(&["tenant", "suspend", "globex"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("role viewer may not change tenants (forbidden, HTTP 403)"),
        "{}",
        out.stderr
    );
    let listed = run(&["token", "list", "-o", "json"]).json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("token").is_none()),
        "secrets are never listed"
    );
    run(&["token", "revoke", token["id"].as_str().unwrap()]).ok();
    let out = as_viewer(&["cell", "list"]);
    assert!(
        out.stderr.contains("missing or invalid bearer token"),
        "{}",
        out.stderr
    );
    let out = cli_with(&server.url, &[], &["cell", "list"]);
    assert!(out.stderr.contains("no API token"), "{}", out.stderr);
    // The scheme of `Authorization` is case-insensitive (RFC 9110 §11.1).
    let admin_secret = std::fs::read_to_string(&token_file).unwrap();
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {}", admin_secret.trim());
        let (status, _) = http_call(
            &server.url,
            "GET",
            "/v1/cells",
            &[("Authorization", &auth)],
            "",
        )
        .unwrap();
        assert_eq!(status, 200, "{scheme}");
    }

    // A long-poll whose token is revoked while it waits answers 401, not the changes.
    let edge = run(&["token", "create", "--role", "edge", "-o", "json"]).json();
    let edge_secret = edge["token"].as_str().unwrap().to_owned();
    let version = run(&["tenant", "get", "globex", "-o", "json"]); // (any read: the server is up)
    version.ok();
    let (_, snapshot) = http_get(&server.url, "/v1/routes", Some(&edge_secret)).unwrap();
    let since = serde_json::from_str::<serde_json::Value>(&snapshot).unwrap()["version"]
        .as_i64()
        .unwrap();
    let watching = {
        let url = server.url.clone();
        let secret = edge_secret.clone();
        std::thread::spawn(move || {
            http_get(
                &url,
                &format!("/v1/routes/watch?since={since}&timeout=30s"),
                Some(&secret),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    run(&["token", "revoke", edge["id"].as_str().unwrap()]).ok();
    run(&["tenant", "suspend", "globex"]).ok();
    let (status, body) = watching.join().unwrap().unwrap();
    assert_eq!(status, 401, "a revoked watcher gets nothing: {body}");
    run(&["tenant", "resume", "globex"]).ok();

    // A tenant spec accepted with a doubt says so on stderr (Warning headers).
    let out = run(&[
        "tenant",
        "create",
        "faraway",
        "--display-name",
        "Far",
        "--jurisdiction",
        "eu",
        "--preferred-region",
        "eu-west-1",
    ]);
    out.ok();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let out = run(&[
        "tenant",
        "create",
        "odd",
        "--display-name",
        "Odd",
        "--allowed-regions",
        "eu-west-1,us-east-9",
    ]);
    assert_ne!(out.code, 0, "an unknown region is an error");
    assert!(
        out.stderr.contains("unknown region us-east-9"),
        "{}",
        out.stderr
    );
    let us = write(
        manifests.path(),
        "us.yaml",
        "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {name: us-east-1}\nspec: {jurisdiction: us, location: {lat: 38.9, lon: -77.04}}\n",
    );
    run(&["apply", "-f", &us]).ok();
    let out = run(&[
        "tenant",
        "create",
        "odd",
        "--display-name",
        "Odd",
        "--allowed-regions",
        "eu-west-1",
        "--preferred-region",
        "us-east-1",
    ]);
    out.ok();
    assert!(
        out.stderr.contains(
            "warning: spec.residency.preferredRegion: us-east-1 is not allowed by the residency rule"
        ),
        "{}",
        out.stderr
    );

    // Output into a pipe that closes early: no panic, a quiet exit.
    {
        use std::process::{Command, Stdio};
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(cellfleet_e2e::cellfleet_bin())
            .args(["audit", "list", "-o", "json"])
            .env("CELLFLEET_SERVER", &server.url)
            .env("CELLFLEET_TOKEN_FILE", &token_file)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // Audit: listed per target, verified, and tampering is caught with a non-zero exit.
    let audit = run(&["audit", "list", "--target", "tenant/acme", "-o", "json"]).json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.created",
            "placement.create",
            "tenant.activate",
            "tenant.suspend",
            "tenant.resume",
            "tenant.archive"
        ]
    );
    let ok = run(&["audit", "verify"]);
    assert!(ok.ok().starts_with("audit log intact:"), "{}", ok.stdout);
    let mut raw = test_db.raw().await;
    raw.execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = 4")
        .await
        .unwrap();
    let tampered = run(&["audit", "verify"]);
    assert_eq!(tampered.code, 1);
    assert!(
        tampered
            .stdout
            .contains("audit log TAMPERED at record 4: record 4 was edited"),
        "{}",
        tampered.stdout
    );

    // Metrics and the API description are served to readers.
    let admin = std::fs::read_to_string(&token_file).unwrap();
    let (status, body) = http_get(&server.url, "/openapi.json", Some(admin.trim())).unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(doc["paths"]["/v1/tenants/{id}/context"].is_object());
    let (status, body) = http_get(&server.url, "/metrics", Some(admin.trim())).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("cellfleet_tenants{state=\"archived\"} 1"),
        "{body}"
    );
    assert_eq!(http_get(&server.url, "/metrics", None).unwrap().0, 401);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_on_sqlite() {
    operator_workflow(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_on_postgres() {
    operator_workflow(Db::Postgres).await;
}

/// `cellfleet up` registers the sample fleet, serves it, and resumes it on the next start.
#[test]
fn up_brings_up_the_sample_fleet_and_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let fleet_dir = dir.path().join("fleet");
    let args = ["up", "--dir", fleet_dir.to_str().unwrap()];
    let server = ServerProcess::start(&args, "Ctrl-C stops it");
    let banner = server.banner.join("\n");
    assert!(
        banner.contains("cellfleet is up at http://127.0.0.1:"),
        "{banner}"
    );
    assert!(
        banner.contains("15 objects (15 new or changed), 5 placements made now"),
        "{banner}"
    );
    // The banner comes once every cell serves: nothing to wait for after it.
    assert!(banner.contains("7 cells serving locally"), "{banner}");
    let token_file = fleet_dir.join("admin.token");
    let tenants = cli(&server.url, &token_file, &["tenant", "list", "-o", "json"]).json();
    let states: Vec<(String, String)> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states.len(), 5);
    assert!(states.contains(&("hooli".into(), "draft".into())));
    assert!(states.contains(&("initech".into(), "active".into())));
    let cells = cli(&server.url, &token_file, &["cell", "list", "-o", "json"]).json();
    let ded = cells
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "euw1-ded-1")
        .unwrap();
    assert_eq!(ded["load"], 1, "initech got the dedicated cell");

    // Every cell runs locally: its agent applied the migrations and runs release 1.0.0.
    let fleet_converged = |url: &str| {
        let cells = cli(url, &token_file, &["cell", "list", "-o", "json"]).json();
        let cells = cells.as_array().cloned().unwrap_or_default();
        cells.len() == 7
            && cells.iter().all(|c| {
                c["release"] == "1.0.0"
                    && c["migrationVersion"] == 2
                    && c["observedGeneration"] == c["desiredGeneration"]
                    && c["errors"].as_array().is_some_and(Vec::is_empty)
            })
    };
    eventually(
        Duration::from_secs(120),
        "the local fleet converges",
        || fleet_converged(&server.url),
    );
    // A request for a sample tenant is served by the workload of its cell.
    let acme_cell = cli(
        &server.url,
        &token_file,
        &["tenant", "get", "acme", "-o", "json"],
    )
    .json()["placements"][0]["cell"]
        .as_str()
        .unwrap()
        .to_owned();
    let endpoint = cells
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == acme_cell.as_str())
        .unwrap()["endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        banner.contains(&format!("{endpoint}/v1/notes")),
        "the banner shows how to reach acme: {banner}"
    );
    let (status, _) = http_call(
        &endpoint,
        "POST",
        "/v1/notes",
        &[("X-Tenant-Id", "acme")],
        r#"{"body":"hello"}"#,
    )
    .unwrap();
    assert_eq!(status, 201);

    // The examples folder applies as a whole (fleet and release): nothing new for this fleet.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet");
    let applied = cli(
        &server.url,
        &token_file,
        &["apply", "-f", examples.to_str().unwrap(), "--dry-run"],
    );
    assert!(
        applied.ok().contains("Release 1.0.0 unchanged"),
        "{}",
        applied.stdout
    );

    // A second fleet on the same machine takes other ports and serves too.
    let other_dir = dir.path().join("other");
    let other = ServerProcess::start(
        &["up", "--dir", other_dir.to_str().unwrap()],
        "Ctrl-C stops it",
    );
    let other_token = other_dir.join("admin.token");
    let other_cells = cli(&other.url, &other_token, &["cell", "list", "-o", "json"]).json();
    let ours: Vec<&serde_json::Value> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["endpoint"])
        .collect();
    for c in other_cells.as_array().unwrap() {
        assert!(!ours.contains(&&c["endpoint"]), "{} shared", c["endpoint"]);
    }
    other.stop();

    // A cell whose port another process holds: `up` does not claim success.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = squatter.local_addr().unwrap().port() - 1;
    let squatted_dir = dir.path().join("squatted");
    let out = std::process::Command::new(cellfleet_e2e::cellfleet_bin())
        .args(["up", "--dir", squatted_dir.to_str().unwrap()])
        .args(["--port-base", &base.to_string(), "--ready-timeout", "20s"])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", cellfleet_e2e::free_port()),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("cellfleet is up"), "{stdout}");
    assert!(
        stderr.contains("the local fleet is not serving")
            && stderr.contains(&format!("euw1-canary-1 (http://127.0.0.1:{})", base + 1))
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    drop(squatter);

    server.stop();
    assert!(
        http_get(&endpoint, "/healthz", None).is_err(),
        "stopping up stops the fleet"
    );

    // Again on the same folder: the same registry, nothing new.
    let server = ServerProcess::start(&args, "Ctrl-C stops it");
    let banner = server.banner.join("\n");
    assert!(
        banner.contains("15 objects (0 new or changed), 0 placements made now"),
        "{banner}"
    );
    let again = cli(&server.url, &token_file, &["tenant", "list", "-o", "json"]).json();
    assert_eq!(again, tenants);
    eventually(
        Duration::from_secs(120),
        "the resumed fleet converges",
        || fleet_converged(&server.url),
    );
    // The registry still shows the last reports of the stopped agents: wait for the workload
    // itself to serve again.
    let mut notes = serde_json::Value::Null;
    eventually(
        Duration::from_secs(120),
        "acme's cell serves again after the resume",
        || match http_call(
            &endpoint,
            "GET",
            "/v1/notes",
            &[("X-Tenant-Id", "acme")],
            "",
        ) {
            Ok((200, body)) => {
                notes = serde_json::from_str(&body).unwrap_or_default();
                true
            }
            _ => false,
        },
    );
    assert_eq!(
        notes.as_array().map(Vec::len),
        Some(1),
        "acme's data survived the restart"
    );
    let verify = cli(&server.url, &token_file, &["audit", "verify"]);
    assert!(
        verify.ok().starts_with("audit log intact"),
        "{}",
        verify.stdout
    );
}

#[test]
fn bad_server_arguments_fail_with_one_line() {
    let out = cli_with(
        "http://127.0.0.1:1",
        &[],
        &[
            "serve",
            "--database-url",
            "mysql://x",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("unsupported database URL"),
        "{}",
        out.stderr
    );
    let out = cli_with(
        "http://127.0.0.1:1",
        &[("CELLFLEET_TOKEN", "x")],
        &["region", "list"],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("cannot reach the control plane at http://127.0.0.1:1"),
        "{}",
        out.stderr
    );
    // The bootstrap token never overwrites an existing file (it may hold a secret still needed).
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("admin.token");
    std::fs::write(&precious, "cft_still_needed\n").unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let out = cli_with(
        "http://127.0.0.1:1",
        &[],
        &[
            "serve",
            "--database-url",
            &db,
            "--admin-token-file",
            precious.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("already exists: not overwriting it"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "cft_still_needed\n"
    );
}
