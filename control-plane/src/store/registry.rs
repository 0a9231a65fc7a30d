//! Regions, cells, tenants and placements.
//!
//! Each object keeps the spec it was applied with as canonical JSON (`spec`), which is what
//! "unchanged" is decided against, plus the columns that queries filter and join on. Both are
//! written from the same struct by the same function, so they cannot disagree.

use std::collections::BTreeMap;

use cellfleet_api::{
    CellName, CellSpec, CellState, Env, Explanation, Generation, RegionName, RegionSpec, TenantId,
    TenantSpec, TenantState,
};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};

use super::{Result, from_millis, json_column, millis, parse_column};
use crate::placement::{CellInfo, Fleet, RegionInfo};

#[derive(Debug, Clone, PartialEq)]
pub struct RegionRow {
    pub name: RegionName,
    pub spec: RegionSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CellRow {
    pub name: CellName,
    pub labels: BTreeMap<String, String>,
    pub spec: CellSpec,
    pub state: CellState,
    /// Placements on the cell (derived, never stored).
    pub load: u32,
    /// Generation of the cell's desired state.
    pub desired_generation: i64,
    /// The release the cell should run.
    pub desired_release: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRow {
    pub id: TenantId,
    pub state: TenantState,
    pub state_reason: Option<String>,
    pub spec: TenantSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    /// Some environment still waits for a placement.
    pub pending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRow {
    pub tenant: TenantId,
    pub env: Env,
    pub cell: CellName,
    /// The cell's region (cells cannot change region while they hold tenants).
    pub region: RegionName,
    pub generation: Generation,
    pub explanation: Explanation,
    pub placed_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------------------------
// Regions

fn region_row(row: &AnyRow) -> Result<RegionRow> {
    let name: String = row.try_get("name")?;
    let spec: String = row.try_get("spec")?;
    Ok(RegionRow {
        spec: json_column(&format!("region {name} spec"), &spec)?,
        name: parse_column("region name", &name)?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

pub async fn list_regions(conn: &mut AnyConnection) -> Result<Vec<RegionRow>> {
    let rows = sqlx::query("SELECT name, spec, created_at, updated_at FROM regions ORDER BY name")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(region_row).collect()
}

pub async fn get_region(conn: &mut AnyConnection, name: &RegionName) -> Result<Option<RegionRow>> {
    let row = sqlx::query("SELECT name, spec, created_at, updated_at FROM regions WHERE name = $1")
        .bind(name.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(region_row).transpose()
}

pub async fn upsert_region(
    conn: &mut AnyConnection,
    name: &RegionName,
    spec: &RegionSpec,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO regions (name, jurisdiction, lat, lon, spec, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (name) DO UPDATE SET jurisdiction = excluded.jurisdiction, \
             lat = excluded.lat, lon = excluded.lon, spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(name.to_string())
        .bind(spec.jurisdiction.clone())
        .bind(spec.location.lat)
        .bind(spec.location.lon)
        .bind(canonical(spec))
        .bind(millis(now)),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cells

const CELL_COLUMNS: &str = "SELECT c.name, c.labels, c.spec, c.state, c.created_at, c.updated_at, \
     c.desired_generation, c.desired_release, \
     (SELECT COUNT(*) FROM placements p WHERE p.cell = c.name) + \
     (SELECT COUNT(*) FROM operations o WHERE o.reserves = c.name AND o.finished_at IS NULL) AS load \
     FROM cells c";

fn cell_row(row: &AnyRow) -> Result<CellRow> {
    let name: String = row.try_get("name")?;
    let load: i64 = row.try_get("load")?;
    Ok(CellRow {
        labels: json_column(
            &format!("cell {name} labels"),
            &row.try_get::<String, _>("labels")?,
        )?,
        spec: json_column(
            &format!("cell {name} spec"),
            &row.try_get::<String, _>("spec")?,
        )?,
        state: parse_column("cell state", &row.try_get::<String, _>("state")?)?,
        load: u32::try_from(load).unwrap_or(u32::MAX),
        desired_generation: row.try_get("desired_generation")?,
        desired_release: row.try_get("desired_release")?,
        name: parse_column("cell name", &name)?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

pub async fn list_cells(conn: &mut AnyConnection) -> Result<Vec<CellRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{CELL_COLUMNS} ORDER BY c.name"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(cell_row).collect()
}

pub async fn get_cell(conn: &mut AnyConnection, name: &CellName) -> Result<Option<CellRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{CELL_COLUMNS} WHERE c.name = $1"
    )))
    .bind(name.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(cell_row).transpose()
}

pub async fn upsert_cell(
    conn: &mut AnyConnection,
    name: &CellName,
    labels: &BTreeMap<String, String>,
    spec: &CellSpec,
    state: CellState,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO cells (name, region, kind, env, capacity, template, endpoint, labels, \
             change_window, state, spec, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
             ON CONFLICT (name) DO UPDATE SET region = excluded.region, kind = excluded.kind, \
             env = excluded.env, capacity = excluded.capacity, template = excluded.template, \
             endpoint = excluded.endpoint, labels = excluded.labels, \
             change_window = excluded.change_window, state = excluded.state, spec = excluded.spec, \
             updated_at = excluded.updated_at",
        )
        .bind(name.to_string())
        .bind(spec.region.to_string())
        .bind(spec.kind.as_str())
        .bind(spec.env.to_string())
        .bind(i64::from(spec.effective_capacity()))
        .bind(spec.effective_template())
        .bind(spec.endpoint.clone())
        .bind(canonical(labels))
        .bind(spec.change_window.as_ref().map(canonical))
        .bind(state.as_str())
        .bind(canonical(spec))
        .bind(millis(now)),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tenants

const TENANT_COLUMNS: &str = "SELECT id, state, state_reason, spec, created_at, updated_at, archived_at, pending FROM tenants";

pub(super) fn tenant_row(row: &AnyRow) -> Result<TenantRow> {
    let id: String = row.try_get("id")?;
    Ok(TenantRow {
        state: parse_column("tenant state", &row.try_get::<String, _>("state")?)?,
        state_reason: row.try_get("state_reason")?,
        spec: json_column(
            &format!("tenant {id} spec"),
            &row.try_get::<String, _>("spec")?,
        )?,
        id: parse_column("tenant id", &id)?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
        archived_at: row
            .try_get::<Option<i64>, _>("archived_at")?
            .map(from_millis),
        pending: row.try_get::<i64, _>("pending")? != 0,
    })
}

/// Tenants with an environment waiting for a placement, oldest first (so a draft waiting for
/// room is served before a newer tenant).
pub async fn pending_tenants(conn: &mut AnyConnection) -> Result<Vec<TenantRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{TENANT_COLUMNS} WHERE pending = 1 ORDER BY created_at, id"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(tenant_row).collect()
}

/// Tenants, optionally only those in `state`, ordered by id.
pub async fn list_tenants(
    conn: &mut AnyConnection,
    state: Option<TenantState>,
) -> Result<Vec<TenantRow>> {
    let rows = match state {
        Some(s) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{TENANT_COLUMNS} WHERE state = $1 ORDER BY id"
            )))
            .bind(s.as_str())
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!("{TENANT_COLUMNS} ORDER BY id")))
                .fetch_all(&mut *conn)
                .await?
        }
    };
    rows.iter().map(tenant_row).collect()
}

pub async fn get_tenant(conn: &mut AnyConnection, id: &TenantId) -> Result<Option<TenantRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{TENANT_COLUMNS} WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(tenant_row).transpose()
}

/// Inserts a tenant, or rewrites every column of an existing one.
pub async fn put_tenant(conn: &mut AnyConnection, t: &TenantRow) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO tenants (id, state, state_reason, spec, created_at, updated_at, archived_at, pending) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
             state_reason = excluded.state_reason, spec = excluded.spec, \
             updated_at = excluded.updated_at, archived_at = excluded.archived_at, \
             pending = excluded.pending",
        )
        .bind(t.id.to_string())
        .bind(t.state.as_str())
        .bind(t.state_reason.clone())
        .bind(canonical(&t.spec))
        .bind(millis(t.created_at))
        .bind(millis(t.updated_at))
        .bind(t.archived_at.map(millis))
        .bind(i64::from(t.pending)),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Placements

const PLACEMENT_COLUMNS: &str =
    "SELECT tenant_id, env, cell, region, generation, explanation, placed_at FROM placements";

pub(super) fn placement_row(row: &AnyRow) -> Result<PlacementRow> {
    let tenant: String = row.try_get("tenant_id")?;
    Ok(PlacementRow {
        env: parse_column("placement env", &row.try_get::<String, _>("env")?)?,
        cell: parse_column("placement cell", &row.try_get::<String, _>("cell")?)?,
        region: parse_column("placement region", &row.try_get::<String, _>("region")?)?,
        generation: Generation(row.try_get("generation")?),
        explanation: json_column(
            &format!("placement explanation of {tenant}"),
            &row.try_get::<String, _>("explanation")?,
        )?,
        tenant: parse_column("placement tenant", &tenant)?,
        placed_at: from_millis(row.try_get("placed_at")?),
    })
}

pub async fn placements_of(
    conn: &mut AnyConnection,
    tenant: &TenantId,
) -> Result<Vec<PlacementRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{PLACEMENT_COLUMNS} WHERE tenant_id = $1 ORDER BY env"
    )))
    .bind(tenant.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(placement_row).collect()
}

