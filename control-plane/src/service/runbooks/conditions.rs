//! The conditions `check`, `wait-for` and `when` evaluate (their list and meaning is
//! `runbooks::CONDITIONS`). Each reads the registry in the step's transaction and answers with a
//! verdict, one line saying why, and sometimes an output later steps read.

use cellfleet_api::{
    CellKind, CellName, CellState, Env, MovePhase, RouteState, StartMoveRequest, TenantId,
    TenantState, WorkloadState,
};
use serde_json::{Value, json};

use super::super::{Error, Registry, Result};
use crate::store::{self, Tx};

/// A condition's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub holds: bool,
    pub detail: String,
    pub output: Value,
}

fn verdict(holds: bool, detail: impl Into<String>) -> Verdict {
    Verdict {
        holds,
        detail: detail.into(),
        output: Value::Null,
    }
}

/// A string argument (an error names it when missing or not a string).
pub(super) fn text(with: &Value, key: &str) -> Result<String> {
    match with.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::Null) | None => Err(Error::Invalid(format!("argument {key} is missing"))),
        Some(other) => Err(Error::Invalid(format!(
            "argument {key}: expected text, got {other}"
        ))),
    }
}

/// An optional string argument (null and "" are absent).
pub(super) fn opt_text(with: &Value, key: &str) -> Result<Option<String>> {
    match with.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(_) => text(with, key).map(Some),
    }
}

pub(super) fn parsed<T: std::str::FromStr>(with: &Value, key: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let t = text(with, key)?;
    t.parse()
        .map_err(|e: T::Err| Error::Invalid(format!("argument {key}: {t:?}: {e}")))
}

pub(super) fn env_of(with: &Value) -> Result<Env> {
    match opt_text(with, "env")? {
        Some(_) => parsed(with, "env"),
        None => Ok(Env::prod()),
    }
}

/// A list argument: a list, or one value (a tenant environment `{tenant, env}` stays whole).
pub(super) fn list(with: &Value, key: &str) -> Result<Vec<Value>> {
    match with.get(key) {
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(Value::Null) | None => Err(Error::Invalid(format!("argument {key} is missing"))),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| json!(s))
            .collect()),
        Some(other) => Ok(vec![other.clone()]),
    }
}

/// The move a step's arguments ask for (`tenant`, `env`, `to`, `maxWritePause`,
/// `rollbackWindow`).
pub(super) fn move_request(with: &Value, dry_run: bool) -> Result<StartMoveRequest> {
    let secs = |key: &str| -> Result<Option<u64>> {
        opt_text(with, key)?
            .map(|t| {
                crate::trains::seconds(&t)
                    .map_err(|e| Error::Invalid(format!("argument {key}: {e}")))
            })
            .transpose()
    };
    Ok(StartMoveRequest {
        tenant: parsed(with, "tenant")?,
        env: env_of(with)?,
        to: text(with, "to")?,
        max_write_pause_ms: secs("maxWritePause")?.map(|s| s * 1_000),
        rollback_window_secs: secs("rollbackWindow")?,
        dry_run,
    })
}

/// The tenants placed on the dedicated cells among `cells` (who an expedited deploy affects).
pub(super) async fn dedicated_tenants(tx: &mut Tx, cells: &[CellName]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for c in cells {
        if store::get_cell(tx.conn(), c)
            .await?
            .is_some_and(|r| r.spec.kind == CellKind::Dedicated)
        {
            for (p, _) in store::placements_on(tx.conn(), c).await? {
                out.push(json!(p.tenant));
            }
        }
    }
    Ok(out)
}

pub(super) fn cells(with: &Value, key: &str) -> Result<Vec<CellName>> {
    list(with, key)?
        .iter()
        .map(|v| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Object(m) => m
                    .get("cell")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                other => other.to_string(),
            };
            s.parse::<CellName>()
                .map_err(|e| Error::Invalid(format!("argument {key}: {s:?}: {e}")))
        })
        .collect()
}

