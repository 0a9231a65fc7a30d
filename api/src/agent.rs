//! The cell agent protocol (SPEC §7): what a cell should run (desired state, versioned by a
//! per-cell generation) and what its agent saw (reports).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{CellName, Env, Generation, TenantId};
use crate::model::{CellKind, Isolation, Profile, Quotas, TenantState};

/// One tenant environment placed on the cell, as the agent must serve it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredTenant {
    pub tenant: TenantId,
    pub env: Env,
    /// The placement's generation: an agent must not serve an older one.
    pub generation: Generation,
    pub state: TenantState,
    pub profile: Profile,
    pub quotas: Quotas,
    #[schema(value_type = Object)]
    pub flags: BTreeMap<String, serde_json::Value>,
    pub isolation: Isolation,
}

/// When a cell-database migration may run (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Backward compatible: runs before the new code.
    Expand,
    /// Runs only after every cell runs the new code.
    Contract,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "expand" => Ok(Phase::Expand),
            "contract" => Ok(Phase::Contract),
            other => Err(format!(
                "unknown phase {other:?} (expected expand or contract)"
            )),
        }
    }
}

/// One migration of the fleet-wide stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub phase: Phase,
    /// SHA-256 of the SQL text.
    pub checksum: String,
    pub sql: String,
}

/// What a cell deploys for a release. Locally (the `local` provider) it is a command the agent
/// runs and supervises; other deployers read the same fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseMigrations {
    /// The release needs every migration of the stream up to this version.
    pub up_to: i64,
}

/// A release manifest's spec (`metadata.name` is the semver version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseSpec {
    pub artifact: Artifact,
    #[serde(default)]
    pub migrations: Option<ReleaseMigrations>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseView {
    pub version: String,
    pub spec: ReleaseSpec,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateReleaseRequest {
    pub file: crate::model::ManifestFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployRequest {
    /// The cells to move to the release; empty means every cell.
    #[serde(default)]
    pub cells: Vec<CellName>,
}

/// The release a cell should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredRelease {
    pub version: String,
    pub artifact: Artifact,
}

/// Everything one cell should run. `generation` increases whenever any of the rest changes, so
/// the same generation always means the same content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    pub cell: CellName,
    pub generation: i64,
    /// Pooled cells isolate tenants by row (RLS on PostgreSQL); dedicated cells by database.
    pub kind: CellKind,
    /// Tenants placed on the cell, ordered by (tenant, env).
    pub tenants: Vec<DesiredTenant>,
    /// The migration stream, in version order: the cell database must have all of them.
    pub migrations: Vec<Migration>,
    /// The release the cell's workload should run (none until one is deployed to it).
    pub release: Option<DesiredRelease>,
    /// Where the cell's workload serves (the cell's `endpoint`).
    pub endpoint: Option<String>,
}

/// A migration file as the CLI read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationFile {
    /// `V{version}__{name}.{expand|contract}.sql`
    pub name: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddMigrationsRequest {
    pub files: Vec<MigrationFile>,
}

/// What `migration add` did with each file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationAdded {
    pub version: i64,
    pub name: String,
    /// `created` or `unchanged`.
    pub outcome: String,
}

/// A migration as an agent applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedMigration {
    pub version: i64,
    pub checksum: String,
}

/// Workload health over the agent's sliding window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub window_seconds: u32,
    pub requests: u64,
    /// Requests answered with a 5xx status.
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// The tenants with the most requests in the window (at most 5), busiest first.
    #[serde(default)]
    pub busiest: Vec<TenantHealth>,
}

/// One tenant's share of a cell's health.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantHealth {
    pub tenant: String,
    pub requests: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// What an agent reports after each reconcile.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// The desired-state generation the cell now matches.
    pub observed_generation: i64,
    /// The release the workload runs.
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub migrations: Vec<AppliedMigration>,
    #[serde(default)]
    pub health: Option<Health>,
    /// Rows per tenant in the cell database.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tenant_rows: BTreeMap<String, i64>,
    /// What stops the reconcile, if anything (one line each).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Tables of a pooled cell's database without a `tenant_id` column, which row-level security
    /// cannot isolate.
    #[serde(default)]
    pub isolation_drift: Vec<String>,
}

/// The last report of a cell, as the control plane stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellReport {
    #[serde(flatten)]
    pub report: AgentReport,
    pub reported_at: DateTime<Utc>,
}

/// How an edge proxy must treat a tenant's route (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RouteState {
    Active,
    /// A move is cutting over: hold requests until the new route arrives.
    Frozen,
    /// Refuse requests (403 with a reason).
    Suspended,
}

/// One entry of the routing table: where `(tenant, env)` is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteEntry {
    pub tenant: TenantId,
    pub env: Env,
    pub cell: CellName,
    /// The cell's endpoint (none if the cell declares none).
    pub endpoint: Option<String>,
    pub state: RouteState,
    /// The placement's generation: a router never goes back to an older one.
    pub generation: Generation,
    /// The tenant's request-rate quota, enforced at the edge.
    pub requests_per_second: Option<u32>,
    /// The table version at which this entry last changed.
    pub version: i64,
}

/// The whole routing table at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutesSnapshot {
    pub version: i64,
    pub entries: Vec<RouteEntry>,
}

/// One change of the routing table: the entry as of `version`, or its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteChange {
    pub version: i64,
    pub tenant: TenantId,
    pub env: Env,
    /// `None`: the route was removed (tenant archived or deleted).
    pub entry: Option<RouteEntry>,
}

/// The answer to a watch: the changes after `since`, or — when `since` is older than the change
/// log keeps — a full snapshot to start over from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutesWatch {
    /// The table version the answer brings the client to.
    pub version: i64,
    pub changes: Vec<RouteChange>,
    /// Set instead of `changes` when the client must re-snapshot.
    pub snapshot: Option<RoutesSnapshot>,
}
