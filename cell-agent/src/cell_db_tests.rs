//! The cell database on SQLite and PostgreSQL: migrations once and in order, checksum drift,
//! failures, and row-level security that holds for a non-superuser.

#![allow(clippy::unwrap_used)]

use cellfleet_api::{Migration, Phase};
use cellfleet_e2e::{Db, TestDb};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, Row};

use super::*;

fn migration(version: i64, name: &str, sql: &str) -> Migration {
    Migration {
        version,
        name: name.into(),
        phase: Phase::Expand,
        checksum: hex::encode(Sha256::digest(sql.as_bytes())),
        sql: sql.into(),
    }
}

fn stream() -> Vec<Migration> {
    vec![
        // No IF NOT EXISTS: running either twice would fail.
        migration(
            1,
            "notes",
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, body TEXT NOT NULL);",
        ),
        migration(
            2,
            "settings",
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT); INSERT INTO settings VALUES ('v', '2');",
        ),
    ]
}

async fn migrations_run_once_in_order(db: Db) {
    let test_db = TestDb::new(db).await;
    let a = CellDb::open(&test_db.url).await.unwrap();
    let b = CellDb::open(&test_db.url).await.unwrap();
    // Two agents on one database at once: each migration still runs exactly once.
    let s = stream();
    let (ra, rb) = tokio::join!(a.migrate(&s), b.migrate(&s));
    let applied = ra.unwrap();
    assert_eq!(rb.unwrap(), applied);
    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(applied[0].checksum, s[0].checksum);
    assert_eq!(a.migrate(&s).await.unwrap(), applied, "idempotent");

    // Rows per tenant, over every tenant table.
    let mut raw = test_db.raw().await;
    raw.execute("INSERT INTO notes (id, tenant_id, body) VALUES (1, 'acme', 'x'), (2, 'acme', 'y'), (3, 'globex', 'z')")
        .await
        .unwrap();
    let rows = a.tenant_rows().await.unwrap();
    assert_eq!(
        rows.into_iter().collect::<Vec<_>>(),
        [("acme".to_owned(), 2), ("globex".to_owned(), 1)]
    );

    // A recorded checksum that differs from the stream stops the reconcile, naming the migration.
    raw.execute("UPDATE cellfleet_migrations SET checksum = 'tampered' WHERE version = 2")
        .await
        .unwrap();
    let err = a.migrate(&s).await.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "migration V2 (settings): the cell database recorded checksum tampered, the stream has"
        ),
        "{err}"
    );

    // A failing migration is reported and not recorded.
    let fresh = TestDb::new(db).await;
    let c = CellDb::open(&fresh.url).await.unwrap();
    let mut bad = stream();
    bad.push(migration(3, "broken", "CREATE TABLE notes (id INTEGER);"));
    let err = c.migrate(&bad).await.unwrap_err().to_string();
    assert!(err.starts_with("migration V3 (broken) failed:"), "{err}");
    assert_eq!(c.applied().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_in_order_on_sqlite() {
    migrations_run_once_in_order(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_in_order_on_postgres() {
    migrations_run_once_in_order(Db::Postgres).await;
}

/// Pooled PostgreSQL cells: tenant tables get forced RLS; a tenant reads and writes only its own
/// rows (tried as a non-superuser, since superusers bypass RLS); tables without `tenant_id` are
/// reported as drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_isolates_tenants_on_postgres() {
    let test_db = TestDb::new(Db::Postgres).await;
    let db = CellDb::open(&test_db.url).await.unwrap();
    db.migrate(&stream()).await.unwrap();
    let drift = db.enforce_rls().await.unwrap();
    assert_eq!(drift, ["settings"]);
    assert_eq!(db.enforce_rls().await.unwrap(), ["settings"], "idempotent");

    let role = format!("cf_app_{}", &test_db.url.rsplit('/').next().unwrap()[8..]);
    let mut conn = sqlx::PgConnection::connect(&test_db.url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} NOSUPERUSER NOBYPASSRLS"
    )))
    .await
    .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT, INSERT ON notes TO {role}"
    )))
    .await
    .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("SET ROLE {role}")))
        .await
        .unwrap();
    conn.execute("SELECT set_config('app.tenant_id', 'acme', false)")
        .await
        .unwrap();
    conn.execute(
        "INSERT INTO notes (id, tenant_id, body) VALUES (1, 'acme', 'a1'), (2, 'acme', 'a2')",
    )
    .await
    .unwrap();
    let refused = conn
        .execute("INSERT INTO notes (id, tenant_id, body) VALUES (3, 'globex', 'sneaky')")
        .await;
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("row-level security"),
        "writing another tenant's row is refused"
    );
    conn.execute("SELECT set_config('app.tenant_id', 'globex', false)")
        .await
        .unwrap();
    conn.execute("INSERT INTO notes (id, tenant_id, body) VALUES (4, 'globex', 'g1')")
        .await
        .unwrap();
    let seen: Vec<String> = sqlx::query("SELECT body FROM notes ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, ["g1"], "globex sees only its own rows");
    conn.execute("SELECT set_config('app.tenant_id', '', false)")
        .await
        .unwrap();
    let none: i64 = sqlx::query("SELECT COUNT(*) FROM notes")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "no tenant set, no rows");
    conn.execute("RESET ROLE").await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}")))
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .await
        .unwrap();
}