impl Registry {
    /// Evaluates condition `name` with its rendered arguments.
    pub(super) async fn condition(&self, tx: &mut Tx, name: &str, with: &Value) -> Result<Verdict> {
        Ok(match name {
            "tenant-active" => {
                let t: TenantId = parsed(with, "tenant")?;
                match store::get_tenant(tx.conn(), &t).await? {
                    Some(row) => verdict(
                        row.state == TenantState::Active,
                        format!("tenant {t} is {}", row.state),
                    ),
                    None => verdict(false, format!("no tenant {t}")),
                }
            }
            "residency-allows" | "target-healthy" | "target-has-room" | "target-dedicated" => {
                let req = move_request(with, true)?;
                let plan = match self.plan_move(tx, &req).await {
                    Ok((plan, _)) => plan,
                    Err(e @ (Error::Store(_) | Error::Busy(_))) => return Err(e),
                    Err(e) => return Ok(verdict(false, e.to_string())),
                };
                let check = |c: &str| plan.checks.iter().find(|x| x.check == c).cloned();
                let mut v = match name {
                    "residency-allows" => match check("residency") {
                        Some(c) => verdict(c.ok, c.detail),
                        None => verdict(false, "the plan has no residency check"),
                    },
                    "target-has-room" => match (check("room"), check("dedicated")) {
                        (_, Some(d)) => verdict(false, d.detail),
                        (Some(c), None) => verdict(c.ok, c.detail),
                        (None, None) => verdict(false, "the plan has no room check"),
                    },
                    "target-dedicated" => match store::get_cell(tx.conn(), &plan.target).await? {
                        Some(c) => verdict(
                            c.spec.kind == CellKind::Dedicated,
                            format!("{} is {}", c.name, c.spec.kind),
                        ),
                        // Not registered yet: a dedicated cell the move would provision.
                        None => verdict(
                            plan.provision,
                            format!("{} is a new dedicated cell", plan.target),
                        ),
                    },
                    _ => {
                        if plan.provision {
                            verdict(
                                true,
                                format!("{} is new: made for this tenant", plan.target),
                            )
                        } else {
                            self.cell_healthy(tx, &plan.target).await?
                        }
                    }
                };
                v.output =
                    json!({ "target": plan.target, "source": plan.source, "region": plan.region });
                v
            }
            "cell-healthy" => {
                let c: CellName = parsed(with, "cell")?;
                self.cell_healthy(tx, &c).await?
            }
            "cells-healthy" => {
                let mut bad = Vec::new();
                let cells = cells(with, "cells")?;
                for c in &cells {
                    let v = self.cell_healthy(tx, c).await?;
                    if !v.holds {
                        bad.push(v.detail);
                    }
                }
                if bad.is_empty() {
                    verdict(true, format!("{} cell(s) healthy", cells.len()))
                } else {
                    verdict(false, bad.join("; "))
                }
            }
            "cell-pooled" => {
                let c: CellName = parsed(with, "cell")?;
                match store::get_cell(tx.conn(), &c).await? {
                    Some(row) => verdict(
                        row.spec.kind == CellKind::Pooled,
                        format!("{c} is a {} cell", row.spec.kind),
                    ),
                    None => verdict(false, format!("no cell {c}")),
                }
            }
            "cell-empty" => {
                let c: CellName = parsed(with, "cell")?;
                let placed = store::placements_on(tx.conn(), &c).await?;
                let moves = super::super::moves::OpenMoves::load(tx.conn()).await?;
                if !placed.is_empty() {
                    verdict(
                        false,
                        format!("{c} still holds {} tenant environment(s)", placed.len()),
                    )
                } else if moves.touches(&c) {
                    verdict(false, format!("a move still goes through {c}"))
                } else {
                    verdict(true, format!("{c} holds no tenant and no move"))
                }
            }
            "no-train-on" => {
                let in_play = super::super::trains::cells_in_play(tx.conn()).await?;
                let busy: Vec<String> = cells(with, "cells")?
                    .iter()
                    .filter_map(|c| {
                        in_play
                            .get(c)
                            .map(|t| format!("train {t} is about to change {c}"))
                    })
                    .collect();
                if busy.is_empty() {
                    verdict(true, "no open train is about to change them")
                } else {
                    verdict(false, busy.join("; "))
                }
            }
            "no-move-on" => {
                let moves = super::super::moves::OpenMoves::load(tx.conn()).await?;
                let busy: Vec<String> = cells(with, "cells")?
                    .iter()
                    .filter(|c| moves.touches(c))
                    .map(|c| format!("a tenant move goes through {c}"))
                    .collect();
                if busy.is_empty() {
                    verdict(true, "no tenant move goes through them")
                } else {
                    verdict(false, busy.join("; "))
                }
            }
            "route-points-at" => {
                let t: TenantId = parsed(with, "tenant")?;
                let env = env_of(with)?;
                let c: CellName = parsed(with, "cell")?;
                match store::get_route(tx.conn(), &t, &env).await? {
                    Some(r) => verdict(
                        r.cell == c && r.state == RouteState::Active,
                        format!(
                            "{t}/{env} routes to {} ({:?}, generation {})",
                            r.cell, r.state, r.generation
                        ),
                    ),
                    None => verdict(false, format!("{t}/{env} has no route")),
                }
            }
            "tenant-healthy" => self.tenant_healthy(tx, with).await?,
            "rows-match" => self.rows_match(tx, &text(with, "move")?).await?,
            "cells-run" => {
                let want = opt_text(with, "release")?;
                let mut behind = Vec::new();
                let cells = cells(with, "cells")?;
                for c in &cells {
                    let desired = store::get_cell(tx.conn(), c)
                        .await?
                        .and_then(|r| r.desired_release);
                    let want = want.clone().or(desired);
                    let runs = store::get_report(tx.conn(), c).await?.and_then(|r| {
                        r.report
                            .workload
                            .filter(|w| w.state == WorkloadState::Running)
                            .and(r.report.release)
                    });
                    if want.is_none() || runs != want {
                        behind.push(format!(
                            "{c} runs {} (wants {})",
                            runs.as_deref().unwrap_or("nothing"),
                            want.as_deref().unwrap_or("nothing")
                        ));
                    }
                }
                if behind.is_empty() {
                    verdict(
                        true,
                        format!(
                            "{} cell(s) run {}",
                            cells.len(),
                            want.as_deref().unwrap_or("their release")
                        ),
                    )
                } else {
                    verdict(false, behind.join("; "))
                }
            }
            "release-exists" => {
                let r = text(with, "release")?;
                let found = store::get_release(tx.conn(), &r).await?.is_some();
                verdict(
                    found,
                    if found {
                        format!("release {r} is registered")
                    } else {
                        format!("no release {r}")
                    },
                )
            }
            "tenants-of" => {
                let mut tenants: Vec<String> = Vec::new();
                let mut missing = Vec::new();
                let cells = cells(with, "cells")?;
                for c in &cells {
                    if store::get_cell(tx.conn(), c).await?.is_none() {
                        missing.push(c.to_string());
                        continue;
                    }
                    for (p, _) in store::placements_on(tx.conn(), c).await? {
                        if !tenants.contains(&p.tenant.to_string()) {
                            tenants.push(p.tenant.to_string());
                        }
                    }
                }
                Verdict {
                    holds: missing.is_empty(),
                    detail: if missing.is_empty() {
                        format!("{} tenant(s) on {} cell(s)", tenants.len(), cells.len())
                    } else {
                        format!("no cell {}", missing.join(", "))
                    },
                    output: json!({ "tenants": tenants }),
                }
            }
            "line-stopped" => {
                let stopped = store::fleet_value(tx.conn(), store::LINE).await?.is_some();
                verdict(
                    stopped,
                    if stopped {
                        "the line is stopped"
                    } else {
                        "the line runs"
                    },
                )
            }
            "equals" | "not-equals" => {
                let (a, b) = (
                    with.get("a").cloned().unwrap_or_default(),
                    with.get("b").cloned().unwrap_or_default(),
                );
                let same = crate::runbooks::display(&a) == crate::runbooks::display(&b);
                let holds = same == (name == "equals");
                verdict(
                    holds,
                    format!(
                        "{:?} {} {:?}",
                        crate::runbooks::display(&a),
                        if same { "=" } else { "≠" },
                        crate::runbooks::display(&b)
                    ),
                )
            }
            "not-empty" => {
                let items = list(with, "list")?;
                verdict(!items.is_empty(), format!("{} item(s)", items.len()))
            }
            other => return Err(Error::Invalid(format!("unknown condition {other:?}"))),
        })
    }

