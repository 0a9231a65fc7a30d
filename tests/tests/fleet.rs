//! A real local fleet: control plane, agents and workloads as processes. Agents apply the
//! workload's migrations, run it at the deployed release, restart it when it crashes, roll back a
//! release that does not become healthy, and tenants are served by the workload of their cell.

use std::path::Path;
use std::time::Duration;

use cellfleet_e2e::{
    AgentProcess, Db, ServerProcess, TestDb, agent_token_file, cli, eventually, free_port,
    http_call, http_get, workspace_bin,
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
    let (_, elsewhere) = http_call(
        &endpoint_of(&globex_cell),
        "GET",
        "/v1/notes",
        &[("X-Tenant-Id", "acme")],
        "",
    )
    .unwrap_or_default();
    assert_eq!(
        json(&elsewhere).as_array().map(Vec::len),
        Some(0),
        "acme's data lives only in its cell"
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
