//! Tenant moves (SPEC §9): what operators ask for and see, what a cell's agent is told to do for
//! a move, and the data that flows source agent → control plane → target agent.
//!
//! A move streams the tenant's rows in **chunks**, in one ordered stream per direction: forward
//! (source → target: the bulk copy, then every change captured since before the copy began) and,
//! after the cut-over, reverse (target → source: the changes made at the target during the
//! rollback window). Chunks are numbered from 1; the uploader learns from the control plane where
//! to resume (the cursor stored with the last chunk it accepted), the downloader acknowledges the
//! chunks it applied. Applying a chunk again is harmless (rows are upserted or deleted by primary
//! key, in stream order), so every step can be repeated after a crash.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{CellName, Env, TenantId};

/// Where a move goes (`--to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartMoveRequest {
    pub tenant: TenantId,
    #[serde(default = "Env::prod")]
    pub env: Env,
    /// `dedicated` (a free or new dedicated cell), `pooled` (the pooled cell placement would
    /// choose, other than the current one), or a cell name.
    pub to: String,
    /// The longest write pause the cut-over may predict (default 2 s).
    #[serde(default)]
    pub max_write_pause_ms: Option<u64>,
    /// How long the source keeps the tenant's rows (and receives the target's changes) for a
    /// rollback (default 1 h).
    #[serde(default)]
    pub rollback_window_secs: Option<u64>,
    /// Plan only: check everything and say what would happen, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// One check of a move's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanCheck {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// What a move would do (the answer to a dry run, and the first thing a real start records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MovePlan {
    pub tenant: TenantId,
    pub env: Env,
    pub source: CellName,
    /// The target cell; for a dedicated cell still to be provisioned, the name it will get.
    pub target: CellName,
    /// Whether the target cell must be provisioned first.
    pub provision: bool,
    pub region: String,
    pub checks: Vec<PlanCheck>,
}

/// The answer to `move start`: the plan, and the move unless it was a dry run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveStarted {
    pub plan: MovePlan,
    #[serde(rename = "move")]
    pub started: Option<MoveView>,
}

/// Why an operator aborts a move.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortMoveRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// An edge router as the control plane sees it on its watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterView {
    pub id: String,
    /// The routing table version it serves (its latest watch asked for changes after it).
    pub acked_version: i64,
    pub last_seen: DateTime<Utc>,
    pub first_seen: DateTime<Utc>,
    /// `live`, or `gone` when not seen for longer than the server's router timeout (a cut-over
    /// does not wait for gone routers).
    pub status: String,
    /// How far behind the table it is.
    pub lag: i64,
}

/// Where a move stands. The forward path runs top to bottom; `Failed`, `Aborted`, `RolledBack`
/// and `Done` are terminal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum MovePhase {
    /// Provisioning the dedicated target cell and waiting for its agent.
    PreparingTarget,
    /// The source installs change capture; the target readies to receive.
    Capturing,
    /// Bulk copy (and then the captured changes) flowing to the target.
    Copying,
    /// Only changes flowing; waiting for the lag to predict a pause within the budget.
    CatchingUp,
    /// The route is frozen; waiting for every live router to acknowledge it.
    Freezing,
    /// The source is fenced; the last changes drain, then the copy is verified.
    Fenced,
    /// The target serves the tenant; the route follows.
    Flipping,
    /// The target serves; its changes flow back to the source for a rollback.
    RollbackWindow,
    /// Rolling back: the same cut-over in reverse (route frozen, target fenced …).
    RollingBack,
    /// The source drops the tenant's rows and the capture machinery.
    Cleaning,
    /// Abort before the cut-over: the target drops its partial copy.
    Aborting,
    Done,
    Aborted,
    RolledBack,
    Failed,
}

impl MovePhase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            MovePhase::Done | MovePhase::Aborted | MovePhase::RolledBack | MovePhase::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MovePhase::PreparingTarget => "preparing-target",
            MovePhase::Capturing => "capturing",
            MovePhase::Copying => "copying",
            MovePhase::CatchingUp => "catching-up",
            MovePhase::Freezing => "freezing",
            MovePhase::Fenced => "fenced",
            MovePhase::Flipping => "flipping",
            MovePhase::RollbackWindow => "rollback-window",
            MovePhase::RollingBack => "rolling-back",
            MovePhase::Cleaning => "cleaning",
            MovePhase::Aborting => "aborting",
            MovePhase::Done => "done",
            MovePhase::Aborted => "aborted",
            MovePhase::RolledBack => "rolled-back",
            MovePhase::Failed => "failed",
        }
    }
}

impl std::fmt::Display for MovePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MovePhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use MovePhase::*;
        [
            PreparingTarget,
            Capturing,
            Copying,
            CatchingUp,
            Freezing,
            Fenced,
            Flipping,
            RollbackWindow,
            RollingBack,
            Cleaning,
            Aborting,
            Done,
            Aborted,
            RolledBack,
            Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("unknown move phase {s:?}"))
    }
}

/// How far a move's data has come.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveProgress {
    /// Rows of the bulk copy sent to the target, and their size.
    pub rows_copied: u64,
    pub bytes_copied: u64,
    /// The tenant's rows at the source when the copy began (for the ETA).
    pub rows_total: Option<u64>,
    pub copy_done: bool,
    /// Captured changes sent and applied (forward stream).
    pub changes_sent: u64,
    /// Chunks the target applied, of those the source sent.
    pub chunks_applied: i64,
    pub chunks_sent: i64,
    /// Changes captured at the source not yet applied at the target.
    pub lag_changes: u64,
    /// Rows per second over the last minute of the copy.
    pub rate_rows_per_sec: Option<f64>,
    pub eta_secs: Option<f64>,
}

