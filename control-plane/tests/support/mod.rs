//! Test support: a registry on a throwaway database (SQLite file or fresh PostgreSQL database,
//! see `cellfleet_e2e::TestDb`), fixtures, and `both_backends!` to run one test body on each.

#![allow(dead_code)]

use std::time::Duration;

use cellfleet::service::{Registry, Settings};
use cellfleet::store::{Backend, Caller, Store};
use cellfleet_api::{ManifestFile, Role};

pub use cellfleet_e2e::TestDb;

fn db_kind(backend: Backend) -> cellfleet_e2e::Db {
    match backend {
        Backend::Sqlite => cellfleet_e2e::Db::Sqlite,
        Backend::Postgres => cellfleet_e2e::Db::Postgres,
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
        let db = TestDb::new(db_kind(backend)).await;
        let store = Store::connect(&db.url).await.expect("open registry");
        TestRegistry {
            registry: Registry::new(store, settings).with_audit_key(std::sync::Arc::new(
                cellfleet::audit_key::AuditKey::ephemeral(),
            )),
            db,
        }
    }

    /// Applies YAML as an admin.
    pub async fn apply(
        &self,
        yaml: &str,
    ) -> Result<cellfleet_api::ApplyResponse, cellfleet::service::Error> {
        self.registry
            .apply(&caller(), Role::Admin, &[file("test.yaml", yaml)], false)
            .await
    }

    /// A second, independent connection to the same database (for tampering).
    pub async fn raw(&self) -> sqlx::AnyConnection {
        self.db.raw().await
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

/// One number per query (`SELECT count(*) …`): what a refused request must leave as it was.
pub async fn counts(t: &TestRegistry, queries: &[&str]) -> Vec<i64> {
    let mut conn = t.raw().await;
    let mut out = Vec::new();
    for sql in queries {
        out.push(
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(*sql))
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        );
    }
    out
}

/// The example workload's two migrations, as an agent reports them applied.
pub fn two_migrations() -> Vec<cellfleet_api::AppliedMigration> {
    [(1, "ab"), (2, "cd")]
        .into_iter()
        .map(|(version, hex)| cellfleet_api::AppliedMigration {
            version,
            checksum: hex.repeat(32),
        })
        .collect()
}

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
