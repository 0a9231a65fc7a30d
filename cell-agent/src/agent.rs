//! The agent: concurrent tasks around one shared view of the cell.
//!
//! - **sync** long-polls the control plane for the cell's desired state, records it in the
//!   ledger (refusing older generations and same-generation-other-content) and publishes it;
//! - **reconcile** makes the cell match the published state — the migration stream (checksums
//!   verified on every pass), row-level security on pooled PostgreSQL cells, the workload at the
//!   desired release with the tenant set it may serve — on every change and at least every
//!   [`REPORT_EVERY`], so drift is found and fixed where it can be (level-triggered);
//! - **report** sends what the cell is (a heartbeat at least every [`REPORT_EVERY`], and at once
//!   when the reconcile's outcome changes), with health scraped from the workload;
//! - **moves** run one worker per move the cell takes part in (see `mover`): a bulk copy never
//!   stalls the reports or the reconcile.
//!
//! An agent the control plane refuses from its first contact (a wrong token or cell) stops with
//! the cause; refused later, it keeps the cell as it is and asks again slowly.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellfleet_api::{
    AgentReport, AppliedMigration, CellKind, CellTenant, CellTenants, DesiredState, MoveRole,
    MoveTask, TenantId, WorkloadStatus,
};
use tokio::sync::{Notify, OnceCell, watch};

use crate::cell_db::CellDb;
use crate::control_plane::{ControlPlane, Refused};
use crate::deployer::{Deployer, LocalProcess, WorkloadContext};
use crate::health::Window;
use crate::ledger::{Accepted, Ledger};

/// Health is computed over this window of scrapes.
const HEALTH_WINDOW: Duration = Duration::from_secs(60);

/// The agent reports (and scrapes the workload) at least this often, even with nothing new.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How often a cell reports while a release train bakes it.
const BAKE_REPORT_EVERY: Duration = Duration::from_secs(2);

/// How long to wait before asking again after the control plane refused the agent.
const REFUSED_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Config {
    pub control_plane: String,
    pub token: String,
    pub cell: String,
    pub data_dir: PathBuf,
    /// The cell database (`sqlite://…` or `postgres://…`), as the agent (its owner) uses it.
    pub database_url: String,
    /// The same database as the workload connects to it (on PostgreSQL: a role without
    /// BYPASSRLS, so row-level security applies).
    pub workload_database_url: String,
    /// How long each long-poll may wait.
    pub poll: Duration,
}

/// What a move worker has made true in the cell database for its move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Achieved {
    pub capture: bool,
    pub guard: bool,
}

/// A tenant-set epoch above any an earlier run of this agent handed out (milliseconds since the
/// epoch; each run bumps it at most a few times per move step).
fn first_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
}

/// The state every task shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// The accepted desired state (from the ledger).
    pub desired: watch::Sender<Option<Arc<DesiredState>>>,
    /// Why the last desired state was refused, if it was.
    pub sync_errors: Mutex<Vec<String>>,
    /// What the last reconcile found and did.
    pub status: watch::Sender<Reconciled>,
    /// Move workers' progress in the database, and a counter bumped on every change of it.
    pub achieved: Mutex<(HashMap<String, Achieved>, u64)>,
    /// Asks the reconcile for a pass now.
    pub reconcile_now: Notify,
    db: OnceCell<CellDb>,
}

impl Shared {
    /// The cell database (opened on first use).
    pub async fn db(&self) -> Result<&CellDb, String> {
        self.db
            .get_or_try_init(|| CellDb::open(&self.config.database_url))
            .await
            .map_err(|e| e.to_string())
    }

    /// Records what a move worker achieved; returns the epoch the workload must reach to know.
    pub fn set_achieved(&self, move_id: &str, now: Option<Achieved>) -> u64 {
        let mut guard = self.achieved.lock().unwrap_or_else(|p| p.into_inner());
        let (map, epoch) = &mut *guard;
        let before = map.get(move_id).copied();
        match now {
            Some(a) => {
                map.insert(move_id.to_owned(), a);
            }
            None => {
                map.remove(move_id);
            }
        }
        if before != now {
            *epoch += 1;
            self.reconcile_now.notify_one();
        }
        *epoch
    }

