//! Per-cell desired-state generations and agent reports.

use std::collections::HashMap;

use cellfleet_api::{AgentReport, CellName, CellReport};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Executor, Row};

use super::{PlacementRow, Result, TenantRow, from_millis, json_column, millis};

/// A cell's desired-state generation and the hash of the document it stands for.
pub async fn cell_generation(
    conn: &mut AnyConnection,
    cell: &CellName,
) -> Result<Option<(i64, String)>> {
    let row = sqlx::query("SELECT desired_generation, desired_hash FROM cells WHERE name = $1")
        .bind(cell.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| Ok((r.try_get("desired_generation")?, r.try_get("desired_hash")?)))
        .transpose()
}

pub async fn set_cell_generation(
    conn: &mut AnyConnection,
    cell: &CellName,
    generation: i64,
    hash: &str,
) -> Result<()> {
    conn.execute(
        sqlx::query("UPDATE cells SET desired_generation = $1, desired_hash = $2 WHERE name = $3")
            .bind(generation)
            .bind(hash.to_owned())
            .bind(cell.to_string()),
    )
    .await?;
    Ok(())
}

/// Every placement on `cell` with its tenant, ordered by (tenant, env).
pub async fn placements_on(
    conn: &mut AnyConnection,
    cell: &CellName,
) -> Result<Vec<(PlacementRow, TenantRow)>> {
    let rows = sqlx::query(
        "SELECT p.tenant_id, p.env, p.cell, p.region, p.generation, p.explanation, p.placed_at, \
         t.id, t.state, t.state_reason, t.spec, t.created_at, t.updated_at, t.archived_at, t.pending \
         FROM placements p JOIN tenants t ON t.id = p.tenant_id WHERE p.cell = $1 \
         ORDER BY p.tenant_id, p.env",
    )
    .bind(cell.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                super::registry::placement_row(r)?,
                super::registry::tenant_row(r)?,
            ))
        })
        .collect()
}

pub async fn put_report(
    conn: &mut AnyConnection,
    cell: &CellName,
    report: &AgentReport,
    at: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO cell_reports (cell, report, reported_at) VALUES ($1, $2, $3) \
             ON CONFLICT (cell) DO UPDATE SET report = excluded.report, reported_at = excluded.reported_at",
        )
        .bind(cell.to_string())
        .bind(super::canonical(report))
        .bind(millis(at)),
    )
    .await?;
    Ok(())
}

pub async fn get_report(conn: &mut AnyConnection, cell: &CellName) -> Result<Option<CellReport>> {
    let row = sqlx::query("SELECT cell, report, reported_at FROM cell_reports WHERE cell = $1")
        .bind(cell.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref()
        .map(report_row)
        .transpose()
        .map(|r| r.map(|(_, r)| r))
}

/// Every cell's last report.
pub async fn reports(conn: &mut AnyConnection) -> Result<HashMap<String, CellReport>> {
    let rows = sqlx::query("SELECT cell, report, reported_at FROM cell_reports")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(report_row).collect()
}

fn report_row(row: &sqlx::any::AnyRow) -> Result<(String, CellReport)> {
    let cell: String = row.try_get("cell")?;
    let report = json_column(
        &format!("report of cell {cell}"),
        &row.try_get::<String, _>("report")?,
    )?;
    Ok((
        cell,
        CellReport {
            report,
            reported_at: from_millis(row.try_get("reported_at")?),
        },
    ))
}

/// The cell-migration stream, in version order.
pub async fn list_migrations(conn: &mut AnyConnection) -> Result<Vec<cellfleet_api::Migration>> {
    let rows = sqlx::query(
        "SELECT version, name, phase, checksum, sql FROM cell_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(cellfleet_api::Migration {
                version: r.try_get("version")?,
                name: r.try_get("name")?,
                phase: super::parse_column("migration phase", &r.try_get::<String, _>("phase")?)?,
                checksum: r.try_get("checksum")?,
                sql: r.try_get("sql")?,
            })
        })
        .collect()
}

pub async fn insert_migration(
    conn: &mut AnyConnection,
    m: &cellfleet_api::Migration,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO cell_migrations (version, name, phase, checksum, sql, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(m.version)
        .bind(m.name.clone())
        .bind(m.phase.as_str())
        .bind(m.checksum.clone())
        .bind(m.sql.clone())
        .bind(millis(now)),
    )
    .await?;
    Ok(())
}

/// Every cell's name.
pub async fn cell_names(conn: &mut AnyConnection) -> Result<Vec<CellName>> {
    let rows = sqlx::query("SELECT name FROM cells ORDER BY name")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| super::parse_column("cell name", &r.try_get::<String, _>("name")?))
        .collect()
}

/// One stored release.
pub async fn get_release(
    conn: &mut AnyConnection,
    version: &str,
) -> Result<Option<cellfleet_api::ReleaseView>> {
    let row = sqlx::query("SELECT version, spec, created_at FROM releases WHERE version = $1")
        .bind(version.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(release_row).transpose()
}

/// Every release, oldest first.
pub async fn list_releases(conn: &mut AnyConnection) -> Result<Vec<cellfleet_api::ReleaseView>> {
    let rows =
        sqlx::query("SELECT version, spec, created_at FROM releases ORDER BY created_at, version")
            .fetch_all(&mut *conn)
            .await?;
    rows.iter().map(release_row).collect()
}

fn release_row(row: &sqlx::any::AnyRow) -> Result<cellfleet_api::ReleaseView> {
    let version: String = row.try_get("version")?;
    Ok(cellfleet_api::ReleaseView {
        spec: json_column(
            &format!("release {version}"),
            &row.try_get::<String, _>("spec")?,
        )?,
        version,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

pub async fn insert_release(
    conn: &mut AnyConnection,
    version: &str,
    spec: &cellfleet_api::ReleaseSpec,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query("INSERT INTO releases (version, spec, created_at) VALUES ($1, $2, $3)")
            .bind(version.to_owned())
            .bind(super::canonical(spec))
            .bind(millis(now)),
    )
    .await?;
    Ok(())
}

pub async fn set_cell_release(
    conn: &mut AnyConnection,
    cell: &CellName,
    version: &str,
) -> Result<()> {
    conn.execute(
        sqlx::query("UPDATE cells SET desired_release = $1 WHERE name = $2")
            .bind(version.to_owned())
            .bind(cell.to_string()),
    )
    .await?;
    Ok(())
}
