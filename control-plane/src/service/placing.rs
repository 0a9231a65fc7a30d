//! Placing tenants inside a mutation: decide with the pure placement core, persist each
//! decision with its explanation and a fresh generation, and activate the tenant.

use cellfleet_api::{Generation, PlacedTenant, TenantState};
use serde_json::json;

use super::Result;
use crate::lifecycle::{Transition, next_state};
use crate::placement::{Decision, Fleet, NoRoom, Policy};
use crate::store::{self, PlacementRow, TenantRow, Tx};

/// Places every environment of `tenant` that has no placement yet: all of them or none (a tenant
/// is never half-placed by one decision). When one does not fit, the tenant keeps its state and
/// the reason is recorded on it (`draft` tenants show it in `tenant get` and `tenant explain`).
/// `fleet` is updated with the new loads so later decisions in the same mutation see them.
pub(super) async fn place_tenant(
    tx: &mut Tx,
    fleet: &mut Fleet,
    policy: &Policy,
    tenant: &mut TenantRow,
    placed: &[PlacementRow],
) -> Result<Vec<PlacedTenant>> {
    if !matches!(tenant.state, TenantState::Draft | TenantState::Active) {
        // Suspended tenants keep waiting; archived and deleted ones are never placed again.
        return Ok(Vec::new());
    }
    let missing: Vec<_> = tenant
        .spec
        .environments
        .iter()
        .filter(|env| !placed.iter().any(|p| &p.env == *env))
        .cloned()
        .collect();
    let mut decisions: Vec<(cellfleet_api::Env, Decision)> = Vec::new();
    let mut refusals = Vec::new();
    for env in &missing {
        match fleet.place(
            policy,
            &tenant.id,
            tenant.spec.profile,
            &tenant.spec.residency,
            env,
        ) {
            Ok(d) => decisions.push((env.clone(), d)),
            Err(NoRoom(reason)) => refusals.push(format!("env {env}: {reason}")),
        }
    }
    if !refusals.is_empty() {
        let reason = refusals.join("; ");
        if tenant.state_reason.as_deref() != Some(reason.as_str()) {
            tenant.state_reason = Some(reason.clone());
            tenant.updated_at = tx.now;
            store::put_tenant(tx.conn(), tenant).await?;
            tx.audit(
                "tenant.unplaced",
                &target(tenant),
                json!({ "reason": reason }),
            );
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (env, decision) in decisions {
        // Explain against the fleet as it was when deciding, then commit the load.
        let explanation = fleet.explain(
            policy,
            &tenant.id,
            tenant.spec.profile,
            &tenant.spec.residency,
            &env,
        );
        fleet.assign(&decision.cell);
        let row = PlacementRow {
            tenant: tenant.id.clone(),
            env: env.clone(),
            cell: decision.cell.clone(),
            region: decision.region.clone(),
            generation: Generation::FIRST,
            explanation,
            placed_at: tx.now,
        };
        store::insert_placement(tx.conn(), &row).await?;
        tx.touch(&row.cell);
        tx.audit(
            "placement.create",
            &format!("{}/{env}", target(tenant)),
            json!({ "cell": row.cell, "region": row.region, "generation": row.generation }),
        );
        out.push(PlacedTenant {
            tenant: tenant.id.clone(),
            env,
            cell: decision.cell,
            generation: Generation::FIRST,
        });
    }
    let was = tenant.state;
    tenant.pending = false;
    if was == TenantState::Draft {
        tenant.state = next_state(was, Transition::Activate)
            .map_err(|e| super::Error::Conflict(e.to_string()))?;
    }
    // Always written: `pending` changed at least.
    tenant.state_reason = None;
    tenant.updated_at = tx.now;
    store::put_tenant(tx.conn(), tenant).await?;
    let action = if was == TenantState::Draft {
        "tenant.activate"
    } else {
        "tenant.placed"
    };
    tx.audit(
        action,
        &target(tenant),
        json!({ "from": was, "to": tenant.state }),
    );
    Ok(out)
}

pub(super) fn target(tenant: &TenantRow) -> String {
    format!("tenant/{}", tenant.id)
}
