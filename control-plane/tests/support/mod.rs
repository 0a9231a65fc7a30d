//! Test support: a throwaway registry on SQLite (a temp file) or PostgreSQL (a fresh database
//! on the server at `CELLFLEET_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped when the test ends, plus `both_backends!` to run one test body on each.

#![allow(dead_code)]

use std::time::Duration;

use cellfleet::service::{Registry, Settings};
use cellfleet::store::{Backend, Caller, Store};
use cellfleet_api::{ManifestFile, Role};
use sqlx::{Connection, Executor};

pub fn postgres_admin_url() -> String {
    std::env::var("CELLFLEET_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                TestDb {
                    url: format!("sqlite://{}", dir.path().join("registry.db").display()),
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("cf_test_{}", uuid::Uuid::new_v4().simple());
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL is required for the tests ({admin}): {e}. Start it (see README) or set CELLFLEET_TEST_POSTGRES_URL")
                });
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create test database");
                let mut url = reqwest::Url::parse(&admin).expect("postgres url");
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop the database from a separate thread with its own runtime: Drop cannot await,
            // and the test's runtime may be shutting down.
            let admin = postgres_admin_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async move {
                    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                    conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}

/// A registry on a fresh database.
pub struct TestRegistry {
    pub registry: Registry,
    pub db: TestDb,
}

impl TestRegistry {
    pub async fn new(backend: Backend) -> TestRegistry {
        Self::with_settings(backend, Settings::default()).await
    }

    pub async fn with_settings(backend: Backend, settings: Settings) -> TestRegistry {
        let db = TestDb::new(backend).await;
        let store = Store::connect(&db.url).await.expect("open registry");
        TestRegistry {
            registry: Registry::new(store, settings),
            db,
        }
    }

    /// Applies YAML as an admin.
    pub async fn apply(&self, yaml: &str) -> Result<cellfleet_api::ApplyResponse, cellfleet::service::Error> {
        self.registry
            .apply(&caller(), Role::Admin, &[file("test.yaml", yaml)], false)
            .await
    }

    /// A second, independent connection to the same database (for tampering).
    pub async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.db.url).await.expect("raw connection")
    }
}

pub fn caller() -> Caller {
    Caller {
        actor: "test".to_owned(),
        correlation_id: "test-correlation".to_owned(),
    }
}

pub fn file(name: &str, content: &str) -> ManifestFile {
    ManifestFile {
        name: name.to_owned(),
        content: content.to_owned(),
    }
}

pub fn retention(secs: u64) -> Settings {
    Settings {
        archive_retention: Duration::from_secs(secs),
        ..Settings::default()
    }
}

/// Regions in two jurisdictions and a few cells.
pub const FLEET: &str = r#"
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: eu-west-1}
spec: {jurisdiction: eu, location: {lat: 53.35, lon: -6.26}}
---
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: eu-central-1}
spec: {jurisdiction: eu, location: {lat: 50.11, lon: 8.68}}
---
apiVersion: cellfleet.io/v1
kind: Region
metadata: {name: us-east-1}
spec: {jurisdiction: us, location: {lat: 38.9, lon: -77.04}}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: euw1-pool-1, labels: {canary: "true"}}
spec: {region: eu-west-1, kind: pooled, env: prod, capacity: 3}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: euc1-pool-1}
spec: {region: eu-central-1, kind: pooled, env: prod, capacity: 2}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: use1-pool-1}
spec: {region: us-east-1, kind: pooled, env: prod, capacity: 50}
---
apiVersion: cellfleet.io/v1
kind: Cell
metadata: {name: euw1-ded-1}
spec: {region: eu-west-1, kind: dedicated, env: prod}
"#;

/// A Tenant document.
pub fn tenant_doc(name: &str, profile: &str, residency: &str) -> String {
    format!(
        "apiVersion: cellfleet.io/v1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n  displayName: {name}\n  profile: {profile}\n  residency: {residency}\n---\n"
    )
}

/// Runs the body once per backend, as two tests: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: cellfleet::store::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(cellfleet::store::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(cellfleet::store::Backend::Postgres).await
            }
        }
    };
}
