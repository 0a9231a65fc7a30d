//! Runbooks (SPEC §2, §9): their definitions as written in `runbooks/*.yaml`, a run as the API
//! shows it, the dry-run plan, the events `notify` steps emit, and cell lifecycle requests.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{CellName, CellState, Role};

/// A runbook document's `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunbookSpec {
    /// One line: what it is for.
    pub description: String,
    /// Who may run it (the runbook is the authority for what its steps do).
    pub roles: Vec<Role>,
    /// What a run holds while it runs (`cell/${cell}`): a second run on the same thing is
    /// refused. Default: nothing (runs of it may overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    /// Named message templates `notify` steps render (`template: investigating`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, String>,
    pub steps: Vec<StepSpec>,
}

/// A typed parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(default)]
    pub description: String,
    /// Must be given (a parameter with a default never is).
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub default: Option<serde_json::Value>,
    /// The allowed values of an `enum`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Bounds of an `int`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    String,
    Int,
    Bool,
    /// `10m`, `90s`.
    Duration,
    /// A tenant id (DNS label).
    Tenant,
    /// A cell name.
    Cell,
    /// An environment tier.
    Env,
    /// A release version (semver).
    Release,
    /// One of `values`.
    Enum,
    /// Comma-separated strings.
    List,
}

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the runbook; later steps read its output as `${steps.NAME.…}`.
    pub name: String,
    pub kind: StepKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `check` and `wait-for`: the condition (see `runbook show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// `wait-for`: how long to wait (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The step's arguments (templated with `${…}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub with: BTreeMap<String, serde_json::Value>,
    /// Run the step only when this condition holds (`{condition: equals, with: {a, b}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// `approve`: who may approve; other kinds: who may run a runbook with this step (narrows the
    /// runbook's `roles`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// `for-each`: the list (`${steps.drain.tenants}`, a list parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub items: Option<serde_json::Value>,
    /// `for-each`: how many items run at once (default 1; may be `${param}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub concurrency: Option<serde_json::Value>,
    /// `for-each`: the step run for each item (`${item}` is the item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub step: Option<Box<StepSpec>>,
    /// What a failure does: `stop` (default), `continue`, or `{run: STEP}` (a compensating step,
    /// then stop).
    #[serde(
        default,
        rename = "on-failure",
        skip_serializing_if = "OnStepFailure::is_stop"
    )]
    /// `"continue"` (`"stop"` is left out), or `{"run": STEP}`.
    #[schema(value_type = Value)]
    pub on_failure: OnStepFailure,
}

/// A `when:` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct When {
    pub condition: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub with: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Check,
    Move,
    Drain,
    Train,
    ReleaseDeploy,
    WaitFor,
    Approve,
    Notify,
    ForEach,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Check => "check",
            StepKind::Move => "move",
            StepKind::Drain => "drain",
            StepKind::Train => "train",
            StepKind::ReleaseDeploy => "release-deploy",
            StepKind::WaitFor => "wait-for",
            StepKind::Approve => "approve",
            StepKind::Notify => "notify",
            StepKind::ForEach => "for-each",
        }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed step does to its run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStepFailure {
    /// The run fails.
    #[default]
    Stop,
    /// Recorded, and the run goes on.
    Continue,
    /// Runs the compensating step, then the run fails.
    Run(Box<StepSpec>),
}

impl OnStepFailure {
    pub fn is_stop(&self) -> bool {
        *self == OnStepFailure::Stop
    }
}

/// A runbook as `runbook list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunbookSummary {
    pub name: String,
    pub description: String,
    pub roles: Vec<Role>,
    /// `shipped`, or the file it was read from.
    pub source: String,
    /// Why the file cannot be used (it is listed so the mistake is seen, and cannot run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A runbook in full (`runbook show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunbookView {
    pub name: String,
    pub source: String,
    pub spec: RunbookSpec,
    /// Its page for humans (markdown), when one lies next to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
}

/// `POST /v1/runbooks/{name}/runs`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRunRequest {
    /// Parameters as text (`--param k=v`), typed by the runbook.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// A run's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunPhase {
    Running,
    /// An `approve` step waits for `runbook approve`.
    AwaitingApproval,
    Succeeded,
    Failed,
    Aborted,
}

impl RunPhase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Running => "running",
            RunPhase::AwaitingApproval => "awaiting-approval",
            RunPhase::Succeeded => "succeeded",
            RunPhase::Failed => "failed",
            RunPhase::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for RunPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .map_err(|_| format!("unknown run phase {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    /// An `approve` step waiting for its approver.
    Waiting,
    Succeeded,
    Failed,
    /// Its `when` did not hold, or the run stopped before it.
    Skipped,
}

impl StepStatus {
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped
        )
    }
}

/// One step (or one item of a `for-each`) of a run: what happened, stored as it happened.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRun {
    pub name: String,
    #[schema(value_type = String)]
    pub kind: Option<StepKind>,
    pub status: StepStatus,
    /// The item of a `for-each` this runs for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub item: Option<serde_json::Value>,
    /// What it did or why it failed, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What later steps may read (`${steps.NAME.…}`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Value)]
    pub output: serde_json::Value,
    /// The operation it started (a move's id), so a resumed run follows it instead of starting
    /// another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// When a `wait-for` gives up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Who approved (an `approve` step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// A `for-each`'s items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub items: Vec<StepRun>,
    /// The compensating step run after this one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub compensation: Option<Box<StepRun>>,
}

/// A run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub id: String,
    pub runbook: String,
    pub phase: RunPhase,
    /// The parameters, typed and with defaults filled in.
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
    pub steps: Vec<StepRun>,
    /// The step it is on (index into `steps`).
    pub current: usize,
    pub started_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// One step of a dry run: what it would do with the targets known now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    pub name: String,
    pub kind: StepKind,
    /// What it would do, in words, with concrete targets.
    pub action: String,
    /// Its arguments, resolved.
    #[schema(value_type = Value)]
    pub with: serde_json::Value,
    /// A check's verdict now (`false`: the run would stop here today).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub items: Vec<PlannedStep>,
}

/// The answer to a run request: the plan, and the run unless it was a dry run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStarted {
    pub runbook: String,
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
    pub plan: Vec<PlannedStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunView>,
}

/// `POST /v1/runbook-runs/{id}/abort`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortRunRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// An event the fleet emitted (a `notify` step today), stored and listable; delivered to
/// webhooks once they exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: String,
    pub kind: String,
    /// What it is about (`tenant/acme`, `cell/pool-1`).
    pub subject: String,
    /// Who it is for (tenant owners' addresses, a channel).
    pub to: Vec<String>,
    pub title: String,
    pub message: String,
    /// The run that emitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/cells/{name}/drain|undrain|retire`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CellLifecycleRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer to `cell resync`: the cell's desired generation moved past its agent's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellResync {
    pub cell: CellName,
    /// The desired generation before.
    pub from: i64,
    /// The desired generation now: one past what the agent runs, so it takes the registry's
    /// state as newer.
    pub to: i64,
    /// The generation the agent reported running (from its ledger).
    pub agent: i64,
}

/// The answer to a cell lifecycle command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellLifecycle {
    pub cell: CellName,
    pub from: CellState,
    pub to: CellState,
    /// Tenant environments still placed on it.
    pub tenants: u32,
}
