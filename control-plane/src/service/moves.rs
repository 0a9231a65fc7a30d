//! Tenant moves, the service side: starting one (its plan and every check), the operator's view
//! and commands, the agents' data path (chunks up and down, each side's facts), and the driver's
//! step (observe → [`crate::moves::next_step`] → one compare-and-swap with its effects, through
//! [`Registry::commit`]).
//!
//! **What is locked.** Starting, aborting, rolling back and every phase change take the mutation
//! lock (they are audited and change desired states, routes or placements). The data path —
//! chunks, stream positions, side reports — does not: each write is a compare-and-swap on its
//! own row or idempotent, so a bulk copy never queues behind placements, and placements never
//! behind a copy.

use std::collections::HashMap;

use cellfleet_api::{
    CellKind, CellName, CellState, ChunkApplied, Env, Explanation, Generation, MoveChunk,
    MovePhase, MovePlan, MoveProgress, MoveRole, MoveSideReport, MoveStarted, MoveTask, MoveView,
    PlanCheck, Profile, RouterView, StartMoveRequest, StreamPosition, TenantId, TenantState,
};
use serde_json::json;

use super::{Error, Registry, Result, not_found};
use crate::moves::{
    self, Decision, Effect, MoveSettings, MoveSpec, MoveState, Observed, RouterFacts, StreamState,
    VerifyOutcome,
};
use crate::store::{self, Caller, OperationRow, OperationUpdate, PlacementRow};

pub const KIND: &str = "move";
/// Default write-pause budget of a cut-over.
pub const DEFAULT_MAX_WRITE_PAUSE_MS: u64 = 2_000;
/// Default rollback window.
pub const DEFAULT_ROLLBACK_WINDOW_SECS: u64 = 3_600;
/// Chunks stored but not yet applied before the uploader must wait (bounds the control plane's
/// memory and disk for a move, whatever the tenant's size).
pub const MAX_UNAPPLIED_CHUNKS: i64 = 16;
/// The most chunks one download returns.
pub const MAX_DOWNLOAD_CHUNKS: i64 = 4;

/// The subject a move holds: one open move per tenant environment.
fn subject(tenant: &TenantId, env: &Env) -> String {
    format!("tenant/{tenant}/{env}")
}

/// A move as stored, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveRecord {
    pub id: String,
    pub version: i64,
    pub phase: MovePhase,
    pub spec: MoveSpec,
    pub state: MoveState,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl MoveRecord {
    pub(super) fn decode(op: &OperationRow) -> Result<MoveRecord> {
        let bad = |why: String| Error::Store(store::corrupt(format!("move {}", op.id), why));
        Ok(MoveRecord {
            id: op.id.clone(),
            version: op.version,
            phase: op.phase.parse().map_err(bad)?,
            spec: serde_json::from_str(&op.spec).map_err(|e| bad(e.to_string()))?,
            state: serde_json::from_str(&op.state).map_err(|e| bad(e.to_string()))?,
            created_at: op.created_at,
            updated_at: op.updated_at,
        })
    }

    fn role_of(&self, cell: &CellName) -> Option<MoveRole> {
        if *cell == self.spec.source {
            Some(MoveRole::Source)
        } else if *cell == self.spec.target {
            Some(MoveRole::Target)
        } else {
            None
        }
    }

    /// The task of `cell` now (what it may do).
    fn task_of(&self, cell: &CellName) -> Option<MoveTask> {
        let (s, t) = moves::tasks(&self.spec, &self.id, self.phase, &self.state);
        match self.role_of(cell)? {
            MoveRole::Source => s,
            MoveRole::Target => t,
        }
    }

    /// The cell whose capacity the move holds in this phase.
    fn reserves(&self) -> Option<&CellName> {
        use MovePhase::*;
        match self.phase {
            Done | Aborted | RolledBack | Failed => None,
            _ if moves::placed_on_target(self.phase, &self.state) => {
                (self.phase != Cleaning).then_some(&self.spec.source)
            }
            _ => Some(&self.spec.target),
        }
    }
}

/// The open moves, read once per commit: the tasks they give cells and the routes they freeze.
#[derive(Debug, Default)]
pub struct OpenMoves(Vec<MoveRecord>);

impl OpenMoves {
    pub async fn load(conn: &mut sqlx::AnyConnection) -> Result<OpenMoves> {
        let rows = store::list_operations(conn, KIND, true, 10_000).await?;
        Ok(OpenMoves(
            rows.iter().map(MoveRecord::decode).collect::<Result<_>>()?,
        ))
    }