pub async fn list_placements(conn: &mut AnyConnection) -> Result<Vec<PlacementRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{PLACEMENT_COLUMNS} ORDER BY tenant_id, env"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(placement_row).collect()
}

/// Stores a new placement (a first placement has [`Generation::FIRST`]).
pub async fn insert_placement(conn: &mut AnyConnection, p: &PlacementRow) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO placements (tenant_id, env, cell, region, generation, explanation, placed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(p.tenant.to_string())
        .bind(p.env.to_string())
        .bind(p.cell.to_string())
        .bind(p.region.to_string())
        .bind(p.generation.0)
        .bind(canonical(&p.explanation))
        .bind(millis(p.placed_at)),
    )
    .await?;
    Ok(())
}

/// Moves a placement to another cell with a new generation and the decision that made it (a
/// tenant move's cut-over).
pub async fn move_placement(conn: &mut AnyConnection, p: &PlacementRow) -> Result<()> {
    conn.execute(
        sqlx::query(
            "UPDATE placements SET cell = $1, region = $2, generation = $3, explanation = $4, placed_at = $5              WHERE tenant_id = $6 AND env = $7",
        )
        .bind(p.cell.to_string())
        .bind(p.region.to_string())
        .bind(p.generation.0)
        .bind(canonical(&p.explanation))
        .bind(millis(p.placed_at))
        .bind(p.tenant.to_string())
        .bind(p.env.to_string()),
    )
    .await?;
    Ok(())
}