    /// A cell is healthy when it is ready or draining, its agent reported the current desired
    /// state without errors, and its workload runs.
    pub(super) async fn cell_healthy(&self, tx: &mut Tx, cell: &CellName) -> Result<Verdict> {
        let Some(row) = store::get_cell(tx.conn(), cell).await? else {
            return Ok(verdict(false, format!("no cell {cell}")));
        };
        if !matches!(row.state, CellState::Ready | CellState::Draining) {
            return Ok(verdict(false, format!("{cell} is {}", row.state)));
        }
        let Some(r) = store::get_report(tx.conn(), cell).await? else {
            return Ok(verdict(false, format!("{cell}'s agent has not reported")));
        };
        let r = r.report;
        Ok(if r.observed_generation < row.desired_generation {
            verdict(
                false,
                format!(
                    "{cell}'s agent is at generation {} of {}",
                    r.observed_generation, row.desired_generation
                ),
            )
        } else if let Some(e) = r.errors.first() {
            verdict(false, format!("{cell} reports: {e}"))
        } else if r.workload.as_ref().map(|w| w.state) != Some(WorkloadState::Running) {
            verdict(
                false,
                format!(
                    "{cell}'s workload is {}",
                    r.workload
                        .map(|w| format!("{:?}", w.state).to_lowercase())
                        .unwrap_or_else(|| "not reported".into())
                ),
            )
        } else {
            verdict(true, format!("{cell} is healthy"))
        })
    }

