//! The cell's own database (SQLite file or PostgreSQL database): applying the fleet's migration
//! stream, and row-level security for pooled cells on PostgreSQL.
//!
//! **Never twice.** Each pending migration runs in its own transaction that first takes the
//! database's write lock (`BEGIN IMMEDIATE` on SQLite, a transaction-scoped advisory lock on
//! PostgreSQL), then re-reads whether the version is applied, then runs the SQL and records
//! `(version, name, checksum)` in `cellfleet_migrations` — all committed together. Two agents (or an
//! agent and its restarted self) racing on one database therefore apply each migration once.
//!
//! **Never silently different.** Every reconcile compares the checksums recorded in the database
//! with the stream's; a difference stops the reconcile with an error naming the migration.

use cellfleet_api::{AppliedMigration, Migration};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum CellDbError {
    #[error("cell database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(
        "migration V{version} ({name}): the cell database recorded checksum {applied}, the stream has {expected}; reconcile stopped"
    )]
    ChecksumMismatch {
        version: i64,
        name: String,
        applied: String,
        expected: String,
    },
    #[error("migration V{version} ({name}) failed: {source}")]
    Failed {
        version: i64,
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the cell database has migration V{version}, which is not in the stream")]
    Unknown { version: i64 },
    #[error("unsupported cell database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
}

/// Advisory-lock key for cell migrations on PostgreSQL ("cfmig").
const MIGRATION_LOCK: i64 = 0x63_66_6d_69_67;

#[derive(Debug, Clone)]
pub struct CellDb {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

impl CellDb {
    pub async fn open(url: &str) -> Result<CellDb, CellDbError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
            {
                let _ = std::fs::create_dir_all(dir);
            }
            let sep = if path.contains('?') { "&" } else { "?" };
            (Backend::Sqlite, format!("sqlite://{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(CellDbError::UnsupportedUrl(url.to_owned()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(6)
            .connect(&url)
            .await?;
        let db = CellDb { pool, backend };
        db.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS cellfleet_migrations (\
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL)",
            )
            .await?;
        Ok(db)
    }

