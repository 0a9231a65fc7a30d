//! Runbook runs, the service part: the catalog as the API shows it, starting a run (roles,
//! parameters, its lock, or a dry run that plans every step and changes nothing), operators'
//! `approve` and `abort`, and the driver's step. A run is an operation row (`kind = runbook`)
//! like a move or a train: `service::operations` drives it, and every step transition — its
//! effect (a move started, a cell drained, an event emitted) together with the step's new
//! status — is one compare-and-swap transaction, audited with the actor who started the run. A
//! restarted control plane resumes at the step the row says, following the operation a step
//! started instead of starting another.

use std::collections::BTreeMap;

use cellfleet_api::{
    Role, RunPhase, RunStarted, RunView, RunbookSummary, RunbookView, StartRunRequest, StepKind,
    StepRun, StepSpec, StepStatus,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Error, Registry, Result, not_found};
use crate::runbooks::{self as core, Context, KIND, Runbook};
use crate::store::{self, Caller, OperationRow, OperationUpdate};

mod conditions;
mod effects;
mod plan;
mod steps;

/// What was asked (immutable): the runbook as it was when the run started, so a changed file
/// never changes a run in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunSpec {
    pub runbook: String,
    pub source: String,
    pub definition: cellfleet_api::RunbookSpec,
    pub params: BTreeMap<String, Value>,
    pub started_by: String,
    pub role: Role,
}

