//! The API contract holds under a fuzzer: schemathesis (PyPI; `.ci/run` installs it) reads the
//! OpenAPI document a live `cellfleet serve` publishes and runs every one of its checks against
//! that server, on SQLite and on PostgreSQL: no 5xx, every status documented, every body
//! matching its schema, schema-valid requests accepted (or refused by a documented rule: 404,
//! 409, 422), schema-violating ones refused, no operation that ignores its token.
//!
//! The registry holds the sample fleet, the example workload's migrations and release, so the
//! fuzzer has real cells and tenants to find. It authenticates with an admin token of its own;
//! a second pass fuzzes the agent routes with an agent token (an admin token gets 403 there).
//! `DELETE /v1/tokens/{id}` is left out of both passes: the fuzzer learns token ids from
//! `GET /v1/tokens` and would revoke the very token it runs with (every later request a 401);
//! revocation has its own tests (`control-plane/tests/api.rs`).
//!
//! `tests/schemathesis.toml` is the one setting: `422` counts as accepting a schema-valid
//! request, as the document says (a rule the schema cannot state refused it, named in the
//! message). The seed is fixed so a CI run can be repeated (`CELLFLEET_ST_SEED` picks another;
//! `CELLFLEET_ST_EXAMPLES` the examples per operation).

use std::path::{Path, PathBuf};
use std::process::Command;

use cellfleet_e2e::{Db, ServerProcess, TestDb, cli, http_get};

const SEED: &str = "20261204";

fn st() -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", "command -v st"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.unwrap_or_else(|| {
        panic!("schemathesis is missing: python3 -m pip install schemathesis (.ci/run installs it)")
    })
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A token of `role` (bound to `cell` for agents), as the CLI creates it.
fn token(server: &str, admin: &Path, role: &str, cell: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--role", role, "-o", "json"];
    if let Some(cell) = cell {
        args.extend(["--cell", cell]);
    }
    let run = cli(server, admin, &args);
    run.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("token create: {}", run.ok()))
        .to_owned()
}

/// `st run` of the document in `schema` against `server` with `token` and `extra` filters: its
/// exit code and output.
fn fuzz(server: &str, schema: &Path, token: &str, extra: &[&str], out: &Path) -> (i32, String) {
    let seed = std::env::var("CELLFLEET_ST_SEED").unwrap_or_else(|_| SEED.to_owned());
    let examples = std::env::var("CELLFLEET_ST_EXAMPLES").unwrap_or_else(|_| "50".to_owned());
    let config = repo().join("tests/schemathesis.toml");
    let result = Command::new(st())
        .current_dir(out)
        .args([
            "--no-color",
            "--config-file",
            config.to_str().unwrap_or_default(),
            "run",
        ])
        .arg(schema)
        .args(["--url", server])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "all",
            "--exclude-operation-id",
            "tokens_revoke_token",
        ])
        .args(["--seed", &seed, "--max-examples", &examples])
        .args(["--request-timeout", "20", "--workers", "2"])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("st: {e}"));
    (
        result.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ),
    )
}

async fn contract_holds(db: Db) {
    let db = TestDb::new(db).await;
    // Long-polls answer within 2 s: the fuzzer finds the versions a watch would wait on.
    let (server, admin) = ServerProcess::serve(&db, &["--max-wait", "2s"]);
    let fleet = repo().join("examples/fleet/sample-fleet.yaml");
    let migrations = repo().join("examples/workload/migrations");
    let release = repo().join("examples/fleet/release-1.0.0.yaml");
    for args in [
        vec!["apply", "-f", fleet.to_str().unwrap_or_default()],
        vec![
            "migration",
            "add",
            "-f",
            migrations.to_str().unwrap_or_default(),
        ],
        vec![
            "release",
            "create",
            "-f",
            release.to_str().unwrap_or_default(),
        ],
    ] {
        cli(&server.url, &admin, &args).ok();
    }
    let fuzzer = token(&server.url, &admin, "admin", None);
    let agent = token(&server.url, &admin, "agent", Some("euw1-pool-1"));
    let out = tempfile::tempdir().expect("temp dir");
    // The document as the server publishes it (an agent token may not read it).
    let (status, document) = http_get(&server.url, "/openapi.json", Some(&fuzzer))
        .unwrap_or_else(|e| panic!("GET /openapi.json: {e}"));
    assert_eq!(status, 200, "{document}");
    let schema = out.path().join("openapi.json");
    std::fs::write(&schema, document).expect("write the document");
    let (code, said) = fuzz(&server.url, &schema, &fuzzer, &[], out.path());
    assert_eq!(
        code, 0,
        "schemathesis found failures (admin token):\n{said}"
    );
    assert!(said.contains("Tested:"), "{said}");
    let (code, said) = fuzz(
        &server.url,
        &schema,
        &agent,
        &["--include-path-regex", "^/v1/agent/"],
        out.path(),
    );
    assert_eq!(
        code, 0,
        "schemathesis found failures (agent token):\n{said}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_on_sqlite() {
    contract_holds(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_on_postgres() {
    contract_holds(Db::Postgres).await;
}
