//! The workload as a process, on SQLite and on PostgreSQL with row-level security: tenants see
//! only their own notes, the knobs break it on purpose, metrics count per tenant.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use cellfleet_e2e::{Db, TestDb, free_port, http_call, http_get};
use sqlx::{Connection, Executor};

struct Workload {
    child: Child,
    url: String,
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database_url: &str, extra: &[&str]) -> Workload {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_notes-workload"))
        .args([
            "--listen",
            &listen,
            "--database-url",
            database_url,
            "--release",
            "1.2.3",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start notes-workload");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("banner");
    assert!(line.contains("listening on"), "{line}");
    Workload {
        child,
        url: format!("http://{listen}"),
    }
}

/// Applies `migrations/` the way the cell agent does: in version order.
async fn migrate(url: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("migrations")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let sql = std::fs::read_to_string(&f).expect("read migration");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("apply migration");
    }
}

fn call(
    w: &Workload,
    method: &str,
    path: &str,
    tenant: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let headers: Vec<(&str, &str)> = tenant.map(|t| ("X-Tenant-Id", t)).into_iter().collect();
    let (status, text) = http_call(&w.url, method, path, &headers, body).expect("request");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

fn tenants_are_isolated(w: &Workload) {
    let (status, note) = call(
        w,
        "POST",
        "/v1/notes",
        Some("acme"),
        r#"{"body":"acme's secret"}"#,
    );
    assert_eq!(status, 201, "{note}");
    let id = note["id"].as_i64().expect("id");
    let (_, mine) = call(w, "GET", "/v1/notes", Some("acme"), "");
    assert_eq!(mine.as_array().map(Vec::len), Some(1));
    let (status, _) = call(w, "GET", &format!("/v1/notes/{id}"), Some("acme"), "");
    assert_eq!(status, 200);
    for (method, path) in [
        ("GET", format!("/v1/notes/{id}")),
        ("DELETE", format!("/v1/notes/{id}")),
    ] {
        let (status, _) = call(w, method, &path, Some("globex"), "");
        assert_eq!(
            status, 404,
            "globex must not reach acme's note with {method}"
        );
    }
    let (_, theirs) = call(w, "GET", "/v1/notes", Some("globex"), "");
    assert_eq!(theirs.as_array().map(Vec::len), Some(0));
    let (status, err) = call(w, "GET", "/v1/notes", None, "");
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("missing X-Tenant-Id header"))
    );
    let (status, _) = call(w, "POST", "/v1/notes", Some("acme"), "{not json");
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_notes_are_per_tenant_and_counted() {
    let db = TestDb::new(Db::Sqlite).await;
    migrate(&format!("{}?mode=rwc", db.url)).await;
    let w = start(&db.url, &[]);
    tenants_are_isolated(&w);
    let (_, version) = call(&w, "GET", "/version", None, "");
    assert_eq!(version["release"], "1.2.3");
    let (_, metrics) = http_get(&w.url, "/metrics", None).expect("metrics");
    assert!(
        metrics.contains(r#"workload_requests_total{tenant="acme",status="201"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"workload_requests_total{tenant="globex",status="404"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"workload_build_info{release="1.2.3"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_knob_simulates_a_bad_release() {
    let db = TestDb::new(Db::Sqlite).await;
    migrate(&format!("{}?mode=rwc", db.url)).await;
    let w = start(&db.url, &["--error-rate", "1.0", "--latency", "20ms"]);
    for _ in 0..3 {
        let (status, body) = call(&w, "GET", "/v1/notes", Some("acme"), "");
        assert_eq!(
            (status, body["error"].as_str()),
            (500, Some("injected failure (error-rate knob)"))
        );
    }
    let (_, metrics) = http_get(&w.url, "/metrics", None).expect("metrics");
    assert!(
        metrics.contains(r#"workload_requests_total{tenant="acme",status="500"} 3"#),
        "{metrics}"
    );
    let (status, _) = http_get(&w.url, "/healthz", None).expect("healthz");
    assert_eq!(status, 200, "health checks are not subject to the knobs");
}

/// On PostgreSQL the workload connects as a role without BYPASSRLS, under forced row-level
/// security: it works only because it sets `app.tenant_id` per request, and a tenant still cannot
/// see another's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_row_level_security() {
    let db = TestDb::new(Db::Postgres).await;
    migrate(&db.url).await;
    let name = db.url.rsplit('/').next().expect("db name").to_owned();
    let role = format!("app_{}", &name[8..]);
    let mut admin = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    for sql in [
        "ALTER TABLE notes ENABLE ROW LEVEL SECURITY".to_owned(),
        "ALTER TABLE notes FORCE ROW LEVEL SECURITY".to_owned(),
        "CREATE POLICY tenant_isolation ON notes USING (tenant_id::text = current_setting('app.tenant_id', true)) \
         WITH CHECK (tenant_id::text = current_setting('app.tenant_id', true))"
            .to_owned(),
        format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("GRANT SELECT, INSERT, DELETE ON notes TO {role}"),
    ] {
        admin.execute(sqlx::AssertSqlSafe(sql)).await.expect("setup");
    }
    let mut app_url = reqwest::Url::parse(&db.url).expect("url");
    let _ = app_url.set_username(&role);
    let w = start(app_url.as_str(), &[]);
    tenants_are_isolated(&w);
    drop(w);
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}")))
        .await
        .expect("drop owned");
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .await
        .expect("drop role");
}
