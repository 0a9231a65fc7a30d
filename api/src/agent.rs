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
    /// Moves this cell takes part in, and what it must do for each now.
    #[serde(default)]
    pub moves: Vec<crate::moves::MoveTask>,
    /// Synthetic probes to send while a release train bakes the cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<crate::trains::ProbeTask>,
}

impl DesiredState {
    /// The hash of everything a generation versions (the document without its generation): the
    /// control plane bumps the generation when it changes, and an agent treats the same
    /// generation with another hash as an error. One definition for both.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let base = (
            self.kind,
            &self.tenants,
            &self.migrations,
            &self.release,
            &self.endpoint,
        );
        // Plain data (strings, numbers, maps with string keys): serialising cannot fail. Without
        // moves the hash is what it was before moves existed, so ledgers written then still
        // verify.
        // Likewise without a probe.
        let text = match (self.moves.is_empty(), &self.probe) {
            (true, None) => serde_json::to_string(&base),
            (false, None) => serde_json::to_string(&(base, &self.moves)),
            (_, Some(probe)) => serde_json::to_string(&(base, &self.moves, probe)),
        }
        .unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }
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

/// What the agent's supervised workload process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadState {
    /// Started, not yet healthy.
    Starting,
    /// Healthy: the endpoint answers with the instance the agent started, at its release.
    Running,
    /// Exited (or never became healthy); the agent restarts it after a backoff.
    Restarting,
    /// Exited again and again (see [`CRASH_LOOP_EXITS`] in [`CRASH_LOOP_WINDOW_SECS`]); still
    /// restarted, with the longest backoff.
    CrashLoop,
    /// Nothing runs (no release deployed to the cell yet).
    Stopped,
}

/// Exits within [`CRASH_LOOP_WINDOW_SECS`] that make a crash loop.
pub const CRASH_LOOP_EXITS: u32 = 3;
/// The window crash-loop exits are counted in.
pub const CRASH_LOOP_WINDOW_SECS: u64 = 300;

/// How a workload process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadExit {
    pub at: DateTime<Utc>,
    /// `exit status: 1`, `signal: 9 (SIGKILL)`, or why it was not healthy.
    pub status: String,
    /// The last line the process wrote on stderr, if any.
    pub message: Option<String>,
}

/// The workload as the agent supervises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub state: WorkloadState,
    /// The release of the process that runs (or was last started).
    pub release: Option<String>,
    /// The nonce the running process was started with (see the workload contract).
    pub instance: Option<String>,
    /// Restarts after exits since the agent started.
    pub restarts: u32,
    /// Exits within the crash-loop window.
    pub recent_exits: u32,
    pub last_exit: Option<WorkloadExit>,
    /// The desired-state generation of the tenant set the workload acknowledged.
    pub tenants_generation: Option<i64>,
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
    pub tenant_rows: BTreeMap<String, i64>,
    /// What stops the reconcile, if anything (one line each).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Isolation problems, one line each: tables of a pooled cell's database without a
    /// `tenant_id` column (row-level security cannot scope them), rows of tenants not placed on
    /// the cell.
    #[serde(default)]
    pub isolation_drift: Vec<String>,
    /// The workload process (none from agents that run no workload yet).
    #[serde(default)]
    pub workload: Option<WorkloadStatus>,
    /// Rows in the cell database of tenants that are not placed on the cell (keys as stored).
    #[serde(default)]
    pub stray_rows: BTreeMap<String, i64>,
    /// Tenant tables a move could not copy safely (no primary key, or one that could collide in
    /// another cell), one line each: a move from this cell refuses to start while any exists.
    #[serde(default)]
    pub unmovable: Vec<String>,
    /// Tenant traffic of the running release since its process started (probes excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_health: Option<crate::trains::ReleaseHealth>,
    /// Synthetic probe results for the running release (sent while a train bakes the cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<crate::trains::ProbeStats>,
}

/// Bounds on what a report may carry: a report is input from the network.
pub mod report_limits {
    pub const ERRORS: usize = 100;
    pub const ERROR_BYTES: usize = 2000;
    pub const DRIFT: usize = 1000;
    pub const DRIFT_BYTES: usize = 500;
    pub const MIGRATIONS: usize = 100_000;
    pub const TENANT_ROWS: usize = 100_000;
    pub const STRAY_ROWS: usize = 1000;
    pub const STRAY_KEY_BYTES: usize = 128;
    pub const RELEASE_BYTES: usize = 64;
    pub const TEXT_BYTES: usize = 1000;
    pub const BUSIEST: usize = 5;
}

fn valid_release(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= report_limits::RELEASE_BYTES
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
}

fn non_negative(field: &str, v: Option<f64>) -> Result<(), String> {
    match v {
        Some(x) if !(x.is_finite() && x >= 0.0) => {
            Err(format!("{field}: {x} is not a non-negative number"))
        }
        _ => Ok(()),
    }
}

