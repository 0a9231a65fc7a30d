//! The registry store: the one place that talks SQL.
//!
//! One code path serves both backends through sqlx's `Any` driver: SQLite (the embedded default,
//! a file created on first use) and PostgreSQL (production, several replicas). Queries use the
//! portable subset both understand (`$n` placeholders, `ON CONFLICT`, `RETURNING`); the schema
//! lives in one migration folder per backend and runs at start-up.
//!
//! **What is durable and why.** Every mutation runs in a [`Tx`] from [`Store::begin`]: the change
//! and its audit record commit together or not at all (SPEC §4). Mutations are serialised, because
//! the audit log is a hash chain (each record names its predecessor) and because placement reads
//! cell loads before it writes: on PostgreSQL a transaction-scoped advisory lock serialises writers
//! across every control-plane replica; on SQLite `BEGIN IMMEDIATE` takes the database write lock up
//! front (so a transaction never has to upgrade from reader to writer and fail with `SQLITE_BUSY`),
//! and an in-process mutex queues this process's writers fairly instead of letting them spin on
//! the busy timeout. Reads never take the lock.

mod agents;
mod audit_log;
mod operations;
mod registry;
mod routes;
mod runbooks;
mod tokens;
mod trains;

use std::sync::Arc;
use std::time::Duration;

use cellfleet_api::CellName;
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use agents::*;
pub use audit_log::{
    AuditEntry, audit_all, audit_checkpoints, audit_head, audit_list, insert_checkpoint,
};
pub use operations::*;
pub use registry::*;
pub use routes::*;
pub use runbooks::*;
pub use tokens::*;
pub use trains::*;

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("registry migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("stored {what} is unreadable: {why}")]
    Corrupt { what: String, why: String },
    #[error("cannot create the database directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which SQL backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Who is making a change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `token:tok_… (role)`, or `system:…` for the server itself.
    pub actor: String,
    pub correlation_id: String,
}