    /// The move tasks of `cell`, in a stable order.
    pub fn tasks_for(&self, cell: &CellName) -> Vec<MoveTask> {
        let mut out: Vec<MoveTask> = self.0.iter().filter_map(|m| m.task_of(cell)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Whether the route of `(tenant, env)` is frozen by a move.
    pub fn frozen(&self, tenant: &TenantId, env: &Env) -> bool {
        self.0.iter().any(|m| {
            m.spec.tenant == *tenant && m.spec.env == *env && moves::route_frozen(m.phase, &m.state)
        })
    }

    /// Whether an open move goes through `cell` (as source or target).
    pub fn touches(&self, cell: &CellName) -> bool {
        self.0
            .iter()
            .any(|m| m.spec.source == *cell || m.spec.target == *cell)
    }

    /// Whether a tenant environment has an open move.
    pub fn moving(&self, tenant: &TenantId, env: &Env) -> bool {
        self.0
            .iter()
            .any(|m| m.spec.tenant == *tenant && m.spec.env == *env)
    }
}

fn view(m: &MoveRecord, fwd: &StreamState, source: &MoveSideReport) -> MoveView {
    let fwd = m.state.final_stream.as_ref().unwrap_or(fwd);
    let lag = source
        .capture_head
        .map(|h| u64::try_from(h - fwd.change_seq_applied).unwrap_or(0))
        .unwrap_or(0);
    let elapsed_s = match (fwd.started_ms, fwd.copy_done_ms) {
        (Some(s), Some(e)) => Some((e - s) as f64 / 1000.0),
        (Some(s), None) => Some((chrono::Utc::now().timestamp_millis() - s) as f64 / 1000.0),
        _ => None,
    };
    let rate = elapsed_s
        .filter(|s| *s > 0.0)
        .map(|s| fwd.rows_copied as f64 / s);
    let eta = match (m.state.rows_total, rate, fwd.copy_done) {
        (_, _, true) => Some(0.0),
        (Some(total), Some(r), false) if r > 0.0 => {
            Some((total.saturating_sub(fwd.rows_copied)) as f64 / r)
        }
        _ => None,
    };
    MoveView {
        id: m.id.clone(),
        tenant: m.spec.tenant.clone(),
        env: m.spec.env.clone(),
        source: m.spec.source.clone(),
        target: m.spec.target.clone(),
        phase: m.phase,
        created_at: m.created_at,
        updated_at: m.updated_at,
        progress: MoveProgress {
            rows_copied: fwd.rows_copied,
            bytes_copied: fwd.bytes_copied,
            rows_total: m.state.rows_total,
            copy_done: fwd.copy_done,
            changes_sent: fwd.changes_sent,
            chunks_applied: fwd.applied_seq,
            chunks_sent: fwd.last_seq,
            lag_changes: lag,
            rate_rows_per_sec: rate,
            eta_secs: eta,
        },
        max_write_pause_ms: m.spec.max_write_pause_ms,
        rollback_window_secs: m.spec.rollback_window_secs,
        rollback_until: m
            .state
            .rollback_until_ms
            .and_then(chrono::DateTime::from_timestamp_millis),
        cutovers: m.state.cutovers.clone(),
        note: m.state.note.clone(),
    }
}

async fn stream_state(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    dir: &str,
) -> Result<(Option<String>, StreamState)> {
    let raw = store::get_stream(conn, id, dir).await?;
    let state = match &raw {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Error::Store(store::corrupt(format!("stream {id}/{dir}"), e)))?,
        None => StreamState::default(),
    };
    Ok((raw, state))
}

async fn side_reports(
    conn: &mut sqlx::AnyConnection,
    m: &MoveRecord,
) -> Result<(MoveSideReport, MoveSideReport)> {
    let mut source = MoveSideReport::default();
    let mut target = MoveSideReport::default();
    for (cell, text) in store::move_sides(conn, &m.id).await? {
        let report: MoveSideReport = serde_json::from_str(&text)
            .map_err(|e| Error::Store(store::corrupt(format!("move side {cell}"), e)))?;
        if cell == m.spec.source.as_str() {
            source = report;
        } else if cell == m.spec.target.as_str() {
            target = report;
        }
    }
    Ok((source, target))
}

/// Which stream a role uploads and which it applies.
fn dirs(role: MoveRole) -> (&'static str, &'static str) {
    match role {
        MoveRole::Source => ("fwd", "rev"),
        MoveRole::Target => ("rev", "fwd"),
    }
}

impl Registry {
    /// Plans a move and (unless `dry_run`) starts it.
    pub async fn start_move(&self, caller: &Caller, req: &StartMoveRequest) -> Result<MoveStarted> {
        let mut tx = self.store.begin(caller).await?;
        if req.dry_run {
            let (plan, _) = self.plan_move(&mut tx, req).await?;
            return Ok(MoveStarted {
                plan,
                started: None,
            });
        }
        let (plan, id) = self.start_move_in(&mut tx, req).await?;
        self.commit(tx).await?;
        self.operations_changed();
        Ok(MoveStarted {
            plan,
            started: Some(self.get_move(&id).await?),
        })
    }

    /// Plans and starts a move inside `tx` (a runbook step starts one in the same transaction
    /// that records it); the caller commits. Returns the plan and the move's id.
    pub(super) async fn start_move_in(
        &self,
        tx: &mut store::Tx,
        req: &StartMoveRequest,
    ) -> Result<(MovePlan, String)> {
        let (plan, new_cell) = self.plan_move(tx, req).await?;
        if let Some(failed) = plan.checks.iter().find(|c| !c.ok) {
            return Err(Error::Conflict(format!(
                "cannot move {}/{}: {} ({})",
                req.tenant, req.env, failed.detail, failed.check
            )));
        }
        let spec = MoveSpec {
            tenant: req.tenant.clone(),
            env: req.env.clone(),
            source: plan.source.clone(),
            target: plan.target.clone(),
            to: req.to.clone(),
            max_write_pause_ms: req.max_write_pause_ms.unwrap_or(DEFAULT_MAX_WRITE_PAUSE_MS),
            rollback_window_secs: req
                .rollback_window_secs
                .unwrap_or(DEFAULT_ROLLBACK_WINDOW_SECS),
            provisioned: new_cell.is_some(),
        };
        let mut id_bytes = [0u8; 6];
        rand::fill(&mut id_bytes);
        let id = format!("mv_{}", hex::encode(id_bytes));
        let now = tx.now;
        if let Some(cell) = &new_cell {
            // Registered now (provisioning: placement does not use it), made by the driver.
            let mut labels = cell.labels.clone();
            labels.insert("cellfleet.io/provisioned-for".into(), id.clone());
            store::upsert_cell(
                tx.conn(),
                &cell.name,
                &labels,
                &cell.spec,
                CellState::Provisioning,
                now,
            )
            .await?;
            if let Some(release) = &cell.desired_release {
                store::set_cell_release(tx.conn(), &cell.name, release).await?;
            }
            tx.audit(
                "cell.provision",
                &format!("cell/{}", cell.name),
                json!({ "move": id, "spec": cell.spec, "labels": labels, "release": cell.desired_release }),
            );
        }
        let first_phase = if new_cell.is_some() {
            MovePhase::PreparingTarget
        } else {
            MovePhase::Capturing
        };
        super::operations::insert_new(
            tx,
            super::operations::NewOperation {
                id: &id,
                kind: KIND,
                subject: &subject(&req.tenant, &req.env),
                phase: first_phase.as_str(),
                spec: store::canonical(&spec),
                state: store::canonical(&MoveState::default()),
                reserves: Some(plan.target.to_string()),
            },
            || format!("tenant {}/{} is already being moved", req.tenant, req.env),
        )
        .await?;
        tx.touch(&spec.source);
        tx.touch(&spec.target);
        tx.audit(
            "move.start",
            &format!("tenant/{}/{}", req.tenant, req.env),
            json!({ "move": id, "from": spec.source, "to": spec.target, "request": req.to,
                    "maxWritePauseMs": spec.max_write_pause_ms, "rollbackWindowSecs": spec.rollback_window_secs }),
        );
        Ok((plan, id))
    }