/// Removes every placement of a tenant (its data is gone: the tenant was deleted).
pub async fn delete_placements(conn: &mut AnyConnection, tenant: &TenantId) -> Result<u64> {
    let done = conn
        .execute(
            sqlx::query("DELETE FROM placements WHERE tenant_id = $1").bind(tenant.to_string()),
        )
        .await?;
    Ok(done.rows_affected())
}

/// What [`count_by_state`] counts.
#[derive(Debug, Clone, Copy)]
pub enum Counted {
    Tenants,
    Cells,
}

/// Rows per `state` value.
pub async fn count_by_state(conn: &mut AnyConnection, what: Counted) -> Result<Vec<(String, i64)>> {
    let sql = match what {
        Counted::Tenants => {
            "SELECT state, COUNT(*) AS n FROM tenants GROUP BY state ORDER BY state"
        }
        Counted::Cells => "SELECT state, COUNT(*) AS n FROM cells GROUP BY state ORDER BY state",
    };
    let rows = sqlx::query(sql).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Snapshot for placement decisions

/// The fleet as placement sees it: regions, and every cell with its current load.
pub async fn fleet_snapshot(conn: &mut AnyConnection) -> Result<Fleet> {
    let mut fleet = Fleet::new(list_regions(conn).await?.into_iter().map(|r| RegionInfo {
        name: r.name,
        jurisdiction: r.spec.jurisdiction,
        location: r.spec.location,
    }));
    for c in list_cells(conn).await? {
        fleet.add_cell(CellInfo {
            capacity: c.spec.effective_capacity(),
            region: c.spec.region,
            kind: c.spec.kind,
            env: c.spec.env,
            name: c.name,
            state: c.state,
            load: c.load,
        });
    }
    Ok(fleet)
}

/// The canonical JSON text of a spec: what "unchanged" compares.
pub fn canonical<T: serde::Serialize>(value: &T) -> String {
    // Specs are plain data (strings, numbers, maps with string keys): serialising cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}
