//! What each step kind does to the fleet, inside the step's transaction: start a move, change
//! a cell's lifecycle, command a train or the line, assign a release on the expedited lane, emit
//! events. `steps.rs` runs these behind a savepoint.

use cellfleet_api::{CellStep, RollbackTrainRequest, StepKind, StepRun, StepSpec, StepStatus};
use serde_json::{Value, json};

use super::RunRecord;
use super::conditions::{cells, dedicated_tenants, list, move_request, opt_text, parsed, text};
use super::steps::succeed;
use crate::runbooks::{self as core, Context};
use crate::service::cells::{CellAction, cell_lifecycle_in};
use crate::service::trains::TrainCommand;
use crate::service::{Error, Registry, Result};
use crate::store::{self, Tx};

impl Registry {
    /// A step's effect on the registry, in `tx`.
    pub(super) async fn effect(
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
                let req = move_request(with, false)?;
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
                let dedicated = dedicated_tenants(tx, &targets).await?;
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
    pub(super) async fn notify_events(
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
}