    /// The edge routers seen on their watches, with their acknowledged versions.
    pub async fn routers(&self, gone_after: chrono::TimeDelta) -> Result<Vec<RouterView>> {
        let mut conn = self.store.read().await?;
        let head = store::routing_version(&mut conn).await?;
        let now = chrono::Utc::now();
        Ok(store::list_routers(&mut conn)
            .await?
            .into_iter()
            .map(|r| RouterView {
                status: if now - r.last_seen > gone_after {
                    "gone".into()
                } else {
                    "live".into()
                },
                lag: (head - r.acked_version).max(0),
                id: r.id,
                acked_version: r.acked_version,
                last_seen: r.last_seen,
                first_seen: r.first_seen,
            })
            .collect())
    }

    /// A router's watch: it serves the table it `held` (its `since`). A table of another epoch,
    /// or ahead of the head (a registry restored from an older copy), acknowledges nothing of
    /// this history: recorded as 0 until the router asks again with the snapshot it gets, so a
    /// cut-over never takes it for a router that holds its frozen route.
    pub async fn router_seen(&self, id: &str, held: super::Held<'_>) -> Result<()> {
        if id.is_empty()
            || id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(Error::Invalid(format!(
                "router id {id:?}: 1–128 of [A-Za-z0-9-_.:]"
            )));
        }
        let mut conn = self.store.read().await?;
        let head = store::routing_version(&mut conn).await?;
        let epoch = store::routing_epoch(&mut conn).await?;
        let acked = if held.version > head || held.epoch.is_some_and(|e| e != epoch) {
            0
        } else {
            held.version.max(0)
        };
        store::touch_router(&mut conn, id, acked, &epoch, chrono::Utc::now()).await?;
        self.operations_changed();
        Ok(())
    }