/// One attempt at a cut-over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CutoverAttempt {
    pub started_at: DateTime<Utc>,
    /// The measured write pause (fence → unfreeze), once it ended.
    pub pause_ms: Option<u64>,
    pub outcome: String,
}

/// A move as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveView {
    pub id: String,
    pub tenant: TenantId,
    pub env: Env,
    pub source: CellName,
    pub target: CellName,
    pub phase: MovePhase,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub progress: MoveProgress,
    pub max_write_pause_ms: u64,
    pub rollback_window_secs: u64,
    /// When the rollback window closes (in the window).
    pub rollback_until: Option<DateTime<Utc>>,
    pub cutovers: Vec<CutoverAttempt>,
    /// Why the move waits, failed or was aborted.
    pub note: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The agent's side.

/// The agent's part in a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MoveRole {
    Source,
    Target,
}

/// What a cell's agent must do for a move now (in its desired state). Each flag is a standing
/// order: the agent makes it true (idempotently) on every pass, and undoes it when it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveTask {
    pub id: String,
    pub tenant: TenantId,
    pub env: Env,
    pub role: MoveRole,
    /// The other cell.
    pub peer: CellName,
    /// Capture the tenant's writes in this cell's database (source before the cut-over, target
    /// after it).
    pub capture: bool,
    /// Upload this side's stream (copy, then captured changes).
    pub ship: bool,
    /// Download and apply the other side's stream.
    pub apply: bool,
    /// Refuse the tenant's writes: the database rejects them and the workload answers
    /// `503 moved`.
    pub fence: bool,
    /// Reject the tenant's writes in the database only (the side that does not serve).
    pub guard: bool,
    /// Delete the tenant's rows and this move's machinery.
    pub cleanup: bool,
    /// The shipping side includes a full checksum of the tenant's rows in its next chunk when
    /// this is above the last round it did (rounds count from 1).
    #[serde(default)]
    pub verify_round: u32,
    /// The stream was verified in full up to this change of the shipping side's capture log:
    /// after the fence, the final chunk checks only the rows changed since.
    #[serde(default)]
    pub verified_upto: i64,
}

/// One chunk of a move's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveChunk {
    pub seq: i64,
    /// `copy` rows, captured `changes`, or an `end` marker closing the bulk copy.
    pub kind: String,
    /// Rows (copy) or changes, as JSON: `[{table, op, pk, row}]` (`row` null for a delete).
    #[schema(value_type = Vec<Value>)]
    pub items: Vec<serde_json::Value>,
    /// Where the uploader resumes after this chunk (opaque to the control plane).
    #[schema(value_type = Value)]
    pub cursor: serde_json::Value,
    /// The highest change sequence of the uploader's capture log this chunk covers.
    pub change_seq: i64,
    /// Checksums of the tenant's rows as of this chunk (compare after applying it).
    #[serde(default)]
    pub verify: Option<Verify>,
    /// Size of `items` as sent.
    #[serde(default)]
    pub bytes: u64,
}

/// What a chunk asks the applying side to compare once it is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// The checksum round this answers (one per cut-over attempt).
    pub round: u32,
    /// Per table: the rows and checksum at the shipping side.
    pub sums: BTreeMap<String, TableSum>,
    /// When set, the sums cover only these primary keys per table (the rows changed since the
    /// last full verify); else every row of the tenant.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, Vec<Value>>>)]
    pub pks: Option<BTreeMap<String, Vec<serde_json::Value>>>,
}

/// Rows and an order-independent checksum of one table's rows of a tenant (or of some of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableSum {
    pub rows: u64,
    /// Sum (mod 2^64) of a 64-bit hash of each row's canonical JSON.
    pub sum: u64,
}

/// What the uploader is told about where to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamPosition {
    /// The last chunk the control plane holds (0: none).
    pub last_seq: i64,
    #[schema(value_type = Value)]
    pub cursor: serde_json::Value,
    /// Chunks stored but not yet applied by the other side (the uploader waits above a bound).
    pub unapplied: i64,
    /// The last chunk the other side applied.
    pub applied_seq: i64,
}

/// What the downloader acknowledges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChunkApplied {
    pub seq: i64,
    /// When the chunk carried a checksum: the tables whose checksums differ after applying it
    /// (with both sides' figures).
    #[serde(default)]
    pub mismatches: Vec<String>,
}

/// A side's facts about a move (capture installed, fenced at which change, cleaned).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveSideReport {
    /// The move's tables are movable and capture is installed (with the capture log's position
    /// at that moment).
    pub capturing_from: Option<i64>,
    /// Tables that cannot be moved safely, and why.
    #[serde(default)]
    pub unmovable: Vec<String>,
    /// The fence holds: no write of the tenant can be applied here any more; the capture log
    /// ends at this sequence.
    pub fenced_at: Option<i64>,
    /// The guard (database-only fence) holds.
    #[serde(default)]
    pub guarded: bool,
    /// The tenant's rows and the move's machinery are gone from this cell.
    #[serde(default)]
    pub cleaned: bool,
    /// The tenant's rows here, when counted.
    pub rows: Option<u64>,
    /// The newest change in this side's capture log for the move (for the lag).
    #[serde(default)]
    pub capture_head: Option<i64>,
}
