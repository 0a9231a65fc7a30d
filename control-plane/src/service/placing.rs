//! Placing tenants inside a mutation: decide with the pure placement core, persist each
//! decision with its explanation and a fresh generation, and activate the tenant.

use cellfleet_api::{Generation, PlacedTenant, TenantState};
use serde_json::json;

use super::Result;
use crate::lifecycle::{Transition, next_state};
use crate::placement::{Decision, Fleet, NoRoom, Policy};
use crate::store::{self, PlacementRow, TenantRow, Tx};

/// Places every environment of `tenant` that has no placement yet, each on its own: an
/// environment with room is placed even while another waits (a `dev` without a cell must not
/// keep `prod` from serving). A tenant becomes `active` with its first placement; environments
/// still waiting keep it `pending`, with the reason per environment on the tenant (`tenant get`,
/// `tenant explain`). `fleet` is updated with the new loads so later decisions in the same
/// mutation see them.
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
            Ok(d) => {
                // Count the load now: the next environment's decision must see it.
                fleet.assign(&d.cell);
                decisions.push((env.clone(), d));
            }
            Err(NoRoom(reason)) => refusals.push(format!("env {env}: {reason}")),
        }
    }
    // Give the loads back: each decision is explained and assigned again below, in order.
    for (_, d) in &decisions {
        fleet.unassign(&d.cell);
    }
    // Why environments wait (`env dev: no ready pooled cell…`), shown on the tenant.
    let waiting = (!refusals.is_empty()).then(|| refusals.join("; "));
    if decisions.is_empty() {
        if let Some(reason) = waiting
            && tenant.state_reason.as_deref() != Some(reason.as_str())
        {
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
    tenant.pending = waiting.is_some();
    if was == TenantState::Draft {
        tenant.state = next_state(was, Transition::Activate)
            .map_err(|e| super::Error::Conflict(e.to_string()))?;
    }
    // Always written: the placements changed, and with them `pending` or the reason.
    tenant.state_reason = waiting.clone();
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
        json!({ "from": was, "to": tenant.state, "waiting": waiting }),
    );
    Ok(out)
}

pub(super) fn target(tenant: &TenantRow) -> String {
    format!("tenant/{}", tenant.id)
}