    /// Every check of a move, and where it would go (with the cell to provision, if any).
    pub(super) async fn plan_move(
        &self,
        tx: &mut store::Tx,
        req: &StartMoveRequest,
    ) -> Result<(MovePlan, Option<store::CellRow>)> {
        let tenant = store::get_tenant(tx.conn(), &req.tenant)
            .await?
            .ok_or_else(|| not_found("tenant", &req.tenant))?;
        let placement = store::placements_of(tx.conn(), &req.tenant)
            .await?
            .into_iter()
            .find(|p| p.env == req.env)
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "tenant {} has no placement in env {} to move",
                    req.tenant, req.env
                ))
            })?;
        let source = store::get_cell(tx.conn(), &placement.cell)
            .await?
            .ok_or_else(|| not_found("cell", &placement.cell))?;
        let fleet = store::fleet_snapshot(tx.conn()).await?;
        let allowed = fleet.candidate_regions(&tenant.spec.residency);
        let cells = store::list_cells(tx.conn()).await?;
        // The target: a named cell, the pooled cell placement would pick, or a free dedicated
        // cell (else a new one, from the provider), in a region residency allows.
        let mut provision: Option<String> = None;
        let target = match req.to.as_str() {
            "pooled" | "dedicated" => {
                let kind = if req.to == "pooled" {
                    CellKind::Pooled
                } else {
                    CellKind::Dedicated
                };
                let profile = if kind == CellKind::Pooled {
                    Profile::MtStandard
                } else {
                    Profile::StDedicated
                };
                let mut others = fleet.clone();
                // Placement decides as if the tenant were not on its cell (and never picks it).
                others.unassign(&source.name);
                others.retire(&source.name);
                match others.place(
                    &self.settings.policy,
                    &req.tenant,
                    profile,
                    &tenant.spec.residency,
                    &req.env,
                ) {
                    Ok(d) => cells
                        .iter()
                        .find(|c| c.name == d.cell)
                        .cloned()
                        .ok_or_else(|| not_found("cell", &d.cell))?,
                    Err(crate::placement::NoRoom(why)) => {
                        match (kind, self.provider()) {
                            (CellKind::Dedicated, Some(provider)) => {
                                // None free: a new one, in the source's region when residency
                                // allows it, else in the first region it allows.
                                let region = allowed
                                    .regions
                                    .iter()
                                    .map(|(r, _)| r.clone())
                                    .find(|r| *r == source.spec.region)
                                    .or_else(|| allowed.regions.first().map(|(r, _)| r.clone()))
                                    .ok_or_else(|| {
                                        Error::Conflict(format!(
                                            "no region can take tenant {}/{}: {why}",
                                            req.tenant, req.env
                                        ))
                                    })?;
                                let name = new_cell_name(&req.tenant, &req.env, &cells)?;
                                let endpoint = provider.endpoint_for(&name).map_err(|e| {
                                    Error::Conflict(format!(
                                        "the {} provider cannot make cell {name}: {e:#}",
                                        provider.name()
                                    ))
                                })?;
                                provision = Some(provider.name().to_owned());
                                store::CellRow {
                                    name,
                                    labels: [(
                                        PROVIDER_LABEL.to_owned(),
                                        provider.name().to_owned(),
                                    )]
                                    .into(),
                                    spec: cellfleet_api::CellSpec {
                                        region,
                                        kind: CellKind::Dedicated,
                                        env: req.env.clone(),
                                        capacity: None,
                                        template: None,
                                        endpoint: Some(endpoint),
                                        change_window: None,
                                    },
                                    state: CellState::Provisioning,
                                    load: 0,
                                    desired_generation: 0,
                                    desired_release: source.desired_release.clone(),
                                    created_at: tx.now,
                                    updated_at: tx.now,
                                }
                            }
                            (CellKind::Dedicated, None) => {
                                return Err(Error::Conflict(format!(
                                    "no dedicated cell can take tenant {}/{}: {why}; and this control plane has no cell provider to make one (`cellfleet up` runs the local one): register a dedicated cell, or name one with --to",
                                    req.tenant, req.env
                                )));
                            }
                            _ => {
                                return Err(Error::Conflict(format!(
                                    "no {} cell can take tenant {}/{}: {why}",
                                    req.to, req.tenant, req.env
                                )));
                            }
                        }
                    }
                }
            }
            name => {
                let name: CellName = name.parse().map_err(|e| {
                    Error::Invalid(format!(
                        "--to {name:?}: not dedicated, pooled or a cell name: {e}"
                    ))
                })?;
                cells
                    .iter()
                    .find(|c| c.name == name)
                    .cloned()
                    .ok_or_else(|| not_found("cell", &name))?
            }
        };
        let reports = store::reports(tx.conn()).await?;
        let migration_of = |cell: &CellName| {
            reports
                .get(cell.as_str())
                .and_then(|r| r.report.migrations.iter().map(|m| m.version).max())
        };
        let unmovable: Vec<String> = reports
            .get(source.name.as_str())
            .map(|r| r.report.unmovable.clone())
            .unwrap_or_default();
        let open = store::open_operation_of(tx.conn(), &subject(&req.tenant, &req.env)).await?;
        let target_region_ok = allowed
            .regions
            .iter()
            .any(|(r, _)| *r == target.spec.region);
        let mut checks = vec![
            PlanCheck {
                check: "tenant".into(),
                ok: tenant.state == TenantState::Active,
                detail: format!("tenant {} is {}", req.tenant, tenant.state),
            },
            PlanCheck {
                check: "target".into(),
                ok: target.name != source.name,
                detail: format!("from {} to {}", source.name, target.name),
            },
            PlanCheck {
                check: "residency".into(),
                ok: target_region_ok,
                detail: if target_region_ok {
                    format!(
                        "{} in {} is allowed ({})",
                        target.name, target.spec.region, allowed.rule
                    )
                } else {
                    format!(
                        "{} is in {}, which the tenant's residency ({}) does not allow",
                        target.name, target.spec.region, allowed.rule
                    )
                },
            },
            PlanCheck {
                check: "env".into(),
                ok: target.spec.env == req.env,
                detail: format!("{} serves env {}", target.name, target.spec.env),
            },
            PlanCheck {
                check: "room".into(),
                ok: provision.is_some()
                    || (target.load < target.spec.effective_capacity()
                        && target.state == CellState::Ready),
                detail: if provision.is_some() {
                    format!("{} is new: made for this tenant", target.name)
                } else {
                    format!(
                        "{} is {} with {}/{} tenant environments",
                        target.name,
                        target.state,
                        target.load,
                        target.spec.effective_capacity()
                    )
                },
            },
            PlanCheck {
                check: "schema".into(),
                ok: migration_of(&source.name).is_some()
                    && (provision.is_some()
                        || migration_of(&source.name) == migration_of(&target.name)),
                detail: format!(
                    "migrations: {} at V{}, {} {}",
                    source.name,
                    migration_of(&source.name).map_or("?".into(), |v| v.to_string()),
                    target.name,
                    match (&provision, migration_of(&target.name)) {
                        (Some(_), _) => "migrates to the same version before the copy".into(),
                        (None, v) => format!("at V{}", v.map_or("?".into(), |v| v.to_string())),
                    }
                ),
            },
            PlanCheck {
                check: "movable".into(),
                ok: unmovable.is_empty(),
                detail: if unmovable.is_empty() {
                    "every tenant table has a primary key that cannot collide".into()
                } else {
                    format!(
                        "tables that cannot be moved safely: {}",
                        unmovable.join("; ")
                    )
                },
            },
            PlanCheck {
                check: "exclusive".into(),
                ok: open.is_none(),
                detail: match &open {
                    Some(o) => {
                        format!("{} already holds the tenant ({} {})", o.id, o.kind, o.phase)
                    }
                    None => "no other operation holds the tenant".into(),
                },
            },
        ];
        if target.spec.kind == CellKind::Dedicated && target.load > 0 {
            checks.push(PlanCheck {
                check: "dedicated".into(),
                ok: false,
                detail: format!("{} is dedicated and holds another tenant", target.name),
            });
        }
        // A train about to change either cell would fight the move over it: wait for its wave.
        let in_play = super::trains::cells_in_play(tx.conn()).await?;
        let busy: Vec<String> = [&source.name, &target.name]
            .into_iter()
            .filter_map(|c| {
                in_play
                    .get(c)
                    .map(|t| format!("release train {t} is about to change {c}"))
            })
            .collect();
        checks.push(PlanCheck {
            check: "train".into(),
            ok: busy.is_empty(),
            detail: if busy.is_empty() {
                "no release train is about to change either cell".into()
            } else {
                format!("{}: wait for its wave, or pause the train", busy.join("; "))
            },
        });
        if let Some(provider) = &provision {
            checks.push(PlanCheck {
                check: "provision".into(),
                ok: true,
                detail: format!(
                    "no free dedicated cell: the {provider} provider makes {} in {} ({}), at migration V{} before the copy starts",
                    target.name,
                    target.spec.region,
                    target.spec.endpoint.as_deref().unwrap_or("-"),
                    migration_of(&source.name).map_or("?".into(), |v| v.to_string())
                ),
            });
        }
        Ok(MovePlan {
            tenant: req.tenant.clone(),
            env: req.env.clone(),
            source: source.name,
            target: target.name.clone(),
            provision: provision.is_some(),
            region: target.spec.region.to_string(),
            checks,
        })
        .map(|plan| (plan, provision.map(|_| target)))
    }

    pub async fn get_move(&self, id: &str) -> Result<MoveView> {
        let mut conn = self.store.read().await?;
        let op = store::get_operation(&mut conn, id)
            .await?
            .filter(|o| o.kind == KIND)
            .ok_or_else(|| not_found("move", id))?;
        let m = MoveRecord::decode(&op)?;
        let (_, fwd) = stream_state(&mut conn, id, "fwd").await?;
        let (source, _) = side_reports(&mut conn, &m).await?;
        Ok(view(&m, &fwd, &source))
    }

    /// Moves, newest first (only open ones with `open`).
    pub async fn moves(&self, open: bool) -> Result<Vec<MoveView>> {
        let mut conn = self.store.read().await?;
        let rows = store::list_operations(&mut conn, KIND, open, 500).await?;
        let mut out = Vec::with_capacity(rows.len());
        for op in rows {
            let m = MoveRecord::decode(&op)?;
            let (_, fwd) = stream_state(&mut conn, &m.id, "fwd").await?;
            let (source, _) = side_reports(&mut conn, &m).await?;
            out.push(view(&m, &fwd, &source));
        }
        Ok(out)
    }

    /// Asks to abort a move before its cut-over, or to roll it back in its window.
    pub async fn request_move(
        &self,
        caller: &Caller,
        id: &str,
        rollback: bool,
        reason: Option<String>,
    ) -> Result<MoveView> {
        let mut tx = self.store.begin(caller).await?;
        let op = store::get_operation(tx.conn(), id)
            .await?
            .filter(|o| o.kind == KIND)
            .ok_or_else(|| not_found("move", id))?;
        let mut m = MoveRecord::decode(&op)?;
        use MovePhase::*;
        let verb = if rollback { "rollback" } else { "abort" };
        let allowed = if rollback {
            m.phase == RollbackWindow
        } else {
            matches!(
                m.phase,
                PreparingTarget | Capturing | Copying | CatchingUp | Freezing | Fenced
            )
        };
        if !allowed {
            return Err(Error::Conflict(format!(
                "move {id} is {}: {}",
                m.phase,
                if rollback {
                    "a rollback is possible only in the rollback window (after the cut-over, before the cleanup)"
                } else {
                    "an abort is possible only before the cut-over flips the tenant (then use move rollback)"
                }
            )));
        }
        if rollback {
            m.state.rollback_requested = true;
        } else {
            m.state.abort_requested = Some(
                reason
                    .clone()
                    .unwrap_or_else(|| "asked by an operator".into()),
            );
        }
        let state = store::canonical(&m.state);
        let reserves = m.reserves().map(ToString::to_string);
        let now = tx.now;
        let changed = store::cas_operation(
            tx.conn(),
            id,
            m.version,
            &OperationUpdate {
                phase: m.phase.as_str(),
                state: &state,
                reserves: reserves.as_deref(),
                finished: false,
            },
            now,
        )
        .await?;
        if !changed {
            return Err(Error::Busy(format!(
                "move {id} changed meanwhile; try again"
            )));
        }
        tx.audit(
            &format!("move.{verb}"),
            &format!("tenant/{}/{}", m.spec.tenant, m.spec.env),
            json!({ "move": id, "phase": m.phase, "reason": reason }),
        );
        self.commit(tx).await?;
        self.operations_changed();
        self.get_move(id).await
    }

    // ---- the agents' data path -------------------------------------------------------------

    /// The open move `id` as `cell` may see it: its record and the cell's task now.
    async fn agent_move(
        &self,
        conn: &mut sqlx::AnyConnection,
        cell: &CellName,
        id: &str,
    ) -> Result<(MoveRecord, MoveTask)> {
        let op = store::get_operation(conn, id)
            .await?
            .filter(|o| o.kind == KIND && o.finished_at.is_none())
            .ok_or_else(|| not_found("open move", id))?;
        let m = MoveRecord::decode(&op)?;
        let task = m.task_of(cell).ok_or_else(|| {
            Error::Forbidden(format!("cell {cell} takes no part in move {id} now"))
        })?;
        Ok((m, task))
    }

    /// Where `cell` resumes uploading its stream of move `id`.
    pub async fn move_position(&self, cell: &CellName, id: &str) -> Result<StreamPosition> {
        let mut conn = self.store.read().await?;
        let (_, task) = self.agent_move(&mut conn, cell, id).await?;
        let (up, _) = dirs(task.role);
        let (_, s) = stream_state(&mut conn, id, up).await?;
        Ok(position(&s))
    }

    /// Stores chunk `chunk` of `cell`'s stream of move `id` (the next one, or the last one again).
    pub async fn upload_chunk(
        &self,
        cell: &CellName,
        id: &str,
        chunk: MoveChunk,
    ) -> Result<StreamPosition> {
        let mut conn = self.store.read().await?;
        let (_, task) = self.agent_move(&mut conn, cell, id).await?;
        if !task.ship {
            return Err(Error::Forbidden(format!(
                "cell {cell} does not ship data for move {id} now"
            )));
        }
        if !matches!(chunk.kind.as_str(), "copy" | "changes" | "end") {
            return Err(Error::Invalid(format!(
                "chunk kind {:?}: expected copy, changes or end",
                chunk.kind
            )));
        }
        let (dir, _) = dirs(task.role);
        for _ in 0..10 {
            let (raw, mut s) = stream_state(&mut conn, id, dir).await?;
            if chunk.seq == s.last_seq && s.last_seq > 0 {
                return Ok(position(&s)); // sent again after a lost answer: already stored
            }
            if chunk.seq != s.last_seq + 1 {
                return Err(Error::Conflict(format!(
                    "move {id}: expected chunk {} of the {dir} stream, got {}",
                    s.last_seq + 1,
                    chunk.seq
                )));
            }
            if s.last_seq - s.applied_seq >= MAX_UNAPPLIED_CHUNKS {
                return Err(Error::Busy(format!(
                    "move {id}: {} chunks wait to be applied; send again later",
                    s.last_seq - s.applied_seq
                )));
            }
            let now = chrono::Utc::now();
            let body = serde_json::to_string(&chunk).unwrap_or_default();
            // The chunk and the stream's count of it commit together.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            store::put_chunk(&mut tx, id, dir, chunk.seq, &body, now).await?;
            s.last_seq = chunk.seq;
            s.cursor = chunk.cursor.clone();
            s.bytes_copied += chunk.bytes;
            s.started_ms.get_or_insert(now.timestamp_millis());
            match chunk.kind.as_str() {
                "copy" => s.rows_copied += chunk.items.len() as u64,
                "changes" => s.changes_sent += chunk.items.len() as u64,
                _ => {
                    s.copy_done = true;
                    s.copy_done_ms = Some(now.timestamp_millis());
                }
            }
            s.change_seq_sent = s.change_seq_sent.max(chunk.change_seq);
            let next = store::canonical(&s);
            if store::cas_stream(&mut tx, id, dir, raw.as_deref(), &next, now).await? {
                tx.commit().await?;
                self.operations_changed();
                cellfleet_api::failpoints::hit("cp:chunk-stored");
                return Ok(position(&s));
            }
            tx.rollback().await?;
        }
        Err(Error::Busy(format!(
            "move {id}: the stream is busy; send again"
        )))
    }

    /// Up to a few chunks of the stream `cell` applies, after `after` (by default after the last
    /// one it acknowledged).
    pub async fn download_chunks(
        &self,
        cell: &CellName,
        id: &str,
        after: Option<i64>,
    ) -> Result<Vec<MoveChunk>> {
        let mut conn = self.store.read().await?;
        let (_, task) = self.agent_move(&mut conn, cell, id).await?;
        if !task.apply {
            return Err(Error::Forbidden(format!(
                "cell {cell} applies no data for move {id} now"
            )));
        }
        let (_, dir) = dirs(task.role);
        let (_, stream) = stream_state(&mut conn, id, dir).await?;
        let after = after.map_or(stream.applied_seq, |a| a.max(0));
        // Only chunks the stream counts: a chunk stored by an upload whose stream update did not
        // happen (a crash in between) is sent again, maybe different, under the same number.
        let chunks: Vec<MoveChunk> =
            store::chunks_after(&mut conn, id, dir, after, MAX_DOWNLOAD_CHUNKS)
                .await?
                .iter()
                .map(|b| {
                    serde_json::from_str(b)
                        .map_err(|e| Error::Store(store::corrupt(format!("chunk of {id}"), e)))
                })
                .collect::<Result<_>>()?;
        Ok(chunks
            .into_iter()
            .filter(|c| c.seq <= stream.last_seq)
            .collect())
    }

    /// `cell` applied chunk `ack.seq` of the stream it applies (and how its checksums compared).
    pub async fn chunk_applied(&self, cell: &CellName, id: &str, ack: ChunkApplied) -> Result<()> {
        let mut conn = self.store.read().await?;
        let (_, task) = self.agent_move(&mut conn, cell, id).await?;
        if !task.apply {
            return Err(Error::Forbidden(format!(
                "cell {cell} applies no data for move {id} now"
            )));
        }
        if ack.mismatches.len() > 100 || ack.mismatches.iter().any(|m| m.len() > 500) {
            return Err(Error::Invalid(
                "mismatches: at most 100 of at most 500 bytes".into(),
            ));
        }
        let (_, dir) = dirs(task.role);
        for _ in 0..10 {
            let (raw, mut s) = stream_state(&mut conn, id, dir).await?;
            if ack.seq <= s.applied_seq {
                return Ok(());
            }
            if ack.seq > s.last_seq {
                return Err(Error::Conflict(format!(
                    "move {id}: chunk {} of the {dir} stream was never sent",
                    ack.seq
                )));
            }
            let chunk: Option<MoveChunk> = store::chunks_after(&mut conn, id, dir, ack.seq - 1, 1)
                .await?
                .first()
                .and_then(|b| serde_json::from_str(b).ok())
                .filter(|c: &MoveChunk| c.seq == ack.seq);
            s.applied_seq = ack.seq;
            if let Some(c) = &chunk {
                s.change_seq_applied = s.change_seq_applied.max(c.change_seq);
                if let Some(v) = &c.verify {
                    s.verify = Some(VerifyOutcome {
                        round: v.round,
                        fence: v.pks.is_some(),
                        change_seq: c.change_seq,
                        mismatches: ack.mismatches.clone(),
                    });
                }
            }
            let now = chrono::Utc::now();
            let next = store::canonical(&s);
            if store::cas_stream(&mut conn, id, dir, raw.as_deref(), &next, now).await? {
                store::delete_chunks_upto(&mut conn, id, dir, ack.seq).await?;
                self.operations_changed();
                cellfleet_api::failpoints::hit("cp:chunk-acked");
                return Ok(());
            }
        }
        Err(Error::Busy(format!(
            "move {id}: the stream is busy; send again"
        )))
    }

    /// What `cell` says about its side of move `id`.
    pub async fn move_side_report(
        &self,
        cell: &CellName,
        id: &str,
        report: MoveSideReport,
    ) -> Result<()> {
        if report.unmovable.len() > 100 || report.unmovable.iter().any(|u| u.len() > 500) {
            return Err(Error::Invalid(
                "unmovable: at most 100 of at most 500 bytes".into(),
            ));
        }
        let mut conn = self.store.read().await?;
        let op = store::get_operation(&mut conn, id)
            .await?
            .filter(|o| o.kind == KIND)
            .ok_or_else(|| not_found("move", id))?;
        let m = MoveRecord::decode(&op)?;
        if m.role_of(cell).is_none() {
            return Err(Error::Forbidden(format!(
                "cell {cell} takes no part in move {id}"
            )));
        }
        store::put_move_side(
            &mut conn,
            id,
            cell.as_str(),
            &store::canonical(&report),
            chrono::Utc::now(),
        )
        .await?;
        self.operations_changed();
        Ok(())
    }

    // ---- the driver's step -------------------------------------------------------------------

    /// Reads what move `op` depends on now.
    async fn observe_move(&self, m: &MoveRecord) -> Result<Observed> {
        let mut conn = self.store.read().await?;
        let (_, fwd) = stream_state(&mut conn, &m.id, "fwd").await?;
        let (_, rev) = stream_state(&mut conn, &m.id, "rev").await?;
        let (source, target) = side_reports(&mut conn, m).await?;
        let routers = store::list_routers(&mut conn)
            .await?
            .into_iter()
            .map(|r| RouterFacts {
                id: r.id,
                acked_version: r.acked_version,
                last_seen_ms: r.last_seen.timestamp_millis(),
            })
            .collect();
        let routing_version = store::routing_version(&mut conn).await?;
        let reports = store::reports(&mut conn).await?;
        let facts = |cell: &CellName, row: Option<store::CellRow>| {
            let report = reports.get(cell.as_str()).map(|r| &r.report);
            let workload = report.and_then(|r| r.workload.as_ref());
            let desired_release = row.as_ref().and_then(|c| c.desired_release.clone());
            moves::CellFacts {
                desired_generation: row.map_or(0, |c| c.desired_generation),
                observed_generation: report.map(|r| r.observed_generation),
                tenants_generation: workload.and_then(|w| w.tenants_generation),
                serving: workload.is_some_and(|w| {
                    w.state == cellfleet_api::WorkloadState::Running
                        && w.release.is_some()
                        && w.release == desired_release
                }),
                migration: report.and_then(|r| r.migrations.iter().map(|m| m.version).max()),
            }
        };
        let source_row = store::get_cell(&mut conn, &m.spec.source).await?;
        let target_row = store::get_cell(&mut conn, &m.spec.target).await?;
        Ok(Observed {
            now_ms: chrono::Utc::now().timestamp_millis(),
            fwd,
            rev,
            source,
            target,
            routers,
            routing_version,
            source_cell: facts(&m.spec.source, source_row),
            target_cell: facts(&m.spec.target, target_row),
        })
    }

    /// One step of an open move. Returns whether it changed phase (the driver steps again).
    pub async fn step_move(&self, op: &OperationRow, settings: &MoveSettings) -> Result<bool> {
        let m = MoveRecord::decode(op)?;
        if m.phase == MovePhase::PreparingTarget && m.state.abort_requested.is_none() {
            // The provider brings the new cell up (idempotent: every pass until it serves).
            let trouble = match self.provider() {
                Some(p) => p.provision(&m.spec.target).await.err().map(|e| {
                    format!(
                        "the {} provider cannot bring {} up yet: {e:#}",
                        p.name(),
                        m.spec.target
                    )
                }),
                None => Some(format!(
                    "waiting for a cell provider to make {} (this control plane runs none; `cellfleet up` does)",
                    m.spec.target
                )),
            };
            if let Some(note) = trouble {
                self.store_note(&m, Some(note)).await?;
                return Ok(false);
            }
        }
        let obs = self.observe_move(&m).await?;
        match moves::next_step(&m.spec, m.phase, &m.state, &obs, settings) {
            Decision::Wait(note) => {
                self.store_note(&m, note).await?;
                Ok(false)
            }
            Decision::Step {
                phase,
                state,
                effect,
                why,
            } => {
                self.commit_move_step(&m, phase, state, effect, &why)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Stores what a waiting move waits for, when it changed. A note is for people: stored
    /// without the lock or an audit record (a lost race just drops it).
    async fn store_note(&self, m: &MoveRecord, note: Option<String>) -> Result<()> {
        if note.is_none() || note == m.state.note {
            return Ok(());
        }
        let mut state = m.state.clone();
        state.note = note;
        let text = store::canonical(&state);
        let reserves = m.reserves().map(ToString::to_string);
        let mut conn = self.store.read().await?;
        store::cas_operation(
            &mut conn,
            &m.id,
            m.version,
            &OperationUpdate {
                phase: m.phase.as_str(),
                state: &text,
                reserves: reserves.as_deref(),
                finished: false,
            },
            chrono::Utc::now(),
        )
        .await?;
        Ok(())
    }

    async fn commit_move_step(
        &self,
        m: &MoveRecord,
        phase: MovePhase,
        state: MoveState,
        effect: Option<Effect>,
        why: &str,
    ) -> Result<()> {
        let mut tx = self.store.begin(&Caller::system("moves")).await?;
        let mut state = state;
        if effect == Some(Effect::Finish) {
            state.final_stream = Some(stream_state(tx.conn(), &m.id, "fwd").await?.1);
        }
        let next = MoveRecord {
            phase,
            state: state.clone(),
            ..m.clone()
        };
        let text = store::canonical(&state);
        let reserves = next.reserves().map(ToString::to_string);
        let now = tx.now;
        let moved = store::cas_operation(
            tx.conn(),
            &m.id,
            m.version,
            &OperationUpdate {
                phase: phase.as_str(),
                state: &text,
                reserves: reserves.as_deref(),
                finished: phase.is_terminal(),
            },
            now,
        )
        .await?;
        if !moved {
            // Another driver (or an operator) moved it first: decide again from what is there.
            return Err(Error::Busy(format!("move {} changed meanwhile", m.id)));
        }
        match effect {
            Some(Effect::PlaceOnTarget) => {
                self.replace_placement(&mut tx, m, &m.spec.target).await?;
            }
            Some(Effect::PlaceOnSource) => {
                self.replace_placement(&mut tx, m, &m.spec.source).await?;
            }
            Some(Effect::Finish) => {
                store::forget_move_data(tx.conn(), &m.id).await?;
                // A dedicated cell the tenant left (or a provisioned one it never stayed on) is
                // marked for retirement — never deleted by a move.
                let emptied = match phase {
                    MovePhase::Done => Some(&m.spec.source),
                    _ if m.spec.provisioned => Some(&m.spec.target),
                    _ => None,
                };
                if let Some(cell) = emptied {
                    mark_for_retirement(&mut tx, cell, &m.id).await?;
                }
            }
            Some(Effect::TargetReady) => {
                if let Some(cell) = store::get_cell(tx.conn(), &m.spec.target).await?
                    && cell.state == CellState::Provisioning
                {
                    store::upsert_cell(
                        tx.conn(),
                        &cell.name,
                        &cell.labels,
                        &cell.spec,
                        CellState::Ready,
                        now,
                    )
                    .await?;
                    tx.audit(
                        "cell.ready",
                        &format!("cell/{}", cell.name),
                        json!({ "move": m.id }),
                    );
                }
            }
            None => {}
        }
        tx.touch(&m.spec.source);
        tx.touch(&m.spec.target);
        if phase != m.phase || effect.is_some() {
            tx.audit(
                &format!("move.{phase}"),
                &format!("tenant/{}/{}", m.spec.tenant, m.spec.env),
                json!({ "move": m.id, "from": m.phase, "to": phase, "why": why, "note": state.note }),
            );
        }
        self.commit(tx).await?;
        tracing::info!(move_id = %m.id, tenant = %m.spec.tenant, from = %m.phase, to = %phase, why, "move step");
        // Crash tests: die right after a step is committed, before anything else happens.
        let step = match (phase, state.rollback_step) {
            (MovePhase::RollingBack, Some(s)) => {
                format!("{phase}:{}", store::canonical(&s).trim_matches('"'))
            }
            _ => phase.to_string(),
        };
        cellfleet_api::failpoints::hit(&format!("cp:move:{step}"));
        Ok(())
    }

    /// Moves the placement of the move's tenant environment to `cell`, with a new generation.
    async fn replace_placement(
        &self,
        tx: &mut store::Tx,
        m: &MoveRecord,
        cell: &CellName,
    ) -> Result<()> {
        let current: PlacementRow = store::placements_of(tx.conn(), &m.spec.tenant)
            .await?
            .into_iter()
            .find(|p| p.env == m.spec.env)
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "tenant {}/{} lost its placement during move {}",
                    m.spec.tenant, m.spec.env, m.id
                ))
            })?;
        let row = store::get_cell(tx.conn(), cell)
            .await?
            .ok_or_else(|| not_found("cell", cell))?;
        let tenant = store::get_tenant(tx.conn(), &m.spec.tenant)
            .await?
            .ok_or_else(|| not_found("tenant", &m.spec.tenant))?;
        let summary = format!(
            "{}/{} moved to {} in {} by move {} (from {})",
            m.spec.tenant, m.spec.env, cell, row.spec.region, m.id, current.cell
        );
        let placed = PlacementRow {
            cell: cell.clone(),
            region: row.spec.region.clone(),
            generation: Generation(current.generation.0 + 1),
            explanation: Explanation {
                env: m.spec.env.clone(),
                profile: tenant.spec.profile,
                residency: format!("checked when move {} was planned", m.id),
                regions: Vec::new(),
                cells: Vec::new(),
                chosen_region: Some(row.spec.region.clone()),
                chosen_cell: Some(cell.clone()),
                summary,
            },
            placed_at: tx.now,
            ..current
        };
        store::move_placement(tx.conn(), &placed).await?;
        tx.audit(
            "placement.move",
            &format!("tenant/{}/{}", m.spec.tenant, m.spec.env),
            json!({ "move": m.id, "cell": cell, "region": row.spec.region, "generation": placed.generation }),
        );
        Ok(())
    }
}

