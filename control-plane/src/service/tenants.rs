//! Tenant operations: create, read, lifecycle transitions, explain and context.

use cellfleet_api::{
    ApplyOutcome, Env, PlacementExplain, TenantContext, TenantExplain, TenantId, TenantSpec,
    TenantState, TenantView,
};
use serde_json::json;

use super::apply::{apply_tenant, region_jurisdictions};
use super::placing::target;
use super::views::tenant_view;
use super::{Error, Registry, Result, not_found};
use crate::context::{ContextInputs, tenant_context};
use crate::lifecycle::{self, Transition};
use crate::manifest::{Origin, validate_tenant};
use crate::store::{self, Caller, TenantRow, Tx};

impl Registry {
    /// Creates a tenant and places it (or leaves it `draft` with the reason). Refuses an id that
    /// exists or existed. Returns the tenant and warnings about its spec (see `apply`).
    pub async fn create_tenant(
        &self,
        caller: &Caller,
        id: &TenantId,
        spec: &TenantSpec,
    ) -> Result<(TenantView, Vec<String>)> {
        let origin = Origin {
            file: "request".to_owned(),
            document: 1,
        };
        validate_tenant(&origin, spec)?;
        let mut tx = self.store.begin(caller).await?;
        let regions = region_jurisdictions(&mut tx).await?;
        let created = apply_tenant(&mut tx, &origin, &regions, id, spec, true).await?;
        debug_assert_eq!(created.outcome, ApplyOutcome::Created);
        self.place_pending(&mut tx, Some(std::slice::from_ref(id)))
            .await?;
        let view = self.tenant_in(&mut tx, id).await?;
        self.commit(tx).await?;
        Ok((view, created.warnings))
    }

    pub async fn tenant(&self, id: &TenantId) -> Result<TenantView> {
        let mut conn = self.store.read().await?;
        let t = store::get_tenant(&mut conn, id)
            .await?
            .ok_or_else(|| not_found("tenant", id))?;
        let placements = store::placements_of(&mut conn, id).await?;
        Ok(tenant_view(t, &placements, self.settings.archive_retention))
    }

    async fn tenant_in(&self, tx: &mut Tx, id: &TenantId) -> Result<TenantView> {
        let t = store::get_tenant(tx.conn(), id)
            .await?
            .ok_or_else(|| not_found("tenant", id))?;
        let placements = store::placements_of(tx.conn(), id).await?;
        Ok(tenant_view(t, &placements, self.settings.archive_retention))
    }

    /// Tenants in `state`, or every tenant that is not deleted.
    pub async fn tenants(&self, state: Option<TenantState>) -> Result<Vec<TenantView>> {
        let mut conn = self.store.read().await?;
        let tenants = store::list_tenants(&mut conn, state).await?;
        let placements = store::list_placements(&mut conn).await?;
        Ok(tenants
            .into_iter()
            .filter(|t| state.is_some() || t.state != TenantState::Deleted)
            .map(|t| {
                let mine: Vec<_> = placements
                    .iter()
                    .filter(|p| p.tenant == t.id)
                    .cloned()
                    .collect();
                tenant_view(t, &mine, self.settings.archive_retention)
            })
            .collect())
    }