    /// The tenant's cell is healthy and its requests there since the process started failed at
    /// most `maxErrorRate` (default 1 %).
    async fn tenant_healthy(&self, tx: &mut Tx, with: &Value) -> Result<Verdict> {
        let t: TenantId = parsed(with, "tenant")?;
        let env = env_of(with)?;
        let max_rate = match opt_text(with, "maxErrorRate")? {
            Some(s) => s
                .parse::<f64>()
                .map_err(|e| Error::Invalid(format!("argument maxErrorRate: {s:?}: {e}")))?,
            None => 0.01,
        };
        let Some(route) = store::get_route(tx.conn(), &t, &env).await? else {
            return Ok(verdict(false, format!("{t}/{env} has no route")));
        };
        let cell = route.cell;
        if let Some(want) = opt_text(with, "cell")?
            && want != cell.as_str()
        {
            return Ok(verdict(
                false,
                format!("{t}/{env} routes to {cell}, not {want}"),
            ));
        }
        let health = self.cell_healthy(tx, &cell).await?;
        if !health.holds {
            return Ok(health);
        }
        let Some(report) = store::get_report(tx.conn(), &cell).await? else {
            return Ok(verdict(false, format!("{cell} has not reported")));
        };
        let key = t.as_str();
        let rows = report.report.tenant_rows.get(key).copied();
        let (requests, errors) = report
            .report
            .release_health
            .as_ref()
            .and_then(|h| h.tenants.get(key).copied())
            .unwrap_or((0, 0));
        #[allow(clippy::cast_precision_loss)]
        let rate = if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        };
        // A tenant without rows is not in the count at all: rows are shown, not required.
        Ok(if rate > max_rate {
            verdict(
                false,
                format!(
                    "{t} on {cell}: {errors} of {requests} requests failed ({:.1} %)",
                    rate * 100.0
                ),
            )
        } else {
            verdict(
                true,
                format!(
                    "{t} on {cell}: {} rows, {requests} requests, {errors} failed",
                    rows.unwrap_or_default()
                ),
            )
        })
    }

    /// The move verified the tenant's rows (counts and checksums per table) under the fence
    /// before it flipped the route, and the target reports holding them.
    async fn rows_match(&self, tx: &mut Tx, id: &str) -> Result<Verdict> {
        let Some(op) = store::get_operation(tx.conn(), id).await? else {
            return Ok(verdict(false, format!("no move {id}")));
        };
        let m = super::super::moves::MoveRecord::decode(&op)?;
        if !crate::moves::placed_on_target(m.phase, &m.state) && m.phase != MovePhase::Done {
            return Ok(verdict(
                false,
                format!("move {id} has not cut over ({})", m.phase),
            ));
        }
        let last = m.state.cutovers.last().map(|c| c.outcome.clone());
        let target_rows = store::get_report(tx.conn(), &m.spec.target)
            .await?
            .and_then(|r| r.report.tenant_rows.get(m.spec.tenant.as_str()).copied());
        // A cut-over flips only after both agents compared every table's row count and checksum
        // under the fence ("flipped"); anything else left the route on the source.
        Ok(match last.as_deref() {
            Some("flipped") => verdict(
                true,
                format!(
                    "move {id} verified row counts and checksums per table under the fence; {} reports {} rows of {}",
                    m.spec.target,
                    target_rows.unwrap_or_default(),
                    m.spec.tenant
                ),
            ),
            other => verdict(
                false,
                format!("move {id}'s last cut-over: {}", other.unwrap_or("none")),
            ),
        })
    }
}
