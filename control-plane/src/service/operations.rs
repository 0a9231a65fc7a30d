//! The operations driver: a background task of every control-plane replica that advances every
//! open long-running operation (moves, trains, runbook runs). Each pass claims an operation's lease (so two
//! replicas do not drive one operation at once; a lease left by a dead replica expires), asks the
//! operation's kind for its next step and repeats while it moves on. Steps are compare-and-swaps
//! on the operation's version, so a replica that loses a race simply decides again from what is
//! there. After a restart the driver resumes every open operation where its row says it is.
//!
//! Wakes when something an operation waits for changes (`Registry::operations_changed`: an agent
//! reported, a chunk arrived, an operator asked) and at least every [`TICK`] (timeouts, windows).

use std::time::Duration;

use super::{Error, Registry, Result};
use crate::moves::MoveSettings;
use crate::store;

/// The longest the driver sleeps between passes.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a claimed operation stays this replica's without a renewal.
const LEASE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// How often a train looks at its fleet while nothing about it changed.
const TRAIN_TICK: Duration = Duration::from_secs(1);
/// How soon after news (a cell reported a new release) a train looks.
const NEWS_DELAY: Duration = Duration::from_millis(100);
/// Steps one operation may take in one pass (a move rarely takes more than two in a row).
const STEPS_PER_PASS: usize = 8;

impl Registry {
    /// Whether the train `op` is due for a look, and records the look: when it changed (an
    /// operator's command, its own step), when a bake ends, soon after a cell reported running
    /// something new, and at least every [`TRAIN_TICK`].
    fn train_due(&self, op: &store::OperationRow) -> bool {
        let mut looks = self
            .train_looks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let due = match looks.get(&op.id) {
            None => true,
            Some(l) => {
                let since = now.duration_since(l.at);
                l.version != op.version
                    || since >= TRAIN_TICK
                    || l.deadline.is_some_and(|d| d <= now)
                    || (since >= NEWS_DELAY
                        && self
                            .train_news
                            .swap(false, std::sync::atomic::Ordering::Relaxed))
            }
        };
        if due {
            looks.retain(|_, l| now.duration_since(l.at) < TRAIN_TICK * 60);
            looks.insert(
                op.id.clone(),
                super::TrainLook {
                    version: op.version,
                    at: now,
                    deadline: None,
                },
            );
        }
        due
    }

    /// Records when the train's next bake ends.
    pub(super) fn train_deadline(&self, id: &str, at: chrono::DateTime<chrono::Utc>) {
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        if let Some(l) = self
            .train_looks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(id)
        {
            l.deadline = Some(std::time::Instant::now() + wait);
        }
    }

    /// A cell reported running something new: trains look again soon.
    pub(super) fn train_news(&self) {
        self.train_news
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.operations_changed();
    }

    /// Drives open operations until `shutdown` resolves.
    pub async fn drive_operations(
        &self,
        owner: String,
        settings: MoveSettings,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.drive_once(&owner, &settings).await {
                tracing::warn!(error = %e, "operations pass failed; trying again");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.operations_wakeup() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// One pass over every open operation (tests call it directly).
    pub async fn drive_once(&self, owner: &str, settings: &MoveSettings) -> Result<()> {
        let ops = {
            let mut conn = self.store.read().await?;
            store::open_operations(&mut conn).await?
        };
        for op in ops {
            let now = chrono::Utc::now();
            let claimed = {
                let mut conn = self.store.read().await?;
                store::claim_lease(&mut conn, &op.id, owner, now, now + LEASE).await?
            };
            if !claimed {
                continue;
            }
            let mut current = op;
            for _ in 0..STEPS_PER_PASS {
                let stepped = match current.kind.as_str() {
                    super::moves::KIND => self.step_move(&current, settings).await,
                    crate::trains::KIND => {
                        // A train looks at most every TRAIN_TICK unless it changed (an
                        // operator's command bumps its version): with a thousand cells a look
                        // reads their reports, and bakes last minutes.
                        if !self.train_due(&current) {
                            break;
                        }
                        self.step_train(&current).await
                    }
                    crate::runbooks::KIND => {
                        // A run looks at most every TRAIN_TICK unless it changed: each look
                        // takes the mutation lock, and its steps wait on moves and agents.
                        if !self.train_due(&current) {
                            break;
                        }
                        self.step_runbook(&current).await
                    }
                    other => {
                        tracing::error!(operation = %current.id, kind = other, "unknown operation kind");
                        Ok(false)
                    }
                };
                match stepped {
                    Ok(true) => {}
                    Ok(false) => break,
                    // Lost a race (another replica, an operator's request): next pass.
                    Err(e @ Error::Busy(_)) => {
                        tracing::debug!(operation = %current.id, error = %e, "step raced");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(operation = %current.id, error = %e, "step failed");
                        break;
                    }
                }
                let mut conn = self.store.read().await?;
                match store::get_operation(&mut conn, &current.id).await? {
                    Some(next) if next.finished_at.is_none() => current = next,
                    _ => break,
                }
            }
        }
        Ok(())
    }
}

/// A new operation: its row at version 1, unleased, created at the mutation's time.
pub(super) struct NewOperation<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub subject: &'a str,
    pub phase: &'a str,
    /// What was asked and the first state, as canonical JSON.
    pub spec: String,
    pub state: String,
    pub reserves: Option<String>,
}

/// Inserts a new operation in `tx`; when its subject already has an open one, the conflict
/// says `taken` (the partial unique index decides, so two racing starts cannot both insert).
pub(super) async fn insert_new(
    tx: &mut store::Tx,
    new: NewOperation<'_>,
    taken: impl FnOnce() -> String,
) -> Result<()> {
    let now = tx.now;
    let row = store::OperationRow {
        id: new.id.to_owned(),
        kind: new.kind.to_owned(),
        subject: new.subject.to_owned(),
        phase: new.phase.to_owned(),
        version: 1,
        spec: new.spec,
        state: new.state,
        reserves: new.reserves,
        lease_owner: None,
        lease_until: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
    };
    store::insert_operation(tx.conn(), &row)
        .await
        .map_err(|e| match e {
            store::StoreError::Sql(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                Error::Conflict(taken())
            }
            other => other.into(),
        })
}
