//! The dry-run plan: every step with its targets resolved against the fleet as it is now (the
//! tenants a drain would move and where each would go, checks' verdicts), in a transaction the
//! caller drops — nothing is changed.

use cellfleet_api::{CellStep, PlannedStep, StepKind, StepSpec};
use serde_json::{Value, json};

use super::conditions::{cells, dedicated_tenants, move_request, opt_text, parsed};
use super::steps::{concurrency, registry_error, rendered_with};
use super::{RunRecord, roles_text};
use crate::runbooks::{self as core, Context};
use crate::service::{Registry, Result};
use crate::store::{self, Tx};

impl Registry {
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
                let req = move_request(&with, true)?;
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
                let dedicated = dedicated_tenants(tx, &targets).await?;
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
