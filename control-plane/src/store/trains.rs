//! What release trains keep besides their operation rows: fleet-wide facts (`fleet_state`: the
//! stopped line, how far contract migrations are released), fleet feature flags, and how far
//! each cell's migration stream goes (`cells.migrations_up_to`).

use cellfleet_api::{CellName, FlagTarget, FlagView};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Executor, Row};

use super::{Result, from_millis, millis};

/// `fleet_state` key: the stopped line (JSON `{reason, by, at, trains}`), absent when running.
pub const LINE: &str = "line";
/// `fleet_state` key: the newest contract migration released to cells (JSON number).
pub const CONTRACT_RELEASED: &str = "contract-released";

pub async fn fleet_value(conn: &mut AnyConnection, key: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM fleet_state WHERE key = $1")
        .bind(key.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get("value")).transpose()?)
}

/// Sets `key` (`None` removes it).
pub async fn set_fleet_value(
    conn: &mut AnyConnection,
    key: &str,
    value: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(sqlx::query("DELETE FROM fleet_state WHERE key = $1").bind(key.to_owned()))
        .await?;
    if let Some(v) = value {
        conn.execute(
            sqlx::query("INSERT INTO fleet_state (key, value, updated_at) VALUES ($1, $2, $3)")
                .bind(key.to_owned())
                .bind(v.to_owned())
                .bind(millis(now)),
        )
        .await?;
    }
    Ok(())
}

/// How far contract migrations are released (0: none).
pub async fn contract_released(conn: &mut AnyConnection) -> Result<i64> {
    Ok(fleet_value(conn, CONTRACT_RELEASED)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

pub async fn list_flags(conn: &mut AnyConnection) -> Result<Vec<FlagView>> {
    let rows = sqlx::query(
        "SELECT name, value, target, killed, updated_at FROM fleet_flags ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let value: String = r.try_get("value")?;
            let target: String = r.try_get("target")?;
            Ok(FlagView {
                name: r.try_get("name")?,
                value: serde_json::from_str(&value).unwrap_or(serde_json::Value::Null),
                target: serde_json::from_str::<FlagTarget>(&target).unwrap_or_default(),
                killed: r.try_get::<i64, _>("killed")? != 0,
                updated_at: from_millis(r.try_get("updated_at")?),
            })
        })
        .collect()
}

pub async fn put_flag(conn: &mut AnyConnection, f: &FlagView) -> Result<()> {
    conn.execute(sqlx::query("DELETE FROM fleet_flags WHERE name = $1").bind(f.name.clone()))
        .await?;
    conn.execute(
        sqlx::query(
            "INSERT INTO fleet_flags (name, value, target, killed, updated_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(f.name.clone())
        .bind(super::canonical(&f.value))
        .bind(super::canonical(&f.target))
        .bind(i64::from(f.killed))
        .bind(millis(f.updated_at)),
    )
    .await?;
    Ok(())
}

/// How far each cell's stream goes (`None`: the whole stream).
pub async fn migrations_up_to(conn: &mut AnyConnection, cell: &CellName) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT migrations_up_to FROM cells WHERE name = $1")
        .bind(cell.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row
        .map(|r| r.try_get::<Option<i64>, _>("migrations_up_to"))
        .transpose()?
        .flatten())
}

pub async fn set_migrations_up_to(
    conn: &mut AnyConnection,
    cell: &CellName,
    up_to: i64,
) -> Result<()> {
    conn.execute(
        sqlx::query("UPDATE cells SET migrations_up_to = $1 WHERE name = $2")
            .bind(up_to)
            .bind(cell.to_string()),
    )
    .await?;
    Ok(())
}

/// Clears a cell's release (a rollback to "nothing": the cell ran no release before).
pub async fn clear_cell_release(conn: &mut AnyConnection, cell: &CellName) -> Result<()> {
    conn.execute(
        sqlx::query("UPDATE cells SET desired_release = NULL WHERE name = $1")
            .bind(cell.to_string()),
    )
    .await?;
    Ok(())
}
