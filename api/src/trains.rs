//! Release trains (SPEC §8): a release pushed through the fleet in waves (canary → pooled batches
//! → dedicated cells inside their change windows), each wave baked and judged by gates before the
//! next one starts; fleet-level feature flags; and what agents do for a train (synthetic probes)
//! and report about it (the health of the release they run, apart from probe traffic).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{CellName, TenantId};

// ---------------------------------------------------------------------------------------------
// Policy

/// How a wave kind rolls out (`spec.canary`, `spec.pooled`, `spec.dedicated` of a policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WavePolicy {
    /// How long the wave runs the release before its gates decide (`10m`, `90s`).
    pub bake: String,
    /// Wait for `train promote` after this wave passes, before the next one starts.
    #[serde(default)]
    pub approval: bool,
    /// Pooled cells per wave (pooled only; default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Cells of one wave deploying at once (default: all of the wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// The gates every wave must pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatePolicy {
    /// Highest share of 5xx answers (0.01 = 1 %).
    pub max_error_rate: f64,
    /// Highest p99 latency in milliseconds (tenants' latency SLOs tighten it per cell).
    pub max_p99_ms: f64,
    /// Highest error-budget burn rate: the error rate over the budget the strictest
    /// availability SLO of the cell's tenants leaves (1.0 spends the budget exactly on time).
    pub max_burn_rate: f64,
    /// The availability SLO (percent) assumed for tenants that declare none.
    pub default_availability: f64,
    /// Requests a cell must serve on the release (tenant traffic, else probes) to be judged.
    pub min_requests: u64,
    /// How long a cell may take to run the release before the train calls it failed.
    pub converge_timeout: String,
}

/// The synthetic probes agents send during bake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbePolicy {
    /// The path probed (GET), with the synthetic tenant.
    pub path: String,
    pub rate_per_second: f64,
    /// The synthetic tenant probes are sent as (never a real tenant).
    pub tenant: TenantId,
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Halt the train and roll the wave's cells back to their last good release.
    Rollback,
    /// Halt the train and leave the cells as they are for an operator.
    Halt,
}

/// What an inconclusive gate (too little signal even with probes) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnInconclusive {
    /// Keep baking until the signal is enough (or the operator decides).
    Wait,
    /// Treat it as a failed gate.
    Fail,
    /// Pass, but only with an operator's `train promote`.
    Approve,
}

/// A train policy's spec (`kind: TrainPolicy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainPolicy {
    pub canary: WavePolicy,
    pub pooled: WavePolicy,
    pub dedicated: WavePolicy,
    pub gates: GatePolicy,
    pub probes: ProbePolicy,
    pub on_failure: OnFailure,
    pub on_inconclusive: OnInconclusive,
    /// Leave `draining` cells out (they are being emptied); by default they get the release
    /// like any cell that still serves tenants.
    #[serde(default)]
    pub skip_draining: bool,
}

// ---------------------------------------------------------------------------------------------
// Requests and views

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartTrainRequest {
    pub release: String,
    /// A policy file (`kind: TrainPolicy`) instead of the default one.
    #[serde(default)]
    pub policy: Option<crate::model::ManifestFile>,
    /// Bake time of every wave, overriding the policy (`30m`).
    #[serde(default)]
    pub bake: Option<String>,
    /// Plan only: print the waves and when each would run, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A kind of wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WaveKind {
    Canary,
    Pooled,
    Dedicated,
}

impl WaveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WaveKind::Canary => "canary",
            WaveKind::Pooled => "pooled",
            WaveKind::Dedicated => "dedicated",
        }
    }
}

/// Where one cell of a train is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CellStep {
    /// Not yet told to run the release.
    Pending,
    /// Told to; not yet running it.
    Deploying,
    /// Runs the release (and its migrations).
    Converged,
    /// Rolled back to its last good release.
    RolledBack,
    /// Left out: the cell was removed, or runs the release already.
    Skipped,
}

/// One cell of a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainCell {
    pub cell: CellName,
    pub step: CellStep,
    /// The release it ran before the train (its last good one).
    pub previous: Option<String>,
    pub deployed_at: Option<DateTime<Utc>>,
    pub converged_at: Option<DateTime<Utc>>,
    /// Why it waits (a change window, a tenant move), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// One gate verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
    /// Not decided yet (still baking, still converging).
    Pending,
}

/// One cell's numbers at a gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellGate {
    pub cell: CellName,
    /// `tenants` (tenant traffic was enough), `probes` (judged by synthetic probes) or `none`.
    pub signal: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Error rate over the error budget of the strictest tenant SLO on the cell.
    pub burn_rate: Option<f64>,
    pub probe_requests: u64,
    pub probe_errors: u64,
    pub verdict: Verdict,
    /// Why, in one line (the threshold crossed, the signal missing).
    pub reason: String,
}

/// A gate decision of a wave, stored on the train and audited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateDecision {
    pub wave: usize,
    pub at: DateTime<Utc>,
    pub verdict: Verdict,
    pub reason: String,
    pub cells: Vec<CellGate>,
}

/// One wave of a train.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wave {
    /// `canary`, `pooled-1`, …, `dedicated-<cell>`.
    pub name: String,
    pub kind: WaveKind,
    pub cells: Vec<TrainCell>,
    /// Bake time in seconds.
    pub bake_secs: u64,
    pub approval: bool,
    pub max_parallel: u32,
    pub started_at: Option<DateTime<Utc>>,
    /// When every cell of the wave ran the release (the bake starts).
    pub baking_since: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `passed`, `failed`, `rolled-back`, … once decided.
    pub outcome: Option<String>,
}

