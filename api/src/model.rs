//! The fleet model as it crosses the wire: enums of the vocabulary (SPEC §2), the specs that
//! manifests declare, and the views the API returns.
//!
//! Specs are what an operator asked for (policy); views add what the control plane decided and
//! observed (placement, load, state). JSON field names are camelCase, enum values kebab-case.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{CellName, Env, Generation, RegionName, TenantId};

/// Implements `Display`/`FromStr` for a string-valued enum from one table of names, so the wire
/// names, CLI arguments and database values can never drift apart.
macro_rules! named_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?} (expected one of: {})",
                        stringify!($name).to_lowercase(),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

/// Who a token acts as. The role matrix in the control plane decides what each may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Admin,
    Sre,
    Operator,
    Viewer,
    Edge,
    Agent,
}
named_enum!(Role { Admin => "admin", Sre => "sre", Operator => "operator", Viewer => "viewer", Edge => "edge", Agent => "agent" });

/// A tenant's deployment profile: where its data may share a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Pooled: shares a cell with other tenants.
    MtStandard,
    /// Its own cell in the provider's account.
    StDedicated,
    /// Its own cell in the customer's account.
    StByoc,
}
named_enum!(Profile { MtStandard => "mt-standard", StDedicated => "st-dedicated", StByoc => "st-byoc" });

