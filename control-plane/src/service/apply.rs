//! `apply`: declarative manifests into the registry, in one transaction.
//!
//! Order: every document is parsed and validated first (nothing touched on error); then, inside
//! one mutation, regions, then cells, then tenants are written (so a file may declare a cell
//! before its region), and finally every tenant with an unplaced environment is placed (new
//! tenants, and drafts that now fit because this apply added room). Any error rolls back the whole
//! apply. `--dry-run` runs exactly the same code and rolls back at the end, so what it prints is
//! what a real apply would do.
//!
//! Changes that would move data are refused here, with the field that asks for them: a cell that
//! holds tenants keeps its region, kind and env and cannot shrink below its load; a placed tenant
//! keeps its profile, its environments and a residency that still allows where it is. Those need
//! a planned move (SPEC §9).

use std::collections::{BTreeMap, HashMap};

use cellfleet_api::{
    ApplyOutcome, ApplyResponse, ApplyResult, CellName, CellSpec, CellState, ManifestFile,
    RegionName, RegionSpec, Role, TenantId, TenantSpec, TenantState,
};
use serde_json::{Value, json};

use super::diff::diff;
use super::placing::{place_tenant, target};
use super::{Error, Registry, Result};
use crate::auth::{Action, allows};
use crate::manifest::{self, Object, Origin};
use crate::store::{self, Caller, CellRow, TenantRow, Tx};

impl Registry {
    /// Applies manifest files as `role` (each document is authorized by its kind).
    pub async fn apply(
        &self,
        caller: &Caller,
        role: Role,
        files: &[ManifestFile],
        dry_run: bool,
    ) -> Result<ApplyResponse> {
        let mut docs = manifest::parse(files)?;
        for doc in &docs {
            let action = match doc.object {
                Object::Region { .. } | Object::Cell { .. } => Action::ManageInfrastructure,
                Object::Tenant { .. } => Action::ManageTenants,
                Object::Release { .. } => Action::ManageInfrastructure,
            };
            if !allows(role, action) {
                return Err(Error::Forbidden(format!(
                    "{} document {} ({} {}): role {role} may not {}",
                    doc.origin.file,
                    doc.origin.document,
                    doc.object.kind(),
                    doc.object.name(),
                    action.describe()
                )));
            }
        }
        // Regions, then cells, releases and tenants; stable within a kind.
        docs.sort_by_key(|d| match d.object {
            Object::Region { .. } => 0,
            Object::Cell { .. } => 1,
            Object::Release { .. } => 2,
            Object::Tenant { .. } => 3,
        });

        let mut tx = self.store.begin(caller).await?;
        let mut results = Vec::with_capacity(docs.len());
        // Regions, read once the regions of this apply are written (tenants reference them).
        let mut regions: Option<HashMap<RegionName, String>> = None;
        for doc in &docs {
            let result = match &doc.object {
                Object::Region { name, spec } => {
                    apply_region(&mut tx, &doc.origin, name, spec).await?
                }
                Object::Cell { name, labels, spec } => {
                    apply_cell(&mut tx, &doc.origin, name, labels, spec).await?
                }
                Object::Release { version, spec } => {
                    super::releases::apply_release(&mut tx, Some(&doc.origin), version, spec)
                        .await?
                }
                Object::Tenant { name, spec } => {
                    let known = match regions.take() {
                        Some(known) => known,
                        None => region_jurisdictions(&mut tx).await?,
                    };
                    let result =
                        apply_tenant(&mut tx, &doc.origin, &known, name, spec, false).await?;
                    regions = Some(known);
                    result
                }
            };
            results.push(result);
        }
        // New room (a region or cell changed) may fit any waiting tenant; otherwise only the
        // tenants this apply touched can have become placeable.
        let infrastructure_changed = results.iter().any(|r| {
            matches!(r.kind.as_str(), "Region" | "Cell") && r.outcome != ApplyOutcome::Unchanged
        });
        let touched: Vec<TenantId> = results
            .iter()
            .filter(|r| r.kind == "Tenant" && r.outcome != ApplyOutcome::Unchanged)
            .filter_map(|r| r.name.parse().ok())
            .collect();
        let placed = self
            .place_pending(
                &mut tx,
                (!infrastructure_changed).then_some(touched.as_slice()),
            )
            .await?;
        if !dry_run {
            self.commit(tx).await?;
        }
        // A dry run drops `tx` here, which rolls everything back.
        Ok(ApplyResponse {
            dry_run,
            results,
            placed,
        })
    }