fn position(s: &StreamState) -> StreamPosition {
    StreamPosition {
        last_seq: s.last_seq,
        cursor: s.cursor.clone(),
        unapplied: s.last_seq - s.applied_seq,
        applied_seq: s.applied_seq,
    }
}

/// The open moves by id (for views that need more than one).
pub fn by_id(moves: &OpenMoves) -> HashMap<&str, &MoveRecord> {
    moves.0.iter().map(|m| (m.id.as_str(), m)).collect()
}

/// The label naming the provider that made a cell.
pub const PROVIDER_LABEL: &str = "cellfleet.io/provider";
/// The label of a cell marked for retirement (its value says why).
pub const RETIRE_LABEL: &str = "cellfleet.io/retire";

/// A name for a new dedicated cell of `tenant`'s `env`: `ded-{tenant}` (`-{env}` outside prod),
/// with a number when taken.
fn new_cell_name(tenant: &TenantId, env: &Env, cells: &[store::CellRow]) -> Result<CellName> {
    let mut base = if env.as_str() == "prod" {
        format!("ded-{tenant}")
    } else {
        format!("ded-{tenant}-{env}")
    };
    base.truncate(58);
    let base = base.trim_end_matches('-').to_owned();
    (1..100)
        .map(|n| {
            if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            }
        })
        .filter_map(|n| n.parse::<CellName>().ok())
        .find(|n| !cells.iter().any(|c| c.name == *n))
        .ok_or_else(|| Error::Conflict(format!("no free cell name like {base}")))
}

/// Marks `cell` for retirement when it is a dedicated cell with no tenant left: `draining` (no
/// placement uses it), labelled with why. Its agent, database and data stay until an operator
/// retires it.
async fn mark_for_retirement(tx: &mut store::Tx, cell: &CellName, move_id: &str) -> Result<()> {
    let Some(row) = store::get_cell(tx.conn(), cell).await? else {
        return Ok(());
    };
    if row.spec.kind != CellKind::Dedicated || row.load > 0 || row.labels.contains_key(RETIRE_LABEL)
    {
        return Ok(());
    }
    let mut labels = row.labels.clone();
    labels.insert(RETIRE_LABEL.into(), format!("emptied-by-{move_id}"));
    let now = tx.now;
    store::upsert_cell(
        tx.conn(),
        cell,
        &labels,
        &row.spec,
        CellState::Draining,
        now,
    )
    .await?;
    tx.touch(cell);
    tx.audit(
        "cell.retire-marked",
        &format!("cell/{cell}"),
        json!({ "move": move_id, "why": "a dedicated cell with no tenant left after a move" }),
    );
    Ok(())
}
