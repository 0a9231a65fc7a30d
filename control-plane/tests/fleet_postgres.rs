//! A local fleet on PostgreSQL end to end: the control plane's registry and every cell database
//! on the real server, cells provisioned by the `local` provider (a database per cell, and an
//! application role without BYPASSRLS for the workload), real agents and workloads. Row-level
//! security is tested by trying to cross it as the workload's role.

// A panic in a test is a failed assertion, not a crash on user input.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cellfleet::local::{CellDatabases, provision_database};
use cellfleet_api::CellName;
use cellfleet_e2e::{
    AgentProcess, Db, ServerProcess, TestDb, cli, eventually, free_port, http_call,
    postgres_admin_url, wait_converged, workspace_bin,
};
use sqlx::{Connection, Executor, Row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_postgres_cells_isolate_tenants_by_row_level_security() {
    let registry_db = TestDb::new(Db::Postgres).await;
    let dir = registry_db.dir.path();
    let admin = dir.join("admin.token");
    let server = ServerProcess::start(
        &[
            "serve",
            "--database-url",
            &registry_db.url,
            "--admin-token-file",
            admin.to_str().unwrap(),
        ],
        "listening on",
    );
    let url = server.url.clone();
    let run = |args: &[&str]| cli(&url, &admin, args);

    // Two cells in two jurisdictions, so acme and initrode share the EU cell and globex gets the
    // US one. Cell names are unique per run: their databases live on the shared server.
    let suffix = &registry_db.url.rsplit('/').next().unwrap()[8..16];
    let (eu, us) = (format!("eu-{suffix}"), format!("us-{suffix}"));
    let (eu_endpoint, us_endpoint) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let fleet = format!(
        "apiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {{name: eu-west-1}}\nspec: {{jurisdiction: eu, location: {{lat: 53.35, lon: -6.26}}}}\n\
         ---\napiVersion: cellfleet.io/v1\nkind: Region\nmetadata: {{name: us-east-1}}\nspec: {{jurisdiction: us, location: {{lat: 38.9, lon: -77.0}}}}\n\
         ---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: {eu}}}\nspec: {{region: eu-west-1, kind: pooled, env: prod, endpoint: \"{eu_endpoint}\"}}\n\
         ---\napiVersion: cellfleet.io/v1\nkind: Cell\nmetadata: {{name: {us}}}\nspec: {{region: us-east-1, kind: pooled, env: prod, endpoint: \"{us_endpoint}\"}}\n"
    );
    std::fs::write(dir.join("fleet.yaml"), fleet).unwrap();
    run(&["apply", "-f", dir.join("fleet.yaml").to_str().unwrap()]).ok();
    let migrations = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/workload/migrations"
    );
    run(&["migration", "add", "-f", migrations]).ok();
    let release = dir.join("release.yaml");
    std::fs::write(
        &release,
        format!(
            "apiVersion: cellfleet.io/v1\nkind: Release\nmetadata: {{name: \"1.0.0\"}}\nspec: {{artifact: {{command: \"{}\"}}, migrations: {{upTo: 2}}}}\n",
            workspace_bin("notes-workload").display()
        ),
    )
    .unwrap();
    run(&["release", "create", "-f", release.to_str().unwrap()]).ok();
    run(&["release", "deploy", "1.0.0"]).ok();

    // The local provider provisions each cell's database and role; real agents run the cells.
    let databases = CellDatabases::Postgres {
        admin_url: postgres_admin_url(),
    };
    let mut agents = Vec::new();
    let mut cell_dbs = Vec::new();
    for cell in [&eu, &us] {
        let cell_dir = dir.join(cell.as_str());
        std::fs::create_dir_all(&cell_dir).unwrap();
        let db = provision_database(
            &databases,
            &CellName::new(cell.as_str()).unwrap(),
            &cell_dir,
        )
        .await
        .unwrap();
        assert_eq!(
            provision_database(
                &databases,
                &CellName::new(cell.as_str()).unwrap(),
                &cell_dir
            )
            .await
            .unwrap(),
            db,
            "provisioning is idempotent"
        );
        let token = run(&[
            "token", "create", "--role", "agent", "--cell", cell, "-o", "json",
        ])
        .json();
        let token_file = cell_dir.join("agent.token");
        std::fs::write(&token_file, token["token"].as_str().unwrap()).unwrap();
        agents.push(AgentProcess::start_with_env(
            &url,
            &token_file,
            cell,
            &cell_dir,
            &[
                ("CELL_AGENT_DATABASE_URL", &db.agent_url),
                ("CELL_AGENT_WORKLOAD_DATABASE_URL", &db.workload_url),
            ],
        ));
        cell_dbs.push(db);
    }
    for cell in [&eu, &us] {
        eventually(
            Duration::from_secs(60),
            &format!("{cell} converges on PostgreSQL"),
            || {
                let v = run(&["cell", "get", cell, "-o", "json"]).json();
                v["release"] == "1.0.0"
                    && v["migrationVersion"] == 2
                    && v["observedGeneration"] == v["desiredGeneration"]
                    && v["errors"].as_array().is_some_and(Vec::is_empty)
            },
        );
    }

    let tenants: String = [("acme", "eu"), ("initrode", "eu"), ("globex", "us")]
        .iter()
        .map(|(t, j)| format!("---\napiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {t}}}\nspec: {{displayName: {t}, profile: mt-standard, residency: {{jurisdiction: {j}}}}}\n"))
        .collect();
    std::fs::write(dir.join("tenants.yaml"), tenants).unwrap();
    run(&["apply", "-f", dir.join("tenants.yaml").to_str().unwrap()]).ok();
    // Cells serve only the tenants their agents handed them: wait for the new placements.
    for cell in [&eu, &us] {
        wait_converged(&url, &admin, cell);
    }

    // Every placed tenant writes and reads its own rows through its cell's workload…
    for (tenant, endpoint) in [
        ("acme", &eu_endpoint),
        ("initrode", &eu_endpoint),
        ("globex", &us_endpoint),
    ] {
        let (status, body) = http_call(
            endpoint,
            "POST",
            "/v1/notes",
            &[("X-Tenant-Id", tenant)],
            &format!(r#"{{"body":"{tenant} note"}}"#),
        )
        .unwrap();
        assert_eq!(status, 201, "{tenant}: {body}");
        let (_, notes) =
            http_call(endpoint, "GET", "/v1/notes", &[("X-Tenant-Id", tenant)], "").unwrap();
        let notes: serde_json::Value = serde_json::from_str(&notes).unwrap();
        assert_eq!(
            notes.as_array().map(Vec::len),
            Some(1),
            "{tenant} sees exactly its own note"
        );
    }

    // …and as the workload's role, row-level security stops any attempt to cross tenants even
    // without the application's WHERE clauses.
    let eu_db = &cell_dbs[0];
    let mut app = sqlx::PgConnection::connect(&eu_db.workload_url)
        .await
        .unwrap();
    app.execute("SELECT set_config('app.tenant_id', 'acme', false)")
        .await
        .unwrap();
    let seen: Vec<String> = sqlx::query("SELECT tenant_id FROM notes")
        .fetch_all(&mut app)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seen,
        ["acme"],
        "initrode's row in the same table is invisible to acme"
    );
    let forged = app.execute("INSERT INTO notes (id, tenant_id, body, created_at) VALUES (42, 'initrode', 'forged', 0)").await;
    assert!(
        forged
            .unwrap_err()
            .to_string()
            .contains("row-level security")
    );
    let deleted = app
        .execute("DELETE FROM notes WHERE tenant_id = 'initrode'")
        .await
        .unwrap();
    assert_eq!(
        deleted.rows_affected(),
        0,
        "acme cannot delete initrode's rows"
    );
    app.execute("SELECT set_config('app.tenant_id', '', false)")
        .await
        .unwrap();
    let none: i64 = sqlx::query("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut app)
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "no tenant, no rows");
    drop(app);

    // The agent reports the rows per tenant it sees as the owner.
    eventually(Duration::from_secs(60), "row counts are reported", || {
        let v = run(&["cell", "get", &eu, "-o", "json"]).json();
        v["tenantRows"]["acme"] == 1
            && v["tenantRows"]["initrode"] == 1
            && v["isolationDrift"].as_array().is_some_and(Vec::is_empty)
    });

    // Clean up what the provider created on the shared server.
    drop(agents);
    server.stop();
    let mut admin_conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .unwrap();
    for cell in [&eu, &us] {
        let db = format!("cf_cell_{}", cell.replace('-', "_"));
        admin_conn
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .await
            .unwrap();
        admin_conn
            .execute(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {db}_app")))
            .await
            .unwrap();
    }
}