impl Caller {
    pub fn system(what: &str) -> Self {
        Caller {
            actor: format!("system:{what}"),
            correlation_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// The advisory-lock key that serialises registry mutations on PostgreSQL ("cellflt" in ASCII).
const MUTATION_LOCK_KEY: i64 = 0x63_65_6c_6c_66_6c_74;

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Queues this process's writers on SQLite; see the module docs.
    write_lock: Arc<Mutex<()>>,
}

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the registry at `url`.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let pool = match backend {
            Backend::Sqlite => {
                let url = sqlite_url_creating_dirs(url)?;
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL lets readers run while a writer commits; NORMAL sync is durable
                            // across application crashes, which is what WAL needs.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await?
            }
        };
        let store = Store {
            pool,
            backend,
            write_lock: Arc::new(Mutex::new(())),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
            Backend::Postgres => {
                // Two replicas starting together must not both migrate: hold a session lock.
                let mut conn = self.pool.acquire().await?;
                conn.execute(
                    sqlx::query("SELECT pg_advisory_lock($1)").bind(MUTATION_LOCK_KEY + 1),
                )
                .await?;
                let result = sqlx::migrate!("migrations/postgres").run(&mut *conn).await;
                conn.execute(
                    sqlx::query("SELECT pg_advisory_unlock($1)").bind(MUTATION_LOCK_KEY + 1),
                )
                .await?;
                result?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A connection for reads.
    pub async fn read(&self) -> Result<PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// A read-only transaction over one consistent snapshot (for reads that must agree with
    /// each other, like verifying the audit chain against its head).
    pub async fn read_snapshot(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        })
    }

    /// Starts a mutation: serialised with every other mutation (see the module docs).
    pub async fn begin(&self, caller: &Caller) -> Result<Tx> {
        let (tx, guard) = match self.backend {
            Backend::Sqlite => {
                let guard = self.write_lock.clone().lock_owned().await;
                (self.pool.begin_with("BEGIN IMMEDIATE").await?, Some(guard))
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                tx.execute(sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MUTATION_LOCK_KEY))
                    .await?;
                (tx, None)
            }
        };
        Ok(Tx {
            tx,
            _guard: guard,
            now: Utc::now(),
            caller: caller.clone(),
            audit: Vec::new(),
            touched: Default::default(),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Turns `sqlite://path` into a URL that creates the file, creating its directory too.
fn sqlite_url_creating_dirs(url: &str) -> Result<String> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mode = if query.contains("mode=") {
        ""
    } else {
        "mode=rwc"
    };
    let sep = if query.is_empty() || mode.is_empty() {
        ""
    } else {
        "&"
    };
    Ok(format!("sqlite://{path}?{query}{sep}{mode}"))
}

/// The file path of a SQLite URL (`None` for PostgreSQL or in-memory databases).
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (path != ":memory:" && !path.is_empty()).then(|| std::path::PathBuf::from(path))
}

/// A mutation in progress. Dropping it without [`Tx::commit`] rolls everything back.
#[derive(Debug)]
pub struct Tx {
    tx: Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
    /// The time of the mutation: every row it writes carries this one instant.
    pub now: DateTime<Utc>,
    pub caller: Caller,
    /// Audit records of this mutation, appended to the chain in one batch at commit.
    audit: Vec<AuditEntry>,
    /// Cells whose desired state this mutation may have changed (see `service::agents`).
    touched: std::collections::BTreeSet<CellName>,
}

impl Tx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Notes that `cell`'s desired state may have changed in this mutation.
    pub fn touch(&mut self, cell: &CellName) {
        self.touched.insert(cell.clone());
    }

    /// Opens a savepoint: [`Tx::undo`] takes back what the mutation wrote (and audited) since,
    /// [`Tx::keep`] keeps it. A runbook step whose effect is refused fails alone, without
    /// leaving half of that effect in the step's transaction.
    pub async fn mark(&mut self) -> Result<usize> {
        self.tx.execute("SAVEPOINT cellfleet_step").await?;
        Ok(self.audit.len())
    }

    pub async fn undo(&mut self, mark: usize) -> Result<()> {
        self.tx
            .execute("ROLLBACK TO SAVEPOINT cellfleet_step")
            .await?;
        self.tx.execute("RELEASE SAVEPOINT cellfleet_step").await?;
        self.audit.truncate(mark);
        Ok(())
    }

    pub async fn keep(&mut self) -> Result<()> {
        self.tx.execute("RELEASE SAVEPOINT cellfleet_step").await?;
        Ok(())
    }

    /// The cells touched so far (drained).
    pub fn take_touched(&mut self) -> std::collections::BTreeSet<CellName> {
        std::mem::take(&mut self.touched)
    }

    /// Appends this mutation's audit records to the chain, then commits both together. Only
    /// `Registry::commit` can call it (see [`crate::service::Refreshed`]).
    pub async fn commit(mut self, _refreshed: crate::service::Refreshed) -> Result<()> {
        let entries = std::mem::take(&mut self.audit);
        audit_log::append(&mut self.tx, entries).await?;
        self.tx.commit().await?;
        Ok(())
    }

    /// Records an audit entry for this mutation; it is written, chained, in the same transaction
    /// at [`Tx::commit`] (never, if the mutation rolls back).
    pub fn audit(&mut self, action: &str, target: &str, payload: serde_json::Value) {
        self.audit.push(AuditEntry {
            at: self.now,
            actor: self.caller.actor.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            correlation_id: self.caller.correlation_id.clone(),
            payload,
        });
    }
}

pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn corrupt(what: impl Into<String>, why: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        why: why.to_string(),
    }
}

/// Decodes a JSON column.
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

/// Parses a stored enum or id column.
pub(crate) fn parse_column<T: std::str::FromStr>(what: &str, text: &str) -> Result<T>
where
    T::Err: ToString,
{
    text.parse()
        .map_err(|e: T::Err| corrupt(what, e.to_string()))
}
