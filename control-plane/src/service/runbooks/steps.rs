//! Running steps: the run's next transition (start the current step, look at it, end it, go
//! on), each step kind's effect, and the dry-run plan. Effects happen inside the step's
//! transaction behind a savepoint, so a refused effect (a move whose checks fail, a cell not in
//! a state to drain) fails its step alone and leaves nothing half-done; a started operation's id
//! is stored with the step, so a resumed run follows it rather than starting it again.

use cellfleet_api::{
    CellKind, CellStep, MovePhase, OnStepFailure, PlannedStep, RollbackTrainRequest, RunPhase,
    StartMoveRequest, StepKind, StepRun, StepSpec, StepStatus,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::conditions::{Verdict, cells, env_of, list, opt_text, parsed, text};
use super::{RunRecord, RunState, pending, roles_text};
use crate::runbooks::{self as core, Context};
use crate::service::cells::{CellAction, cell_lifecycle_in};
use crate::service::trains::TrainCommand;
use crate::service::{Error, Registry, Result};
use crate::store::{self, Tx};

type Events = Vec<(String, Value)>;

/// Whether an error is the registry's (stop the pass) rather than the step's (fail the step).
fn registry_error(e: &Error) -> bool {
    matches!(e, Error::Store(_) | Error::Busy(_))
}

fn fail(sr: &mut StepRun, now: DateTime<Utc>, why: impl Into<String>) {
    sr.status = StepStatus::Failed;
    sr.detail = Some(why.into());
    sr.finished_at = Some(now);
}

fn succeed(sr: &mut StepRun, now: DateTime<Utc>, detail: impl Into<String>) {
    sr.status = StepStatus::Succeeded;
    sr.detail = Some(detail.into());
    sr.finished_at = Some(now);
}

/// `ctx` with the outputs of `state`'s steps.
fn context_of(run: &RunRecord, state: &RunState) -> Context {
    let mut ctx = run.context();
    ctx.steps.clear();
    for s in &state.steps {
        if !s.output.is_null() {
            ctx.steps.insert(s.name.clone(), s.output.clone());
        }
    }
    ctx
}

/// Statuses of a step and its items, to tell a status change (audited) from a new detail.
fn statuses(sr: &StepRun) -> Vec<StepStatus> {
    let mut out = vec![sr.status];
    out.extend(sr.items.iter().map(|i| i.status));
    if let Some(c) = &sr.compensation {
        out.push(c.status);
    }
    out
}

/// A step's arguments with every `${…}` resolved — but a notify step's `message` and `title`,
/// which are rendered per tenant (they may name `${item}`).
fn rendered_with(spec: &StepSpec, ctx: &Context) -> std::result::Result<Value, String> {
    let mut raw = spec.with.clone();
    let kept: Vec<(String, Value)> = if spec.kind == StepKind::Notify {
        ["message", "title"]
            .iter()
            .filter_map(|k| raw.remove(*k).map(|v| ((*k).to_owned(), v)))
            .collect()
    } else {
        Vec::new()
    };
    let mut with = core::render(&json!(raw), ctx)?;
    if let Value::Object(m) = &mut with {
        m.extend(kept);
    }
    Ok(with)
}

fn duration_secs(with: &Value, key: &str) -> Result<Option<u64>> {
    opt_text(with, key)?
        .map(|t| {
            crate::trains::seconds(&t).map_err(|e| Error::Invalid(format!("argument {key}: {e}")))
        })
        .transpose()
}

impl Registry {
    /// The run's next transition, applied to `state`: the phase it leads to and what to audit;
    /// `None` when nothing changed.
    pub(super) async fn advance(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        state: &mut RunState,
    ) -> Result<Option<(RunPhase, Events)>> {
        let steps = &run.spec.definition.steps;
        let now = tx.now;
        let i = state.current;
        let Some(spec) = steps.get(i) else {
            state.note = Some("every step done".into());
            return Ok(Some((RunPhase::Succeeded, Vec::new())));
        };
        let ctx = context_of(run, state);
        let mut sr = state.steps.get(i).cloned().unwrap_or_else(|| pending(spec));
        let before = statuses(&sr);
        // A failed step's compensation runs to its end, then the run fails.
        if sr.status == StepStatus::Failed
            && let (Some(comp), OnStepFailure::Run(comp_spec)) =
                (&sr.compensation, &spec.on_failure)
        {
            let mut c = (**comp).clone();
            if !self.exec(tx, run, comp_spec, &mut c, &ctx).await? {
                return Ok(None);
            }
            sr.compensation = Some(Box::new(c.clone()));
            let events = vec![(
                "runbook.step".to_owned(),
                json!({ "step": sr.name, "compensation": c.name, "status": c.status, "detail": c.detail }),
            )];
            state.steps[i] = sr.clone();
            if c.status.is_done() {
                state.note = Some(format!(
                    "step {} failed: {}; compensating step {} {}{}",
                    sr.name,
                    sr.detail.clone().unwrap_or_default(),
                    c.name,
                    if c.status == StepStatus::Succeeded {
                        "ran"
                    } else {
                        "failed too"
                    },
                    c.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                ));
                skip_rest(state, now);
                return Ok(Some((RunPhase::Failed, events)));
            }
            return Ok(Some((RunPhase::Running, events)));
        }
        if !self.exec(tx, run, spec, &mut sr, &ctx).await? {
            return Ok(None);
        }
        let mut events = Vec::new();
        if statuses(&sr) != before {
            events.push((
                "runbook.step".to_owned(),
                json!({ "step": sr.name, "kind": spec.kind, "status": sr.status, "detail": sr.detail,
                        "operation": sr.operation,
                        "items": sr.items.iter().map(|i| json!({ "item": i.item, "status": i.status, "operation": i.operation })).collect::<Vec<_>>() }),
            ));
        }
        state.steps[i] = sr.clone();
        let next = |state: &mut RunState| {
            state.current += 1;
            if state.current >= steps.len() {
                state.note = Some("every step done".into());
                RunPhase::Succeeded
            } else {
                RunPhase::Running
            }
        };
        let phase = match sr.status {
            StepStatus::Succeeded | StepStatus::Skipped => next(state),
            StepStatus::Waiting => RunPhase::AwaitingApproval,
            StepStatus::Failed => match &spec.on_failure {
                OnStepFailure::Continue => next(state),
                OnStepFailure::Stop => {
                    state.note = Some(format!(
                        "step {} failed: {}",
                        sr.name,
                        sr.detail.clone().unwrap_or_default()
                    ));
                    skip_rest(state, now);
                    RunPhase::Failed
                }
                OnStepFailure::Run(c) => {
                    state.steps[i].compensation = Some(Box::new(pending(c)));
                    RunPhase::Running
                }
            },
            StepStatus::Pending | StepStatus::Running => RunPhase::Running,
        };
        Ok(Some((phase, events)))
    }

    /// Starts or looks at one step (or item); `true` when its record changed.
    async fn exec(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        spec: &StepSpec,
        sr: &mut StepRun,
        ctx: &Context,
    ) -> Result<bool> {
        let now = tx.now;
        match sr.status {
            StepStatus::Pending => {
                sr.started_at = Some(now);
                if let Some(w) = &spec.when {
                    let v = match core::render(&json!(w.with), ctx) {
                        Ok(with) => self.condition_safe(tx, &w.condition, &with).await?,
                        Err(e) => {
                            fail(sr, now, format!("when: {e}"));
                            return Ok(true);
                        }
                    };
                    if !v.holds {
                        sr.status = StepStatus::Skipped;
                        sr.detail = Some(format!("skipped: {}", v.detail));
                        sr.finished_at = Some(now);
                        return Ok(true);
                    }
                }
                match rendered_with(spec, ctx) {
                    Ok(with) => self.begin_step(tx, run, spec, sr, &with, ctx).await?,
                    Err(e) => fail(sr, now, e),
                }
                Ok(true)
            }
            StepStatus::Running => match rendered_with(spec, ctx) {
                Ok(with) => self.poll_step(tx, run, spec, sr, &with, ctx).await,
                Err(e) => {
                    fail(sr, now, e);
                    Ok(true)
                }
            },
            _ => Ok(false),
        }
    }

    /// A condition's verdict; a condition that cannot be evaluated (a bad argument, an unknown
    /// name) does not hold, and says why.
    pub(super) async fn condition_safe(
        &self,
        tx: &mut Tx,
        name: &str,
        with: &Value,
    ) -> Result<Verdict> {
        match self.condition(tx, name, with).await {
            Ok(v) => Ok(v),
            Err(e) if registry_error(&e) => Err(e),
            Err(e) => Ok(Verdict {
                holds: false,
                detail: e.to_string(),
                output: Value::Null,
            }),
        }
    }

    async fn begin_step(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        spec: &StepSpec,
        sr: &mut StepRun,
        with: &Value,
        ctx: &Context,
    ) -> Result<()> {
        let now = tx.now;
        match spec.kind {
            StepKind::Check => {
                let v = self
                    .condition_safe(tx, spec.condition.as_deref().unwrap_or_default(), with)
                    .await?;
                if v.holds {
                    succeed(sr, now, v.detail);
                } else {
                    fail(sr, now, v.detail);
                }
                sr.output = v.output;
            }
            StepKind::WaitFor => {
                let timeout = spec.timeout.as_deref().unwrap_or(core::DEFAULT_WAIT);
                let secs = crate::trains::seconds(timeout).unwrap_or(600);
                sr.deadline = Some(
                    now + chrono::TimeDelta::seconds(
                        i64::try_from(secs).unwrap_or(i64::MAX / 2_000),
                    ),
                );
                sr.status = StepStatus::Running;
                self.poll_step(tx, run, spec, sr, with, ctx).await?;
            }
            StepKind::Approve => {
                sr.status = StepStatus::Waiting;
                sr.detail = Some(format!(
                    "{} (approve: `cellfleet runbook approve {}`, by {})",
                    opt_text(with, "message")?.unwrap_or_else(|| "waiting for approval".into()),
                    run.id,
                    roles_text(&spec.roles)
                ));
            }
            StepKind::ForEach => {
                let items = match spec.items.as_ref().map(|i| core::render(i, ctx)) {
                    Some(Ok(Value::Array(a))) => a,
                    Some(Ok(Value::Null)) => Vec::new(),
                    Some(Ok(other)) => {
                        fail(sr, now, format!("items: expected a list, got {other}"));
                        return Ok(());
                    }
                    Some(Err(e)) => {
                        fail(sr, now, format!("items: {e}"));
                        return Ok(());
                    }
                    None => Vec::new(),
                };
                let concurrency = concurrency(spec, ctx)?;
                let Some(inner) = spec.step.as_deref() else {
                    fail(sr, now, "a for-each without a step");
                    return Ok(());
                };
                sr.items = items
                    .iter()
                    .enumerate()
                    .map(|(n, item)| StepRun {
                        name: format!("{}[{n}]", inner.name),
                        kind: Some(inner.kind),
                        item: Some(item.clone()),
                        ..Default::default()
                    })
                    .collect();
                sr.output = json!({ "count": items.len() });
                if items.is_empty() {
                    succeed(sr, now, "no items");
                } else {
                    sr.status = StepStatus::Running;
                    sr.detail = Some(format!(
                        "{} item(s), up to {concurrency} at once",
                        items.len()
                    ));
                    self.poll_step(tx, run, spec, sr, with, ctx).await?;
                }
            }
            StepKind::Move
            | StepKind::Drain
            | StepKind::Train
            | StepKind::ReleaseDeploy
            | StepKind::Notify => {
                let mark = tx.mark().await?;
                match self.effect(tx, run, spec, sr, with, ctx).await {
                    Ok(()) => tx.keep().await?,
                    Err(e) if registry_error(&e) => return Err(e),
                    Err(e) => {
                        tx.undo(mark).await?;
                        fail(sr, now, e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    /// A step's effect on the registry, in `tx`.
    async fn effect(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        spec: &StepSpec,
        sr: &mut StepRun,
        with: &Value,
        ctx: &Context,
    ) -> Result<()> {
        let now = tx.now;
        match spec.kind {
            StepKind::Move => {
                let req = StartMoveRequest {
                    tenant: parsed(with, "tenant")?,
                    env: env_of(with)?,
                    to: text(with, "to")?,
                    max_write_pause_ms: duration_secs(with, "maxWritePause")?.map(|s| s * 1_000),
                    rollback_window_secs: duration_secs(with, "rollbackWindow")?,
                    dry_run: false,
                };
                let (plan, id) = self.start_move_in(tx, &req).await?;
                sr.status = StepStatus::Running;
                sr.detail = Some(format!("move {id}: {} → {}", plan.source, plan.target));
                sr.output = json!({ "id": id, "tenant": req.tenant, "env": req.env, "source": plan.source, "target": plan.target });
                sr.operation = Some(id);
            }
            StepKind::Drain => {
                let action = opt_text(with, "action")?.unwrap_or_else(|| "drain".into());
                let action = CellAction::parse(&action).ok_or_else(|| {
                    Error::Invalid(format!("action {action:?}: drain, undrain or retire"))
                })?;
                let cell = parsed(with, "cell")?;
                let placed = store::placements_on(tx.conn(), &cell).await?;
                let reason =
                    opt_text(with, "reason")?.unwrap_or_else(|| format!("runbook run {}", run.id));
                let done = cell_lifecycle_in(tx, &cell, action, Some(&reason)).await?;
                succeed(
                    sr,
                    now,
                    format!(
                        "cell {cell}: {} → {} ({} tenant environment(s) on it)",
                        done.from, done.to, done.tenants
                    ),
                );
                sr.output = json!({
                    "cell": cell,
                    "tenants": placed.iter().map(|(p, _)| json!({ "tenant": p.tenant, "env": p.env })).collect::<Vec<_>>(),
                });
            }
            StepKind::Train => self.train_effect(tx, sr, with).await?,
            StepKind::ReleaseDeploy => {
                let release = text(with, "release")?;
                let targets = cells(with, "cells")?;
                let reason = text(with, "reason")?;
                if reason.trim().is_empty() {
                    return Err(Error::Invalid(
                        "a release-deploy needs a reason (recorded in the audit log)".into(),
                    ));
                }
                if targets.is_empty() {
                    return Err(Error::Invalid("a release-deploy names its cells".into()));
                }
                let changed =
                    super::super::releases::deploy_release_in(tx, &release, &targets).await?;
                let mut dedicated = Vec::new();
                for c in &targets {
                    if store::get_cell(tx.conn(), c)
                        .await?
                        .is_some_and(|r| r.spec.kind == CellKind::Dedicated)
                    {
                        for (p, _) in store::placements_on(tx.conn(), c).await? {
                            dedicated.push(json!(p.tenant));
                        }
                    }
                }
                tx.audit(
                    "release.expedite",
                    &format!("release/{release}"),
                    json!({ "cells": targets, "changed": changed, "reason": reason, "run": run.id,
                            "bypassesChangeWindows": true }),
                );
                succeed(
                    sr,
                    now,
                    format!(
                        "{release} assigned to {} now, outside change windows ({} changed); reason: {reason}",
                        targets
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        changed.len()
                    ),
                );
                sr.output = json!({ "release": release, "cells": targets, "changed": changed, "dedicatedTenants": dedicated });
            }
            StepKind::Notify => {
                let events = self.notify_events(tx, run, spec, with, ctx).await?;
                for e in &events {
                    store::insert_event(tx.conn(), e).await?;
                }
                succeed(
                    sr,
                    now,
                    if events.is_empty() {
                        "no one to notify".to_owned()
                    } else {
                        format!(
                            "{} event(s) emitted: {}",
                            events.len(),
                            events.first().map(|e| e.title.clone()).unwrap_or_default()
                        )
                    },
                );
                sr.output =
                    json!({ "events": events.iter().map(|e| e.id.clone()).collect::<Vec<_>>() });
            }
            _ => {}
        }
        Ok(())
    }

    async fn train_effect(&self, tx: &mut Tx, sr: &mut StepRun, with: &Value) -> Result<()> {
        let now = tx.now;
        let action = text(with, "action")?;
        let reason = opt_text(with, "reason")?;
        match action.as_str() {
            "stop-line" => {
                if let Some(v) = store::fleet_value(tx.conn(), store::LINE).await? {
                    succeed(sr, now, format!("the line was already stopped ({v})"));
                } else {
                    let view = super::super::trains::stop_line_in(tx, reason).await?;
                    succeed(
                        sr,
                        now,
                        format!("line stopped; trains halted: {}", view.trains.join(", ")),
                    );
                    sr.output = json!({ "trains": view.trains });
                }
                return Ok(());
            }
            "resume-line" => {
                if store::fleet_value(tx.conn(), store::LINE).await?.is_none() {
                    succeed(sr, now, "the line runs");
                } else {
                    super::super::trains::resume_line_in(tx).await?;
                    succeed(sr, now, "line resumed");
                }
                return Ok(());
            }
            _ => {}
        }
        let id = match opt_text(with, "train")?.filter(|t| t != "latest") {
            Some(t) => t,
            None => super::super::trains::latest_train(tx.conn())
                .await?
                .ok_or_else(|| Error::Conflict("there is no train".into()))?,
        };
        let (release, before) = super::super::trains::train_cells_in(tx, &id).await?;
        let command = match action.as_str() {
            "pause" => TrainCommand::Pause,
            "resume" => TrainCommand::Resume,
            "abort" => TrainCommand::Abort(cellfleet_api::AbortTrainRequest { rollback: false }),
            "rollback" => TrainCommand::Rollback(RollbackTrainRequest {
                cell: opt_text(with, "cell")?
                    .map(|c| {
                        c.parse()
                            .map_err(|e| Error::Invalid(format!("argument cell: {c:?}: {e}")))
                    })
                    .transpose()?,
            }),
            other => return Err(Error::Invalid(format!("train action {other:?}"))),
        };
        self.train_command_in(tx, &id, command).await?;
        let (_, after) = super::super::trains::train_cells_in(tx, &id).await?;
        let rolled: Vec<(String, Option<String>)> = before
            .iter()
            .flatten()
            .zip(after.iter().flatten())
            .filter(|(b, a)| b.1 != CellStep::RolledBack && a.1 == CellStep::RolledBack)
            .map(|(_, a)| (a.0.to_string(), a.2.clone()))
            .collect();
        let to = rolled.first().and_then(|r| r.1.clone());
        succeed(
            sr,
            now,
            if action == "rollback" {
                format!(
                    "train {id} ({release}) rolled back {} to {}",
                    rolled
                        .iter()
                        .map(|r| r.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    to.as_deref().unwrap_or("no release")
                )
            } else {
                format!("train {id} ({release}): {action}")
            },
        );
        sr.output = json!({ "train": id, "release": release, "cells": rolled.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), "to": to });
        Ok(())
    }

    /// The events a notify step emits: one per tenant named (to its owners), else one.
    async fn notify_events(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        spec: &StepSpec,
        with: &Value,
        ctx: &Context,
    ) -> Result<Vec<cellfleet_api::EventView>> {
        let template = match opt_text(with, "template")? {
            Some(t) => run
                .spec
                .definition
                .templates
                .get(&t)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("no template {t:?} in the runbook")))?,
            None => text(with, "message")?,
        };
        let extra: Vec<String> = match with.get("to") {
            None | Some(Value::Null) => Vec::new(),
            Some(_) => list(with, "to")?
                .iter()
                .map(core::display)
                .filter(|s| !s.is_empty())
                .collect(),
        };
        let title_of = |ctx: &Context| -> Result<String> {
            let t = opt_text(with, "title")?
                .unwrap_or_else(|| format!("{}: {}", run.spec.runbook, spec.name));
            core::render(&json!(t), ctx)
                .map(|v| core::display(&v))
                .map_err(Error::Invalid)
        };
        let render = |ctx: &Context| -> Result<String> {
            core::render(&json!(template), ctx)
                .map(|v| core::display(&v))
                .map_err(Error::Invalid)
        };
        let now = tx.now;
        let event = |subject: String, to: Vec<String>, title: String, message: String| {
            let mut bytes = [0u8; 6];
            rand::fill(&mut bytes);
            cellfleet_api::EventView {
                id: format!("ev_{}", hex::encode(bytes)),
                kind: "notify".into(),
                subject,
                to,
                title,
                message,
                run: Some(run.id.clone()),
                created_at: now,
            }
        };
        let Some(tenants) = with.get("tenants").filter(|v| !v.is_null()) else {
            let subject =
                opt_text(with, "subject")?.unwrap_or_else(|| format!("runbook-run/{}", run.id));
            return Ok(vec![event(subject, extra, title_of(ctx)?, render(ctx)?)]);
        };
        let tenants = match tenants {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for t in tenants {
            let id = match &t {
                Value::Object(m) => m.get("tenant").map(core::display).unwrap_or_default(),
                other => core::display(other),
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            let tid: cellfleet_api::TenantId = id
                .parse()
                .map_err(|e| Error::Invalid(format!("tenants: {id:?}: {e}")))?;
            let row = store::get_tenant(tx.conn(), &tid)
                .await?
                .ok_or_else(|| Error::Invalid(format!("tenants: no tenant {tid}")))?;
            let mut item_ctx = ctx.clone();
            item_ctx.item = Some(json!({
                "tenant": tid, "displayName": row.spec.display_name, "owners": row.spec.owners,
                "env": t.get("env").cloned().unwrap_or(Value::Null),
            }));
            let mut to = row.spec.owners.clone();
            to.extend(extra.iter().cloned());
            out.push(event(
                format!("tenant/{tid}"),
                to,
                title_of(&item_ctx)?,
                render(&item_ctx)?,
            ));
        }
        Ok(out)
    }

    /// Looks at a running step; `true` when its record changed.
    async fn poll_step(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        spec: &StepSpec,
        sr: &mut StepRun,
        with: &Value,
        ctx: &Context,
    ) -> Result<bool> {
        let now = tx.now;
        let before = sr.clone();
        match spec.kind {
            StepKind::Move => {
                let id = sr.operation.clone().unwrap_or_default();
                let Some(op) = store::get_operation(tx.conn(), &id).await? else {
                    fail(sr, now, format!("move {id} is gone"));
                    return Ok(true);
                };
                let m = super::super::moves::MoveRecord::decode(&op)?;
                let until_cutover = opt_text(with, "until")?.as_deref() == Some("cutover");
                if m.phase == MovePhase::Done {
                    succeed(
                        sr,
                        now,
                        format!(
                            "move {id} done: {}/{} on {}",
                            m.spec.tenant, m.spec.env, m.spec.target
                        ),
                    );
                } else if m.phase.is_terminal() {
                    fail(
                        sr,
                        now,
                        format!(
                            "move {id} ended {}: {}",
                            m.phase,
                            m.state.note.clone().unwrap_or_default()
                        ),
                    );
                } else if until_cutover
                    && crate::moves::placed_on_target(m.phase, &m.state)
                    && !crate::moves::route_frozen(m.phase, &m.state)
                {
                    // Cut over: the route leads to the target and is no longer frozen.
                    succeed(
                        sr,
                        now,
                        format!(
                            "move {id} cut over to {} (rollback window: `cellfleet move status {id}`)",
                            m.spec.target
                        ),
                    );
                } else {
                    sr.detail = Some(format!(
                        "move {id}: {}{}",
                        m.phase,
                        m.state
                            .note
                            .as_ref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default()
                    ));
                }
            }
            StepKind::WaitFor => {
                let v = self
                    .condition_safe(tx, spec.condition.as_deref().unwrap_or_default(), with)
                    .await?;
                if v.holds {
                    succeed(sr, now, v.detail);
                    sr.output = v.output;
                } else if sr.deadline.is_some_and(|d| now >= d) {
                    fail(
                        sr,
                        now,
                        format!(
                            "gave up after {}: {}",
                            spec.timeout.as_deref().unwrap_or(core::DEFAULT_WAIT),
                            v.detail
                        ),
                    );
                } else {
                    sr.detail = Some(format!("waiting: {}", v.detail));
                }
            }
            StepKind::ForEach => self.poll_for_each(tx, run, spec, sr, ctx).await?,
            _ => return Ok(false),
        }
        Ok(*sr != before)
    }

    async fn poll_for_each(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        spec: &StepSpec,
        sr: &mut StepRun,
        ctx: &Context,
    ) -> Result<()> {
        let now = tx.now;
        let Some(inner) = spec.step.as_deref() else {
            return Ok(());
        };
        let limit = concurrency(spec, ctx)?;
        let stop_on_failure = !matches!(inner.on_failure, OnStepFailure::Continue);
        for n in 0..sr.items.len() {
            let busy = sr
                .items
                .iter()
                .filter(|i| matches!(i.status, StepStatus::Running | StepStatus::Waiting))
                .count();
            let failed = sr.items.iter().any(|i| i.status == StepStatus::Failed);
            let item = &mut sr.items[n];
            let may_start =
                item.status == StepStatus::Pending && busy < limit && !(failed && stop_on_failure);
            if item.status == StepStatus::Running || may_start {
                let mut item_ctx = ctx.clone();
                item_ctx.item = item.item.clone();
                let mut it = item.clone();
                Box::pin(self.exec(tx, run, inner, &mut it, &item_ctx)).await?;
                sr.items[n] = it;
            }
        }
        let (done, failed): (usize, usize) = (
            sr.items.iter().filter(|i| i.status.is_done()).count(),
            sr.items
                .iter()
                .filter(|i| i.status == StepStatus::Failed)
                .count(),
        );
        let busy = sr
            .items
            .iter()
            .filter(|i| !i.status.is_done() && i.status != StepStatus::Pending)
            .count();
        let total = sr.items.len();
        sr.output = json!({ "count": total, "done": done, "failed": failed });
        let first_failure = sr
            .items
            .iter()
            .find(|i| i.status == StepStatus::Failed)
            .map(|i| {
                format!(
                    "{}: {}",
                    core::display(i.item.as_ref().unwrap_or(&Value::Null)),
                    i.detail.clone().unwrap_or_default()
                )
            });
        if failed > 0 && stop_on_failure && busy == 0 {
            for i in &mut sr.items {
                if i.status == StepStatus::Pending {
                    i.status = StepStatus::Skipped;
                }
            }
            fail(
                sr,
                now,
                format!(
                    "{failed} of {total} item(s) failed (first: {}); the rest not started",
                    first_failure.unwrap_or_default()
                ),
            );
        } else if done == total {
            succeed(
                sr,
                now,
                if failed > 0 {
                    format!("{total} item(s) done, {failed} failed (continued)")
                } else {
                    format!("{total} item(s) done")
                },
            );
        } else {
            sr.detail = Some(format!(
                "{done} of {total} done, {busy} running{}",
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            ));
        }
        Ok(())
    }

    /// The dry-run plan: every step with its targets resolved against the fleet as it is now,
    /// checks evaluated, nothing changed (the caller drops `tx`).
    pub(super) async fn plan_run(&self, tx: &mut Tx, run: &RunRecord) -> Result<Vec<PlannedStep>> {
        let mut ctx = run.context();
        let mut out = Vec::new();
        for spec in &run.spec.definition.steps {
            let (planned, output) = self.plan_step(tx, run, spec, &ctx).await?;
            if !output.is_null() {
                ctx.steps.insert(spec.name.clone(), output);
            }
            out.push(planned);
        }
        Ok(out)
    }

    async fn plan_step(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        spec: &StepSpec,
        ctx: &Context,
    ) -> Result<(PlannedStep, Value)> {
        let mut p = PlannedStep {
            name: spec.name.clone(),
            kind: spec.kind,
            action: String::new(),
            with: Value::Null,
            holds: None,
            items: Vec::new(),
        };
        let when = match &spec.when {
            Some(w) => match core::render(&json!(w.with), ctx) {
                Ok(with) => {
                    let v = self.condition_safe(tx, &w.condition, &with).await?;
                    (!v.holds).then(|| {
                        format!("skipped now: {} does not hold ({})", w.condition, v.detail)
                    })
                }
                Err(e) => Some(format!("when cannot be resolved yet: {e}")),
            },
            None => None,
        };
        let with = match rendered_with(spec, ctx) {
            Ok(w) => w,
            Err(e) => {
                p.action = format!("cannot be resolved before the run: {e}");
                return Ok((p, Value::Null));
            }
        };
        p.with = with.clone();
        let mut output = Value::Null;
        let arg = |k: &str| with.get(k).map(core::display).unwrap_or_default();
        p.action = match spec.kind {
            StepKind::Check | StepKind::WaitFor if after_effect(run, spec).is_some() => {
                // It checks what an earlier step will have done: nothing to judge before then.
                format!(
                    "{} {} after {}: {}",
                    if spec.kind == StepKind::Check {
                        "check"
                    } else {
                        "wait for"
                    },
                    spec.condition.clone().unwrap_or_default(),
                    after_effect(run, spec).unwrap_or_default(),
                    with.as_object()
                        .map(|m| m
                            .iter()
                            .map(|(k, v)| format!("{k}={}", core::display(v)))
                            .collect::<Vec<_>>()
                            .join(" "))
                        .unwrap_or_default()
                )
            }
            StepKind::Check | StepKind::WaitFor => {
                let cond = spec.condition.clone().unwrap_or_default();
                let v = self.condition_safe(tx, &cond, &with).await?;
                // A wait-for that does not hold yet is what it waits for, not a failure.
                p.holds = (spec.kind == StepKind::Check || v.holds).then_some(v.holds);
                output = v.output;
                if spec.kind == StepKind::Check {
                    format!(
                        "check {cond}: {} now ({})",
                        if v.holds { "holds" } else { "does not hold" },
                        v.detail
                    )
                } else {
                    format!(
                        "wait up to {} until {cond} ({} now: {})",
                        spec.timeout.as_deref().unwrap_or(core::DEFAULT_WAIT),
                        if v.holds { "holds" } else { "does not hold" },
                        v.detail
                    )
                }
            }
            StepKind::Approve => format!(
                "wait for approval by {}: {}",
                roles_text(&spec.roles),
                opt_text(&with, "message")?.unwrap_or_default()
            ),
            StepKind::Move => {
                let req = StartMoveRequest {
                    tenant: parsed(&with, "tenant")?,
                    env: env_of(&with)?,
                    to: text(&with, "to")?,
                    max_write_pause_ms: None,
                    rollback_window_secs: None,
                    dry_run: true,
                };
                match self.plan_move(tx, &req).await {
                    Ok((plan, _)) => {
                        let failing: Vec<String> = plan
                            .checks
                            .iter()
                            .filter(|c| !c.ok)
                            .map(|c| format!("{}: {}", c.check, c.detail))
                            .collect();
                        p.holds = Some(failing.is_empty());
                        output = json!({ "id": "(new)", "tenant": plan.tenant, "env": plan.env, "source": plan.source, "target": plan.target });
                        format!(
                            "move {}/{} from {} to {}{}{}",
                            plan.tenant,
                            plan.env,
                            plan.source,
                            plan.target,
                            if plan.provision {
                                " (a new dedicated cell)"
                            } else {
                                ""
                            },
                            if failing.is_empty() {
                                String::new()
                            } else {
                                format!(" — refused now: {}", failing.join("; "))
                            }
                        )
                    }
                    Err(e) if registry_error(&e) => return Err(e),
                    Err(e) => {
                        p.holds = Some(false);
                        format!("move {}/{} --to {}: {e}", req.tenant, req.env, req.to)
                    }
                }
            }
            StepKind::Drain => {
                let action = opt_text(&with, "action")?.unwrap_or_else(|| "drain".into());
                let cell = parsed(&with, "cell")?;
                let placed = store::placements_on(tx.conn(), &cell).await?;
                let names: Vec<String> = placed
                    .iter()
                    .map(|(p, _)| format!("{}/{}", p.tenant, p.env))
                    .collect();
                output = json!({
                    "cell": cell,
                    "tenants": placed.iter().map(|(p, _)| json!({ "tenant": p.tenant, "env": p.env })).collect::<Vec<_>>(),
                });
                if action == "drain" {
                    format!(
                        "drain cell {cell} ({} tenant environment(s) on it now{})",
                        names.len(),
                        if names.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", names.join(", "))
                        }
                    )
                } else {
                    format!("{action} cell {cell}")
                }
            }
            StepKind::Train => {
                let action = arg("action");
                match action.as_str() {
                    "stop-line" => format!("stop the line ({})", arg("reason")),
                    "resume-line" => "resume the line".into(),
                    _ => {
                        let id = match opt_text(&with, "train")?.filter(|t| t != "latest") {
                            Some(t) => Some(t),
                            None => super::super::trains::latest_train(tx.conn()).await?,
                        };
                        match id {
                            None => {
                                p.holds = Some(false);
                                format!("{action} a train: there is no train")
                            }
                            Some(id) => match super::super::trains::train_cells_in(tx, &id).await {
                                Ok((release, waves)) => {
                                    let only = opt_text(&with, "cell")?;
                                    let cells: Vec<(String, Option<String>)> = waves
                                        .iter()
                                        .flatten()
                                        .filter(|c| {
                                            matches!(c.1, CellStep::Deploying | CellStep::Converged)
                                        })
                                        .filter(|c| {
                                            only.as_deref().is_none_or(|o| c.0.as_str() == o)
                                        })
                                        .map(|c| (c.0.to_string(), c.2.clone()))
                                        .collect();
                                    let to = cells.first().and_then(|c| c.1.clone());
                                    output = json!({ "train": id, "release": release,
                                        "cells": cells.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), "to": to });
                                    if action == "rollback" {
                                        format!(
                                            "roll back train {id} ({release}) on {} to {}",
                                            if cells.is_empty() {
                                                "no cell".into()
                                            } else {
                                                cells
                                                    .iter()
                                                    .map(|c| c.0.as_str())
                                                    .collect::<Vec<_>>()
                                                    .join(", ")
                                            },
                                            to.as_deref().unwrap_or("their last good release")
                                        )
                                    } else {
                                        format!("{action} train {id} ({release})")
                                    }
                                }
                                Err(e) if registry_error(&e) => return Err(e),
                                Err(e) => {
                                    p.holds = Some(false);
                                    format!("{action} train {id}: {e}")
                                }
                            },
                        }
                    }
                }
            }
            StepKind::ReleaseDeploy => {
                let targets = cells(&with, "cells")?;
                let mut dedicated = Vec::new();
                for c in &targets {
                    if store::get_cell(tx.conn(), c)
                        .await?
                        .is_some_and(|r| r.spec.kind == CellKind::Dedicated)
                    {
                        for (pl, _) in store::placements_on(tx.conn(), c).await? {
                            dedicated.push(json!(pl.tenant));
                        }
                    }
                }
                output = json!({ "release": arg("release"), "cells": targets, "dedicatedTenants": dedicated });
                format!(
                    "deploy {} to {} now, outside change windows (reason: {})",
                    arg("release"),
                    targets
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    arg("reason")
                )
            }
            StepKind::Notify => match self.notify_events(tx, run, spec, &with, ctx).await {
                Ok(events) if events.is_empty() => "notify no one (no recipients now)".into(),
                Ok(events) => format!(
                    "emit {} event(s), e.g. to {} — {}: {}",
                    events.len(),
                    events[0].to.join(", "),
                    events[0].title,
                    events[0].message.lines().next().unwrap_or_default()
                ),
                Err(e) if registry_error(&e) => return Err(e),
                Err(e) => format!("notify: {e}"),
            },
            StepKind::ForEach => {
                let items = match spec.items.as_ref().map(|i| core::render(i, ctx)) {
                    Some(Ok(Value::Array(a))) => a,
                    Some(Ok(_)) | None => Vec::new(),
                    Some(Err(e)) => {
                        p.action = format!("items cannot be resolved before the run: {e}");
                        return Ok((p, Value::Null));
                    }
                };
                let limit = concurrency(spec, ctx)?;
                if let Some(inner) = spec.step.as_deref() {
                    for item in &items {
                        let mut item_ctx = ctx.clone();
                        item_ctx.item = Some(item.clone());
                        let (mut planned, _) =
                            Box::pin(self.plan_step(tx, run, inner, &item_ctx)).await?;
                        planned.name = format!("{} ({})", inner.name, core::display(item));
                        p.items.push(planned);
                    }
                }
                format!("for each of {} item(s), up to {limit} at once", items.len())
            }
        };
        if let Some(skip) = when {
            p.action = format!("{skip}; else: {}", p.action);
        }
        Ok((p, output))
    }
}

/// The earlier step with an effect (a move, a drain, …) whose outcome `spec` reads, if any: a
/// dry run cannot judge such a check before that step ran.
fn after_effect(run: &RunRecord, spec: &StepSpec) -> Option<String> {
    let refs = core::references(&json!(spec.with)).unwrap_or_default();
    run.spec.definition.steps.iter().find_map(|s| {
        let effectful = !matches!(
            s.kind,
            StepKind::Check | StepKind::WaitFor | StepKind::Approve | StepKind::Notify
        );
        let read = refs.iter().any(|r| {
            r.strip_prefix("steps.")
                .is_some_and(|r| r.split('.').next() == Some(s.name.as_str()))
        });
        (effectful && read).then(|| s.name.clone())
    })
}

/// A for-each's concurrency, resolved.
fn concurrency(spec: &StepSpec, ctx: &Context) -> Result<usize> {
    let Some(c) = &spec.concurrency else {
        return Ok(1);
    };
    let v = core::render(c, ctx).map_err(Error::Invalid)?;
    let n = match &v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| (1..=core::MAX_CONCURRENCY).contains(n))
    .ok_or_else(|| {
        Error::Invalid(format!(
            "concurrency {v}: a number from 1 to {}",
            core::MAX_CONCURRENCY
        ))
    })?;
    Ok(usize::try_from(n).unwrap_or(1))
}

/// Marks every step after the current one skipped (the run ends).
fn skip_rest(state: &mut RunState, now: DateTime<Utc>) {
    for s in state.steps.iter_mut().skip(state.current + 1) {
        if s.status == StepStatus::Pending {
            s.status = StepStatus::Skipped;
            s.finished_at = Some(now);
        }
    }
}
