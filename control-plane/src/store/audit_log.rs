//! Audit records: appended inside the mutation's transaction, read for `audit list|verify`.

use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use sqlx::{Executor, Row};

use super::{Result, from_millis, json_column, millis};
use crate::audit::{StoredRecord, record_hash};

/// What a mutation records; the chain fields are filled in by [`append`].
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub correlation_id: String,
    pub payload: serde_json::Value,
}

/// Appends `entries` after the current head, in order. The caller holds the mutation lock (see
/// the store's module docs), so reading the head and writing the next records cannot interleave
/// with another writer. Rows go in multi-row INSERTs to keep a large apply to a few round trips.
pub(super) async fn append(conn: &mut AnyConnection, entries: Vec<AuditEntry>) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev_hash) = audit_head(conn).await?;
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        let mut record = StoredRecord {
            seq,
            at_ms: millis(entry.at),
            actor: entry.actor,
            action: entry.action,
            target: entry.target,
            correlation_id: entry.correlation_id,
            payload: entry.payload.to_string(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = record_hash(&record);
        prev_hash = record.hash.clone();
        records.push(record);
    }
    // 9 parameters a row; 500 rows stay far below both backends' parameter limits.
    for chunk in records.chunks(500) {
        let mut sql = String::from(
            "INSERT INTO audit_log (seq, at, actor, action, target, correlation_id, payload, prev_hash, hash) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 9;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9
            ));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            query = query
                .bind(r.seq)
                .bind(r.at_ms)
                .bind(r.actor.clone())
                .bind(r.action.clone())
                .bind(r.target.clone())
                .bind(r.correlation_id.clone())
                .bind(r.payload.clone())
                .bind(r.prev_hash.clone())
                .bind(r.hash.clone());
        }
        conn.execute(query).await?;
    }
    conn.execute(
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(prev_hash),
    )
    .await?;
    Ok(())
}

/// The newest record's `(seq, hash)`; `(0, "")` when the log is empty.
pub async fn audit_head(conn: &mut AnyConnection) -> Result<(i64, String)> {
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok((row.try_get("seq")?, row.try_get("hash")?))
}

fn stored(row: &sqlx::any::AnyRow) -> Result<StoredRecord> {
    Ok(StoredRecord {
        seq: row.try_get("seq")?,
        at_ms: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        correlation_id: row.try_get("correlation_id")?,
        payload: row.try_get("payload")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Every record in chain order, as stored (for verification).
pub async fn audit_all(conn: &mut AnyConnection) -> Result<Vec<StoredRecord>> {
    let rows = sqlx::query(
        "SELECT seq, at, actor, action, target, correlation_id, payload, prev_hash, hash \
         FROM audit_log ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(stored).collect()
}

/// The newest `limit` records, optionally for one target, newest last.
pub async fn audit_list(
    conn: &mut AnyConnection,
    target: Option<&str>,
    limit: i64,
) -> Result<Vec<cellfleet_api::AuditRecord>> {
    let rows =
        match target {
            Some(t) => sqlx::query(
                "SELECT seq, at, actor, action, target, correlation_id, payload, prev_hash, hash \
                 FROM audit_log WHERE target = $1 OR target LIKE $2 ORDER BY seq DESC LIMIT $3",
            )
            .bind(t.to_owned())
            .bind(format!("{t}/%"))
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
            None => sqlx::query(
                "SELECT seq, at, actor, action, target, correlation_id, payload, prev_hash, hash \
                 FROM audit_log ORDER BY seq DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
        };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.iter().rev() {
        let r = stored(row)?;
        out.push(cellfleet_api::AuditRecord {
            seq: r.seq,
            at: from_millis(r.at_ms),
            payload: json_column("audit payload", &r.payload)?,
            actor: r.actor,
            action: r.action,
            target: r.target,
            correlation_id: r.correlation_id,
            prev_hash: r.prev_hash,
            hash: r.hash,
        });
    }
    Ok(out)
}

/// Stores a checkpoint; one already stored for the same record (another replica was first)
/// is kept. Needs no mutation lock: it only adds a row about records that exist.
pub async fn insert_checkpoint(
    conn: &mut AnyConnection,
    cp: &cellfleet_api::AuditCheckpoint,
) -> Result<()> {
    conn.execute(
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(cp.seq)
        .bind(cp.hash.clone())
        .bind(millis(cp.at))
        .bind(cp.key_id.clone())
        .bind(cp.signature.clone()),
    )
    .await?;
    Ok(())
}

/// Every stored checkpoint, oldest first.
pub async fn audit_checkpoints(
    conn: &mut AnyConnection,
) -> Result<Vec<cellfleet_api::AuditCheckpoint>> {
    let rows =
        sqlx::query("SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(cellfleet_api::AuditCheckpoint {
                seq: r.try_get("seq")?,
                hash: r.try_get("hash")?,
                at: from_millis(r.try_get("at")?),
                key_id: r.try_get("key_id")?,
                signature: r.try_get("signature")?,
            })
        })
        .collect()
}
