//! Running steps: the run's next transition (start the current step, look at it, end it, go
//! on); each kind's effect is in `effects.rs`, the dry-run plan in `plan.rs`. Effects happen inside the step's
//! transaction behind a savepoint, so a refused effect (a move whose checks fail, a cell not in
//! a state to drain) fails its step alone and leaves nothing half-done; a started operation's id
//! is stored with the step, so a resumed run follows it rather than starting it again.

use cellfleet_api::{MovePhase, OnStepFailure, RunPhase, StepKind, StepRun, StepSpec, StepStatus};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::conditions::{Verdict, opt_text};
use super::{RunRecord, RunState, pending, roles_text};
use crate::runbooks::{self as core, Context};
use crate::service::{Error, Registry, Result};
use crate::store::{self, Tx};

type Events = Vec<(String, Value)>;

/// Whether an error is the registry's (stop the pass) rather than the step's (fail the step).
pub(super) fn registry_error(e: &Error) -> bool {
    matches!(e, Error::Store(_) | Error::Busy(_))
}

pub(super) fn fail(sr: &mut StepRun, now: DateTime<Utc>, why: impl Into<String>) {
    sr.status = StepStatus::Failed;
    sr.detail = Some(why.into());
    sr.finished_at = Some(now);
}

pub(super) fn succeed(sr: &mut StepRun, now: DateTime<Utc>, detail: impl Into<String>) {
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
pub(super) fn rendered_with(spec: &StepSpec, ctx: &Context) -> std::result::Result<Value, String> {
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
                    // An argument the step cannot use (a concurrency that is no number, say)
                    // fails the step; only the registry's own errors end the pass.
                    Ok(with) => match self.begin_step(tx, run, spec, sr, &with, ctx).await {
                        Err(e) if registry_error(&e) => return Err(e),
                        Err(e) => fail(sr, now, e.to_string()),
                        Ok(()) => {}
                    },
                    Err(e) => fail(sr, now, e),
                }
                Ok(true)
            }
            StepStatus::Running => match rendered_with(spec, ctx) {
                Ok(with) => match self.poll_step(tx, run, spec, sr, &with, ctx).await {
                    Err(e) if !registry_error(&e) => {
                        fail(sr, now, e.to_string());
                        Ok(true)
                    }
                    other => other,
                },
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
}

/// A for-each's concurrency, resolved.
pub(super) fn concurrency(spec: &StepSpec, ctx: &Context) -> Result<usize> {
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
