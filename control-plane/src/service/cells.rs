//! Cell lifecycle (SPEC §2): `ready → draining → retired`, and back from draining to ready.
//! A draining cell takes no new placements (placement only picks `ready` cells) and, by the
//! train policy, is skipped or included by trains; a cell is retired only when nothing is placed
//! on it and no move goes through it. `cellfleet cell drain|undrain|retire` and runbooks'
//! `drain` steps both land here.

use cellfleet_api::{CellLifecycle, CellName, CellResync, CellState};
use serde_json::json;

use super::{Error, Registry, Result, not_found};
use crate::store::{self, Caller, Tx};

/// What a lifecycle command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellAction {
    Drain,
    Undrain,
    Retire,
}

impl CellAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CellAction::Drain => "drain",
            CellAction::Undrain => "undrain",
            CellAction::Retire => "retire",
        }
    }

    pub fn parse(s: &str) -> Option<CellAction> {
        match s {
            "drain" => Some(CellAction::Drain),
            "undrain" => Some(CellAction::Undrain),
            "retire" => Some(CellAction::Retire),
            _ => None,
        }
    }
}

impl Registry {
    pub async fn cell_lifecycle(
        &self,
        caller: &Caller,
        cell: &CellName,
        action: CellAction,
        reason: Option<String>,
    ) -> Result<CellLifecycle> {
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(Error::Invalid("reason: at most 500 characters".into()));
        }
        let mut tx = self.store.begin(caller).await?;
        let done = cell_lifecycle_in(&mut tx, cell, action, reason.as_deref()).await?;
        self.commit(tx).await?;
        self.operations_changed();
        Ok(done)
    }
}

impl Registry {
    /// The operator's way out for an agent whose ledger is ahead of the registry (the registry
    /// was restored from an older copy): the agent refuses to go back to an older generation, so
    /// the cell's desired generation moves to one past the agent's, with the registry's content.
    /// The agent then takes the registry's state as newer and converges to it. Refused when the
    /// agent is not ahead (nothing to do).
    pub async fn resync_cell(&self, caller: &Caller, cell: &CellName) -> Result<CellResync> {
        let mut tx = self.store.begin(caller).await?;
        let (generation, hash) = store::cell_generation(tx.conn(), cell)
            .await?
            .ok_or_else(|| not_found("cell", cell))?;
        let agent = store::get_report(tx.conn(), cell)
            .await?
            .map(|r| r.report.observed_generation);
        let Some(agent) = agent.filter(|a| *a > generation) else {
            return Err(Error::Conflict(format!(
                "the agent of cell {cell} is not ahead of the registry (it runs generation {}, the desired is {generation}): nothing to resync",
                agent.map_or("none yet".to_owned(), |a| a.to_string())
            )));
        };
        let to = agent + 1;
        store::set_cell_generation(tx.conn(), cell, to, &hash).await?;
        tx.audit(
            "cell.resync",
            &format!("cell/{cell}"),
            json!({"from": generation, "to": to, "agent": agent}),
        );
        self.commit(tx).await?;
        // The agent waits for a generation above its own: wake it now.
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        Ok(CellResync {
            cell: cell.clone(),
            from: generation,
            to,
            agent,
        })
    }
}

/// A lifecycle change inside `tx`; refused (naming why) when the cell is not in a state it
/// applies to, or — to retire — still holds tenants or a move.
pub(super) async fn cell_lifecycle_in(
    tx: &mut Tx,
    cell: &CellName,
    action: CellAction,
    reason: Option<&str>,
) -> Result<CellLifecycle> {
    let row = store::get_cell(tx.conn(), cell)
        .await?
        .ok_or_else(|| not_found("cell", cell))?;
    let from = row.state;
    let to = match (action, from) {
        (CellAction::Drain, CellState::Ready) => CellState::Draining,
        (CellAction::Undrain, CellState::Draining) => CellState::Ready,
        (CellAction::Retire, CellState::Draining | CellState::Failed) => CellState::Retired,
        (CellAction::Retire, CellState::Ready) => {
            return Err(Error::Conflict(format!(
                "cell {cell} is ready: drain it first (`cellfleet cell drain {cell}`, or the cell-drain runbook moves its tenants out)"
            )));
        }
        (a, s) => {
            return Err(Error::Conflict(format!(
                "cell {cell} is {s}: cannot {} it",
                a.as_str()
            )));
        }
    };
    let placed = store::placements_on(tx.conn(), cell).await?;
    if to == CellState::Retired {
        if !placed.is_empty() {
            let names: Vec<String> = placed
                .iter()
                .take(5)
                .map(|(p, _)| format!("{}/{}", p.tenant, p.env))
                .collect();
            return Err(Error::Conflict(format!(
                "cell {cell} still holds {} tenant environment(s) ({}{}): move them out first",
                placed.len(),
                names.join(", "),
                if placed.len() > 5 { ", …" } else { "" }
            )));
        }
        let moves = super::moves::OpenMoves::load(tx.conn()).await?;
        if moves.touches(cell) {
            return Err(Error::Conflict(format!(
                "a tenant move still goes through cell {cell} (its rollback window holds the source): wait for it, or see `cellfleet move list`"
            )));
        }
    }
    let now = tx.now;
    store::set_cell_state(tx.conn(), cell, to, now).await?;
    tx.touch(cell);
    tx.audit(
        &format!("cell.{}", action.as_str()),
        &format!("cell/{cell}"),
        json!({ "from": from, "to": to, "reason": reason, "tenants": placed.len() }),
    );
    Ok(CellLifecycle {
        cell: cell.clone(),
        from,
        to,
        tenants: u32::try_from(placed.len()).unwrap_or(u32::MAX),
    })
}