    /// Waits until the workload has the tenant set of `epoch` (and of the current desired
    /// generation), at most `within`. Returns whether it has.
    pub async fn handed(&self, epoch: u64, within: Duration) -> bool {
        let mut status = self.status.subscribe();
        let desired = self.desired.borrow().as_ref().map_or(0, |d| d.generation);
        tokio::time::timeout(
            within,
            status.wait_for(|s| s.handed_epoch >= epoch && s.handed_generation >= desired),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

/// What a reconcile pass found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciled {
    /// The desired generation the cell matches (0: none yet).
    pub generation: i64,
    pub applied: Vec<AppliedMigration>,
    pub drift: Vec<String>,
    pub unmovable: Vec<String>,
    pub errors: Vec<String>,
    pub release: Option<String>,
    pub workload: Option<WorkloadStatus>,
    pub endpoint: Option<String>,
    /// The desired generation and gate epoch of the tenant set the workload acknowledged.
    pub handed_generation: i64,
    pub handed_epoch: u64,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ledger = Ledger::open(&config.data_dir, &config.cell)?;
    let cp = ControlPlane::new(&config)?;
    tracing::info!(
        cell = %config.cell,
        generation = ledger.generation(),
        tenants = ledger.state().map_or(0, |s| s.tenants.len()),
        "cell agent starting from its ledger"
    );
    let shared = Arc::new(Shared {
        desired: watch::Sender::new(ledger.state().cloned().map(Arc::new)),
        config: config.clone(),
        sync_errors: Mutex::new(Vec::new()),
        status: watch::Sender::new(Reconciled::default()),
        // Epochs order tenant sets within a generation; starting from the clock keeps them
        // increasing across agent restarts (the workload may outlive the agent).
        achieved: Mutex::new((HashMap::new(), first_epoch())),
        reconcile_now: Notify::new(),
        db: OnceCell::new(),
    });
    let (accepted_tx, accepted_rx) = watch::channel(false);
    let mut sync = tokio::spawn(sync_loop(cp.clone(), ledger, shared.clone(), accepted_tx));
    let reconcile = tokio::spawn(reconcile_loop(shared.clone()));
    let probes = Arc::new(Mutex::new(crate::probes::Probes::default()));
    let report = tokio::spawn(report_loop(
        cp.clone(),
        shared.clone(),
        accepted_rx,
        probes.clone(),
    ));
    let prober = tokio::spawn(crate::probes::run(shared.clone(), probes));
    let moves = tokio::spawn(crate::mover::supervise(cp, shared.clone()));
    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("cell agent stopping");
            Ok(())
        }
        ended = &mut sync => match ended {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("the sync task failed: {e}")),
        },
    };
    // Aborting the reconcile drops the deployer, which stops the workload with it.
    for task in [reconcile, report, moves, prober] {
        task.abort();
        let _ = task.await;
    }
    sync.abort();
    result
}

