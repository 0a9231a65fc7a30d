//! A move's work on the cell database, on SQLite and PostgreSQL: the tenant's tables, change
//! capture, the write guard, reading rows and changes in bounded batches, applying them, and
//! checksums.
//!
//! **Capture** is triggers: every insert, update and delete of the tenant's rows appends the row's
//! full image (or, for a delete, its primary key) to `cellfleet_changes`, in the same transaction
//! as the write — so a captured change exists exactly when its write committed, in commit order.
//! **The guard** is a trigger too: it refuses any write of the tenant's rows (the error names the
//! move, and the workload answers it as `503 moved`). **Applying** a batch happens in one
//! transaction that first puts a row in `cellfleet_applying`: the triggers see it (no capture of
//! applied rows, no guard against them), other transactions never do (it is deleted before the
//! commit). Applying is idempotent: rows are upserted or deleted by primary key, in stream order.
//!
//! Rows travel as JSON objects built by the database (`json_object` on SQLite, `to_jsonb` on
//! PostgreSQL) and go back into the same kind of database (`json_extract`,
//! `jsonb_populate_record`). Checksums hash each row's canonical JSON (keys sorted), so both
//! sides compute the same sum. Columns of binary types are not supported by the SQLite path.

use std::collections::BTreeMap;

use cellfleet_api::TableSum;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Any, AnyConnection, Executor, Row, Transaction};

use crate::cell_db::{Backend, CellDb, CellDbError};

/// A table holding tenant rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTable {
    pub name: String,
    pub columns: Vec<String>,
    pub pk: Vec<String>,
    /// Why the table cannot be moved safely (no primary key, or one the database assigns, which
    /// could collide in another cell), if so.
    pub unmovable: Option<String>,
}

/// One captured change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub item: Value,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Trigger and function names for a move's table (move ids are `mv_` + hex).
fn trigger_name(kind: &str, move_id: &str, index: usize) -> String {
    let id: String = move_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!("cf_{kind}_{id}_{index}")
}