impl Profile {
    /// The kind of cell this profile is placed on.
    pub fn cell_kind(self) -> CellKind {
        match self {
            Profile::MtStandard => CellKind::Pooled,
            Profile::StDedicated | Profile::StByoc => CellKind::Dedicated,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CellKind {
    Pooled,
    Dedicated,
}
named_enum!(CellKind { Pooled => "pooled", Dedicated => "dedicated" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CellState {
    Provisioning,
    Ready,
    Draining,
    Retired,
    Failed,
}
named_enum!(CellState { Provisioning => "provisioning", Ready => "ready", Draining => "draining", Retired => "retired", Failed => "failed" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TenantState {
    Draft,
    Active,
    Suspended,
    Archived,
    Deleted,
}
named_enum!(TenantState { Draft => "draft", Active => "active", Suspended => "suspended", Archived => "archived", Deleted => "deleted" });

// ---------------------------------------------------------------------------------------------
// Specs: what manifests declare.

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionSpec {
    /// Legal jurisdiction of the region (`eu`, `us`, …); residency rules may name it.
    pub jurisdiction: String,
    pub location: Location,
}

/// When a dedicated cell may be changed: a cron schedule (with seconds) and how long the window
/// stays open after each start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeWindow {
    pub schedule: String,
    pub duration: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CellSpec {
    pub region: RegionName,
    pub kind: CellKind,
    pub env: Env,
    /// Tenant environments a pooled cell may hold (default 50). A dedicated cell holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Template the cell is built from (`templates/{template}.yaml`); defaults to the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_window: Option<ChangeWindow>,
}

impl CellSpec {
    /// Default capacity of a pooled cell.
    pub const DEFAULT_POOLED_CAPACITY: u32 = 50;

    /// The capacity placement uses: as declared (default 50) for pooled cells, 1 for dedicated.
    pub fn effective_capacity(&self) -> u32 {
        match self.kind {
            CellKind::Pooled => self.capacity.unwrap_or(Self::DEFAULT_POOLED_CAPACITY),
            CellKind::Dedicated => 1,
        }
    }

    /// The template the cell is built from: as declared, else the one named after its kind.
    pub fn effective_template(&self) -> String {
        self.template
            .clone()
            .unwrap_or_else(|| self.kind.as_str().to_owned())
    }
}

/// Where a tenant's data may live: an explicit list of regions or every region of a
/// jurisdiction, and where it would rather be.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Residency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_regions: Option<Vec<RegionName>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_region: Option<RegionName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quotas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_gb: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slo {
    /// Availability target in percent, e.g. 99.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<u32>,
}

fn default_environments() -> Vec<Env> {
    vec![Env::prod()]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSpec {
    pub display_name: String,
    pub profile: Profile,
    pub residency: Residency,
    #[serde(default = "default_environments")]
    pub environments: Vec<Env>,
    #[serde(default)]
    pub quotas: Quotas,
    /// Feature flags: names to JSON values (usually booleans).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub flags: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// Who to tell about the tenant (addresses; runbooks' `notify` steps write to them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Views: what the API returns.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionView {
    pub name: RegionName,
    pub jurisdiction: String,
    pub location: Location,
    /// Cells registered in the region.
    pub cells: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellView {
    pub name: CellName,
    pub region: RegionName,
    pub kind: CellKind,
    pub env: Env,
    pub capacity: u32,
    /// Tenant environments placed on the cell.
    pub load: u32,
    pub template: String,
    pub labels: BTreeMap<String, String>,
    pub endpoint: Option<String>,
    pub change_window: Option<ChangeWindow>,
    pub state: CellState,
    /// Generation of what the cell should run; increases with every change to it.
    pub desired_generation: i64,
    /// The generation the cell's agent last reported it matches (none before its first report).
    pub observed_generation: Option<i64>,
    /// The release the agent last reported running.
    pub release: Option<String>,
    /// The release the cell should run (a deploy or a release train sets it).
    #[serde(default)]
    pub desired_release: Option<String>,
    /// The newest migration the agent last reported applied.
    pub migration_version: Option<i64>,
    /// When the agent last reported.
    pub reported_at: Option<DateTime<Utc>>,
    /// Errors from the agent's last report.
    pub errors: Vec<String>,
    /// Tables the agent found that row-level security cannot scope (no `tenant_id`).
    pub isolation_drift: Vec<String>,
    /// The workload's health over the agent's window, as last reported.
    pub health: Option<crate::agent::Health>,
    /// Rows per tenant in the cell database, as last reported.
    pub tenant_rows: BTreeMap<String, i64>,
    /// The workload process as its agent last reported it.
    pub workload: Option<crate::agent::WorkloadStatus>,
    /// Rows of tenants not placed on the cell, as last reported (isolation drift).
    pub stray_rows: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementView {
    pub env: Env,
    pub cell: CellName,
    pub region: RegionName,
    pub generation: Generation,
    pub placed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub id: TenantId,
    pub state: TenantState,
    /// Why the tenant is in its state, when that needs saying (e.g. why a draft is unplaced).
    pub state_reason: Option<String>,
    pub spec: TenantSpec,
    pub placements: Vec<PlacementView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    /// When an archived tenant may be deleted (archive time + retention).
    pub deletable_after: Option<DateTime<Utc>>,
}

/// One region considered for a placement, in the order it was tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionCandidate {
    pub region: RegionName,
    /// Great-circle distance from the preferred region, when there is one.
    pub distance_km: Option<f64>,
    /// What happened in this region: chosen, no ready cell, all full, …
    pub outcome: String,
}

/// One cell considered in the chosen region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellCandidate {
    pub cell: CellName,
    /// The rendezvous-hash score of (tenant, cell); the highest eligible score wins.
    pub score: f64,
    pub load: u32,
    pub capacity: u32,
    /// `chosen`, `full` (at capacity), `over-bound` (above the balanced-load bound) or `lower-score`.
    pub outcome: String,
}

/// Why a `(tenant, env)` is on its cell: recorded when the decision is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub env: Env,
    pub profile: Profile,
    /// The residency rule that produced the candidate regions.
    pub residency: String,
    pub regions: Vec<RegionCandidate>,
    pub cells: Vec<CellCandidate>,
    pub chosen_region: Option<RegionName>,
    pub chosen_cell: Option<CellName>,
    /// One sentence for people.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementExplain {
    pub placement: PlacementView,
    /// Whether the placement satisfies the tenant's residency as it is declared now.
    pub residency_satisfied: bool,
    pub decision: Explanation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantExplain {
    pub tenant: TenantId,
    pub state: TenantState,
    pub state_reason: Option<String>,
    pub placements: Vec<PlacementExplain>,
    /// For unplaced environments: what a placement attempt now would decide, and why not.
    pub unplaced: Vec<Explanation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Sharing {
    Shared,
    Dedicated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseIsolation {
    pub sharing: Sharing,
    /// The database the tenant's rows live in.
    pub database: String,
    /// The schema holding the tenant's tables.
    pub schema: String,
    /// For shared databases: the value rows are scoped to (`tenant_id`, enforced by RLS).
    pub row_scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreIsolation {
    pub sharing: Sharing,
    pub bucket: String,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueIsolation {
    pub sharing: Sharing,
    pub queue: String,
    pub partition_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsIsolation {
    pub path: String,
    /// The encryption key the tenant's secrets are sealed with.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkIsolation {
    pub sharing: Sharing,
    pub network: String,
    /// Whose account the network is in: `provider` or `customer` (BYOC).
    pub account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Isolation {
    pub database: DatabaseIsolation,
    pub object_store: ObjectStoreIsolation,
    pub queue: QueueIsolation,
    pub secrets: SecretsIsolation,
    pub network: NetworkIsolation,
}

/// The tenant context every platform module consumes (SPEC §5): one shape for every profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantContext {
    pub tenant: TenantId,
    pub display_name: String,
    pub env: Env,
    pub cell: CellName,
    pub region: RegionName,
    pub profile: Profile,
    pub state: TenantState,
    pub generation: Generation,
    pub isolation: Isolation,
    pub quotas: Quotas,
    #[schema(value_type = Object)]
    pub flags: BTreeMap<String, serde_json::Value>,
    pub slo: Option<Slo>,
    /// Observability tags: `{tenant, env, cell, region}`.
    pub tags: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Apply.

/// One manifest file as the CLI read it; the server parses it so every client gets the same
/// validation and the same error paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    pub name: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    pub files: Vec<ManifestFile>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}
named_enum!(ApplyOutcome { Created => "created", Configured => "configured", Unchanged => "unchanged" });

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// Dotted path of the field, e.g. `spec.capacity`.
    pub path: String,
    #[schema(value_type = Value)]
    pub from: Option<serde_json::Value>,
    #[schema(value_type = Value)]
    pub to: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub kind: String,
    pub name: String,
    pub outcome: ApplyOutcome,
    pub changes: Vec<FieldChange>,
    /// What is accepted but probably not meant (`FIELD.PATH: why`), also sent as `Warning`
    /// headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub dry_run: bool,
    pub results: Vec<ApplyResult>,
    /// Placements made by this apply (tenants created, or drafts that now fit).
    pub placed: Vec<PlacedTenant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacedTenant {
    pub tenant: TenantId,
    pub env: Env,
    pub cell: CellName,
    pub generation: Generation,
}

// ---------------------------------------------------------------------------------------------
// Tokens and audit.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTokenRequest {
    pub role: Role,
    /// Required for (and only for) `agent` tokens: the one cell the agent may see.
    #[serde(default)]
    pub cell: Option<CellName>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A new token: the secret is in here once and never again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: String,
    pub role: Role,
    pub cell: Option<CellName>,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub id: String,
    pub role: Role,
    pub cell: Option<CellName>,
    pub description: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub correlation_id: String,
    #[schema(value_type = Value)]
    pub payload: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditViolation {
    /// Sequence number of the first record that does not verify (or where one is missing).
    pub seq: i64,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditVerification {
    pub ok: bool,
    pub records: i64,
    /// The earliest problem: where tampering starts.
    pub first_bad: Option<AuditViolation>,
    /// Every problem found, earliest first (at most 100).
    #[serde(default)]
    pub problems: Vec<AuditViolation>,
    /// Signed checkpoints checked (from the registry, the server's checkpoint log and the
    /// request).
    #[serde(default)]
    pub checkpoints: i64,
    /// The newest record a valid checkpoint anchors.
    #[serde(default)]
    pub anchored_through: Option<i64>,
    /// Records after the newest checkpoint: a database writer could still rewrite these
    /// unseen (see the threat model in the README).
    #[serde(default)]
    pub unanchored: i64,
    /// The key checkpoints are verified with.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// A signed statement of the audit chain's head: "record `seq` has hash `hash`", signed with the
/// audit key (Ed25519), which the registry does not hold. See `cellfleet audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditCheckpoint {
    pub seq: i64,
    pub hash: String,
    pub at: DateTime<Utc>,
    /// The first 16 hex digits of SHA-256 over the public key.
    pub key_id: String,
    /// Base64 of the Ed25519 signature over the checkpoint statement.
    pub signature: String,
}

/// The public half of the audit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditKeyView {
    pub algorithm: String,
    pub key_id: String,
    /// SubjectPublicKeyInfo PEM (`openssl pkey -pubin` reads it).
    pub public_key_pem: String,
}

/// Checkpoint copies kept elsewhere, for `audit verify` to check too.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAuditRequest {
    #[serde(default)]
    pub checkpoints: Vec<AuditCheckpoint>,
}

/// Every API error: a stable machine-readable `code` and a human `message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRequest {
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTenantRequest {
    pub id: TenantId,
    pub spec: TenantSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_their_names() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), *p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.contains("admin, sre"), "{err}");
    }

    #[test]
    fn tenant_spec_defaults_and_rejects_unknown_fields() {
        let spec: TenantSpec = serde_json::from_value(serde_json::json!({
            "displayName": "Acme", "profile": "mt-standard",
            "residency": {"jurisdiction": "eu"}
        }))
        .unwrap();
        assert_eq!(spec.environments, vec![Env::prod()]);
        let err = serde_json::from_value::<TenantSpec>(serde_json::json!({
            "displayName": "Acme", "profile": "mt-standard", "residency": {}, "colour": "red"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
