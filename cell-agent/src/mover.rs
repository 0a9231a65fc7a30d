//! Move workers: one per move the cell takes part in, each making its task true in the cell
//! database and moving the data (see `move_db` for the database side, `cellfleet_api::moves` for
//! the wire).
//!
//! A task is a set of standing orders (capture, guard, fence, ship, apply, cleanup). Every pass
//! makes each true or undoes it, idempotently, so a restarted agent resumes where its task says
//! the move is; the streams resume from positions the control plane keeps. Order matters where
//! it protects a write:
//! - **fence**: the workload refuses the tenant first (and the agent waits until it has the new
//!   tenant set), then the guard trigger goes in — its creation waits for writes in flight — and
//!   only then is the fence reported, with the capture log's last change: after that no write of
//!   the tenant can be applied here;
//! - **taking the tenant** (the target at the cut-over, the source at a rollback): capture goes
//!   in before the guard comes out, and the workload is given the tenant only after both (the
//!   side report waits for that), so nothing the tenant writes here is missed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellfleet_api::{
    ChunkApplied, MoveChunk, MoveRole, MoveSideReport, MoveTask, TableSum, Verify,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::agent::{Achieved, Shared};
use crate::control_plane::{ControlPlane, MoveCallError};
use crate::move_db::TenantTable;

/// Rows or changes per chunk (each chunk also stays under [`CHUNK_BYTES`]).
const CHUNK_ROWS: i64 = 1_000;
const CHUNK_BYTES: usize = 1 << 20;
/// How often a worker with nothing to do looks again.
const IDLE: Duration = Duration::from_millis(50);
/// Side reports are re-sent at least this often (the capture head moves).
const SIDE_EVERY: Duration = Duration::from_secs(1);

/// Starts and stops move workers as the desired state's move tasks come and go.
pub async fn supervise(cp: ControlPlane, shared: Arc<Shared>) {
    let mut desired = shared.desired.subscribe();
    let mut workers: HashMap<
        String,
        (watch::Sender<Option<MoveTask>>, tokio::task::JoinHandle<()>),
    > = HashMap::new();
    loop {
        let tasks: Vec<MoveTask> = desired
            .borrow_and_update()
            .as_ref()
            .map(|d| d.moves.clone())
            .unwrap_or_default();
        for task in &tasks {
            match workers.get(&task.id) {
                Some((tx, handle)) if !handle.is_finished() => {
                    tx.send_if_modified(|t| {
                        let changed = t.as_ref() != Some(task);
                        *t = Some(task.clone());
                        changed
                    });
                }
                _ => {
                    let (tx, rx) = watch::channel(Some(task.clone()));
                    let handle =
                        tokio::spawn(work(cp.clone(), shared.clone(), task.id.clone(), rx));
                    workers.insert(task.id.clone(), (tx, handle));
                }
            }
        }
        // A move gone from the desired state: its worker undoes what is left and stops.
        for (id, (tx, _)) in &workers {
            if !tasks.iter().any(|t| &t.id == id) {
                let _ = tx.send(None);
            }
        }
        workers.retain(|_, (_, handle)| !handle.is_finished());
        if desired.changed().await.is_err() {
            return;
        }
    }
}

/// Where an uploader is in its stream (kept by the control plane with each chunk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cursor {
    /// Copying table `table` after primary key `after`; once `copied`, only changes.
    copied: bool,
    table: usize,
    after: Option<Value>,
    /// Changes of the capture log sent up to here.
    after_seq: i64,
    /// The last full-checksum round sent, and the (round, fence) the changed-rows check covered.
    round: u32,
    fence_checked: Option<(u32, i64)>,
}

/// One worker's state between passes.
struct Worker {
    cp: ControlPlane,
    shared: Arc<Shared>,
    id: String,
    /// The uploader's stream: the last chunk sent and where to go on.
    up: Option<(i64, Cursor)>,
    /// The last chunk applied.
    applied: Option<i64>,
    side: MoveSideReport,
    side_sent: Option<(MoveSideReport, Instant)>,
    achieved: Option<Achieved>,
    /// While data flows: the task the last full pass made true, its tables, and when. Passes
    /// for the same task within [`SIDE_EVERY`] only move data (the checks of a full pass cost
    /// more than a chunk does).
    flowing: Option<(MoveTask, Vec<TenantTable>, Instant)>,
    /// The checksum round the tables were last analyzed for (once per round, not per pass).
    analyzed_round: u32,
}

