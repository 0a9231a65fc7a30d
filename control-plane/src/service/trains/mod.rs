//! Release trains, the service part: start (plan + checks, or a dry run), operator commands
//! (promote, pause, resume, abort, rollback, stop/resume the line), and the driver's step —
//! observe, ask `trains::next_step`, persist the answer with its effects (cells' releases, the
//! contract watermark) in one compare-and-swap transaction, audited. A train is an operation row
//! like a move (`service::operations` drives both), so a restarted control plane resumes it from
//! the row without repeating a committed step.

use std::collections::{BTreeMap, HashMap};

use cellfleet_api::{
    AbortTrainRequest, CellKind, CellName, CellState, CellStep, LineView, ManifestFile, ProbeTask,
    RollbackTrainRequest, StartTrainRequest, TrainPhase, TrainStarted, TrainView,
};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Error, Registry, Result, not_found};
use crate::store::{self, Caller, OperationRow, OperationUpdate, Tx};
mod observe;

use crate::trains::{self as core, Effect, KIND, PlanCell, SUBJECT, TrainSpec, TrainState};

/// A train as stored.
#[derive(Debug, Clone)]
struct TrainRecord {
    id: String,
    phase: TrainPhase,
    version: i64,
    spec: TrainSpec,
    state: TrainState,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl TrainRecord {
    fn decode(op: &OperationRow) -> Result<TrainRecord> {
        let bad = |what: &str, e: String| {
            Error::Store(store::StoreError::Corrupt {
                what: format!("train {} {what}", op.id),
                why: e,
            })
        };
        Ok(TrainRecord {
            id: op.id.clone(),
            phase: op.phase.parse().map_err(|e| bad("phase", e))?,
            version: op.version,
            spec: serde_json::from_str(&op.spec).map_err(|e| bad("spec", e.to_string()))?,
            state: serde_json::from_str(&op.state).map_err(|e| bad("state", e.to_string()))?,
            created_at: op.created_at,
            updated_at: op.updated_at,
            finished_at: op.finished_at,
        })
    }

    fn view(&self, line: Option<&LineView>) -> TrainView {
        TrainView {
            id: self.id.clone(),
            release: self.spec.release.clone(),
            phase: self.phase,
            current: self.state.current,
            waves: self.state.waves.clone(),
            policy: self.spec.policy.clone(),
            gates: self.state.gates.clone(),
            note: self.state.note.clone(),
            line_stopped: line
                .filter(|l| l.stopped && !self.phase.is_terminal())
                .map(|l| l.reason.clone().unwrap_or_else(|| "no reason given".into())),
            contract_up_to: self.spec.contract_up_to,
            started_by: self.spec.started_by.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        }
    }
}

/// The default policy, parsed (checked in; a test parses it too).
fn default_policy() -> Result<cellfleet_api::TrainPolicy> {
    Ok(crate::manifest::parse_train_policy(&ManifestFile {
        name: "templates/train-policy.yaml".into(),
        content: core::DEFAULT_POLICY.into(),
    })?)
}

async fn open_trains(conn: &mut sqlx::AnyConnection) -> Result<Vec<TrainRecord>> {
    store::list_operations(conn, KIND, true, 10)
        .await?
        .iter()
        .map(TrainRecord::decode)
        .collect()
}

/// Cells the open train bakes now, with the probes they send (part of their desired state).
pub(super) async fn probing_cells(
    conn: &mut sqlx::AnyConnection,
) -> Result<BTreeMap<CellName, ProbeTask>> {
    let mut out = BTreeMap::new();
    for t in open_trains(conn).await? {
        let p = &t.spec.policy.probes;
        for cell in core::probing(t.phase, &t.state) {
            out.insert(
                cell,
                ProbeTask {
                    path: p.path.clone(),
                    rate_per_second: p.rate_per_second,
                    tenant: p.tenant.clone(),
                },
            );
        }
    }
    Ok(out)
}

/// Cells an open train is about to change, with the train (a move's plan refuses them).
pub(super) async fn cells_in_play(
    conn: &mut sqlx::AnyConnection,
) -> Result<HashMap<CellName, String>> {
    let mut out = HashMap::new();
    for t in open_trains(conn).await? {
        for c in core::cells_in_play(t.phase, &t.state) {
            out.insert(c, t.id.clone());
        }
    }
    Ok(out)
}

async fn line(conn: &mut sqlx::AnyConnection) -> Result<LineView> {
    Ok(match store::fleet_value(conn, store::LINE).await? {
        Some(v) => serde_json::from_str(&v).unwrap_or(LineView {
            stopped: true,
            reason: Some(v),
            by: None,
            at: None,
            trains: Vec::new(),
        }),
        None => LineView {
            stopped: false,
            reason: None,
            by: None,
            at: None,
            trains: Vec::new(),
        },
    })
}

/// A release's declared migration needs.
async fn needs_of(conn: &mut sqlx::AnyConnection, release: &str) -> Result<Option<i64>> {
    Ok(store::get_release(conn, release)
        .await?
        .and_then(|r| r.spec.migrations.map(|m| m.up_to)))
}

/// Makes `cell` run `release` (`None`: nothing), raising its migration ceiling to what the
/// release needs (never lowering it: applied migrations stay in its stream).
pub(super) async fn assign_release(
    tx: &mut Tx,
    cell: &CellName,
    release: Option<&str>,
) -> Result<()> {
    match release {
        Some(version) => {
            store::set_cell_release(tx.conn(), cell, version).await?;
            if let Some(needs) = needs_of(tx.conn(), version).await? {
                let ceiling = match store::migrations_up_to(tx.conn(), cell).await? {
                    Some(c) => c.max(needs),
                    // It had the whole stream so far: keep all of that.
                    None => store::list_migrations(tx.conn())
                        .await?
                        .last()
                        .map_or(0, |m| m.version)
                        .max(needs),
                };
                store::set_migrations_up_to(tx.conn(), cell, ceiling).await?;
            }
        }
        None => store::clear_cell_release(tx.conn(), cell).await?,
    }
    tx.touch(cell);
    Ok(())
}

fn train_id() -> String {
    let mut bytes = [0u8; 6];
    rand::fill(&mut bytes);
    format!("tr_{}", hex::encode(bytes))
}

fn semver_of(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v).ok()
}

