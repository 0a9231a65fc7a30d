//! Long-running operations and what moves keep while they run: the operation rows (advanced by
//! compare-and-swap), the chunks in flight, stream positions, each side's facts, and the edge
//! routers' acknowledgements.
//!
//! Only operation rows are written under the mutation lock (a phase change is audited and may
//! change desired state); chunks, stream positions, side reports and router acknowledgements are
//! data-plane traffic written without it, each made safe by its own compare-and-swap or by being
//! idempotent.

use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Executor, Row};

use super::{Result, from_millis, millis};

/// One operation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRow {
    pub id: String,
    pub kind: String,
    /// What it holds (`tenant/acme/prod`): one open operation per subject.
    pub subject: String,
    pub phase: String,
    /// Bumped by every step (the compare-and-swap token).
    pub version: i64,
    /// What was asked (JSON, immutable).
    pub spec: String,
    /// The kind's progress and decisions (JSON).
    pub state: String,
    /// A cell whose capacity it holds.
    pub reserves: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "SELECT id, kind, subject, phase, version, spec, state, reserves, lease_owner, lease_until, \
     created_at, updated_at, finished_at FROM operations";

fn operation_row(r: &sqlx::any::AnyRow) -> Result<OperationRow> {
    Ok(OperationRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        subject: r.try_get("subject")?,
        phase: r.try_get("phase")?,
        version: r.try_get("version")?,
        spec: r.try_get("spec")?,
        state: r.try_get("state")?,
        reserves: r.try_get("reserves")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_until: r.try_get::<Option<i64>, _>("lease_until")?.map(from_millis),
        created_at: from_millis(r.try_get("created_at")?),
        updated_at: from_millis(r.try_get("updated_at")?),
        finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(from_millis),
    })
}

/// Inserts a new operation. Fails (unique violation) when the subject has an open one.
pub async fn insert_operation(conn: &mut AnyConnection, op: &OperationRow) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO operations (id, kind, subject, phase, version, spec, state, reserves, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(op.id.clone())
        .bind(op.kind.clone())
        .bind(op.subject.clone())
        .bind(op.phase.clone())
        .bind(op.version)
        .bind(op.spec.clone())
        .bind(op.state.clone())
        .bind(op.reserves.clone())
        .bind(millis(op.created_at))
        .bind(millis(op.updated_at)),
    )
    .await?;
    Ok(())
}

/// The open operation of `subject`, if any.
pub async fn open_operation_of(
    conn: &mut AnyConnection,
    subject: &str,
) -> Result<Option<OperationRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE subject = $1 AND finished_at IS NULL"
    )))
    .bind(subject.to_owned())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(operation_row).transpose()
}

pub async fn get_operation(conn: &mut AnyConnection, id: &str) -> Result<Option<OperationRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE id = $1")))
        .bind(id.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(operation_row).transpose()
}

/// Operations of `kind`, newest first; only open ones with `open`.
pub async fn list_operations(
    conn: &mut AnyConnection,
    kind: &str,
    open: bool,
    limit: i64,
) -> Result<Vec<OperationRow>> {
    let filter = if open { " AND finished_at IS NULL" } else { "" };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE kind = $1{filter} ORDER BY created_at DESC, id DESC LIMIT $2"
    )))
    .bind(kind.to_owned())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(operation_row).collect()
}

/// Every open operation, oldest first.
pub async fn open_operations(conn: &mut AnyConnection) -> Result<Vec<OperationRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE finished_at IS NULL ORDER BY created_at, id"
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(operation_row).collect()
}

/// The next version of an operation (see [`cas_operation`]).
#[derive(Debug, Clone)]
pub struct OperationUpdate<'a> {
    pub phase: &'a str,
    pub state: &'a str,
    pub reserves: Option<&'a str>,
    pub finished: bool,
}

/// Moves `id` from `expected_version` to the next version; `false` when someone else moved it
/// first (re-read and decide again).
pub async fn cas_operation(
    conn: &mut AnyConnection,
    id: &str,
    expected_version: i64,
    next: &OperationUpdate<'_>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let done = conn
        .execute(
            sqlx::query(
                "UPDATE operations SET phase = $1, state = $2, reserves = $3, version = version + 1, \
                 updated_at = $4, finished_at = CASE WHEN $5 = 1 THEN $4 ELSE finished_at END \
                 WHERE id = $6 AND version = $7",
            )
            .bind(next.phase.to_owned())
            .bind(next.state.to_owned())
            .bind(next.reserves.map(str::to_owned))
            .bind(millis(now))
            .bind(i64::from(next.finished))
            .bind(id.to_owned())
            .bind(expected_version),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes (or renews) the lease on `id` for `owner` until `until`, unless another owner holds an
/// unexpired one. Returns whether `owner` holds it.
pub async fn claim_lease(
    conn: &mut AnyConnection,
    id: &str,
    owner: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool> {
    let done = conn
        .execute(
            sqlx::query(
                "UPDATE operations SET lease_owner = $1, lease_until = $2 WHERE id = $3 \
                 AND finished_at IS NULL \
                 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < $4)",
            )
            .bind(owner.to_owned())
            .bind(millis(until))
            .bind(id.to_owned())
            .bind(millis(now)),
        )
        .await?;
    Ok(done.rows_affected() == 1)
}

// ---- move streams --------------------------------------------------------------------------

/// Stores chunk `seq` of a stream, replacing one left by an upload whose stream update never
/// happened (the stream only ever counts the chunk stored last under a number).
pub async fn put_chunk(
    conn: &mut AnyConnection,
    move_id: &str,
    dir: &str,
    seq: i64,
    body: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO move_chunks (move_id, dir, seq, body, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (move_id, dir, seq) DO UPDATE SET body = excluded.body, \
             created_at = excluded.created_at",
        )
        .bind(move_id.to_owned())
        .bind(dir.to_owned())
        .bind(seq)
        .bind(body.to_owned())
        .bind(millis(now)),
    )
    .await?;
    Ok(())
}

/// Up to `limit` chunks after `after`, in order (their JSON bodies).
pub async fn chunks_after(
    conn: &mut AnyConnection,
    move_id: &str,
    dir: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT body FROM move_chunks WHERE move_id = $1 AND dir = $2 AND seq > $3 ORDER BY seq LIMIT $4",
    )
    .bind(move_id.to_owned())
    .bind(dir.to_owned())
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("body")?))
        .collect()
}