async fn work(
    cp: ControlPlane,
    shared: Arc<Shared>,
    id: String,
    mut task: watch::Receiver<Option<MoveTask>>,
) {
    let mut w = Worker {
        cp,
        shared,
        id,
        up: None,
        applied: None,
        side: MoveSideReport::default(),
        side_sent: None,
        achieved: None,
        flowing: None,
        analyzed_round: 0,
    };
    let mut backoff = IDLE;
    loop {
        let current = task.borrow_and_update().clone();
        let Some(t) = current else {
            // The move is over for this cell: drop its triggers (never its rows), and stop.
            if let Err(e) = w.teardown().await {
                tracing::warn!(move_id = %w.id, error = %e, "cannot drop a finished move's triggers yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            w.shared.set_achieved(&w.id, None);
            return;
        };
        let busy = match w.pass(&t).await {
            Ok(busy) => {
                backoff = IDLE;
                busy
            }
            Err(PassError::Gone) => {
                // The control plane has finished the move; the desired state follows.
                false
            }
            Err(PassError::Failed(e)) => {
                tracing::warn!(move_id = %w.id, error = %e, retry_in = ?backoff, "move work failed");
                backoff = (backoff * 2).min(Duration::from_secs(5));
                false
            }
        };
        let pause = if busy { Duration::ZERO } else { backoff };
        tokio::select! {
            changed = task.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(pause) => {}
        }
    }
}

enum PassError {
    Gone,
    Failed(String),
}

impl From<MoveCallError> for PassError {
    fn from(e: MoveCallError) -> Self {
        match e {
            MoveCallError::Gone(_) => PassError::Gone,
            other => PassError::Failed(other.to_string()),
        }
    }
}

impl From<crate::cell_db::CellDbError> for PassError {
    fn from(e: crate::cell_db::CellDbError) -> Self {
        PassError::Failed(e.to_string())
    }
}

impl From<String> for PassError {
    fn from(e: String) -> Self {
        PassError::Failed(e)
    }
}

impl Worker {
    async fn teardown(&mut self) -> Result<(), String> {
        let db = self.shared.db().await?;
        let tables = db.tenant_tables().await.map_err(|e| e.to_string())?;
        db.drop_triggers("cap", &self.id, &tables)
            .await
            .map_err(|e| e.to_string())?;
        db.drop_triggers("grd", &self.id, &tables)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Publishes what is true in the database for the workload's tenant set; waits (boundedly)
    /// until the workload has the set that follows from it.
    async fn achieve(&mut self, now: Achieved) -> bool {
        if self.achieved == Some(now) {
            return true;
        }
        self.achieved = Some(now);
        let epoch = self.shared.set_achieved(&self.id, Some(now));
        self.shared.handed(epoch, Duration::from_secs(10)).await
    }

    /// One pass over the task. Returns whether there is more to do at once.
    async fn pass(&mut self, t: &MoveTask) -> Result<bool, PassError> {
        if let Some((task, tables, at)) = self.flowing.take()
            && task == *t
            && at.elapsed() < SIDE_EVERY
        {
            let busy = self.move_data(t, &tables).await?;
            if busy {
                self.flowing = Some((task, tables, at));
            }
            return Ok(busy);
        }
        let busy = self.full_pass(t).await?;
        Ok(busy)
    }

    /// Ships and applies what there is (the task's standing orders already hold).
    async fn move_data(&mut self, t: &MoveTask, tables: &[TenantTable]) -> Result<bool, PassError> {
        let mut busy = false;
        if t.ship && t.capture {
            busy |= self.ship(t, tables).await?;
        } else {
            self.up = None;
        }
        if t.apply {
            busy |= self.apply(t, tables).await?;
        } else {
            self.applied = None;
        }
        Ok(busy)
    }

    /// Makes every standing order of the task true, reports this side, then moves data.
    async fn full_pass(&mut self, t: &MoveTask) -> Result<bool, PassError> {
        let shared = self.shared.clone();
        let db = shared.db().await?;
        db.ensure_move_tables().await?;
        let tables = db.tenant_tables().await?;
        let tenant = t.tenant.as_str();
        self.side.unmovable = tables
            .iter()
            .filter_map(|tb| tb.unmovable.as_ref().map(|w| format!("{}: {w}", tb.name)))
            .collect();
        if t.cleanup {
            // The rows go first (past the guard, in batches), then the machinery.
            let deleted = db.delete_rows(tenant, &tables, 5_000).await?;
            if deleted > 0 {
                cellfleet_api::failpoints::hit("agent:rows-deleted");
            }
            if deleted == 0 {
                db.drop_triggers("cap", &self.id, &tables).await?;
                db.drop_triggers("grd", &self.id, &tables).await?;
                self.side.capturing_from = None;
                self.side.guarded = false;
                self.side.fenced_at = None;
                self.side.cleaned = true;
                self.side.rows = Some(0);
            }
            self.send_side().await?;
            return Ok(deleted > 0);
        }
        self.side.cleaned = false;

        // Capture before the guard comes out (a side taking the tenant must miss no write).
        let captured = db.installed("cap", &self.id).await?;
        if t.capture && !captured {
            db.install_capture(&self.id, tenant, &tables).await?;
            tracing::info!(move_id = %self.id, %tenant, "change capture installed");
            cellfleet_api::failpoints::hit("agent:capture-installed");
        } else if !t.capture && captured {
            db.drop_triggers("cap", &self.id, &tables).await?;
        }
        self.side.capturing_from = if t.capture {
            Some(
                self.side
                    .capturing_from
                    .unwrap_or(db.change_head(&self.id).await?),
            )
        } else {
            None
        };

        // The fence: the workload refuses the tenant (it is fenced in the tenant set the
        // reconcile hands it for this desired state) before the database does.
        let guarded = db.installed("grd", &self.id).await?;
        if t.fence && !guarded {
            if !self.shared.handed(0, Duration::from_secs(10)).await {
                return Err(PassError::Failed(
                    "the workload has not taken the fenced tenant set yet".into(),
                ));
            }
            db.install_guard(&self.id, tenant, &tables).await?;
            tracing::info!(move_id = %self.id, %tenant, "fenced: the workload and the database refuse the tenant");
            cellfleet_api::failpoints::hit("agent:fenced");
        } else if t.guard && !guarded {
            db.install_guard(&self.id, tenant, &tables).await?;
            tracing::info!(move_id = %self.id, %tenant, "write guard installed");
            cellfleet_api::failpoints::hit("agent:guard-installed");
        } else if !t.guard && !t.fence && guarded {
            db.drop_triggers("grd", &self.id, &tables).await?;
            tracing::info!(move_id = %self.id, %tenant, "write guard dropped");
            cellfleet_api::failpoints::hit("agent:guard-dropped");
        }
        let guarded = t.guard || t.fence;
        // What the workload may do with the tenant follows from this; report only once it has.
        if !self
            .achieve(Achieved {
                capture: t.capture,
                guard: guarded,
            })
            .await
        {
            return Err(PassError::Failed(
                "the workload has not taken the tenant set yet".into(),
            ));
        }
        self.side.guarded = guarded;
        self.side.fenced_at = if t.fence {
            Some(db.change_head(&self.id).await?)
        } else {
            None
        };
        self.side.capture_head = if t.capture {
            Some(db.change_head(&self.id).await?)
        } else {
            None
        };
        if t.role == MoveRole::Source && self.side.rows.is_none() {
            let counted = db.tenant_rows().await.unwrap_or_default();
            self.side.rows = Some(
                counted
                    .get(tenant)
                    .map_or(0, |n| u64::try_from(*n).unwrap_or(0)),
            );
        }
        self.send_side().await?;

        let busy = self.move_data(t, &tables).await?;
        if busy {
            self.flowing = Some((t.clone(), tables, Instant::now()));
        }
        Ok(busy)
    }

    async fn send_side(&mut self) -> Result<(), PassError> {
        let due = match &self.side_sent {
            Some((sent, at)) => *sent != self.side || at.elapsed() >= SIDE_EVERY,
            None => true,
        };
        if due {
            self.cp.move_side(&self.id, &self.side).await?;
            self.side_sent = Some((self.side.clone(), Instant::now()));
        }
        Ok(())
    }

    /// Sends the next chunk of this side's stream if there is one. Returns whether it sent.
    async fn ship(&mut self, t: &MoveTask, tables: &[TenantTable]) -> Result<bool, PassError> {
        let (last_seq, mut cursor) = match self.up.clone() {
            Some(up) => up,
            None => {
                let pos = self.cp.move_position(&self.id).await?;
                let cursor: Cursor = serde_json::from_value(pos.cursor).unwrap_or_default();
                // The reverse stream has no bulk copy: the source has every row already.
                let cursor = Cursor {
                    copied: cursor.copied || t.role == MoveRole::Target,
                    ..cursor
                };
                (pos.last_seq, cursor)
            }
        };
        let shared = self.shared.clone();
        let db = shared.db().await?;
        let tenant = t.tenant.as_str();
        // A table's copy, or a full checksum round, scans the tenant's rows page by page.
        if !cursor.copied
            && cursor.after.is_none()
            && let Some(table) = tables.get(cursor.table)
        {
            db.refresh_stats(std::slice::from_ref(table)).await?;
        }
        if t.verify_round > cursor.round && t.verify_round > self.analyzed_round {
            db.refresh_stats(tables).await?;
            self.analyzed_round = t.verify_round;
        }
        let mut snap = db.snapshot().await?;
        let mut chunk = MoveChunk {
            seq: last_seq + 1,
            kind: String::new(),
            items: Vec::new(),
            cursor: Value::Null,
            change_seq: cursor.after_seq,
            verify: None,
            bytes: 0,
        };
        if !cursor.copied {
            match tables.get(cursor.table) {
                Some(table) => {
                    let rows = db
                        .read_rows(&mut snap, tenant, table, cursor.after.as_ref(), CHUNK_ROWS)
                        .await?;
                    // At most about CHUNK_BYTES of rows (at least one), however wide they are.
                    let mut size = 0;
                    let mut items = Vec::new();
                    for (pk, row) in rows {
                        let item = serde_json::json!({"table": table.name, "pk": pk, "row": row});
                        size += item.to_string().len();
                        items.push((pk, item));
                        if size > CHUNK_BYTES {
                            break;
                        }
                    }
                    match items.last() {
                        Some((pk, _)) => {
                            cursor.after = Some(pk.clone());
                            chunk.kind = "copy".into();
                            chunk.items = items.into_iter().map(|(_, item)| item).collect();
                        }
                        None => {
                            cursor.table += 1;
                            cursor.after = None;
                            self.up = Some((last_seq, cursor));
                            return Ok(true);
                        }
                    }
                }
                None => {
                    chunk.kind = "end".into();
                    cursor.copied = true;
                }
            }
        } else {
            let changes = db
                .read_changes(&mut snap, &self.id, cursor.after_seq, None, CHUNK_ROWS)
                .await?;
            let complete = (changes.len() as i64) < CHUNK_ROWS;
            let upto = changes.last().map_or(cursor.after_seq, |c| c.seq);
            // A full checksum round, in the snapshot the changes were read from.
            let full = t.verify_round > cursor.round && complete;
            // After the fence: the rows changed since the last full round, once every change up
            // to the fence is in this chunk.
            let fenced_at = self.side.fenced_at;
            let last = fenced_at
                .is_some_and(|s| upto >= s && cursor.fence_checked != Some((t.verify_round, s)))
                && complete;
            if changes.is_empty() && !full && !last {
                return Ok(false);
            }
            chunk.kind = "changes".into();
            chunk.change_seq = upto;
            let mut size = 0;
            for c in changes {
                size += c.item.to_string().len();
                chunk.items.push(c.item);
                if size > CHUNK_BYTES {
                    break;
                }
            }
            if full {
                chunk.verify = Some(Verify {
                    round: t.verify_round,
                    sums: db.checksums(&mut snap, tenant, tables, None).await?,
                    pks: None,
                });
                cursor.round = t.verify_round;
            } else if last {
                let s = fenced_at.unwrap_or(upto);
                // The forward stream was verified in full up to `verified_upto`; the reverse
                // one (the rollback window's changes) is checked whole.
                let since = match t.role {
                    MoveRole::Source => t.verified_upto,
                    MoveRole::Target => 0,
                };
                let pks = db.touched(&mut snap, &self.id, since, s).await?;
                chunk.verify = Some(Verify {
                    round: t.verify_round,
                    sums: db.checksums(&mut snap, tenant, tables, Some(&pks)).await?,
                    pks: Some(pks),
                });
                cursor.fence_checked = Some((t.verify_round, s));
            }
            cursor.after_seq = upto;
        }
        drop(snap);
        chunk.bytes = chunk.items.iter().map(|i| i.to_string().len() as u64).sum();
        chunk.cursor = serde_json::to_value(&cursor).unwrap_or(Value::Null);
        match self.cp.upload_chunk(&self.id, &chunk).await {
            Ok(pos) => {
                self.up = Some((pos.last_seq, cursor));
                cellfleet_api::failpoints::hit("agent:chunk-uploaded");
                Ok(true)
            }
            Err(MoveCallError::Busy(_)) => {
                // Too much in flight: resume from what the control plane holds, a bit later.
                self.up = None;
                Ok(false)
            }
            Err(MoveCallError::OutOfStep(_)) => {
                self.up = None;
                Ok(true)
            }
            Err(e) => {
                self.up = None;
                Err(e.into())
            }
        }
    }

    /// Applies the next chunks of the other side's stream. Returns whether it applied any.
    async fn apply(&mut self, t: &MoveTask, tables: &[TenantTable]) -> Result<bool, PassError> {
        let chunks = self.cp.download_chunks(&self.id, self.applied).await?;
        if chunks.is_empty() {
            return Ok(false);
        }
        let shared = self.shared.clone();
        let db = shared.db().await?;
        let tenant = t.tenant.as_str();
        for chunk in chunks {
            if self.applied.is_some_and(|a| chunk.seq <= a) {
                continue;
            }
            if !chunk.items.is_empty() {
                db.apply_items(tenant, tables, &chunk.items).await?;
                cellfleet_api::failpoints::hit("agent:chunk-applied");
            }
            let mismatches = match &chunk.verify {
                Some(v) => {
                    if v.pks.is_none() {
                        db.refresh_stats(tables).await?;
                    }
                    let mut conn = db.snapshot().await?;
                    let here = db
                        .checksums(&mut conn, tenant, tables, v.pks.as_ref())
                        .await?;
                    compare(&v.sums, &here)
                }
                None => Vec::new(),
            };
            if !mismatches.is_empty() {
                tracing::error!(move_id = %self.id, ?mismatches, "the copy does not match its source");
            }
            self.cp
                .chunk_applied(
                    &self.id,
                    &ChunkApplied {
                        seq: chunk.seq,
                        mismatches,
                    },
                )
                .await?;
            self.applied = Some(chunk.seq);
        }
        Ok(true)
    }
}

/// The tables whose rows or checksums differ, with both sides' figures.
fn compare(theirs: &BTreeMap<String, TableSum>, ours: &BTreeMap<String, TableSum>) -> Vec<String> {
    let mut out = Vec::new();
    for (table, sum) in theirs {
        let here = ours.get(table).copied().unwrap_or_default();
        if here != *sum {
            out.push(format!(
                "{table}: {} rows (checksum {:016x}) at the shipping side, {} rows (checksum {:016x}) here",
                sum.rows, sum.sum, here.rows, here.sum
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_name_the_table_and_both_sides() {
        let theirs: BTreeMap<String, TableSum> =
            [("notes".to_owned(), TableSum { rows: 3, sum: 7 })].into();
        let mut ours = theirs.clone();
        assert!(compare(&theirs, &ours).is_empty());
        ours.insert("notes".into(), TableSum { rows: 2, sum: 5 });
        let m = compare(&theirs, &ours);
        assert_eq!(m.len(), 1);
        assert!(
            m[0].starts_with("notes: 3 rows") && m[0].contains("2 rows"),
            "{m:?}"
        );
    }
}