impl Registry {
    /// Plans a train of `req.release` over the fleet and (unless a dry run) starts it.
    pub async fn start_train(
        &self,
        caller: &Caller,
        req: &StartTrainRequest,
    ) -> Result<TrainStarted> {
        let policy = match &req.policy {
            Some(file) => crate::manifest::parse_train_policy(file)?,
            None => default_policy()?,
        };
        let bake = req
            .bake
            .as_deref()
            .map(|b| core::seconds(b).map_err(|e| Error::Invalid(format!("bake: {e}"))))
            .transpose()?;
        if bake == Some(0) {
            return Err(Error::Invalid("bake: must be at least 1s".into()));
        }
        let mut tx = self.store.begin(caller).await?;
        let release = store::get_release(tx.conn(), &req.release)
            .await?
            .ok_or_else(|| not_found("release", &req.release))?;
        let cells: Vec<store::CellRow> = store::list_cells(tx.conn())
            .await?
            .into_iter()
            .filter(|c| match c.state {
                CellState::Ready => true,
                CellState::Draining => !policy.skip_draining,
                _ => false,
            })
            .collect();
        // A train only goes forward: an older release is a rollback, which has its own command.
        if let Some(wanted) = semver_of(&release.version) {
            let newer: Vec<String> = cells
                .iter()
                .filter(|c| {
                    c.desired_release
                        .as_deref()
                        .and_then(semver_of)
                        .is_some_and(|v| v > wanted)
                })
                .map(|c| {
                    format!(
                        "{} runs {}",
                        c.name,
                        c.desired_release.as_deref().unwrap_or("")
                    )
                })
                .collect();
            if !newer.is_empty() {
                return Err(Error::Conflict(format!(
                    "release {} is older than what cells run ({}): a train only moves forward; go back with `cellfleet train rollback` or a new release",
                    release.version,
                    newer.into_iter().take(3).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let plan_cells: Vec<PlanCell> = cells
            .iter()
            .map(|c| PlanCell {
                name: c.name.clone(),
                region: c.spec.region.to_string(),
                kind: c.spec.kind,
                canary: c
                    .labels
                    .get(core::CANARY_LABEL)
                    .is_some_and(|v| v != "false"),
                window: c.spec.change_window.clone(),
                release: c.desired_release.clone(),
            })
            .collect();
        let waves = core::plan(&plan_cells, &release.version, &policy, bake);
        let windows: BTreeMap<CellName, cellfleet_api::ChangeWindow> = cells
            .iter()
            .filter(|c| c.spec.kind == CellKind::Dedicated)
            .filter_map(|c| c.spec.change_window.clone().map(|w| (c.name.clone(), w)))
            .collect();
        let schedule = core::schedule(&waves, &windows, tx.now);
        if waves.is_empty() {
            return Err(Error::Conflict(format!(
                "every cell already runs {}: nothing for a train to do",
                release.version
            )));
        }
        if req.dry_run {
            return Ok(TrainStarted {
                waves: schedule,
                train: None,
            });
        }
        if let Some(open) = open_trains(tx.conn()).await?.first() {
            return Err(Error::Conflict(format!(
                "train {} ({}) is {}: one train drives the fleet at a time; wait for it, or `cellfleet train abort {}`",
                open.id, open.spec.release, open.phase, open.id
            )));
        }
        let contract_up_to = release.spec.migrations.as_ref().map(|m| m.up_to);
        let spec = TrainSpec {
            release: release.version.clone(),
            policy,
            bake_override_secs: bake,
            contract_up_to,
            started_by: tx.caller.actor.clone(),
        };
        let id = train_id();
        let state = TrainState {
            waves,
            ..Default::default()
        };
        super::operations::insert_new(
            &mut tx,
            super::operations::NewOperation {
                id: &id,
                kind: KIND,
                subject: SUBJECT,
                phase: TrainPhase::Running.as_str(),
                spec: store::canonical(&spec),
                state: store::canonical(&state),
                reserves: None,
            },
            || "another train started meanwhile: one train drives the fleet at a time".into(),
        )
        .await?;
        tx.audit(
            "train.start",
            &format!("train/{id}"),
            json!({ "release": spec.release, "bake": req.bake, "policy": spec.policy,
                    "waves": schedule.iter().map(|w| json!({ "name": w.name, "cells": w.cells })).collect::<Vec<_>>() }),
        );
        self.commit(tx).await?;
        self.operations_changed();
        Ok(TrainStarted {
            waves: schedule,
            train: Some(self.get_train(&id).await?),
        })
    }

    pub async fn get_train(&self, id: &str) -> Result<TrainView> {
        let mut conn = self.store.read().await?;
        let op = store::get_operation(&mut conn, id)
            .await?
            .filter(|o| o.kind == KIND)
            .ok_or_else(|| not_found("train", id))?;
        let line = line(&mut conn).await?;
        Ok(TrainRecord::decode(&op)?.view(Some(&line)))
    }

    pub async fn trains(&self, open: bool) -> Result<Vec<TrainView>> {
        let mut conn = self.store.read().await?;
        let line = line(&mut conn).await?;
        store::list_operations(&mut conn, KIND, open, 200)
            .await?
            .iter()
            .map(|op| TrainRecord::decode(op).map(|t| t.view(Some(&line))))
            .collect()
    }

    pub async fn line(&self) -> Result<LineView> {
        let mut conn = self.store.read().await?;
        line(&mut conn).await
    }

    /// `train promote|pause|resume|abort|rollback`: one compare-and-swap on the train, with the
    /// cells it changes, audited.
    pub async fn train_command(
        &self,
        caller: &Caller,
        id: &str,
        command: TrainCommand,
    ) -> Result<TrainView> {
        let mut tx = self.store.begin(caller).await?;
        self.train_command_in(&mut tx, id, command).await?;
        self.commit(tx).await?;
        self.operations_changed();
        self.get_train(id).await
    }

    /// A train command inside `tx` (a runbook step commands a train in the transaction that
    /// records it); the caller commits.
    pub(super) async fn train_command_in(
        &self,
        tx: &mut Tx,
        id: &str,
        command: TrainCommand,
    ) -> Result<()> {
        let op = store::get_operation(tx.conn(), id)
            .await?
            .filter(|o| o.kind == KIND)
            .ok_or_else(|| not_found("train", id))?;
        let t = TrainRecord::decode(&op)?;
        let mut state = t.state.clone();
        let mut effects: Vec<Effect> = Vec::new();
        let refuse = |what: &str| {
            Err(Error::Conflict(format!(
                "train {id} is {}: cannot {what} it",
                t.phase
            )))
        };
        let phase = match &command {
            TrainCommand::Promote => {
                if t.phase != TrainPhase::AwaitingApproval {
                    return refuse("promote");
                }
                if let Some(w) = state.waves.get_mut(state.current)
                    && w.outcome.as_deref() == Some("inconclusive")
                {
                    w.outcome = Some("passed with approval".into());
                }
                state.current += 1;
                state.note = None;
                TrainPhase::Running
            }
            TrainCommand::Pause => {
                if !matches!(t.phase, TrainPhase::Running | TrainPhase::AwaitingApproval) {
                    return refuse("pause");
                }
                state.paused_from = Some(t.phase);
                TrainPhase::Paused
            }
            TrainCommand::Resume => {
                if t.phase != TrainPhase::Paused {
                    return refuse("resume");
                }
                state.note = None;
                state.paused_from.take().unwrap_or(TrainPhase::Running)
            }
            TrainCommand::Abort(req) => {
                if t.phase.is_terminal() {
                    return refuse("abort");
                }
                if req.rollback {
                    effects = self.rollback_effects(tx, &mut state, None).await?;
                }
                state.note = Some(format!(
                    "aborted by {}{}",
                    tx.caller.actor,
                    if req.rollback {
                        ", cells rolled back"
                    } else {
                        ""
                    }
                ));
                TrainPhase::Aborted
            }
            TrainCommand::Rollback(req) => {
                if let Some(c) = &req.cell
                    && !state
                        .waves
                        .iter()
                        .any(|w| w.cells.iter().any(|x| x.cell == *c))
                {
                    return Err(Error::Conflict(format!(
                        "train {id} never changed cell {c}"
                    )));
                }
                effects = self
                    .rollback_effects(tx, &mut state, req.cell.as_ref())
                    .await?;
                if effects.is_empty() {
                    return Err(Error::Conflict(format!(
                        "train {id} has nothing to roll back{}",
                        req.cell
                            .as_ref()
                            .map(|c| format!(" on {c}"))
                            .unwrap_or_default()
                    )));
                }
                if t.phase.is_terminal() {
                    t.phase
                } else {
                    state.note = Some(format!("halted: rolled back by {}", tx.caller.actor));
                    TrainPhase::Halted
                }
            }
        };
        let finished = phase.is_terminal() && !t.phase.is_terminal();
        let now = tx.now;
        let moved = store::cas_operation(
            tx.conn(),
            id,
            t.version,
            &OperationUpdate {
                phase: phase.as_str(),
                state: &store::canonical(&state),
                reserves: None,
                finished,
            },
            now,
        )
        .await?;
        if !moved {
            return Err(Error::Busy(format!(
                "train {id} changed meanwhile; try again"
            )));
        }
        self.apply_effects(tx, &t.spec, &effects).await?;
        touch_train_cells(tx, &t.state);
        let (action, detail) = match &command {
            TrainCommand::Promote => ("train.promote", json!({ "wave": state.current })),
            TrainCommand::Pause => ("train.pause", json!({})),
            TrainCommand::Resume => ("train.resume", json!({ "to": phase })),
            TrainCommand::Abort(r) => ("train.abort", json!({ "rollback": r.rollback })),
            TrainCommand::Rollback(r) => ("train.rollback", json!({ "cell": r.cell })),
        };
        let reverted: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Revert { cell, to } => Some(json!({ "cell": cell, "to": to })),
                _ => None,
            })
            .collect();
        tx.audit(
            action,
            &format!("train/{id}"),
            json!({ "from": t.phase, "detail": detail, "reverted": reverted }),
        );
        Ok(())
    }

    /// Rolls back every changed cell of the train (or `only`), refusing — for all of them, with
    /// the reason — if any would go past an applied contract migration.
    async fn rollback_effects(
        &self,
        tx: &mut Tx,
        state: &mut TrainState,
        only: Option<&CellName>,
    ) -> Result<Vec<Effect>> {
        let released = store::contract_released(tx.conn()).await?;
        let contracts: Vec<(i64, String)> = store::list_migrations(tx.conn())
            .await?
            .into_iter()
            .filter(|m| m.phase == cellfleet_api::Phase::Contract)
            .map(|m| (m.version, m.name))
            .collect();
        for w in &state.waves {
            for c in &w.cells {
                if only.is_some_and(|o| *o != c.cell)
                    || !matches!(c.step, CellStep::Deploying | CellStep::Converged)
                {
                    continue;
                }
                let needs = match &c.previous {
                    Some(p) => needs_of(tx.conn(), p).await?,
                    None => None,
                };
                if let Some(why) = core::rollback_blocked(
                    &c.cell,
                    c.previous.as_deref(),
                    needs,
                    released,
                    &contracts,
                ) {
                    return Err(Error::Conflict(why));
                }
            }
        }
        let mut effects = Vec::new();
        for w in &mut state.waves {
            effects.extend(core::revert(w, only));
        }
        Ok(effects)
    }

    async fn apply_effects(&self, tx: &mut Tx, spec: &TrainSpec, effects: &[Effect]) -> Result<()> {
        for e in effects {
            match e {
                Effect::Deploy(cell) => {
                    if store::get_cell(tx.conn(), cell).await?.is_some() {
                        assign_release(tx, cell, Some(&spec.release)).await?;
                    }
                }
                Effect::Revert { cell, to } => {
                    if store::get_cell(tx.conn(), cell).await?.is_some() {
                        assign_release(tx, cell, to.as_deref()).await?;
                        tx.audit(
                            "cell.release",
                            &format!("cell/{cell}"),
                            json!({ "from": spec.release, "to": to, "rollback": true }),
                        );
                    }
                }
                Effect::ReleaseContract(up_to) => {
                    let now = tx.now;
                    let released = store::contract_released(tx.conn()).await?;
                    if *up_to > released {
                        store::set_fleet_value(
                            tx.conn(),
                            store::CONTRACT_RELEASED,
                            Some(&up_to.to_string()),
                            now,
                        )
                        .await?;
                        for c in store::cell_names(tx.conn()).await? {
                            tx.touch(&c);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `stop-the-line`: every open train stops where it is until `resume-the-line`.
    pub async fn stop_line(&self, caller: &Caller, reason: Option<String>) -> Result<LineView> {
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(Error::Invalid("reason: at most 500 characters".into()));
        }
        let mut tx = self.store.begin(caller).await?;
        let view = stop_line_in(&mut tx, reason).await?;
        self.commit(tx).await?;
        self.operations_changed();
        Ok(view)
    }

    pub async fn resume_line(&self, caller: &Caller) -> Result<LineView> {
        let mut tx = self.store.begin(caller).await?;
        resume_line_in(&mut tx).await?;
        self.commit(tx).await?;
        self.operations_changed();
        Ok(LineView {
            stopped: false,
            reason: None,
            by: None,
            at: None,
            trains: Vec::new(),
        })
    }
    /// One step of a train (the driver calls it); `true` when it moved on.
    pub(super) async fn step_train(&self, op: &OperationRow) -> Result<bool> {
        let t = TrainRecord::decode(op)?;
        let obs = self.observe_train(&t).await?;
        let now = Utc::now();
        let step = core::next_step(&t.spec, t.phase, &t.state, &obs, now);
        if let Some(at) = core::next_deadline(&step.state, now) {
            self.train_deadline(&t.id, at);
        }
        let mut without_note = step.state.clone();
        without_note.note = t.state.note.clone();
        if step.phase == t.phase && step.effects.is_empty() && without_note == t.state {
            if step.state.note != t.state.note {
                // A note is for people: stored without the lock or an audit record.
                let mut conn = self.store.read().await?;
                store::cas_operation(
                    &mut conn,
                    &t.id,
                    t.version,
                    &OperationUpdate {
                        phase: t.phase.as_str(),
                        state: &store::canonical(&step.state),
                        reserves: None,
                        finished: false,
                    },
                    now,
                )
                .await?;
            }
            return Ok(false);
        }
        let mut tx = self.store.begin(&Caller::system("trains")).await?;
        let now = tx.now;
        let moved = store::cas_operation(
            tx.conn(),
            &t.id,
            t.version,
            &OperationUpdate {
                phase: step.phase.as_str(),
                state: &store::canonical(&step.state),
                reserves: None,
                finished: step.phase.is_terminal(),
            },
            now,
        )
        .await?;
        if !moved {
            return Err(Error::Busy(format!("train {} changed meanwhile", t.id)));
        }
        self.apply_effects(&mut tx, &t.spec, &step.effects).await?;
        // Probes follow the current wave: touch the cells of the waves before and after.
        touch_train_cells(&mut tx, &t.state);
        touch_train_cells(&mut tx, &step.state);
        for (action, detail) in &step.events {
            tx.audit(
                &format!("train.{action}"),
                &format!("train/{}", t.id),
                detail.clone(),
            );
        }
        if step.phase != t.phase {
            tx.audit(
                "train.phase",
                &format!("train/{}", t.id),
                json!({ "from": t.phase, "to": step.phase, "note": step.state.note }),
            );
        }
        self.commit(tx).await?;
        tracing::info!(train = %t.id, from = %t.phase, to = %step.phase, effects = step.effects.len(), "train step");
        cellfleet_api::failpoints::hit(&format!("cp:train:{}", step.phase));
        Ok(true)
    }
}

/// Touches the cells of the train's current wave (their probes and releases follow it).
fn touch_train_cells(tx: &mut Tx, state: &TrainState) {
    for i in [state.current.saturating_sub(1), state.current] {
        if let Some(w) = state.waves.get(i) {
            for c in &w.cells {
                tx.touch(&c.cell);
            }
        }
    }
}

/// An operator's command to a train.
#[derive(Debug, Clone)]
pub enum TrainCommand {
    Promote,
    Pause,
    Resume,
    Abort(AbortTrainRequest),
    Rollback(RollbackTrainRequest),
}

/// `stop-the-line` inside `tx`: every open train stops where it is.
pub(super) async fn stop_line_in(tx: &mut Tx, reason: Option<String>) -> Result<LineView> {
    let trains: Vec<String> = open_trains(tx.conn())
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    let view = LineView {
        stopped: true,
        reason: reason.clone(),
        by: Some(tx.caller.actor.clone()),
        at: Some(tx.now),
        trains: trains.clone(),
    };
    let now = tx.now;
    store::set_fleet_value(tx.conn(), store::LINE, Some(&store::canonical(&view)), now).await?;
    tx.audit(
        "line.stop",
        "fleet/line",
        json!({ "reason": reason, "trains": trains }),
    );
    Ok(view)
}

/// `resume-the-line` inside `tx`; refused when the line runs.
pub(super) async fn resume_line_in(tx: &mut Tx) -> Result<()> {
    let before = line(tx.conn()).await?;
    if !before.stopped {
        return Err(Error::Conflict("the line is not stopped".into()));
    }
    let now = tx.now;
    store::set_fleet_value(tx.conn(), store::LINE, None, now).await?;
    tx.audit(
        "line.resume",
        "fleet/line",
        json!({ "stoppedBy": before.by, "reason": before.reason }),
    );
    Ok(())
}

/// A train's release and cells as `tx` sees them: `(cell, step, previous release)` of every
/// wave's cells, wave by wave (runbook steps read them around a command).
pub(super) async fn train_cells_in(
    tx: &mut Tx,
    id: &str,
) -> Result<(String, Vec<Vec<(CellName, CellStep, Option<String>)>>)> {
    let op = store::get_operation(tx.conn(), id)
        .await?
        .filter(|o| o.kind == KIND)
        .ok_or_else(|| not_found("train", id))?;
    let t = TrainRecord::decode(&op)?;
    Ok((
        t.spec.release,
        t.state
            .waves
            .iter()
            .map(|w| {
                w.cells
                    .iter()
                    .map(|c| (c.cell.clone(), c.step, c.previous.clone()))
                    .collect()
            })
            .collect(),
    ))
}

/// The newest train (any phase), if there is one.
pub(super) async fn latest_train(conn: &mut sqlx::AnyConnection) -> Result<Option<String>> {
    Ok(store::list_operations(conn, KIND, false, 1)
        .await?
        .first()
        .map(|o| o.id.clone()))
}