    /// A write transaction holding the database's write lock (see the module docs).
    pub(crate) async fn locked(&self) -> Result<Transaction<'static, Any>, CellDbError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                tx.execute(sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK))
                    .await?;
                tx
            }
        })
    }

    /// The migrations recorded in the database, in version order.
    pub async fn applied(&self) -> Result<Vec<AppliedMigration>, CellDbError> {
        let rows =
            sqlx::query("SELECT version, checksum FROM cellfleet_migrations ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(AppliedMigration {
                    version: r.try_get("version")?,
                    checksum: r.try_get("checksum")?,
                })
            })
            .collect()
    }

    /// Brings the database to the whole `stream` (see the module docs). Returns what is applied.
    pub async fn migrate(
        &self,
        stream: &[Migration],
    ) -> Result<Vec<AppliedMigration>, CellDbError> {
        self.verify(stream, &self.applied().await?)?;
        for m in stream {
            let mut tx = self.locked().await?;
            let recorded: Option<String> =
                sqlx::query("SELECT checksum FROM cellfleet_migrations WHERE version = $1")
                    .bind(m.version)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("checksum"))
                    .transpose()?;
            match recorded {
                Some(_) => continue, // applied (checksums were verified above)
                None => {
                    let failed = |source| CellDbError::Failed {
                        version: m.version,
                        name: m.name.clone(),
                        source,
                    };
                    sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.clone()))
                        .execute(&mut *tx)
                        .await
                        .map_err(failed)?;
                    tx.execute(
                        sqlx::query("INSERT INTO cellfleet_migrations (version, name, checksum) VALUES ($1, $2, $3)")
                            .bind(m.version)
                            .bind(m.name.clone())
                            .bind(m.checksum.clone()),
                    )
                    .await?;
                    tx.commit().await?;
                    tracing::info!(version = m.version, name = %m.name, "migration applied");
                }
            }
        }
        let applied = self.applied().await?;
        self.verify(stream, &applied)?;
        Ok(applied)
    }

    fn verify(
        &self,
        stream: &[Migration],
        applied: &[AppliedMigration],
    ) -> Result<(), CellDbError> {
        for a in applied {
            match stream.iter().find(|m| m.version == a.version) {
                Some(m) if m.checksum != a.checksum => {
                    return Err(CellDbError::ChecksumMismatch {
                        version: m.version,
                        name: m.name.clone(),
                        applied: a.checksum.clone(),
                        expected: m.checksum.clone(),
                    });
                }
                Some(_) => {}
                None => return Err(CellDbError::Unknown { version: a.version }),
            }
        }
        Ok(())
    }

    /// Rows per tenant over every table with a `tenant_id` column (the tenant's data in this cell).
    /// On PostgreSQL the agent connects as the owner, which RLS does not restrict.
    pub async fn tenant_rows(
        &self,
    ) -> Result<std::collections::BTreeMap<String, i64>, CellDbError> {
        let tables_sql = match self.backend {
            Backend::Postgres => {
                "SELECT c.relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relkind = 'r' AND EXISTS \
                 (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)"
            }
            Backend::Sqlite => {
                "SELECT m.name AS name FROM sqlite_master m WHERE m.type = 'table' AND EXISTS \
                 (SELECT 1 FROM pragma_table_info(m.name) p WHERE p.name = 'tenant_id')"
            }
        };
        let tables: Vec<String> = sqlx::query(tables_sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?;
        let mut rows = std::collections::BTreeMap::new();
        for table in tables {
            let quoted = format!("\"{}\"", table.replace('"', "\"\""));
            let counts = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT CAST(tenant_id AS TEXT) AS tenant, COUNT(*) AS n FROM {quoted} GROUP BY tenant_id"
            )))
            .fetch_all(&self.pool)
            .await?;
            for r in counts {
                // A NULL tenant_id belongs to no tenant: counted under a key no tenant can have.
                let tenant = r
                    .try_get::<Option<String>, _>("tenant")?
                    .unwrap_or_else(|| "(null)".to_owned());
                *rows.entry(tenant).or_default() += r.try_get::<i64, _>("n")?;
            }
        }
        Ok(rows)
    }

    /// Pooled cells on PostgreSQL: every table with a `tenant_id` column gets row-level security
    /// (enabled and forced) with the `tenant_isolation` policy on `current_setting('app.tenant_id')`.
    /// Returns the tables without `tenant_id` (isolation drift: RLS cannot scope them).
    pub async fn enforce_rls(&self) -> Result<Vec<String>, CellDbError> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT c.relname::text AS name, \
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS scoped, \
               c.relrowsecurity AND c.relforcerowsecurity AS secured, \
               EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation') AS has_policy \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname NOT LIKE 'cellfleet\\_%' \
             ORDER BY c.relname",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut drift = Vec::new();
        for r in rows {
            let name: String = r.try_get("name")?;
            let scoped: bool = r.try_get("scoped")?;
            let secured: bool = r.try_get("secured")?;
            let has_policy: bool = r.try_get("has_policy")?;
            if !scoped {
                drift.push(name);
                continue;
            }
            if secured && has_policy {
                continue;
            }
            let table = format!("\"{}\"", name.replace('"', "\"\""));
            let mut tx = self.locked().await?;
            tx.execute(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"
            )))
            .await?;
            tx.execute(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table} FORCE ROW LEVEL SECURITY"
            )))
            .await?;
            if !has_policy {
                tx.execute(sqlx::AssertSqlSafe(format!(
                    "CREATE POLICY tenant_isolation ON {table} \
                     USING (tenant_id::text = current_setting('app.tenant_id', true)) \
                     WITH CHECK (tenant_id::text = current_setting('app.tenant_id', true))"
                )))
                .await?;
            }
            tx.commit().await?;
            tracing::info!(table = %name, "row-level security enforced");
        }
        Ok(drift)
    }
}

#[cfg(test)]
#[path = "cell_db_tests.rs"]
mod tests;