impl AgentReport {
    /// Checks every field against its bounds; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        use report_limits as l;
        if self.observed_generation < 0 {
            return Err(format!(
                "observedGeneration: {} is not a generation",
                self.observed_generation
            ));
        }
        if let Some(r) = &self.release
            && !valid_release(r)
        {
            return Err(format!(
                "release: not a release version (1–{} of [0-9A-Za-z.+-])",
                l::RELEASE_BYTES
            ));
        }
        if self.migrations.len() > l::MIGRATIONS {
            return Err(format!("migrations: at most {} entries", l::MIGRATIONS));
        }
        for (i, m) in self.migrations.iter().enumerate() {
            if m.version < 1 {
                return Err(format!(
                    "migrations[{i}].version: {} is not a migration version",
                    m.version
                ));
            }
            if m.checksum.len() != 64 || !m.checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "migrations[{i}].checksum: not a SHA-256 (64 hex digits)"
                ));
            }
        }
        if let Some(h) = &self.health {
            if h.errors > h.requests {
                return Err("health.errors: more errors than requests".into());
            }
            non_negative("health.latencyP50Ms", h.latency_p50_ms)?;
            non_negative("health.latencyP99Ms", h.latency_p99_ms)?;
            if h.busiest.len() > l::BUSIEST {
                return Err(format!("health.busiest: at most {} tenants", l::BUSIEST));
            }
            for (i, t) in h.busiest.iter().enumerate() {
                if t.tenant.len() > 63 || t.errors > t.requests {
                    return Err(format!(
                        "health.busiest[{i}]: a tenant label of at most 63 bytes, errors ≤ requests"
                    ));
                }
                non_negative(
                    &format!("health.busiest[{i}].latencyP50Ms"),
                    t.latency_p50_ms,
                )?;
                non_negative(
                    &format!("health.busiest[{i}].latencyP99Ms"),
                    t.latency_p99_ms,
                )?;
            }
        }
        if let Some(h) = &self.release_health {
            if !valid_release(&h.release) {
                return Err("releaseHealth.release: not a release version".into());
            }
            if h.errors > h.requests {
                return Err("releaseHealth.errors: more errors than requests".into());
            }
            non_negative("releaseHealth.latencyP99Ms", h.latency_p99_ms)?;
            if h.tenants.len() > l::TENANT_ROWS
                || h.tenants.iter().any(|(t, (r, e))| t.len() > 63 || e > r)
            {
                return Err(format!(
                    "releaseHealth.tenants: at most {} tenants of at most 63 bytes, errors ≤ requests",
                    l::TENANT_ROWS
                ));
            }
        }
        if let Some(p) = &self.probes {
            if !valid_release(&p.release) {
                return Err("probes.release: not a release version".into());
            }
            if p.errors > p.requests {
                return Err("probes.errors: more errors than requests".into());
            }
            non_negative("probes.latencyP99Ms", p.latency_p99_ms)?;
        }
        if self.tenant_rows.len() > l::TENANT_ROWS {
            return Err(format!("tenantRows: at most {} tenants", l::TENANT_ROWS));
        }
        for (tenant, rows) in &self.tenant_rows {
            if let Err(e) = crate::ids::validate_dns_label(tenant) {
                return Err(format!("tenantRows: {tenant:?} is not a tenant id: {e}"));
            }
            if *rows < 0 {
                return Err(format!("tenantRows.{tenant}: {rows} is not a row count"));
            }
        }
        if self.stray_rows.len() > l::STRAY_ROWS {
            return Err(format!("strayRows: at most {} entries", l::STRAY_ROWS));
        }
        for (key, rows) in &self.stray_rows {
            if key.len() > l::STRAY_KEY_BYTES {
                return Err(format!(
                    "strayRows: keys are at most {} bytes",
                    l::STRAY_KEY_BYTES
                ));
            }
            if *rows < 0 {
                return Err(format!("strayRows.{key}: {rows} is not a row count"));
            }
        }
        if self.errors.len() > l::ERRORS || self.errors.iter().any(|e| e.len() > l::ERROR_BYTES) {
            return Err(format!(
                "errors: at most {} entries of at most {} bytes",
                l::ERRORS,
                l::ERROR_BYTES
            ));
        }
        if self.isolation_drift.len() > l::DRIFT
            || self
                .isolation_drift
                .iter()
                .any(|e| e.len() > l::DRIFT_BYTES)
        {
            return Err(format!(
                "isolationDrift: at most {} entries of at most {} bytes",
                l::DRIFT,
                l::DRIFT_BYTES
            ));
        }
        if self.unmovable.len() > l::DRIFT
            || self.unmovable.iter().any(|u| u.len() > l::DRIFT_BYTES)
        {
            return Err(format!(
                "unmovable: at most {} entries of at most {} bytes",
                l::DRIFT,
                l::DRIFT_BYTES
            ));
        }
        if let Some(w) = &self.workload {
            if let Some(r) = &w.release
                && !valid_release(r)
            {
                return Err("workload.release: not a release version".into());
            }
            if w.instance.as_ref().is_some_and(|i| i.len() > 64) {
                return Err("workload.instance: at most 64 bytes".into());
            }
            if w.tenants_generation.is_some_and(|g| g < 0) {
                return Err("workload.tenantsGeneration: not a generation".into());
            }
            if let Some(e) = &w.last_exit
                && (e.status.len() > l::TEXT_BYTES
                    || e.message.as_ref().is_some_and(|m| m.len() > l::TEXT_BYTES))
            {
                return Err(format!(
                    "workload.lastExit: status and message of at most {} bytes",
                    l::TEXT_BYTES
                ));
            }
        }
        Ok(())
    }
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
    /// The identity of the table's history (see [`RoutesWatch::epoch`]); empty from a server
    /// or a cache file older than epochs.
    #[serde(default)]
    pub epoch: String,
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
    /// The identity of the table's history. Versions compare only within one epoch: it changes
    /// at every control-plane start and whenever a watcher holds a version ahead of the head
    /// (the registry was restored from an older copy). A client whose epoch differs gets a
    /// snapshot, which it takes even where generations go back; within one epoch it refuses to
    /// go back.
    #[serde(default)]
    pub epoch: String,
}