/// Forgets the chunks up to `seq` (applied by the other side).
pub async fn delete_chunks_upto(
    conn: &mut AnyConnection,
    move_id: &str,
    dir: &str,
    seq: i64,
) -> Result<()> {
    conn.execute(
        sqlx::query("DELETE FROM move_chunks WHERE move_id = $1 AND dir = $2 AND seq <= $3")
            .bind(move_id.to_owned())
            .bind(dir.to_owned())
            .bind(seq),
    )
    .await?;
    Ok(())
}

/// A stream's state (JSON) as stored, if it exists.
pub async fn get_stream(
    conn: &mut AnyConnection,
    move_id: &str,
    dir: &str,
) -> Result<Option<String>> {
    let row = sqlx::query("SELECT state FROM move_streams WHERE move_id = $1 AND dir = $2")
        .bind(move_id.to_owned())
        .bind(dir.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| Ok(r.try_get::<String, _>("state")?))
        .transpose()
}

/// Replaces a stream's state if it still is `expected` (`None`: the stream does not exist yet).
/// Returns whether it did.
pub async fn cas_stream(
    conn: &mut AnyConnection,
    move_id: &str,
    dir: &str,
    expected: Option<&str>,
    state: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let done = match expected {
        None => {
            conn.execute(
                sqlx::query(
                    "INSERT INTO move_streams (move_id, dir, state, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (move_id, dir) DO NOTHING",
                )
                .bind(move_id.to_owned())
                .bind(dir.to_owned())
                .bind(state.to_owned())
                .bind(millis(now)),
            )
            .await?
        }
        Some(old) => {
            conn.execute(
                sqlx::query(
                    "UPDATE move_streams SET state = $1, updated_at = $2 \
                     WHERE move_id = $3 AND dir = $4 AND state = $5",
                )
                .bind(state.to_owned())
                .bind(millis(now))
                .bind(move_id.to_owned())
                .bind(dir.to_owned())
                .bind(old.to_owned()),
            )
            .await?
        }
    };
    Ok(done.rows_affected() == 1)
}

/// Records what a side of a move reported.
pub async fn put_move_side(
    conn: &mut AnyConnection,
    move_id: &str,
    cell: &str,
    report: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO move_sides (move_id, cell, report, reported_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (move_id, cell) DO UPDATE SET report = excluded.report, reported_at = excluded.reported_at",
        )
        .bind(move_id.to_owned())
        .bind(cell.to_owned())
        .bind(report.to_owned())
        .bind(millis(now)),
    )
    .await?;
    Ok(())
}

/// `(cell, report JSON)` of each side of a move.
pub async fn move_sides(conn: &mut AnyConnection, move_id: &str) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT cell, report FROM move_sides WHERE move_id = $1")
        .bind(move_id.to_owned())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("cell")?, r.try_get("report")?)))
        .collect()
}

/// Forgets a finished move's data in flight (chunks, streams, side reports).
pub async fn forget_move_data(conn: &mut AnyConnection, move_id: &str) -> Result<()> {
    for table in ["move_chunks", "move_streams", "move_sides"] {
        conn.execute(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE move_id = $1"
            )))
            .bind(move_id.to_owned()),
        )
        .await?;
    }
    Ok(())
}

// ---- routers --------------------------------------------------------------------------------

/// A router as the control plane saw it on its watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterRow {
    pub id: String,
    pub acked_version: i64,
    pub last_seen: DateTime<Utc>,
    pub first_seen: DateTime<Utc>,
}

/// Records a router's watch: it serves table `acked` (never moves an acknowledgement back).
/// Records a router's watch: seen now, and (if the routing epoch still is `epoch`) serving
/// version `acked` — acknowledgements only grow within an epoch.
pub async fn touch_router(
    conn: &mut AnyConnection,
    id: &str,
    acked: i64,
    epoch: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO routers (id, acked_version, last_seen, first_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET acked_version = CASE WHEN excluded.acked_version > routers.acked_version \
             AND $4 = (SELECT epoch FROM routing_head WHERE id = 1) \
             THEN excluded.acked_version ELSE routers.acked_version END, last_seen = excluded.last_seen",
        )
        .bind(id.to_owned())
        .bind(acked)
        .bind(millis(now))
        .bind(epoch.to_owned()),
    )
    .await?;
    Ok(())
}

/// A new routing epoch: no router has acknowledged anything of its history yet.
pub async fn reset_router_acks(conn: &mut AnyConnection) -> Result<()> {
    conn.execute(sqlx::query("UPDATE routers SET acked_version = 0"))
        .await?;
    Ok(())
}

pub async fn list_routers(conn: &mut AnyConnection) -> Result<Vec<RouterRow>> {
    let rows =
        sqlx::query("SELECT id, acked_version, last_seen, first_seen FROM routers ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(RouterRow {
                id: r.try_get("id")?,
                acked_version: r.try_get("acked_version")?,
                last_seen: from_millis(r.try_get("last_seen")?),
                first_seen: from_millis(r.try_get("first_seen")?),
            })
        })
        .collect()
}
