//! The routing table: one row per routable `(tenant, env)`, a change log keyed by the table-wide
//! version, and the head of that version. Written only from `Registry::commit`, under the write
//! lock, in the transaction of the change that caused it.

use cellfleet_api::{CellName, Env, RouteChange, RouteEntry, TenantId};
use sqlx::{AnyConnection, Executor, Row};

use super::{Result, canonical, json_column, parse_column};

/// How many changes the log keeps; a watcher further behind gets a snapshot instead.
pub const ROUTE_LOG_KEEP: i64 = 10_000;

pub async fn routing_version(conn: &mut AnyConnection) -> Result<i64> {
    Ok(sqlx::query("SELECT version FROM routing_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get("version")?)
}

/// The routing table's epoch (see migration 0009).
pub async fn routing_epoch(conn: &mut AnyConnection) -> Result<String> {
    Ok(sqlx::query("SELECT epoch FROM routing_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get("epoch")?)
}

/// Replaces the epoch with `new`, if it still is `old` (`None`: whatever it is); whether it did.
pub async fn rotate_routing_epoch(
    conn: &mut AnyConnection,
    old: Option<&str>,
    new: &str,
) -> Result<bool> {
    let done = match old {
        Some(old) => {
            conn.execute(
                sqlx::query("UPDATE routing_head SET epoch = $1 WHERE id = 1 AND epoch = $2")
                    .bind(new)
                    .bind(old),
            )
            .await?
        }
        None => {
            conn.execute(sqlx::query("UPDATE routing_head SET epoch = $1 WHERE id = 1").bind(new))
                .await?
        }
    };
    Ok(done.rows_affected() == 1)
}

pub async fn set_routing_version(conn: &mut AnyConnection, version: i64) -> Result<()> {
    conn.execute(sqlx::query("UPDATE routing_head SET version = $1 WHERE id = 1").bind(version))
        .await?;
    // Keep the log bounded.
    conn.execute(
        sqlx::query("DELETE FROM route_changes WHERE version <= $1").bind(version - ROUTE_LOG_KEEP),
    )
    .await?;
    Ok(())
}

fn entry_of(row: &sqlx::any::AnyRow) -> Result<RouteEntry> {
    json_column("route entry", &row.try_get::<String, _>("entry")?)
}

pub async fn routes_on_cell(conn: &mut AnyConnection, cell: &CellName) -> Result<Vec<RouteEntry>> {
    let rows = sqlx::query("SELECT entry FROM routes WHERE cell = $1")
        .bind(cell.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(entry_of).collect()
}

pub async fn all_routes(conn: &mut AnyConnection) -> Result<Vec<RouteEntry>> {
    let rows = sqlx::query("SELECT entry FROM routes ORDER BY tenant_id, env")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(entry_of).collect()
}

pub async fn get_route(
    conn: &mut AnyConnection,
    tenant: &TenantId,
    env: &Env,
) -> Result<Option<RouteEntry>> {
    let row = sqlx::query("SELECT entry FROM routes WHERE tenant_id = $1 AND env = $2")
        .bind(tenant.to_string())
        .bind(env.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(entry_of).transpose()
}

/// Records `entry` (or the removal of `(tenant, env)`) as the change at `version`.
pub async fn write_route(
    conn: &mut AnyConnection,
    version: i64,
    tenant: &TenantId,
    env: &Env,
    entry: Option<&RouteEntry>,
) -> Result<()> {
    match entry {
        Some(e) => {
            conn.execute(
                sqlx::query(
                    "INSERT INTO routes (tenant_id, env, cell, entry, version) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (tenant_id, env) DO UPDATE SET cell = excluded.cell, entry = excluded.entry, \
                     version = excluded.version",
                )
                .bind(tenant.to_string())
                .bind(env.to_string())
                .bind(e.cell.to_string())
                .bind(canonical(e))
                .bind(version),
            )
            .await?;
        }
        None => {
            conn.execute(
                sqlx::query("DELETE FROM routes WHERE tenant_id = $1 AND env = $2")
                    .bind(tenant.to_string())
                    .bind(env.to_string()),
            )
            .await?;
        }
    }
    conn.execute(
        sqlx::query(
            "INSERT INTO route_changes (version, tenant_id, env, entry) VALUES ($1, $2, $3, $4)",
        )
        .bind(version)
        .bind(tenant.to_string())
        .bind(env.to_string())
        .bind(entry.map(canonical)),
    )
    .await?;
    Ok(())
}

/// Changes after `since`, oldest first; `None` when the log no longer reaches back that far.
pub async fn route_changes_since(
    conn: &mut AnyConnection,
    since: i64,
) -> Result<Option<Vec<RouteChange>>> {
    let oldest: Option<i64> = sqlx::query("SELECT MIN(version) AS v FROM route_changes")
        .fetch_one(&mut *conn)
        .await?
        .try_get("v")?;
    let head = routing_version(conn).await?;
    if since < head && oldest.is_none_or(|o| since + 1 < o) {
        return Ok(None);
    }
    let rows = sqlx::query("SELECT version, tenant_id, env, entry FROM route_changes WHERE version > $1 ORDER BY version")
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RouteChange {
                version: r.try_get("version")?,
                tenant: parse_column("route tenant", &r.try_get::<String, _>("tenant_id")?)?,
                env: parse_column("route env", &r.try_get::<String, _>("env")?)?,
                entry: r
                    .try_get::<Option<String>, _>("entry")?
                    .map(|e| json_column("route entry", &e))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