/// Canonical JSON of a value: object keys sorted, whatever the map's order.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&map[*k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The 64-bit hash of a row (its canonical JSON) that checksums add up.
pub fn row_hash(row: &Value) -> u64 {
    let digest = Sha256::digest(canonical(row).as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

fn parse(text: &str) -> Result<Value, CellDbError> {
    serde_json::from_str(text).map_err(|e| {
        CellDbError::Sql(sqlx::Error::Decode(
            format!("a row that is not JSON: {e}").into(),
        ))
    })
}

/// Binds a JSON scalar as the matching SQL value.
fn bind_json<'q>(
    q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    v: &Value,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    match v {
        Value::Number(n) if n.is_i64() => q.bind(n.as_i64().unwrap_or_default()),
        Value::Number(n) => q.bind(n.as_f64().unwrap_or_default()),
        Value::String(s) => q.bind(s.clone()),
        Value::Bool(b) => q.bind(*b),
        Value::Null => q.bind(Option::<String>::None),
        other => q.bind(other.to_string()),
    }
}

impl CellDb {
    /// Creates the capture log and the apply marker (idempotent).
    pub async fn ensure_move_tables(&self) -> Result<(), CellDbError> {
        let statements: &[&str] = match self.backend {
            Backend::Sqlite => &[
                "CREATE TABLE IF NOT EXISTS cellfleet_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                 move_id TEXT NOT NULL, tbl TEXT NOT NULL, op TEXT NOT NULL, pk TEXT NOT NULL, row TEXT)",
                "CREATE INDEX IF NOT EXISTS cellfleet_changes_move ON cellfleet_changes (move_id, seq)",
                "CREATE TABLE IF NOT EXISTS cellfleet_applying (x INTEGER)",
            ],
            Backend::Postgres => &[
                "CREATE TABLE IF NOT EXISTS cellfleet_changes (seq BIGSERIAL PRIMARY KEY, \
                 move_id TEXT NOT NULL, tbl TEXT NOT NULL, op TEXT NOT NULL, pk TEXT NOT NULL, row TEXT)",
                "CREATE INDEX IF NOT EXISTS cellfleet_changes_move ON cellfleet_changes (move_id, seq)",
                "CREATE TABLE IF NOT EXISTS cellfleet_applying (x INTEGER)",
                // Only the owner (the agent) and its triggers (security definer) touch these:
                // the workload's role may not read other tenants' captured rows.
                "REVOKE ALL ON cellfleet_changes, cellfleet_applying FROM PUBLIC",
            ],
        };
        for s in statements {
            self.pool.execute(sqlx::AssertSqlSafe(*s)).await?;
        }
        if self.backend == Backend::Postgres {
            // Default privileges may have granted the workload's role access: take it back.
            let grantees: Vec<String> = sqlx::query(
                "SELECT DISTINCT grantee::text AS g FROM information_schema.role_table_grants \
                 WHERE table_name IN ('cellfleet_changes', 'cellfleet_applying') \
                 AND grantee <> current_user AND grantee <> 'PUBLIC'",
            )
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("g"))
            .collect::<Result<_, _>>()?;
            for g in grantees {
                self.pool
                    .execute(sqlx::AssertSqlSafe(format!(
                        "REVOKE ALL ON cellfleet_changes, cellfleet_applying FROM {}",
                        quote(&g)
                    )))
                    .await?;
            }
        }
        Ok(())
    }

    /// Every table with a `tenant_id` column (but the agent's own), with its columns and primary
    /// key, and whether it can be moved safely.
    pub async fn tenant_tables(&self) -> Result<Vec<TenantTable>, CellDbError> {
        let mut out = Vec::new();
        match self.backend {
            Backend::Sqlite => {
                let names: Vec<String> = sqlx::query(
                    "SELECT m.name AS name FROM sqlite_master m WHERE m.type = 'table' \
                     AND m.name NOT LIKE 'cellfleet\\_%' ESCAPE '\\' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                     AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) p WHERE p.name = 'tenant_id') \
                     ORDER BY m.name",
                )
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get("name"))
                .collect::<Result<_, _>>()?;
                for name in names {
                    let cols = sqlx::query(
                        "SELECT name, pk, type FROM pragma_table_info($1) ORDER BY cid",
                    )
                    .bind(name.clone())
                    .fetch_all(&self.pool)
                    .await?;
                    let mut columns = Vec::new();
                    let mut pk: Vec<(i64, String, String)> = Vec::new();
                    for c in &cols {
                        let col: String = c.try_get("name")?;
                        let pos: i64 = c.try_get("pk")?;
                        let ty: String = c.try_get("type")?;
                        if pos > 0 {
                            pk.push((pos, col.clone(), ty));
                        }
                        columns.push(col);
                    }
                    pk.sort();
                    let unmovable = match pk.as_slice() {
                        [] => Some("no primary key".to_owned()),
                        // `INTEGER PRIMARY KEY` is the rowid: the database assigns it.
                        [(_, col, ty)]
                            if ty.eq_ignore_ascii_case("INTEGER") && col != "tenant_id" =>
                        {
                            Some(format!(
                                "primary key {col} is the rowid (INTEGER PRIMARY KEY): the database assigns it, so it could collide in another cell"
                            ))
                        }
                        _ => None,
                    };
                    out.push(TenantTable {
                        name,
                        columns,
                        pk: pk.into_iter().map(|(_, c, _)| c).collect(),
                        unmovable,
                    });
                }
            }
            Backend::Postgres => {
                let names: Vec<String> = sqlx::query(
                    "SELECT c.relname::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname NOT LIKE 'cellfleet\\_%' \
                     AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) \
                     ORDER BY c.relname",
                )
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get("name"))
                .collect::<Result<_, _>>()?;
                for name in names {
                    let columns: Vec<String> = sqlx::query(
                        "SELECT a.attname::text AS name FROM pg_attribute a \
                         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    )
                    .bind(quote(&name))
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| r.try_get("name"))
                    .collect::<Result<_, _>>()?;
                    let pk_rows = sqlx::query(
                        "SELECT a.attname::text AS name, \
                           (pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%' OR a.attidentity <> '') AS generated \
                         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                         WHERE i.indrelid = $1::regclass AND i.indisprimary \
                         ORDER BY array_position(i.indkey, a.attnum)",
                    )
                    .bind(quote(&name))
                    .fetch_all(&self.pool)
                    .await?;
                    let mut pk = Vec::new();
                    let mut generated = false;
                    for r in &pk_rows {
                        pk.push(r.try_get::<String, _>("name")?);
                        generated |= r.try_get::<Option<bool>, _>("generated")?.unwrap_or(false);
                    }
                    let unmovable = if pk.is_empty() {
                        Some("no primary key".to_owned())
                    } else if generated && !pk.iter().any(|c| c == "tenant_id") {
                        Some(format!(
                            "primary key ({}) is generated by a sequence: it could collide in another cell",
                            pk.join(", ")
                        ))
                    } else {
                        None
                    };
                    out.push(TenantTable {
                        name,
                        columns,
                        pk,
                        unmovable,
                    });
                }
            }
        }
        Ok(out)
    }

    /// A transaction whose reads agree with each other (the capture log and the rows).
    pub async fn snapshot(&self) -> Result<Transaction<'static, Any>, CellDbError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        })
    }

    /// Sets the tenant for row-level security in `conn`'s transaction (PostgreSQL).
    async fn scope(&self, conn: &mut AnyConnection, tenant: &str) -> Result<(), CellDbError> {
        if self.backend == Backend::Postgres {
            conn.execute(
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(tenant.to_owned()),
            )
            .await?;
        }
        Ok(())
    }

    /// The newest change captured for `move_id` (0 when none).
    pub async fn change_head(&self, move_id: &str) -> Result<i64, CellDbError> {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) AS head FROM cellfleet_changes WHERE move_id = $1",
        )
        .bind(move_id.to_owned())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("head")?)
    }

    async fn trigger_exists(&self, name: &str) -> Result<bool, CellDbError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'trigger' AND name = $1"
            }
            Backend::Postgres => "SELECT COUNT(*) AS n FROM pg_trigger WHERE tgname = $1",
        };
        let n: i64 = sqlx::query(sql)
            .bind(name.to_owned())
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(n > 0)
    }

    /// Whether capture (`kind` "cap") or the guard ("grd") of `move_id` is installed.
    pub async fn installed(&self, kind: &str, move_id: &str) -> Result<bool, CellDbError> {
        let name = trigger_name(kind, move_id, 0);
        let probe = match self.backend {
            Backend::Sqlite => format!("{name}_i"),
            Backend::Postgres => name,
        };
        self.trigger_exists(&probe).await
    }

    /// Installs change capture of `tenant`'s rows for `move_id` on every table (idempotent).
    pub async fn install_capture(
        &self,
        move_id: &str,
        tenant: &str,
        tables: &[TenantTable],
    ) -> Result<(), CellDbError> {
        let mut tx = self.locked().await?;
        for (i, t) in tables.iter().enumerate() {
            let name = trigger_name("cap", move_id, i);
            let table = quote(&t.name);
            let (id, tl, tn) = (literal(move_id), literal(tenant), literal(&t.name));
            match self.backend {
                Backend::Sqlite => {
                    let pk = |side: &str| {
                        format!(
                            "json_array({})",
                            t.pk.iter()
                                .map(|c| format!("{side}.{}", quote(c)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    let row = |side: &str| {
                        format!(
                            "json_object({})",
                            t.columns
                                .iter()
                                .map(|c| format!("{}, {side}.{}", literal(c), quote(c)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    let not_applying = "NOT EXISTS (SELECT 1 FROM cellfleet_applying)";
                    for sql in [
                        format!(
                            "CREATE TRIGGER IF NOT EXISTS {name}_i AFTER INSERT ON {table} \
                             WHEN NEW.tenant_id = {tl} AND {not_applying} BEGIN \
                             INSERT INTO cellfleet_changes (move_id, tbl, op, pk, row) VALUES ({id}, {tn}, 'upsert', {}, {}); END",
                            pk("NEW"),
                            row("NEW")
                        ),
                        format!(
                            "CREATE TRIGGER IF NOT EXISTS {name}_u AFTER UPDATE ON {table} \
                             WHEN (OLD.tenant_id = {tl} OR NEW.tenant_id = {tl}) AND {not_applying} BEGIN \
                             INSERT INTO cellfleet_changes (move_id, tbl, op, pk, row) SELECT {id}, {tn}, 'delete', {}, NULL \
                             WHERE OLD.tenant_id = {tl} AND (NEW.tenant_id IS NOT {tl} OR {} IS NOT {}); \
                             INSERT INTO cellfleet_changes (move_id, tbl, op, pk, row) SELECT {id}, {tn}, 'upsert', {}, {} \
                             WHERE NEW.tenant_id = {tl}; END",
                            pk("OLD"),
                            pk("OLD"),
                            pk("NEW"),
                            pk("NEW"),
                            row("NEW")
                        ),
                        format!(
                            "CREATE TRIGGER IF NOT EXISTS {name}_d AFTER DELETE ON {table} \
                             WHEN OLD.tenant_id = {tl} AND {not_applying} BEGIN \
                             INSERT INTO cellfleet_changes (move_id, tbl, op, pk, row) VALUES ({id}, {tn}, 'delete', {}, NULL); END",
                            pk("OLD")
                        ),
                    ] {
                        tx.execute(sqlx::AssertSqlSafe(sql)).await?;
                    }
                }
                Backend::Postgres => {
                    let pk = |side: &str| {
                        format!(
                            "jsonb_build_array({})::text",
                            t.pk.iter()
                                .map(|c| format!("{side}.{}", quote(c)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    let pk_cols = |side: &str| {
                        format!(
                            "({})",
                            t.pk.iter()
                                .map(|c| format!("{side}.{}", quote(c)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    let function = format!(
                        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
                         SET search_path = {} AS $cf$ BEGIN \
                         IF EXISTS (SELECT 1 FROM cellfleet_applying) THEN RETURN NULL; END IF; \
                         IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.tenant_id::text = {tl} AND (TG_OP = 'DELETE' \
                            OR NEW.tenant_id::text IS DISTINCT FROM {tl} OR {} IS DISTINCT FROM {}) THEN \
                           INSERT INTO cellfleet_changes (move_id, tbl, op, pk, row) VALUES ({id}, {tn}, 'delete', {}, NULL); \
                         END IF; \
                         IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.tenant_id::text = {tl} THEN \
                           INSERT INTO cellfleet_changes (move_id, tbl, op, pk, row) VALUES ({id}, {tn}, 'upsert', {}, to_jsonb(NEW)::text); \
                         END IF; \
                         RETURN NULL; END $cf$",
                        quote(&self.schema().await?),
                        pk_cols("OLD"),
                        pk_cols("NEW"),
                        pk("OLD"),
                        pk("NEW"),
                    );
                    tx.execute(sqlx::AssertSqlSafe(function)).await?;
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "DROP TRIGGER IF EXISTS {name} ON {table}"
                    )))
                    .await?;
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "CREATE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {table} \
                         FOR EACH ROW EXECUTE FUNCTION {name}()"
                    )))
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn schema(&self) -> Result<String, CellDbError> {
        Ok(sqlx::query("SELECT current_schema()::text AS s")
            .fetch_one(&self.pool)
            .await?
            .try_get("s")?)
    }

    /// Installs the guard: writes of `tenant`'s rows are refused unless applied by the agent.
    /// Waits for writes in flight (the triggers take the tables' write lock), so once it returns
    /// no write of the tenant can commit here any more.
    pub async fn install_guard(
        &self,
        move_id: &str,
        tenant: &str,
        tables: &[TenantTable],
    ) -> Result<(), CellDbError> {
        let mut tx = self.locked().await?;
        let message = format!("cellfleet-fenced: tenant {tenant} is being moved ({move_id})");
        for (i, t) in tables.iter().enumerate() {
            let name = trigger_name("grd", move_id, i);
            let table = quote(&t.name);
            let tl = literal(tenant);
            match self.backend {
                Backend::Sqlite => {
                    let not_applying = "NOT EXISTS (SELECT 1 FROM cellfleet_applying)";
                    let raise = format!("SELECT RAISE(ABORT, {});", literal(&message));
                    for sql in [
                        format!(
                            "CREATE TRIGGER IF NOT EXISTS {name}_i BEFORE INSERT ON {table} WHEN NEW.tenant_id = {tl} AND {not_applying} BEGIN {raise} END"
                        ),
                        format!(
                            "CREATE TRIGGER IF NOT EXISTS {name}_u BEFORE UPDATE ON {table} WHEN (OLD.tenant_id = {tl} OR NEW.tenant_id = {tl}) AND {not_applying} BEGIN {raise} END"
                        ),
                        format!(
                            "CREATE TRIGGER IF NOT EXISTS {name}_d BEFORE DELETE ON {table} WHEN OLD.tenant_id = {tl} AND {not_applying} BEGIN {raise} END"
                        ),
                    ] {
                        tx.execute(sqlx::AssertSqlSafe(sql)).await?;
                    }
                }
                Backend::Postgres => {
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
                         SET search_path = {} AS $cf$ BEGIN \
                         IF EXISTS (SELECT 1 FROM cellfleet_applying) THEN RETURN COALESCE(NEW, OLD); END IF; \
                         IF (TG_OP <> 'INSERT' AND OLD.tenant_id::text = {tl}) OR (TG_OP <> 'DELETE' AND NEW.tenant_id::text = {tl}) THEN \
                           RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = {}; \
                         END IF; RETURN COALESCE(NEW, OLD); END $cf$",
                        quote(&self.schema().await?),
                        literal(&message)
                    )))
                    .await?;
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "DROP TRIGGER IF EXISTS {name} ON {table}"
                    )))
                    .await?;
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "CREATE TRIGGER {name} BEFORE INSERT OR UPDATE OR DELETE ON {table} \
                         FOR EACH ROW EXECUTE FUNCTION {name}()"
                    )))
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Drops capture ("cap") or the guard ("grd") of `move_id` (idempotent); dropping capture
    /// also forgets the move's captured changes.
    pub async fn drop_triggers(
        &self,
        kind: &str,
        move_id: &str,
        tables: &[TenantTable],
    ) -> Result<(), CellDbError> {
        let mut tx = self.locked().await?;
        // Triggers of tables that no longer hold tenant rows are found by name, too.
        let existing: Vec<String> = match self.backend {
            Backend::Sqlite => sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE $1",
            ),
            Backend::Postgres => {
                sqlx::query("SELECT tgname::text AS name FROM pg_trigger WHERE tgname LIKE $1")
            }
        }
        .bind(format!(
            "{}%",
            trigger_name(kind, move_id, 0).trim_end_matches('0')
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("name"))
        .collect::<Result<_, _>>()?;
        for (i, t) in tables.iter().enumerate() {
            let name = trigger_name(kind, move_id, i);
            match self.backend {
                Backend::Sqlite => {
                    for suffix in ["i", "u", "d"] {
                        tx.execute(sqlx::AssertSqlSafe(format!(
                            "DROP TRIGGER IF EXISTS {name}_{suffix}"
                        )))
                        .await?;
                    }
                }
                Backend::Postgres => {
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "DROP TRIGGER IF EXISTS {name} ON {}",
                        quote(&t.name)
                    )))
                    .await?;
                    tx.execute(sqlx::AssertSqlSafe(format!(
                        "DROP FUNCTION IF EXISTS {name}()"
                    )))
                    .await?;
                }
            }
        }
        if self.backend == Backend::Sqlite {
            for name in existing {
                tx.execute(sqlx::AssertSqlSafe(format!(
                    "DROP TRIGGER IF EXISTS {}",
                    quote(&name)
                )))
                .await?;
            }
        }
        if kind == "cap" {
            tx.execute(
                sqlx::query("DELETE FROM cellfleet_changes WHERE move_id = $1")
                    .bind(move_id.to_owned()),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` rows of `tenant` in `table` after primary key `after` (in key order), as
    /// `(pk, row)` JSON.
    pub async fn read_rows(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        table: &TenantTable,
        after: Option<&Value>,
        limit: i64,
    ) -> Result<Vec<(Value, Value)>, CellDbError> {
        self.scope(conn, tenant).await?;
        let cols = |prefix: &str| {
            table
                .pk
                .iter()
                .map(|c| format!("{prefix}{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (pk_expr, row_expr) = match self.backend {
            Backend::Sqlite => (
                format!("json_array({})", cols("")),
                format!(
                    "json_object({})",
                    table
                        .columns
                        .iter()
                        .map(|c| format!("{}, {}", literal(c), quote(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Backend::Postgres => (
                format!("jsonb_build_array({})::text", cols("t.")),
                "to_jsonb(t.*)::text".to_owned(),
            ),
        };
        let after_values: Vec<Value> = after
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default();
        let mut sql = format!(
            "SELECT {pk_expr} AS pk, {row_expr} AS row FROM {} t WHERE t.tenant_id = $1",
            quote(&table.name)
        );
        if !after_values.is_empty() {
            let params: Vec<String> = (0..after_values.len())
                .map(|i| format!("${}", i + 2))
                .collect();
            sql.push_str(&format!(" AND ({}) > ({})", cols("t."), params.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", cols("t.")));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.to_owned());
        for v in &after_values {
            q = bind_json(q, v);
        }
        let rows = q.fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse(&r.try_get::<String, _>("pk")?)?,
                    parse(&r.try_get::<String, _>("row")?)?,
                ))
            })
            .collect()
    }

    /// Up to `limit` changes of `move_id` after `after` (and up to `upto`), in order.
    pub async fn read_changes(
        &self,
        conn: &mut AnyConnection,
        move_id: &str,
        after: i64,
        upto: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Change>, CellDbError> {
        let rows = sqlx::query(
            "SELECT seq, tbl, op, pk, row FROM cellfleet_changes \
             WHERE move_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
        )
        .bind(move_id.to_owned())
        .bind(after)
        .bind(upto.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let row: Option<String> = r.try_get("row")?;
                Ok(Change {
                    seq: r.try_get("seq")?,
                    item: serde_json::json!({
                        "table": r.try_get::<String, _>("tbl")?,
                        "op": r.try_get::<String, _>("op")?,
                        "pk": parse(&r.try_get::<String, _>("pk")?)?,
                        "row": row.map(|t| parse(&t)).transpose()?,
                    }),
                })
            })
            .collect()
    }

    /// The primary keys touched by `move_id`'s changes in `(after, upto]`, per table.
    pub async fn touched(
        &self,
        conn: &mut AnyConnection,
        move_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<BTreeMap<String, Vec<Value>>, CellDbError> {
        let rows = sqlx::query(
            "SELECT DISTINCT tbl, pk FROM cellfleet_changes WHERE move_id = $1 AND seq > $2 AND seq <= $3",
        )
        .bind(move_id.to_owned())
        .bind(after)
        .bind(upto)
        .fetch_all(&mut *conn)
        .await?;
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in rows {
            out.entry(r.try_get("tbl")?)
                .or_default()
                .push(parse(&r.try_get::<String, _>("pk")?)?);
        }
        Ok(out)
    }

    /// Fresh planner statistics for `tables` (PostgreSQL; SQLite plans these scans well without).
    /// A table bulk-loaded or bulk-copied since autovacuum last looked is planned as if it were
    /// small, and every keyset page of a copy or checksum round then sorts the tenant's remaining
    /// rows (seen: 0.7 s a page at 1M rows); analyzed, the page is an ordered index range.
    pub async fn refresh_stats(&self, tables: &[TenantTable]) -> Result<(), CellDbError> {
        if self.backend == Backend::Postgres {
            for t in tables {
                self.pool
                    .execute(sqlx::AssertSqlSafe(format!("ANALYZE {}", quote(&t.name))))
                    .await?;
            }
        }
        Ok(())
    }

    /// Rows and checksums of `tenant`'s rows per table (only the rows with `pks` when given).
    pub async fn checksums(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        tables: &[TenantTable],
        pks: Option<&BTreeMap<String, Vec<Value>>>,
    ) -> Result<BTreeMap<String, TableSum>, CellDbError> {
        let mut out = BTreeMap::new();
        for t in tables {
            let mut sum = TableSum::default();
            match pks {
                None => {
                    let mut after: Option<Value> = None;
                    loop {
                        let batch = self
                            .read_rows(conn, tenant, t, after.as_ref(), 5_000)
                            .await?;
                        let Some((last, _)) = batch.last() else { break };
                        after = Some(last.clone());
                        for (_, row) in &batch {
                            sum.rows += 1;
                            sum.sum = sum.sum.wrapping_add(row_hash(row));
                        }
                    }
                }
                Some(pks) => {
                    for pk in pks.get(&t.name).map(Vec::as_slice).unwrap_or_default() {
                        if let Some(row) = self.row_by_pk(conn, tenant, t, pk).await? {
                            sum.rows += 1;
                            sum.sum = sum.sum.wrapping_add(row_hash(&row));
                        }
                    }
                }
            }
            out.insert(t.name.clone(), sum);
        }
        Ok(out)
    }

    async fn row_by_pk(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        t: &TenantTable,
        pk: &Value,
    ) -> Result<Option<Value>, CellDbError> {
        let values = pk.as_array().cloned().unwrap_or_default();
        if values.len() != t.pk.len() {
            return Ok(None);
        }
        let row_expr = match self.backend {
            Backend::Sqlite => format!(
                "json_object({})",
                t.columns
                    .iter()
                    .map(|c| format!("{}, {}", literal(c), quote(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Backend::Postgres => "to_jsonb(t.*)::text".to_owned(),
        };
        let cond: Vec<String> =
            t.pk.iter()
                .enumerate()
                .map(|(i, c)| format!("t.{} = ${}", quote(c), i + 2))
                .collect();
        let sql = format!(
            "SELECT {row_expr} AS row FROM {} t WHERE t.tenant_id = $1 AND {}",
            quote(&t.name),
            cond.join(" AND ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.to_owned());
        for v in &values {
            q = bind_json(q, v);
        }
        q.fetch_optional(&mut *conn)
            .await?
            .map(|r| parse(&r.try_get::<String, _>("row")?))
            .transpose()
    }

    /// Applies rows (`{table, pk, row}` upserts, or `op: delete`) in one transaction that the
    /// capture and guard triggers ignore. A run of upserts into one table with distinct keys is
    /// one statement (the rows travel as one JSON array), so a bulk-copy chunk costs a few round
    /// trips, not one per row; stream order is kept (a key met again starts a new run).
    pub async fn apply_items(
        &self,
        tenant: &str,
        tables: &[TenantTable],
        items: &[Value],
    ) -> Result<(), CellDbError> {
        let mut tx = self.locked().await?;
        self.scope(&mut tx, tenant).await?;
        tx.execute("INSERT INTO cellfleet_applying (x) VALUES (1)")
            .await?;
        let mut run: Vec<&Value> = Vec::new();
        let mut run_keys: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut run_table: Option<&TenantTable> = None;
        for item in items {
            let name = item["table"].as_str().unwrap_or_default();
            let Some(t) = tables.iter().find(|t| t.name == name) else {
                return Err(CellDbError::Sql(sqlx::Error::Protocol(format!(
                    "a move chunk names table {name:?}, which holds no tenant rows here"
                ))));
            };
            let delete = item["op"].as_str() == Some("delete");
            let key = item["pk"].to_string();
            let continues =
                !delete && run_table.is_some_and(|r| r.name == t.name) && !run_keys.contains(&key);
            if !continues {
                if let Some(r) = run_table.take() {
                    self.upsert_run(&mut tx, r, &run).await?;
                }
                run.clear();
                run_keys.clear();
            }
            if delete {
                let values = item["pk"].as_array().cloned().unwrap_or_default();
                let cond: Vec<String> =
                    t.pk.iter()
                        .enumerate()
                        .map(|(i, c)| format!("{} = ${}", quote(c), i + 2))
                        .collect();
                let sql = format!(
                    "DELETE FROM {} WHERE tenant_id = $1 AND {}",
                    quote(&t.name),
                    cond.join(" AND ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.to_owned());
                for v in &values {
                    q = bind_json(q, v);
                }
                tx.execute(q).await?;
                continue;
            }
            let row = &item["row"];
            if row["tenant_id"].as_str() != Some(tenant) {
                return Err(CellDbError::Sql(sqlx::Error::Protocol(format!(
                    "a move chunk carries a row of {name} that is not tenant {tenant}'s"
                ))));
            }
            run_table = Some(t);
            run_keys.insert(key);
            run.push(row);
        }
        if let Some(r) = run_table {
            self.upsert_run(&mut tx, r, &run).await?;
        }
        tx.execute("DELETE FROM cellfleet_applying").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Upserts `rows` (full row images of `t`, distinct keys) in one statement.
    async fn upsert_run(
        &self,
        conn: &mut AnyConnection,
        t: &TenantTable,
        rows: &[&Value],
    ) -> Result<(), CellDbError> {
        if rows.is_empty() {
            return Ok(());
        }
        let pk = t.pk.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let set = t
            .columns
            .iter()
            .filter(|c| !t.pk.contains(c))
            .map(|c| format!("{} = excluded.{}", quote(c), quote(c)))
            .collect::<Vec<_>>();
        let on_conflict = if set.is_empty() {
            format!("ON CONFLICT ({pk}) DO NOTHING")
        } else {
            format!("ON CONFLICT ({pk}) DO UPDATE SET {}", set.join(", "))
        };
        let sql = match self.backend {
            // `WHERE true` keeps SQLite from reading ON CONFLICT as part of the join.
            Backend::Sqlite => format!(
                "INSERT INTO {} ({}) SELECT {} FROM json_each($1) WHERE true {on_conflict}",
                quote(&t.name),
                t.columns
                    .iter()
                    .map(|c| quote(c))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.columns
                    .iter()
                    .map(|c| format!("json_extract(value, {})", literal(&format!("$.\"{c}\""))))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Backend::Postgres => format!(
                "INSERT INTO {t} SELECT * FROM jsonb_populate_recordset(NULL::{t}, $1::jsonb) {on_conflict}",
                t = quote(&t.name)
            ),
        };
        let array = serde_json::to_string(rows).unwrap_or_else(|_| "[]".into());
        conn.execute(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(array))
            .await?;
        Ok(())
    }

    /// Deletes up to `batch` of `tenant`'s rows per table (past any guard); returns how many it
    /// deleted (0: none left).
    pub async fn delete_rows(
        &self,
        tenant: &str,
        tables: &[TenantTable],
        batch: i64,
    ) -> Result<u64, CellDbError> {
        let mut deleted = 0;
        for t in tables {
            let rows = {
                let mut conn = self.pool.acquire().await?;
                self.read_rows(&mut conn, tenant, t, None, batch).await?
            };
            if rows.is_empty() {
                continue;
            }
            let items: Vec<Value> = rows
                .iter()
                .map(|(pk, _)| serde_json::json!({"table": t.name, "op": "delete", "pk": pk}))
                .collect();
            self.apply_items(tenant, tables, &items).await?;
            deleted += rows.len() as u64;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": [1, {"f": 2, "e": 3}], "c": null}}"#)
                .unwrap_or_default();
        assert_eq!(
            canonical(&a),
            r#"{"a":{"c":null,"d":[1,{"e":3,"f":2}]},"b":1}"#
        );
        let b: Value =
            serde_json::from_str(r#"{"a": {"c": null, "d": [1, {"e": 3, "f": 2}]}, "b": 1}"#)
                .unwrap_or_default();
        assert_eq!(row_hash(&a), row_hash(&b));
    }
}