    /// Places tenants with an environment still waiting for a placement: every such tenant, or
    /// only those in `only` (a mutation that added no room cannot help the others).
    pub(super) async fn place_pending(
        &self,
        tx: &mut Tx,
        only: Option<&[TenantId]>,
    ) -> Result<Vec<cellfleet_api::PlacedTenant>> {
        let candidates: Vec<TenantRow> = match only {
            None => store::pending_tenants(tx.conn()).await?,
            Some(ids) => {
                let mut rows = Vec::with_capacity(ids.len());
                for id in ids {
                    rows.extend(
                        store::get_tenant(tx.conn(), id)
                            .await?
                            .filter(|t| t.pending),
                    );
                }
                rows
            }
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut fleet = store::fleet_snapshot(tx.conn()).await?;
        let mut placed = Vec::new();
        for mut t in candidates {
            // A draft was never placed (placement is all or nothing): nothing to read.
            let existing = match t.state {
                TenantState::Draft => Vec::new(),
                _ => store::placements_of(tx.conn(), &t.id).await?,
            };
            placed.extend(
                place_tenant(tx, &mut fleet, &self.settings.policy, &mut t, &existing).await?,
            );
        }
        Ok(placed)
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(super) fn result(
    kind: &str,
    name: &str,
    outcome: ApplyOutcome,
    changes: Vec<cellfleet_api::FieldChange>,
) -> ApplyResult {
    ApplyResult {
        kind: kind.to_owned(),
        name: name.to_owned(),
        outcome,
        changes,
        warnings: Vec::new(),
    }
}

async fn apply_region(
    tx: &mut Tx,
    origin: &Origin,
    name: &RegionName,
    spec: &RegionSpec,
) -> Result<ApplyResult> {
    let existing = store::get_region(tx.conn(), name).await?;
    let changes = diff(
        "spec",
        existing.as_ref().map(|r| to_value(&r.spec)).as_ref(),
        Some(&to_value(spec)),
    );
    let outcome = match &existing {
        None => ApplyOutcome::Created,
        Some(_) if changes.is_empty() => {
            return Ok(result(
                "Region",
                name.as_str(),
                ApplyOutcome::Unchanged,
                changes,
            ));
        }
        Some(old) => {
            if old.spec.jurisdiction != spec.jurisdiction {
                refuse_jurisdiction_change(tx, origin, name, spec).await?;
            }
            ApplyOutcome::Configured
        }
    };
    let now = tx.now;
    store::upsert_region(tx.conn(), name, spec, now).await?;
    tx.audit(
        &format!("region.{outcome}"),
        &format!("region/{name}"),
        json!({ "spec": spec, "changes": changes }),
    );
    Ok(result("Region", name.as_str(), outcome, changes))
}

/// A region's jurisdiction may change only if no tenant placed there would then be outside its
/// residency.
async fn refuse_jurisdiction_change(
    tx: &mut Tx,
    origin: &Origin,
    name: &RegionName,
    spec: &RegionSpec,
) -> Result<()> {
    let mut fleet = store::fleet_snapshot(tx.conn()).await?;
    fleet.add_region(crate::placement::RegionInfo {
        name: name.clone(),
        jurisdiction: spec.jurisdiction.clone(),
        location: spec.location,
    });
    for p in store::list_placements(tx.conn()).await? {
        if &p.region != name {
            continue;
        }
        if let Some(t) = store::get_tenant(tx.conn(), &p.tenant).await?
            && !fleet
                .candidate_regions(&t.spec.residency)
                .regions
                .iter()
                .any(|(r, _)| r == name)
        {
            return Err(origin
                .error(
                    "spec.jurisdiction",
                    format!(
                        "changing the jurisdiction to {} would put tenant {} ({}) outside its residency",
                        spec.jurisdiction, t.id, p.env
                    ),
                )
                .into());
        }
    }
    Ok(())
}

async fn apply_cell(
    tx: &mut Tx,
    origin: &Origin,
    name: &CellName,
    labels: &BTreeMap<String, String>,
    spec: &CellSpec,
) -> Result<ApplyResult> {
    if store::get_region(tx.conn(), &spec.region).await?.is_none() {
        return Err(origin
            .error("spec.region", format!("unknown region {}", spec.region))
            .into());
    }
    let existing = store::get_cell(tx.conn(), name).await?;
    let old_value = existing
        .as_ref()
        .map(|c| json!({ "labels": c.labels, "spec": c.spec }));
    let changes = diff(
        "",
        old_value.as_ref(),
        Some(&json!({ "labels": labels, "spec": spec })),
    );
    let (outcome, state) = match &existing {
        None => (ApplyOutcome::Created, CellState::Ready),
        Some(_) if changes.is_empty() => {
            return Ok(result(
                "Cell",
                name.as_str(),
                ApplyOutcome::Unchanged,
                changes,
            ));
        }
        Some(c) => {
            refuse_cell_change(origin, c, spec)?;
            (ApplyOutcome::Configured, c.state)
        }
    };
    let now = tx.now;
    store::upsert_cell(tx.conn(), name, labels, spec, state, now).await?;
    tx.touch(name);
    tx.audit(
        &format!("cell.{outcome}"),
        &format!("cell/{name}"),
        json!({ "labels": labels, "spec": spec, "state": state, "changes": changes }),
    );
    Ok(result("Cell", name.as_str(), outcome, changes))
}

fn refuse_cell_change(origin: &Origin, old: &CellRow, new: &CellSpec) -> Result<()> {
    if old.load > 0 {
        let holding = format!("cell {} holds {} tenant environment(s)", old.name, old.load);
        if old.spec.region != new.region {
            return Err(origin
                .error(
                    "spec.region",
                    format!("{holding}; move them before changing its region"),
                )
                .into());
        }
        if old.spec.kind != new.kind {
            return Err(origin
                .error(
                    "spec.kind",
                    format!("{holding}; move them before changing its kind"),
                )
                .into());
        }
        if old.spec.env != new.env {
            return Err(origin
                .error(
                    "spec.env",
                    format!("{holding}; move them before changing its env"),
                )
                .into());
        }
        if new.effective_capacity() < old.load {
            return Err(origin
                .error(
                    "spec.capacity",
                    format!(
                        "{holding}; capacity {} would be below that",
                        new.effective_capacity()
                    ),
                )
                .into());
        }
    }
    Ok(())
}

/// Every region, with its jurisdiction.
pub(super) async fn region_jurisdictions(tx: &mut Tx) -> Result<HashMap<RegionName, String>> {
    Ok(store::list_regions(tx.conn())
        .await?
        .into_iter()
        .map(|r| (r.name, r.spec.jurisdiction))
        .collect())
}

/// Checks a tenant's residency against the regions that exist: every named region must exist,
/// and the rule must allow at least one region (a tenant that can never be placed is refused).
/// Returns warnings for what is allowed but probably not meant: an allowed region outside the
/// jurisdiction (never used), a preferred region the rule does not allow (only its location
/// counts, to rank the allowed regions by distance).
fn check_residency(
    origin: &Origin,
    regions: &HashMap<RegionName, String>,
    residency: &cellfleet_api::Residency,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let in_jurisdiction = |r: &RegionName| {
        residency
            .jurisdiction
            .as_ref()
            .is_none_or(|j| regions.get(r) == Some(j))
    };
    for (i, region) in residency.allowed_regions.iter().flatten().enumerate() {
        if !regions.contains_key(region) {
            return Err(origin
                .error(
                    format!("spec.residency.allowedRegions[{i}]"),
                    format!("unknown region {region}"),
                )
                .into());
        }
        if !in_jurisdiction(region)
            && let Some(j) = &residency.jurisdiction
        {
            warnings.push(format!(
                "spec.residency.allowedRegions[{i}]: {region} is not in jurisdiction {j}, so it is never used"
            ));
        }
    }
    if let Some(p) = &residency.preferred_region
        && !regions.contains_key(p)
    {
        return Err(origin
            .error(
                "spec.residency.preferredRegion",
                format!("unknown region {p}"),
            )
            .into());
    }
    let allowed: Vec<&RegionName> = match &residency.allowed_regions {
        Some(list) => list.iter().filter(|r| in_jurisdiction(r)).collect(),
        None => regions.keys().filter(|r| in_jurisdiction(r)).collect(),
    };
    match (&residency.allowed_regions, &residency.jurisdiction) {
        (Some(list), Some(j)) if allowed.is_empty() => {
            return Err(origin
                .error(
                    "spec.residency",
                    format!(
                        "none of allowedRegions [{}] is in jurisdiction {j}: the tenant could never be placed",
                        list.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )
                .into());
        }
        _ => {}
    }
    if let Some(p) = &residency.preferred_region
        && !allowed.contains(&p)
    {
        warnings.push(format!(
            "spec.residency.preferredRegion: {p} is not allowed by the residency rule; the tenant is placed in the allowed region closest to it instead"
        ));
    }
    Ok(warnings)
}

/// Creates or updates a tenant from its spec (placement happens afterwards, for every pending
/// tenant at once). `regions` are the regions that exist. With `must_be_new`, an existing tenant
/// is a conflict (`tenant create`).
pub(super) async fn apply_tenant(
    tx: &mut Tx,
    origin: &Origin,
    regions: &HashMap<RegionName, String>,
    name: &TenantId,
    spec: &TenantSpec,
    must_be_new: bool,
) -> Result<ApplyResult> {
    let warnings = check_residency(origin, regions, &spec.residency)?;
    let existing = store::get_tenant(tx.conn(), name).await?;
    let changes = diff(
        "spec",
        existing.as_ref().map(|t| to_value(&t.spec)).as_ref(),
        Some(&to_value(spec)),
    );
    let (row, outcome) = match existing {
        None => (
            TenantRow {
                id: name.clone(),
                state: TenantState::Draft,
                state_reason: None,
                spec: spec.clone(),
                created_at: tx.now,
                updated_at: tx.now,
                archived_at: None,
                pending: true,
            },
            ApplyOutcome::Created,
        ),
        Some(t) if must_be_new => {
            return Err(Error::Conflict(format!(
                "tenant {} already exists (state {})",
                t.id, t.state
            )));
        }
        Some(t) if t.state == TenantState::Deleted => {
            return Err(origin
                .error(
                    "metadata.name",
                    format!("tenant {name} was deleted; tenant ids are never reused"),
                )
                .into());
        }
        Some(_) if changes.is_empty() => {
            return Ok(ApplyResult {
                warnings,
                ..result("Tenant", name.as_str(), ApplyOutcome::Unchanged, changes)
            });
        }
        Some(t) => {
            refuse_tenant_change(tx, origin, &t, spec).await?;
            // Quotas and flags are part of the desired state of the tenant's cells.
            for p in store::placements_of(tx.conn(), &t.id).await? {
                tx.touch(&p.cell);
            }
            // New environments wait for placements.
            let pending = t.pending
                || spec
                    .environments
                    .iter()
                    .any(|e| !t.spec.environments.contains(e));
            let row = TenantRow {
                spec: spec.clone(),
                updated_at: tx.now,
                pending,
                ..t
            };
            (row, ApplyOutcome::Configured)
        }
    };
    store::put_tenant(tx.conn(), &row).await?;
    tx.audit(
        &format!("tenant.{outcome}"),
        &target(&row),
        json!({ "spec": spec, "changes": changes }),
    );
    Ok(ApplyResult {
        warnings,
        ..result("Tenant", name.as_str(), outcome, changes)
    })
}

async fn refuse_tenant_change(
    tx: &mut Tx,
    origin: &Origin,
    old: &TenantRow,
    new: &TenantSpec,
) -> Result<()> {
    let placements = store::placements_of(tx.conn(), &old.id).await?;
    if placements.is_empty() {
        return Ok(());
    }
    if old.spec.profile != new.profile {
        return Err(origin
            .error(
                "spec.profile",
                format!(
                    "tenant {} is placed as {}; changing the profile to {} needs a move (cellfleet move start)",
                    old.id, old.spec.profile, new.profile
                ),
            )
            .into());
    }
    let fleet = store::fleet_snapshot(tx.conn()).await?;
    let allowed = fleet.candidate_regions(&new.residency);
    for p in &placements {
        if !new.environments.contains(&p.env) {
            return Err(origin
                .error(
                    "spec.environments",
                    format!(
                        "tenant {} has data in env {} on cell {}; removing the env would orphan it",
                        old.id, p.env, p.cell
                    ),
                )
                .into());
        }
        if !allowed.regions.iter().any(|(r, _)| r == &p.region) {
            return Err(origin
                .error(
                    "spec.residency",
                    format!(
                        "tenant {} ({}) is on cell {} in {}, which the new residency ({}) does not allow; move it first",
                        old.id, p.env, p.cell, p.region, allowed.rule
                    ),
                )
                .into());
        }
    }
    Ok(())
}