/// A train's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TrainPhase {
    /// Deploying and baking waves.
    Running,
    /// A wave passed and the next needs `train promote` (or an inconclusive gate does).
    AwaitingApproval,
    /// Paused by an operator (`train pause`).
    Paused,
    /// A gate failed (or a cell could not run the release): nothing more is deployed.
    Halted,
    /// Every cell runs the release; the contract migrations go out.
    Contracting,
    Done,
    Aborted,
    /// A gate failed and the wave's cells were rolled back (policy `onFailure: rollback`).
    Failed,
}

impl TrainPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainPhase::Running => "running",
            TrainPhase::AwaitingApproval => "awaiting-approval",
            TrainPhase::Paused => "paused",
            TrainPhase::Halted => "halted",
            TrainPhase::Contracting => "contracting",
            TrainPhase::Done => "done",
            TrainPhase::Aborted => "aborted",
            TrainPhase::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TrainPhase::Done | TrainPhase::Aborted | TrainPhase::Failed
        )
    }
}

impl std::fmt::Display for TrainPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrainPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            TrainPhase::Running,
            TrainPhase::AwaitingApproval,
            TrainPhase::Paused,
            TrainPhase::Halted,
            TrainPhase::Contracting,
            TrainPhase::Done,
            TrainPhase::Aborted,
            TrainPhase::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("unknown train phase {s:?}"))
    }
}

/// A train as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainView {
    pub id: String,
    pub release: String,
    pub phase: TrainPhase,
    /// The wave in progress (index into `waves`); `waves.len()` once all passed.
    pub current: usize,
    pub waves: Vec<Wave>,
    pub policy: TrainPolicy,
    /// Every gate decision so far, with its numbers.
    pub gates: Vec<GateDecision>,
    /// What the train waits for or why it stopped, in one line.
    pub note: Option<String>,
    /// Set while the line is stopped (`cellfleet stop-the-line`): the train does nothing.
    pub line_stopped: Option<String>,
    /// The contract migrations this train releases once every cell runs the release.
    pub contract_up_to: Option<i64>,
    pub started_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The answer to `train start`: the plan, and the train unless it was a dry run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainStarted {
    pub waves: Vec<WavePlan>,
    pub train: Option<TrainView>,
}

/// One wave of a plan, with when it would run at the earliest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WavePlan {
    pub name: String,
    pub kind: WaveKind,
    pub cells: Vec<CellName>,
    pub bake_secs: u64,
    pub approval: bool,
    /// The earliest start if every wave before it passes at the end of its bake (dedicated
    /// waves: the next opening of the cell's change window after that).
    pub earliest_start: DateTime<Utc>,
    /// The change window, for dedicated waves.
    pub window: Option<String>,
}

/// `train abort`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortTrainRequest {
    /// Also roll back every cell the train changed.
    #[serde(default)]
    pub rollback: bool,
}

/// `train rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackTrainRequest {
    /// Only this cell (default: every cell the train changed).
    #[serde(default)]
    pub cell: Option<CellName>,
}

/// `stop-the-line`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StopLineRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Whether the line is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineView {
    pub stopped: bool,
    pub reason: Option<String>,
    pub by: Option<String>,
    pub at: Option<DateTime<Utc>>,
    /// Trains halted by it (running ones at the time).
    pub trains: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Feature flags

/// Who a fleet flag applies to; all empty (and no percent) means every tenant.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlagTarget {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<CellName>,
    /// A stable share of tenants (0–100), by a hash of flag name and tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 100)]
    pub percent: Option<u8>,
}

/// `flag set NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetFlagRequest {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub name: String,
    #[schema(value_type = Value)]
    pub value: serde_json::Value,
    #[serde(default)]
    pub target: FlagTarget,
}

/// A fleet flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlagView {
    pub name: String,
    #[schema(value_type = Value)]
    pub value: serde_json::Value,
    pub target: FlagTarget,
    /// Killed (`flag kill`): `false` for every tenant, whatever else says.
    pub killed: bool,
    pub updated_at: DateTime<Utc>,
}

// ---------------------------------------------------------------------------------------------
// What agents do and report for a train

/// Synthetic probes an agent sends to its workload while its cell bakes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTask {
    pub path: String,
    pub rate_per_second: f64,
    pub tenant: TenantId,
}

/// Probe results for the release the workload runs (counted since that release started).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStats {
    pub release: String,
    pub requests: u64,
    /// Answers that were 5xx, or no answer at all.
    pub errors: u64,
    pub latency_p99_ms: Option<f64>,
}

/// Tenant traffic served by the running workload process since it started (its release),
/// probes excluded: what gates judge a release by.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseHealth {
    pub release: String,
    pub requests: u64,
    pub errors: u64,
    pub latency_p99_ms: Option<f64>,
    /// Per tenant: (requests, errors), for error-budget burn.
    #[serde(default)]
    #[schema(schema_with = tenant_counts_schema)]
    pub tenants: BTreeMap<String, (u64, u64)>,
}

/// `{TENANT: [requests, errors]}`: pairs of counts.
fn tenant_counts_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let count = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(0));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            ArrayBuilder::new()
                .items(count)
                .min_items(Some(2))
                .max_items(Some(2)),
        ))
        .build()
}
