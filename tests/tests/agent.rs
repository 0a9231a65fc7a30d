//! End to end: real `cell-agent` processes against a real control plane converge on their cell's
//! desired state, survive being killed, refuse a stale push, and see only their own cell.

use std::time::Duration;

use cellfleet_e2e::{AgentProcess, Db, ServerProcess, TestDb, cli, eventually};

const FLEET: &str = r#"
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: eu-west-1}
spec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: cell-a}
spec: {region: eu-west-1, kind: pooled, env: prod, capacity: 1}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: cell-b}
spec: {region: eu-west-1, kind: pooled, env: prod, capacity: 1}
"#;

fn tenant(name: &str) -> String {
    format!(
        "apiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec: {{displayName: {name}, profile: mt-standard, residency: {{jurisdiction: eu}}}}\n"
    )
}

/// `(desiredGeneration, observedGeneration, errors)` of a cell, through the CLI.
fn generations(
    server: &str,
    token_file: &std::path::Path,
    cell: &str,
) -> (i64, Option<i64>, Vec<String>) {
    let v = cli(server, token_file, &["cell", "get", cell, "-o", "json"]).json();
    (
        v["desiredGeneration"].as_i64().unwrap_or(-1),
        v["observedGeneration"].as_i64(),
        v["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn converged(server: &str, token_file: &std::path::Path, cell: &str) -> bool {
    let (desired, observed, errors) = generations(server, token_file, cell);
    observed == Some(desired) && errors.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_converge_survive_restarts_and_refuse_stale_state() {
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
    let url = server.url.clone();
    let manifests = db.dir.path().join("fleet.yaml");
    std::fs::write(&manifests, FLEET).unwrap_or_default();
    cli(
        &url,
        &admin,
        &["apply", "-f", manifests.to_str().unwrap_or_default()],
    )
    .ok();

    let mut agents = Vec::new();
    let mut data_dirs = Vec::new();
    for cell in ["cell-a", "cell-b"] {
        let token = cli(
            &url,
            &admin,
            &[
                "token", "create", "--role", "agent", "--cell", cell, "-o", "json",
            ],
        )
        .json();
        let token_file = db.dir.path().join(format!("{cell}.token"));
        std::fs::write(&token_file, token["token"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let data_dir = db.dir.path().join(cell);
        agents.push((
            cell,
            token_file.clone(),
            AgentProcess::start(&url, &token_file, cell, &data_dir),
        ));
        data_dirs.push(data_dir);
    }
    for cell in ["cell-a", "cell-b"] {
        eventually(
            Duration::from_secs(30),
            &format!("{cell} converges"),
            || converged(&url, &admin, cell),
        );
    }

    // Two tenants: one lands on each cell (capacity 1); both agents follow.
    let t = db.dir.path().join("tenants.yaml");
    std::fs::write(&t, format!("{}---\n{}", tenant("acme"), tenant("globex"))).unwrap_or_default();
    cli(
        &url,
        &admin,
        &["apply", "-f", t.to_str().unwrap_or_default()],
    )
    .ok();
    for cell in ["cell-a", "cell-b"] {
        let (desired, _, _) = generations(&url, &admin, cell);
        assert_eq!(desired, 2, "{cell} got its tenant");
        eventually(Duration::from_secs(30), &format!("{cell} follows"), || {
            converged(&url, &admin, cell)
        });
    }
    let ledger: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data_dirs[0].join("ledger.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    assert_eq!(ledger["generation"], 2);
    assert_eq!(ledger["state"]["tenants"].as_array().map(Vec::len), Some(1));

    // The migration stream reaches both cell databases.
    let migrations = db.dir.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap_or_default();
    std::fs::write(
        migrations.join("V1__notes.expand.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, body TEXT NOT NULL);",
    )
    .unwrap_or_default();
    std::fs::write(
        migrations.join("V2__notes_index.expand.sql"),
        "CREATE INDEX notes_tenant ON notes (tenant_id);",
    )
    .unwrap_or_default();
    let added = cli(
        &url,
        &admin,
        &[
            "migration",
            "add",
            "-f",
            migrations.to_str().unwrap_or_default(),
        ],
    );
    assert!(
        added.ok().contains("migration V2 (notes_index) created"),
        "{}",
        added.stdout
    );
    for cell in ["cell-a", "cell-b"] {
        eventually(
            Duration::from_secs(30),
            &format!("{cell} has the migrations"),
            || {
                let v = cli(&url, &admin, &["cell", "get", cell, "-o", "json"]).json();
                v["migrationVersion"] == 2 && v["observedGeneration"] == v["desiredGeneration"]
            },
        );
    }
    assert!(data_dirs[1].join("cell.db").exists());

    // Tampering with an applied migration in cell-b's database stops its reconcile, reported.
    {
        let mut conn = {
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            sqlx::AnyConnection::connect(&format!(
                "sqlite://{}",
                data_dirs[1].join("cell.db").display()
            ))
            .await
            .unwrap_or_else(|e| panic!("cell database: {e}"))
        };
        use sqlx::Executor;
        conn.execute("UPDATE cellfleet_migrations SET checksum = 'edited' WHERE version = 1")
            .await
            .unwrap_or_else(|e| panic!("tamper: {e}"));
    }
    eventually(
        Duration::from_secs(30),
        "cell-b reports the checksum mismatch",
        || {
            let (_, _, errors) = generations(&url, &admin, "cell-b");
            errors.iter().any(|e| {
                e.starts_with("migration V1 (notes): the cell database recorded checksum edited")
            })
        },
    );

    // Kill cell-a's agent, change its cell while it is down, start it again: it resumes from its
    // ledger and catches up.
    let (cell, token_file, agent) = agents.remove(0);
    agent.kill();
    let placed_on_a = ledger["state"]["tenants"][0]["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    cli(&url, &admin, &["tenant", "suspend", &placed_on_a]).ok();
    let (desired, observed, _) = generations(&url, &admin, cell);
    assert_eq!(
        (desired, observed),
        (4, Some(3)),
        "the change is pending while the agent is down"
    );
    let restarted = AgentProcess::start(&url, &token_file, cell, &data_dirs[0]);
    eventually(
        Duration::from_secs(30),
        "the restarted agent catches up",
        || converged(&url, &admin, cell),
    );
    restarted.kill();

    // A ledger ahead of the control plane (as after a restore of an old registry backup): the
    // agent refuses to go back and says so in its report.
    let path = data_dirs[0].join("ledger.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .replace("\"generation\": 4", "\"generation\": 99");
    std::fs::write(&path, text).unwrap_or_default();
    let _stale = AgentProcess::start(&url, &token_file, cell, &data_dirs[0]);
    eventually(
        Duration::from_secs(30),
        "the stale push is refused and reported",
        || {
            let (_, observed, errors) = generations(&url, &admin, cell);
            observed == Some(99)
                && errors.iter().any(|e| {
                    e.contains(
                        "desired generation 4 is older than the ledger's 99: refusing to go back",
                    )
                })
                && errors.iter().any(|e| e.contains("ahead of the desired 4"))
        },
    );

    // An agent the control plane refuses from the start (the token of another cell, or no
    // valid token at all) stops with the cause instead of retrying forever.
    for (token, cell) in [(token_file.clone(), "cell-b"), (admin.clone(), "cell-a")] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = std::process::Command::new(cellfleet_e2e::cell_agent_bin())
            .args(["--control-plane", &url, "--cell", cell, "--poll", "1s"])
            .arg("--token-file")
            .arg(&token)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("the control plane refuses this agent")
                && stderr.contains(&format!("check the agent token and --cell {cell}")),
            "{stderr}"
        );
    }
}
