//! What runbook runs keep besides their operation rows: the events their `notify` steps emit
//! (stored in the step's own transaction, so a resumed run never emits one twice), and the cell
//! lifecycle state their `drain` steps and `cellfleet cell drain|undrain|retire` change.

use cellfleet_api::{CellName, CellState, EventView};
use chrono::{DateTime, Utc};
use sqlx::{AnyConnection, Executor, Row};

use super::{Result, from_millis, json_column, millis};

pub async fn insert_event(conn: &mut AnyConnection, e: &EventView) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO events (id, kind, subject, recipients, title, message, run_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.id.clone())
        .bind(e.kind.clone())
        .bind(e.subject.clone())
        .bind(super::canonical(&e.to))
        .bind(e.title.clone())
        .bind(e.message.clone())
        .bind(e.run.clone())
        .bind(millis(e.created_at)),
    )
    .await?;
    Ok(())
}

/// Events, newest first; only one run's with `run`.
pub async fn list_events(
    conn: &mut AnyConnection,
    run: Option<&str>,
    limit: i64,
) -> Result<Vec<EventView>> {
    let filter = if run.is_some() {
        "WHERE run_id = $2 "
    } else {
        ""
    };
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, kind, subject, recipients, title, message, run_id, created_at FROM events \
         {filter}ORDER BY created_at DESC, id DESC LIMIT $1"
    )))
    .bind(limit);
    if let Some(r) = run {
        q = q.bind(r.to_owned());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("id")?;
            Ok(EventView {
                to: json_column(
                    &format!("event {id} recipients"),
                    &r.try_get::<String, _>("recipients")?,
                )?,
                id,
                kind: r.try_get("kind")?,
                subject: r.try_get("subject")?,
                title: r.try_get("title")?,
                message: r.try_get("message")?,
                run: r.try_get("run_id")?,
                created_at: from_millis(r.try_get("created_at")?),
            })
        })
        .collect()
}

/// Sets a cell's lifecycle state.
pub async fn set_cell_state(
    conn: &mut AnyConnection,
    cell: &CellName,
    state: CellState,
    now: DateTime<Utc>,
) -> Result<()> {
    conn.execute(
        sqlx::query("UPDATE cells SET state = $1, updated_at = $2 WHERE name = $3")
            .bind(state.as_str())
            .bind(millis(now))
            .bind(cell.to_string()),
    )
    .await?;
    Ok(())
}