/// Where the run is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RunState {
    pub current: usize,
    pub steps: Vec<StepRun>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct RunRecord {
    pub id: String,
    pub phase: RunPhase,
    pub version: i64,
    pub spec: RunSpec,
    pub state: RunState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RunRecord {
    fn decode(op: &OperationRow) -> Result<RunRecord> {
        let bad = |what: &str, why: String| {
            Error::Store(store::corrupt(format!("runbook run {} {what}", op.id), why))
        };
        Ok(RunRecord {
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

    fn view(&self) -> RunView {
        RunView {
            id: self.id.clone(),
            runbook: self.spec.runbook.clone(),
            phase: self.phase,
            params: self.spec.params.clone(),
            steps: self.state.steps.clone(),
            current: self.state.current,
            started_by: self.spec.started_by.clone(),
            note: self.state.note.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        }
    }

    /// What `${…}` resolves against: parameters, succeeded steps' outputs, the run.
    fn context(&self) -> Context {
        let mut ctx = Context {
            params: self
                .spec
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            run_id: self.id.clone(),
            run_by: self.spec.started_by.clone(),
            ..Default::default()
        };
        for s in &self.state.steps {
            if !s.output.is_null() {
                ctx.steps.insert(s.name.clone(), s.output.clone());
            }
        }
        ctx
    }
}

/// A fresh step record for `spec`.
fn pending(spec: &StepSpec) -> StepRun {
    StepRun {
        name: spec.name.clone(),
        kind: Some(spec.kind),
        ..Default::default()
    }
}

fn run_id() -> String {
    let mut bytes = [0u8; 6];
    rand::fill(&mut bytes);
    format!("rb_{}", hex::encode(bytes))
}

/// Every step, nested ones and compensations included, with its path.
fn all_steps(steps: &[StepSpec]) -> Vec<&StepSpec> {
    let mut out = Vec::new();
    for s in steps {
        out.push(s);
        if let Some(inner) = &s.step {
            out.push(inner);
        }
        if let cellfleet_api::OnStepFailure::Run(c) = &s.on_failure {
            out.push(c);
        }
    }
    out
}

impl Registry {
    fn catalog(&self) -> Vec<core::Entry> {
        core::catalog(&self.settings.runbook_dirs)
    }

    /// The runbook `name`, or why it cannot be used.
    fn runbook(&self, name: &str) -> Result<Runbook> {
        let entry = self
            .catalog()
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::NotFound {
                kind: "runbook",
                name: format!(
                    "{name} (known: {})",
                    self.catalog()
                        .iter()
                        .map(|e| e.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        entry.runbook.map_err(Error::Invalid)
    }

    pub fn runbooks(&self) -> Vec<RunbookSummary> {
        self.catalog()
            .into_iter()
            .map(|e| match e.runbook {
                Ok(r) => RunbookSummary {
                    name: r.name,
                    description: r.spec.description,
                    roles: r.spec.roles,
                    source: r.source,
                    error: None,
                },
                Err(why) => RunbookSummary {
                    name: e.name,
                    description: String::new(),
                    roles: Vec::new(),
                    source: e.source,
                    error: Some(why),
                },
            })
            .collect()
    }

    pub fn runbook_view(&self, name: &str) -> Result<RunbookView> {
        let r = self.runbook(name)?;
        Ok(RunbookView {
            name: r.name,
            source: r.source,
            spec: r.spec,
            page: r.page,
        })
    }

    /// Starts a run of `name` (or, with `dryRun`, plans it): the caller's role must be one the
    /// runbook (and each of its steps) allows; parameters are typed and complete; nothing is
    /// started when anything is wrong.
    pub async fn start_run(
        &self,
        caller: &Caller,
        role: Role,
        name: &str,
        req: &StartRunRequest,
    ) -> Result<RunStarted> {
        let rb = self.runbook(name)?;
        if !rb.spec.roles.contains(&role) {
            return Err(Error::Forbidden(format!(
                "runbook {name} may be run by {}; this token is {role}",
                roles_text(&rb.spec.roles)
            )));
        }
        for s in all_steps(&rb.spec.steps) {
            if s.kind != StepKind::Approve && !s.roles.is_empty() && !s.roles.contains(&role) {
                return Err(Error::Forbidden(format!(
                    "step {} ({}) of runbook {name} may be run by {}; this token is {role}",
                    s.name,
                    s.kind,
                    roles_text(&s.roles)
                )));
            }
        }
        let params = core::resolve_params(&rb.spec, &req.params).map_err(Error::Invalid)?;
        let id = run_id();
        let spec = RunSpec {
            runbook: rb.name.clone(),
            source: rb.source.clone(),
            definition: rb.spec.clone(),
            params: params.clone(),
            started_by: caller.actor.clone(),
            role,
        };
        let record = RunRecord {
            id: id.clone(),
            phase: RunPhase::Running,
            version: 0,
            state: RunState {
                current: 0,
                steps: rb.spec.steps.iter().map(pending).collect(),
                note: None,
            },
            spec,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
        };
        let lock = match &rb.spec.lock {
            Some(l) => Some(core::display(
                &core::render(&json!(l), &record.context())
                    .map_err(|e| Error::Invalid(format!("lock: {e}")))?,
            )),
            None => None,
        };
        // Plans in a transaction that is never committed: a dry run changes nothing.
        let mut tx = self.store.begin(caller).await?;
        let plan = self.plan_run(&mut tx, &record).await?;
        if req.dry_run {
            return Ok(RunStarted {
                runbook: rb.name,
                params,
                plan,
                run: None,
            });
        }
        let subject = match &lock {
            Some(l) => format!("runbook:{l}"),
            None => format!("runbook-run/{id}"),
        };
        let holder = store::open_operation_of(tx.conn(), &subject)
            .await?
            .map(|o| o.id);
        super::operations::insert_new(
            &mut tx,
            super::operations::NewOperation {
                id: &id,
                kind: KIND,
                subject: &subject,
                phase: RunPhase::Running.as_str(),
                spec: store::canonical(&record.spec),
                state: store::canonical(&record.state),
                reserves: None,
            },
            || {
                format!(
                    "runbook run {} already holds {}: one run at a time (see `cellfleet runbook status {}`)",
                    holder.clone().unwrap_or_default(),
                    lock.clone().unwrap_or_default(),
                    holder.clone().unwrap_or_default()
                )
            },
        )
        .await?;
        tx.audit(
            "runbook.run",
            &format!("runbook-run/{id}"),
            json!({ "runbook": rb.name, "source": rb.source, "params": params, "lock": lock }),
        );
        self.commit(tx).await?;
        self.operations_changed();
        Ok(RunStarted {
            runbook: rb.name,
            params,
            plan,
            run: Some(self.get_run(&id).await?),
        })
    }

    pub async fn get_run(&self, id: &str) -> Result<RunView> {
        let mut conn = self.store.read().await?;
        let op = store::get_operation(&mut conn, id)
            .await?
            .filter(|o| o.kind == KIND)
            .ok_or_else(|| not_found("runbook run", id))?;
        Ok(RunRecord::decode(&op)?.view())
    }

    pub async fn runs(&self, open: bool) -> Result<Vec<RunView>> {
        let mut conn = self.store.read().await?;
        store::list_operations(&mut conn, KIND, open, 200)
            .await?
            .iter()
            .map(|op| RunRecord::decode(op).map(|r| r.view()))
            .collect()
    }

    /// Events emitted (by notify steps), newest first.
    pub async fn events(
        &self,
        run: Option<&str>,
        limit: i64,
    ) -> Result<Vec<cellfleet_api::EventView>> {
        let mut conn = self.store.read().await?;
        Ok(store::list_events(&mut conn, run, limit).await?)
    }

    /// `runbook approve`: the waiting `approve` step succeeds, by a role it names.
    pub async fn approve_run(&self, caller: &Caller, role: Role, id: &str) -> Result<RunView> {
        let mut tx = self.store.begin(caller).await?;
        let run = load(&mut tx, id).await?;
        if run.phase != RunPhase::AwaitingApproval {
            return Err(Error::Conflict(format!(
                "runbook run {id} is {}: nothing waits for approval",
                run.phase
            )));
        }
        let i = run.state.current;
        let spec = run
            .spec
            .definition
            .steps
            .get(i)
            .ok_or_else(|| Error::Conflict(format!("runbook run {id} has no step {i}")))?;
        if !spec.roles.contains(&role) {
            return Err(Error::Forbidden(format!(
                "step {} of run {id} may be approved by {}; this token is {role}",
                spec.name,
                roles_text(&spec.roles)
            )));
        }
        let mut state = run.state.clone();
        let now = tx.now;
        let actor = tx.caller.actor.clone();
        if let Some(s) = state.steps.get_mut(i) {
            s.status = StepStatus::Succeeded;
            s.approved_by = Some(actor.clone());
            s.finished_at = Some(now);
            s.detail = Some(format!("approved by {actor}"));
        }
        state.current += 1;
        cas(&mut tx, &run, RunPhase::Running, &state).await?;
        tx.audit(
            "runbook.approve",
            &format!("runbook-run/{id}"),
            json!({ "step": spec.name, "runbook": run.spec.runbook }),
        );
        self.commit(tx).await?;
        self.operations_changed();
        self.get_run(id).await
    }

    /// `runbook abort`: the run stops where it is. An operation a step started (a move) is
    /// not stopped with it: the note names it.
    pub async fn abort_run(
        &self,
        caller: &Caller,
        role: Role,
        id: &str,
        reason: Option<String>,
    ) -> Result<RunView> {
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(Error::Invalid("reason: at most 500 characters".into()));
        }
        let mut tx = self.store.begin(caller).await?;
        let run = load(&mut tx, id).await?;
        if !run.spec.definition.roles.contains(&role) {
            return Err(Error::Forbidden(format!(
                "runbook {} may be run (and aborted) by {}; this token is {role}",
                run.spec.runbook,
                roles_text(&run.spec.definition.roles)
            )));
        }
        if run.phase.is_terminal() {
            return Err(Error::Conflict(format!(
                "runbook run {id} is {}: cannot abort it",
                run.phase
            )));
        }
        let mut state = run.state.clone();
        let now = tx.now;
        let mut going_on = Vec::new();
        let stop = |item: &mut StepRun, going_on: &mut Vec<String>| match item.status {
            StepStatus::Running | StepStatus::Waiting => {
                if let Some(op) = &item.operation {
                    going_on.push(op.clone());
                }
                item.status = StepStatus::Failed;
                item.detail = Some("aborted".into());
                item.finished_at = Some(now);
            }
            StepStatus::Pending => item.status = StepStatus::Skipped,
            _ => {}
        };
        for s in &mut state.steps {
            for item in &mut s.items {
                stop(item, &mut going_on);
            }
            stop(s, &mut going_on);
        }
        let actor = tx.caller.actor.clone();
        state.note = Some(format!(
            "aborted by {actor}{}{}",
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            if going_on.is_empty() {
                String::new()
            } else {
                format!(
                    "; still going on by itself: {} (stop with `cellfleet move abort`)",
                    going_on.join(", ")
                )
            }
        ));
        cas(&mut tx, &run, RunPhase::Aborted, &state).await?;
        tx.audit(
            "runbook.abort",
            &format!("runbook-run/{id}"),
            json!({ "reason": reason, "runbook": run.spec.runbook, "stillRunning": going_on }),
        );
        self.commit(tx).await?;
        self.operations_changed();
        self.get_run(id).await
    }

    /// One step of a run (the driver calls it): the current step starts, is looked at, or
    /// ends, in one transaction with its effect; `true` when something changed.
    pub(super) async fn step_runbook(&self, op: &OperationRow) -> Result<bool> {
        let run = RunRecord::decode(op)?;
        if run.phase != RunPhase::Running {
            return Ok(false);
        }
        let caller = Caller {
            actor: run.spec.started_by.clone(),
            correlation_id: run.id.clone(),
        };
        let mut tx = self.store.begin(&caller).await?;
        let mut state = run.state.clone();
        let Some((phase, events)) = self.advance(&mut tx, &run, &mut state).await? else {
            return Ok(false);
        };
        // Where a crash test may kill the control plane once this transition is committed:
        // `cp:runbook:STEP:STATUS`, and `cp:runbook:STEP:item-STATUS` when an item moved on.
        let mut failpoints = Vec::new();
        if let Some(step) = state.steps.get(run.state.current) {
            let before = run.state.steps.get(run.state.current);
            if before.map(|b| b.status) != Some(step.status) {
                failpoints.push(format!(
                    "cp:runbook:{}:{}",
                    step.name,
                    status_name(step.status)
                ));
            }
            for (i, item) in step.items.iter().enumerate() {
                if before.and_then(|b| b.items.get(i)).map(|b| b.status) != Some(item.status) {
                    failpoints.push(format!(
                        "cp:runbook:{}:item-{}",
                        step.name,
                        status_name(item.status)
                    ));
                }
            }
        }
        cas(&mut tx, &run, phase, &state).await?;
        for (action, payload) in events {
            tx.audit(&action, &format!("runbook-run/{}", run.id), payload);
        }
        if phase != run.phase {
            tx.audit(
                "runbook.phase",
                &format!("runbook-run/{}", run.id),
                json!({ "from": run.phase, "to": phase, "note": state.note }),
            );
        }
        self.commit(tx).await?;
        tracing::info!(run = %run.id, runbook = %run.spec.runbook, step = state.current, phase = %phase, "runbook step");
        for f in failpoints {
            cellfleet_api::failpoints::hit(&f);
        }
        Ok(true)
    }
}

fn status_name(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Waiting => "waiting",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
    }
}

fn roles_text(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn load(tx: &mut store::Tx, id: &str) -> Result<RunRecord> {
    let op = store::get_operation(tx.conn(), id)
        .await?
        .filter(|o| o.kind == KIND)
        .ok_or_else(|| not_found("runbook run", id))?;
    RunRecord::decode(&op)
}

/// Moves the run's row on from the version it was read at (lost: someone else moved it first).
async fn cas(tx: &mut store::Tx, run: &RunRecord, phase: RunPhase, state: &RunState) -> Result<()> {
    let now = tx.now;
    let moved = store::cas_operation(
        tx.conn(),
        &run.id,
        run.version,
        &OperationUpdate {
            phase: phase.as_str(),
            state: &store::canonical(state),
            reserves: None,
            finished: phase.is_terminal(),
        },
        now,
    )
    .await?;
    if moved {
        Ok(())
    } else {
        Err(Error::Busy(format!(
            "runbook run {} changed meanwhile; try again",
            run.id
        )))
    }
}