/// Long-polls the desired state into the ledger and publishes what it accepted.
async fn sync_loop(
    cp: ControlPlane,
    mut ledger: Ledger,
    shared: Arc<Shared>,
    accepted: watch::Sender<bool>,
) -> anyhow::Result<()> {
    let mut first = true;
    let mut backoff = Duration::from_millis(200);
    loop {
        // The first poll returns at once, so a restarted agent re-attaches without waiting.
        let since = if first { 0 } else { ledger.generation() };
        match cp
            .desired(since, shared.config.poll.min(REPORT_EVERY))
            .await
        {
            Ok(state) => {
                first = false;
                backoff = Duration::from_millis(200);
                let _ = accepted.send(true);
                let mut errors = Vec::new();
                match ledger.accept(&state) {
                    Ok(Accepted::Advanced) => {
                        tracing::info!(generation = ledger.generation(), "desired state accepted");
                        shared
                            .desired
                            .send_replace(ledger.state().cloned().map(Arc::new));
                    }
                    Ok(Accepted::Unchanged) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "desired state refused");
                        errors.push(e.to_string());
                    }
                }
                let changed = {
                    let mut held = shared.sync_errors.lock().unwrap_or_else(|p| p.into_inner());
                    let changed = *held != errors;
                    *held = errors;
                    changed
                };
                if changed {
                    shared.reconcile_now.notify_one();
                }
            }
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                if !*accepted.borrow() {
                    // Never accepted: the token or the cell name is wrong. Say so and stop,
                    // rather than retrying something that cannot work.
                    return Err(e.context(format!(
                        "check the agent token and --cell {}",
                        shared.config.cell
                    )));
                }
                tracing::error!(error = %format!("{e:#}"), retry_in = ?REFUSED_RETRY, "the control plane refuses this agent; the cell keeps running as it is");
                tokio::time::sleep(REFUSED_RETRY).await;
            }
            Err(e) => {
                // Control plane unreachable: keep the cell as it is, retry with backoff
                // (static stability).
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "sync failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Makes the cell match the desired state on every change, when a move worker asks, when the
/// workload exits or is due a restart, and at least every [`REPORT_EVERY`].
async fn reconcile_loop(shared: Arc<Shared>) {
    let mut deployer = LocalProcess::new(shared.config.data_dir.join("workload.pid"));
    let mut desired = shared.desired.subscribe();
    let mut backoff = Duration::from_millis(200);
    loop {
        let state = desired.borrow_and_update().clone();
        let status = match &state {
            Some(state) => reconcile(&shared, &mut deployer, state).await,
            None => Reconciled::default(),
        };
        let failing = !status.errors.is_empty();
        shared.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        let pause = if failing {
            // What failed will fail again until something changes: don't spin on it.
            let p = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            p
        } else {
            backoff = Duration::from_millis(200);
            REPORT_EVERY
        };
        let restart_due = deployer.wake_at();
        tokio::select! {
            _ = desired.changed() => {}
            () = shared.reconcile_now.notified() => {}
            () = deployer.exited() => {}
            () = sleep_until(restart_due) => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One reconcile pass against `state`.
async fn reconcile(
    shared: &Shared,
    deployer: &mut LocalProcess,
    state: &DesiredState,
) -> Reconciled {
    let previous = shared.status.borrow().clone();
    let mut out = Reconciled {
        applied: previous.applied,
        drift: previous.drift,
        unmovable: previous.unmovable,
        endpoint: state.endpoint.clone(),
        handed_generation: previous.handed_generation,
        handed_epoch: previous.handed_epoch,
        ..Reconciled::default()
    };
    out.errors = shared
        .sync_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match reconcile_steps(shared, deployer, state, &mut out).await {
        Ok(()) => out.generation = state.generation,
        Err(e) => {
            tracing::error!(error = %e, "reconcile stopped");
            out.errors.push(e);
        }
    }
    out.release = deployer.running().map(str::to_owned);
    out.workload = state.release.as_ref().map(|_| deployer.status());
    out
}

async fn reconcile_steps(
    shared: &Shared,
    deployer: &mut LocalProcess,
    state: &DesiredState,
    out: &mut Reconciled,
) -> Result<(), String> {
    let db = shared.db().await?;
    out.applied = db
        .migrate(&state.migrations)
        .await
        .map_err(|e| e.to_string())?;
    out.drift = match state.kind {
        CellKind::Pooled => db.enforce_rls().await.map_err(|e| e.to_string())?,
        CellKind::Dedicated => Vec::new(),
    };
    out.unmovable = db
        .tenant_tables()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|t| t.unmovable.map(|why| format!("{}: {why}", t.name)))
        .collect();
    // Expand migrations run before the new code: the release starts only on a migrated database.
    if let Some(release) = &state.release {
        let endpoint = state
            .endpoint
            .clone()
            .ok_or_else(|| "the cell has no endpoint to run its workload on".to_owned())?;
        let ctx = WorkloadContext {
            endpoint,
            database_url: shared.config.workload_database_url.clone(),
            cell: shared.config.cell.clone(),
        };
        deployer.ensure(release, &ctx).await?;
        let (set, epoch) = {
            let guard = shared.achieved.lock().unwrap_or_else(|p| p.into_inner());
            (cell_tenants(state, &guard.0, guard.1), guard.1)
        };
        deployer.hand_tenants(&set).await?;
        out.handed_generation = state.generation;
        out.handed_epoch = epoch;
    }
    Ok(())
}

/// The tenant set the workload enforces: every tenant placed on the cell, with its state; a
/// tenant whose move fences it is refused as moved; one whose move has not yet made the
/// database ready for it here (capture before a target serves, the guard lifted before a source
/// serves again) is left out until it has.
fn cell_tenants(
    state: &DesiredState,
    achieved: &HashMap<String, Achieved>,
    epoch: u64,
) -> CellTenants {
    let mut tenants: Vec<CellTenant> = Vec::new();
    for t in &state.tenants {
        if tenants.iter().any(|c| c.tenant == t.tenant) {
            continue;
        }
        let tasks = state.moves.iter().filter(|m| m.tenant == t.tenant);
        let mut fenced = false;
        let mut held = false;
        for m in tasks {
            fenced |= m.fence;
            held |= holds_back(m, achieved.get(&m.id));
        }
        if held && !fenced {
            continue;
        }
        tenants.push(CellTenant {
            tenant: t.tenant.clone(),
            state: t.state,
            fenced,
            flags: t.flags.clone(),
        });
    }
    // While a train bakes the cell, its synthetic probe tenant is served (it reads, never
    // writes: the probe path is a GET).
    if let Some(p) = &state.probe
        && !tenants.iter().any(|c| c.tenant == p.tenant)
    {
        tenants.push(CellTenant {
            tenant: p.tenant.clone(),
            state: cellfleet_api::TenantState::Active,
            fenced: false,
            flags: Default::default(),
        });
    }
    CellTenants {
        generation: state.generation,
        epoch,
        tenants,
    }
}

/// Whether move task `m` keeps its tenant out of the workload's set for now, given what its
/// worker has made true in the database (`None`: nothing yet, say just after a start).
///
/// A cell taking the tenant over waits for its capture (a target) or for its guard to be gone.
/// A source that is capturing — before the cut-over — keeps serving while its worker sets up:
/// a write before capture is installed is in the copy, which starts only after. (Holding it
/// back would refuse the tenant on the cell its route names for as long as the set-up takes;
/// at a million rows that outlasted the router's hold, and a client got 503.)
fn holds_back(m: &MoveTask, achieved: Option<&Achieved>) -> bool {
    match achieved {
        None => !(m.role == MoveRole::Source && m.capture),
        Some(a) => {
            (m.role == MoveRole::Target && m.capture && !a.capture)
                || (!m.guard && !m.fence && a.guard)
        }
    }
}

/// Reports what the cell is: at once when the reconcile's outcome changes, else every
/// [`REPORT_EVERY`] (a heartbeat), with health scraped from the workload.
async fn report_loop(
    cp: ControlPlane,
    shared: Arc<Shared>,
    mut accepted: watch::Receiver<bool>,
    probes: Arc<Mutex<crate::probes::Probes>>,
) {
    // Nothing to say before the control plane has answered once.
    let _ = accepted.wait_for(|a| *a).await;
    let mut status = shared.status.subscribe();
    // Nor before the first reconcile pass has looked at the cell: a restarted agent must not
    // report "nothing applied, nothing running" for a moment (bounded: a cell whose pass
    // finds nothing to change still reports, as a heartbeat).
    let _ = tokio::time::timeout(
        REPORT_EVERY,
        status.wait_for(|s| *s != Reconciled::default()),
    )
    .await;
    let mut window = Window::new(HEALTH_WINDOW);
    let scraper = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut reported: Option<AgentReport> = None;
    let mut backoff = Duration::from_millis(200);
    let mut probe_tenant: Option<String> = None;
    loop {
        let s = status.borrow_and_update().clone();
        // Health: scrape the running workload; a failed scrape is a gap, not zero traffic.
        if s.release.is_some()
            && let Some(endpoint) = &s.endpoint
        {
            let url = format!("{}/metrics", endpoint.trim_end_matches('/'));
            match scraper
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
            {
                Ok(resp) => window.push(
                    std::time::Instant::now(),
                    crate::health::parse(&resp.text().await.unwrap_or_default()),
                ),
                Err(e) => tracing::warn!(error = %e, %url, "cannot scrape the workload"),
            }
        }
        let desired = shared.desired.borrow().clone();
        let counted = match shared.db().await {
            Ok(db) => db.tenant_rows().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot count tenant rows");
                Default::default()
            }),
            Err(_) => Default::default(),
        };
        let (tenant_rows, stray_rows) = split_rows(counted, desired.as_deref());
        let mut isolation_drift = s.drift.clone();
        isolation_drift.extend(stray_rows.iter().map(|(tenant, n)| {
            format!("{n} rows of tenant {tenant:?} in the cell database, which is not placed on this cell")
        }));
        isolation_drift.truncate(cellfleet_api::report_limits::DRIFT);
        // The synthetic probe tenant is reported apart: left out of tenant health.
        let probe = desired.as_ref().and_then(|d| d.probe.clone());
        // The probe tenant stays out of tenant health after the bake too (its requests are
        // still in the window for a minute).
        if let Some(p) = &probe {
            probe_tenant = Some(p.tenant.to_string());
        }
        let running = s
            .workload
            .as_ref()
            .filter(|w| w.state == cellfleet_api::WorkloadState::Running)
            .and_then(|w| w.release.clone());
        let release_health = running
            .as_deref()
            .and_then(|r| window.since_start(r, probe_tenant.as_deref()));
        let probe_stats = probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(running.as_deref());
        let report = AgentReport {
            observed_generation: s.generation,
            tenant_rows,
            stray_rows,
            health: window.health_excluding(probe_tenant.as_deref()),
            release_health,
            probes: probe_stats,
            release: s.release.clone(),
            migrations: s.applied.clone(),
            isolation_drift,
            workload: s.workload.clone(),
            unmovable: s.unmovable.clone(),
            errors: s.errors.clone(),
        };
        let pause = match cp.report(&report).await {
            Ok(()) => {
                if reported.as_ref() != Some(&report) {
                    tracing::info!(
                        observed = report.observed_generation,
                        errors = report.errors.len(),
                        "reported"
                    );
                }
                reported = Some(report);
                backoff = Duration::from_millis(200);
                // A baking cell reports more often: gates decide on these numbers.
                if probe.is_some() {
                    BAKE_REPORT_EVERY
                } else {
                    REPORT_EVERY
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "report failed");
                let p = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                p
            }
        };
        tokio::select! {
            _ = status.changed() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Splits the rows counted per tenant into those of tenants placed on the cell and the rest
/// (isolation drift: data the cell should not hold). Tenants with a move through the cell are
/// placed for this purpose (their rows are arriving or leaving). Without a desired state yet,
/// every valid tenant id counts as placed (nothing is known to contradict it).
pub fn split_rows(
    counted: BTreeMap<String, i64>,
    state: Option<&DesiredState>,
) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let mut placed = BTreeMap::new();
    let mut stray = BTreeMap::new();
    for (tenant, rows) in counted {
        let here = TenantId::new(tenant.clone()).is_ok_and(|id| {
            state.is_none_or(|s| {
                s.tenants.iter().any(|t| t.tenant == id) || s.moves.iter().any(|m| m.tenant == id)
            })
        });
        if here {
            placed.insert(tenant, rows);
        } else if stray.len() < cellfleet_api::report_limits::STRAY_ROWS {
            let key: String = tenant
                .chars()
                .take(cellfleet_api::report_limits::STRAY_KEY_BYTES / 4)
                .collect();
            *stray.entry(key).or_insert(0) += rows;
        }
    }
    (placed, stray)
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(role: MoveRole) -> MoveTask {
        MoveTask {
            id: "mv_1".into(),
            tenant: "acme".parse().unwrap_or_else(|e| panic!("{e}")),
            env: "prod".parse().unwrap_or_else(|e| panic!("{e}")),
            role,
            peer: "cell-b".parse().unwrap_or_else(|e| panic!("{e}")),
            capture: false,
            ship: false,
            apply: false,
            fence: false,
            guard: false,
            cleanup: false,
            verify_round: 0,
            verified_upto: 0,
        }
    }

    #[test]
    fn a_source_keeps_serving_while_its_move_sets_up_and_a_taker_waits() {
        let capturing_source = MoveTask {
            capture: true,
            ship: true,
            ..task(MoveRole::Source)
        };
        assert!(!holds_back(&capturing_source, None));
        assert!(!holds_back(
            &capturing_source,
            Some(&Achieved {
                capture: true,
                guard: false
            })
        ));
        // The target taking the tenant at the cut-over: not before its capture is in.
        let taking_target = MoveTask {
            capture: true,
            ship: true,
            ..task(MoveRole::Target)
        };
        assert!(holds_back(&taking_target, None));
        assert!(holds_back(&taking_target, Some(&Achieved::default())));
        assert!(!holds_back(
            &taking_target,
            Some(&Achieved {
                capture: true,
                guard: false
            })
        ));
        // A source taking the tenant back (a rollback's flip): not while its guard may be in.
        let taking_back = task(MoveRole::Source);
        assert!(holds_back(&taking_back, None));
        assert!(holds_back(
            &taking_back,
            Some(&Achieved {
                capture: false,
                guard: true
            })
        ));
        assert!(!holds_back(&taking_back, Some(&Achieved::default())));
    }
}
