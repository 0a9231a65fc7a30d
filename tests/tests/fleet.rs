//! A real local fleet: control plane, agents and workloads as processes. Agents apply the
//! workload's migrations, run it at the deployed release, restart it when it crashes, roll back a
//! release that does not become healthy, and tenants are served by the workload of their cell.

use std::path::Path;
use std::time::Duration;

use cellfleet_e2e::{
    AgentProcess, Db, ServerProcess, TestDb, agent_token_file, cli, eventually, free_port,
    http_call, http_get, http_request, wait_converged, workspace_bin,
};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// `(release, errors)` the cell's agent last reported.
fn reported(url: &str, admin: &Path, cell: &str) -> (Option<String>, Vec<String>, bool) {
    let v = cli(url, admin, &["cell", "get", cell, "-o", "json"]).json();
    (
        v["release"].as_str().map(str::to_owned),
        v["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        v["observedGeneration"] == v["desiredGeneration"],
    )
}

/// One request to a cell as `tenant`: `(status, lower-cased head, body)`.
fn call_with_headers(
    endpoint: &str,
    method: &str,
    path: &str,
    tenant: &str,
    body: &str,
) -> (u16, String, String) {
    http_request(endpoint, method, path, &[("X-Tenant-Id", tenant)], body).unwrap_or_default()
}

fn version(endpoint: &str) -> Option<(String, u64)> {
    let (status, body) = http_get(endpoint, "/version", None).ok()?;
    let v = json(&body);
    (status == 200).then(|| {
        (
            v["release"].as_str().unwrap_or_default().to_owned(),
            v["pid"].as_u64().unwrap_or(0),
        )
    })
}

fn release(dir: &Path, version: &str, args: &str) -> String {
    let bin = workspace_bin("notes-workload");
    let path = dir.join(format!("release-{version}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"{version}\"}}\nspec:\n  artifact: {{command: \"{}\", args: {args}}}\n  migrations: {{upTo: 2}}\n",
            bin.display()
        ),
    )
    .unwrap_or_default();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_fleet_serves_tenants_and_survives_crashes_and_bad_releases() {
    let db = TestDb::new(Db::Sqlite).await;
    let dir = db.dir.path();
    let admin = dir.join("admin.token");
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
    let url = server.url.clone();
    let run = |args: &[&str]| cli(&url, &admin, args);

    let endpoints: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let fleet = format!(
        "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {{name: eu-west-1}}\nspec: {{jurisdiction: eu, location: {{lat: 53.35, lon: -6.26}}}}\n\
         ---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: cell-a}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, capacity: 1, endpoint: \"{}\"}}\n\
         ---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: cell-b}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, capacity: 1, endpoint: \"{}\"}}\n",
        endpoints[0], endpoints[1]
    );
    std::fs::write(dir.join("fleet.yaml"), fleet).unwrap_or_default();
    run(&[
        "apply",
        "-f",
        dir.join("fleet.yaml").to_str().unwrap_or_default(),
    ])
    .ok();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workload/migrations");
    run(&[
        "migration",
        "add",
        "-f",
        migrations.to_str().unwrap_or_default(),
    ])
    .ok();
    run(&["release", "create", "-f", &release(dir, "1.0.0", "[]")]).ok();
    run(&["release", "deploy", "1.0.0"]).ok();

    let mut agents = Vec::new();
    for cell in ["cell-a", "cell-b"] {
        let token_file = agent_token_file(&url, &admin, cell, dir);
        agents.push(AgentProcess::start(
            &url,
            &token_file,
            cell,
            &dir.join(cell),
        ));
    }
    for (cell, endpoint) in ["cell-a", "cell-b"].iter().zip(&endpoints) {
        eventually(
            Duration::from_secs(60),
            &format!("{cell} runs 1.0.0"),
            || {
                let (release, errors, converged) = reported(&url, &admin, cell);
                release.as_deref() == Some("1.0.0") && errors.is_empty() && converged
            },
        );
        assert_eq!(version(endpoint).map(|v| v.0).as_deref(), Some("1.0.0"));
    }

    // Two tenants, one per cell (capacity 1); each is served by its own cell's workload.
    let tenants: String = ["acme", "globex"]
        .iter()
        .map(|t| format!("---\napiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {t}}}\nspec: {{displayName: {t}, profile: mt-standard, residency: {{jurisdiction: eu}}}}\n"))
        .collect();
    std::fs::write(dir.join("tenants.yaml"), tenants).unwrap_or_default();
    run(&[
        "apply",
        "-f",
        dir.join("tenants.yaml").to_str().unwrap_or_default(),
    ])
    .ok();
    let cell_of = |tenant: &str| {
        run(&["tenant", "get", tenant, "-o", "json"]).json()["placements"][0]["cell"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let endpoint_of = |cell: &str| {
        if cell == "cell-a" {
            endpoints[0].clone()
        } else {
            endpoints[1].clone()
        }
    };
    let (acme_cell, globex_cell) = (cell_of("acme"), cell_of("globex"));
    assert_ne!(acme_cell, globex_cell);
    // A cell serves only what its agent handed it: wait for the new placements to arrive.
    wait_converged(&url, &admin, "cell-a");
    wait_converged(&url, &admin, "cell-b");
    let (status, _) = http_call(
        &endpoint_of(&acme_cell),
        "POST",
        "/v1/notes",
        &[("X-Tenant-Id", "acme")],
        r#"{"body":"hi"}"#,
    )
    .unwrap_or_default();
    assert_eq!(status, 201);
    let (_, notes) = http_call(
        &endpoint_of(&acme_cell),
        "GET",
        "/v1/notes",
        &[("X-Tenant-Id", "acme")],
        "",
    )
    .unwrap_or_default();
    assert_eq!(json(&notes).as_array().map(Vec::len), Some(1));
    // A cell refuses a tenant placed elsewhere, before touching data, in a way that is safe to
    // retry (421 Misdirected Request); and so for a tenant that is placed nowhere.
    for (tenant, method) in [("acme", "GET"), ("acme", "POST"), ("hooli", "POST")] {
        let (status, headers, _) = call_with_headers(
            &endpoint_of(&globex_cell),
            method,
            "/v1/notes",
            tenant,
            r#"{"body":"astray"}"#,
        );
        assert_eq!(status, 421, "{tenant} {method} at {globex_cell}");
        assert!(
            headers.contains("x-cellfleet-reason: not-placed-here")
                && headers.contains("retry-after: 1"),
            "{headers}"
        );
    }
    // A suspended tenant is refused by its own cell as soon as the cell knows.
    run(&["tenant", "suspend", "globex"]).ok();
    wait_converged(&url, &admin, &globex_cell);
    let (status, headers, _) = call_with_headers(
        &endpoint_of(&globex_cell),
        "POST",
        "/v1/notes",
        "globex",
        r#"{"body":"while suspended"}"#,
    );
    assert_eq!(status, 403, "{headers}");
    assert!(
        headers.contains("x-cellfleet-reason: suspended"),
        "{headers}"
    );
    run(&["tenant", "resume", "globex"]).ok();
    wait_converged(&url, &admin, &globex_cell);
    let (status, _, body) = call_with_headers(
        &endpoint_of(&globex_cell),
        "POST",
        "/v1/notes",
        "globex",
        r#"{"body":"back"}"#,
    );
    assert_eq!(status, 201, "{body}");

    // Rows of a tenant that is not placed on a cell (written behind the workload's back) are
    // reported as isolation drift; the refused requests above stored nothing.
    {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let cell_db = format!(
            "sqlite://{}",
            dir.join(&globex_cell).join("cell.db").display()
        );
        let mut conn = sqlx::AnyConnection::connect(&cell_db)
            .await
            .unwrap_or_else(|e| panic!("{cell_db}: {e}"));
        conn.execute(
            "INSERT INTO notes (id, tenant_id, body, created_at) VALUES (424242, 'ghost', 'x', 0)",
        )
        .await
        .unwrap_or_else(|e| panic!("insert: {e}"));
    }
    eventually(
        Duration::from_secs(60),
        "the ghost's rows are reported as drift",
        || {
            let v = run(&["cell", "get", &globex_cell, "-o", "json"]).json();
            v["strayRows"]["ghost"] == 1
                && v["strayRows"].get("acme").is_none()
                && v["tenantRows"]["globex"] == 1
                && v["isolationDrift"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|l| l.as_str().is_some_and(|l| l.contains("\"ghost\"")))
                })
        },
    );

    // The agent reports the traffic it scraped from the workload, per tenant.
    for _ in 0..5 {
        let _ = http_call(
            &endpoint_of(&acme_cell),
            "GET",
            "/v1/notes",
            &[("X-Tenant-Id", "acme")],
            "",
        );
    }
    eventually(
        Duration::from_secs(60),
        "row counts and health reach the control plane",
        || {
            let v = run(&["cell", "get", &acme_cell, "-o", "json"]).json();
            let h = &v["health"];
            v["tenantRows"]["acme"] == 1
                && h["requests"].as_u64().unwrap_or(0) >= 5
                && h["busiest"][0]["tenant"] == "acme"
                && h["latencyP99Ms"].as_f64().is_some()
        },
    );

    // The workload crashes: the agent starts it again.
    let (_, pid) = version(&endpoints[0]).unwrap_or_default();
    assert!(pid > 0);
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    eventually(
        Duration::from_secs(60),
        "cell-a's workload is restarted",
        || version(&endpoints[0]).is_some_and(|(r, p)| r == "1.0.0" && p != pid),
    );
    // …and the restart is on the record: count and how the last process ended.
    eventually(Duration::from_secs(60), "the restart is reported", || {
        let w = run(&["cell", "get", "cell-a", "-o", "json"]).json()["workload"].clone();
        w["state"] == "running"
            && w["restarts"].as_u64().unwrap_or(0) >= 1
            && w["lastExit"]["status"]
                .as_str()
                .is_some_and(|s| s.contains("signal: 9"))
    });

    // A release that never becomes healthy is rolled back, and the failure is reported.
    run(&[
        "release",
        "create",
        "-f",
        &release(dir, "1.1.0", "[\"--database-url\", \"nope://x\"]"),
    ])
    .ok();
    run(&["release", "deploy", "1.1.0", "--cell", "cell-a"]).ok();
    eventually(
        Duration::from_secs(60),
        "1.1.0 is rolled back on cell-a",
        || {
            let (release, errors, _) = reported(&url, &admin, "cell-a");
            release.as_deref() == Some("1.0.0")
                && errors.iter().any(|e| {
                    e.contains("release 1.1.0 exited") && e.contains("rolled back to 1.0.0")
                })
        },
    );
    assert_eq!(
        version(&endpoints[0]).map(|v| v.0).as_deref(),
        Some("1.0.0")
    );

    // A good release replaces it.
    run(&["release", "create", "-f", &release(dir, "1.2.0", "[]")]).ok();
    run(&["release", "deploy", "1.2.0", "--cell", "cell-a"]).ok();
    eventually(Duration::from_secs(60), "cell-a runs 1.2.0", || {
        let (release, errors, converged) = reported(&url, &admin, "cell-a");
        release.as_deref() == Some("1.2.0") && errors.is_empty() && converged
    });
    assert_eq!(
        version(&endpoints[0]).map(|v| v.0).as_deref(),
        Some("1.2.0")
    );
    let (_, notes) = http_call(
        &endpoint_of(&acme_cell),
        "GET",
        "/v1/notes",
        &[("X-Tenant-Id", "acme")],
        "",
    )
    .unwrap_or_default();
    assert_eq!(
        json(&notes).as_array().map(Vec::len),
        Some(1),
        "data survives releases"
    );
    drop(agents);
}