    /// Suspends, resumes or archives a tenant.
    pub async fn transition(
        &self,
        caller: &Caller,
        id: &TenantId,
        transition: Transition,
        reason: Option<String>,
    ) -> Result<TenantView> {
        let mut tx = self.store.begin(caller).await?;
        let mut t = self.load_for_change(&mut tx, id).await?;
        // The tenant's state is part of its cells' desired state.
        let mut placements = store::placements_of(tx.conn(), id).await?;
        for p in &placements {
            tx.touch(&p.cell);
        }
        let from = t.state;
        let to = match transition {
            Transition::Delete => lifecycle::check_delete(
                from,
                t.archived_at,
                self.settings.archive_retention,
                tx.now,
            ),
            other => lifecycle::next_state(from, other),
        }
        .map_err(|e| Error::Conflict(format!("tenant {id}: {e}")))?;
        t.state = to;
        t.updated_at = tx.now;
        t.state_reason = reason.clone().filter(|r| !r.trim().is_empty());
        let mut payload = json!({ "from": from, "to": to, "reason": reason });
        match transition {
            Transition::Archive => {
                t.archived_at = Some(tx.now);
                t.pending = false;
            }
            Transition::Delete => {
                // The tenant's data is gone once its retention has passed; its placements free
                // their cells. The row stays as a tombstone so the id is never reused.
                let removed = store::delete_placements(tx.conn(), id).await?;
                placements.clear();
                t.pending = false;
                payload["placementsRemoved"] = json!(removed);
            }
            _ => {}
        }
        store::put_tenant(tx.conn(), &t).await?;
        tx.audit(
            &format!("tenant.{}", transition.verb()),
            &target(&t),
            payload,
        );
        if transition == Transition::Delete {
            // Freed capacity may let a waiting draft in.
            self.place_pending(&mut tx, None).await?;
        }
        self.commit(tx).await?;
        Ok(tenant_view(t, &placements, self.settings.archive_retention))
    }

    async fn load_for_change(&self, tx: &mut Tx, id: &TenantId) -> Result<TenantRow> {
        store::get_tenant(tx.conn(), id)
            .await?
            .ok_or_else(|| not_found("tenant", id))
    }

    /// Why the tenant is where it is: the recorded decision of each placement, whether it still
    /// satisfies the residency as declared now, and for unplaced environments what placement
    /// would decide now.
    pub async fn explain(&self, id: &TenantId) -> Result<TenantExplain> {
        let mut conn = self.store.read().await?;
        let t = store::get_tenant(&mut conn, id)
            .await?
            .ok_or_else(|| not_found("tenant", id))?;
        let placements = store::placements_of(&mut conn, id).await?;
        let fleet = store::fleet_snapshot(&mut conn).await?;
        let allowed = fleet.candidate_regions(&t.spec.residency);
        let placed = placements
            .iter()
            .map(|p| PlacementExplain {
                placement: super::views::placement_view(p),
                residency_satisfied: allowed.regions.iter().any(|(r, _)| r == &p.region),
                decision: p.explanation.clone(),
            })
            .collect();
        let unplaced = if matches!(t.state, TenantState::Draft | TenantState::Active) {
            t.spec
                .environments
                .iter()
                .filter(|e| !placements.iter().any(|p| &p.env == *e))
                .map(|env| {
                    fleet.explain(
                        &self.settings.policy,
                        &t.id,
                        t.spec.profile,
                        &t.spec.residency,
                        env,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(TenantExplain {
            tenant: t.id,
            state: t.state,
            state_reason: t.state_reason,
            placements: placed,
            unplaced,
        })
    }

    /// The tenant context of `(tenant, env)` (SPEC §5).
    pub async fn context(&self, id: &TenantId, env: &Env) -> Result<TenantContext> {
        let mut conn = self.store.read().await?;
        let t = store::get_tenant(&mut conn, id)
            .await?
            .ok_or_else(|| not_found("tenant", id))?;
        if t.state == TenantState::Deleted {
            return Err(Error::Conflict(format!("tenant {id} is deleted")));
        }
        let placements = store::placements_of(&mut conn, id).await?;
        let Some(p) = placements.iter().find(|p| &p.env == env) else {
            let why = t.state_reason.map(|r| format!(": {r}")).unwrap_or_default();
            return Err(Error::Conflict(format!(
                "tenant {id} has no placement in env {env} (state {}{why})",
                t.state
            )));
        };
        Ok(tenant_context(ContextInputs {
            tenant: &t.id,
            state: t.state,
            spec: &t.spec,
            env,
            cell: &p.cell,
            region: &p.region,
            generation: p.generation,
        }))
    }
}
