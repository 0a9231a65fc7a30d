//! The agent loop: long-poll the control plane for this cell's desired state, record it in the
//! ledger, make the cell match it, report.
//!
//! Making the cell match: the cell database has the whole migration stream (checksums verified on
//! every pass), pooled PostgreSQL cells have row-level security on every tenant table, and the
//! workload runs at the desired release (see `deployer`). The reconcile is level-triggered: it
//! runs on every pass against the ledger's state, not only when a new generation arrives, so drift
//! (a tampered migration, a dropped policy, a crashed workload) is found, fixed where it can be,
//! and reported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cellfleet_api::{
    AgentReport, AppliedMigration, CellKind, CellTenant, CellTenants, DesiredState, ErrorBody,
    TenantId,
};

use crate::cell_db::CellDb;
use crate::deployer::{Deployer, LocalProcess, WorkloadContext};
use crate::health::Window;

/// Health is computed over this window of scrapes.
const HEALTH_WINDOW: Duration = Duration::from_secs(60);

/// The agent reports (and scrapes the workload) at least this often, even with nothing new.
const REPORT_EVERY: Duration = Duration::from_secs(10);
use crate::ledger::{Accepted, Ledger};

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

/// Talks to the control plane's agent routes.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
    token: String,
    cell: String,
}

impl ControlPlane {
    pub fn new(config: &Config) -> anyhow::Result<ControlPlane> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(ControlPlane {
            http: reqwest::Client::builder()
                .user_agent(concat!("cell-agent/", env!("CARGO_PKG_VERSION")))
                .timeout(config.poll + Duration::from_secs(30))
                .build()?,
            base: config.control_plane.trim_end_matches('/').to_owned(),
            token: config.token.clone(),
            cell: config.cell.clone(),
        })
    }

    pub async fn desired(&self, since: i64, wait: Duration) -> anyhow::Result<DesiredState> {
        let resp = self
            .http
            .get(format!("{}/v1/agent/desired", self.base))
            .query(&[
                ("since", since.to_string()),
                ("timeout", format!("{}ms", wait.as_millis())),
                ("cell", self.cell.clone()),
            ])
            .bearer_auth(&self.token)
            .send()
            .await
            .context("asking for the desired state")?;
        Ok(checked(resp).await?.json().await?)
    }

    pub async fn report(&self, report: &AgentReport) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/v1/agent/report", self.base))
            .query(&[("cell", self.cell.clone())])
            .bearer_auth(&self.token)
            .json(report)
            .send()
            .await
            .context("reporting")?;
        checked(resp).await?;
        Ok(())
    }
}

/// The control plane refused the agent itself (401, 403, 404): a bad or revoked token, or a
/// cell name that is not the token's or does not exist. Retrying fast cannot help.
#[derive(Debug, thiserror::Error)]
#[error("the control plane refuses this agent: {status}: {message}")]
pub struct Refused {
    pub status: reqwest::StatusCode,
    pub message: String,
}

async fn checked(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&body)
        .map(|e| e.message)
        .unwrap_or(body);
    if matches!(status.as_u16(), 401 | 403 | 404) {
        return Err(Refused { status, message }.into());
    }
    anyhow::bail!("control plane answered {status}: {message}")
}

/// How long to wait before asking again after the control plane refused the agent.
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut ledger = Ledger::open(&config.data_dir, &config.cell)?;
    let cp = ControlPlane::new(&config)?;
    tracing::info!(
        cell = %config.cell,
        generation = ledger.generation(),
        tenants = ledger.state().map_or(0, |s| s.tenants.len()),
        "cell agent starting from its ledger"
    );
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    let mut cell_db: Option<CellDb> = None;
    let mut deployer = LocalProcess::new(config.data_dir.join("workload.pid"));
    let mut window = Window::new(HEALTH_WINDOW);
    let scraper = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    // The newest generation the cell was made to match, and what that left in place.
    let mut reconciled = 0;
    let mut applied = Vec::new();
    let mut drift = Vec::new();
    let mut reported: Option<AgentReport> = None;
    let mut first = true;
    // Whether the control plane ever accepted this agent (see `Refused`).
    let mut accepted_once = false;
    loop {
        let step = async {
            // The first poll returns at once, so a restarted agent re-attaches without waiting.
            let since = if first { 0 } else { ledger.generation() };
            // Wake for a new desired state, at once when the workload exits, or when a restart
            // of the workload is due.
            let restart_due = deployer.wake_at();
            let desired = tokio::select! {
                d = cp.desired(since, config.poll.min(REPORT_EVERY)) => Some(d?),
                () = deployer.exited() => None,
                () = sleep_until(restart_due) => None,
            };
            first = false;
            let mut errors = Vec::new();
            let accepted = match &desired {
                Some(d) => ledger.accept(d),
                None => Ok(Accepted::Unchanged),
            };
            match accepted {
                Ok(Accepted::Advanced) => {
                    tracing::info!(generation = ledger.generation(), "desired state accepted");
                }
                Ok(Accepted::Unchanged) => {}
                Err(e) => {
                    tracing::error!(error = %e, "desired state refused");
                    errors.push(e.to_string());
                }
            }
            if let Some(state) = ledger.state() {
                let outcome = reconcile(&config, &mut cell_db, &mut deployer, state).await;
                // What was done stands even when a later step failed (migrations applied before
                // the workload failed to start are applied).
                if let Some(now_applied) = outcome.applied {
                    applied = now_applied;
                }
                if let Some(now_drift) = outcome.drift {
                    drift = now_drift;
                }
                match outcome.stopped {
                    None => reconciled = state.generation,
                    Some(e) => {
                        tracing::error!(error = %e, "reconcile stopped");
                        errors.push(e);
                    }
                }
            }
            // Health: scrape the running workload; a failed scrape is a gap, not zero traffic.
            if deployer.running().is_some()
                && let Some(endpoint) = ledger.state().and_then(|s| s.endpoint.clone())
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
            let counted = match &cell_db {
                Some(db) => db.tenant_rows().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot count tenant rows");
                    Default::default()
                }),
                None => Default::default(),
            };
            let (tenant_rows, stray_rows) = split_rows(counted, ledger.state());
            let mut isolation_drift = drift.clone();
            isolation_drift.extend(stray_rows.iter().map(|(tenant, n)| {
                format!("{n} rows of tenant {tenant:?} in the cell database, which is not placed on this cell")
            }));
            isolation_drift.truncate(cellfleet_api::report_limits::DRIFT);
            let report = AgentReport {
                observed_generation: reconciled,
                tenant_rows,
                stray_rows,
                health: window.health(),
                release: deployer.running().map(str::to_owned),
                migrations: applied.clone(),
                isolation_drift,
                workload: ledger
                    .state()
                    .and_then(|s| s.release.as_ref())
                    .map(|_| deployer.status()),
                errors,
            };
            // Every pass reports (a heartbeat); changes are logged.
            cp.report(&report).await?;
            if reported.as_ref() != Some(&report) {
                tracing::info!(
                    observed = report.observed_generation,
                    errors = report.errors.len(),
                    "reported"
                );
            }
            let failing = !report.errors.is_empty();
            reported = Some(report);
            anyhow::Ok(failing)
        };
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("cell agent stopping");
                return Ok(());
            }
            result = step => match result {
                Err(e) if e.downcast_ref::<Refused>().is_some() => {
                    if !accepted_once {
                        // Never accepted: the token or the cell name is wrong. Say so and stop,
                        // rather than retrying something that cannot work.
                        return Err(e.context(format!(
                            "check the agent token and --cell {}",
                            config.cell
                        )));
                    }
                    // Accepted before, refused now (a revoked token?): keep the cell as it is
                    // and ask again, slowly and loudly.
                    tracing::error!(error = %format!("{e:#}"), retry_in = ?REFUSED_RETRY, "the control plane refuses this agent; the cell keeps running as it is");
                    tokio::time::sleep(REFUSED_RETRY).await;
                }
                Ok(false) => {
                    accepted_once = true;
                    backoff = Duration::from_millis(200);
                }
                Ok(true) => {
                    accepted_once = true;
                    // What failed will fail again until something changes: don't spin on it.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    // Control plane unreachable or refusing: keep the cell as it is, retry with
                    // backoff (static stability).
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "sync failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Makes the cell match `state`: migrations, then (pooled PostgreSQL cells) row-level security,
/// then the workload at the desired release. Returns the applied migrations and the isolation
/// drift, or the one-line reason it stopped.
async fn reconcile(
    config: &Config,
    cell_db: &mut Option<CellDb>,
    deployer: &mut impl Deployer,
    state: &DesiredState,
) -> Reconciled {
    let mut done = Reconciled::default();
    if let Err(e) = reconcile_steps(config, cell_db, deployer, state, &mut done).await {
        done.stopped = Some(e);
    }
    done
}

/// What one reconcile pass found and did: each part is set once its step ran, so a pass that
/// stops half-way still reports what it did.
#[derive(Debug, Default)]
struct Reconciled {
    applied: Option<Vec<AppliedMigration>>,
    drift: Option<Vec<String>>,
    /// Why the pass stopped short of matching the desired state.
    stopped: Option<String>,
}

async fn reconcile_steps(
    config: &Config,
    cell_db: &mut Option<CellDb>,
    deployer: &mut impl Deployer,
    state: &DesiredState,
    done: &mut Reconciled,
) -> Result<(), String> {
    if cell_db.is_none() {
        *cell_db = Some(
            CellDb::open(&config.database_url)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(db) = cell_db.as_ref() else {
        return Err("cell database not open".to_owned());
    };
    done.applied = Some(
        db.migrate(&state.migrations)
            .await
            .map_err(|e| e.to_string())?,
    );
    done.drift = Some(match state.kind {
        CellKind::Pooled => db.enforce_rls().await.map_err(|e| e.to_string())?,
        CellKind::Dedicated => Vec::new(),
    });
    // Expand migrations run before the new code: the release starts only on a migrated database.
    if let Some(release) = &state.release {
        let endpoint = state
            .endpoint
            .clone()
            .ok_or_else(|| "the cell has no endpoint to run its workload on".to_owned())?;
        let ctx = WorkloadContext {
            endpoint,
            database_url: config.workload_database_url.clone(),
            cell: config.cell.clone(),
        };
        deployer.ensure(release, &ctx).await?;
        deployer.hand_tenants(&cell_tenants(state)).await?;
    }
    Ok(())
}

/// The tenant set the workload enforces: every tenant placed on the cell, with its state.
fn cell_tenants(state: &DesiredState) -> CellTenants {
    let mut tenants: Vec<CellTenant> = state
        .tenants
        .iter()
        .map(|t| CellTenant {
            tenant: t.tenant.clone(),
            state: t.state,
        })
        .collect();
    tenants.dedup_by(|a, b| a.tenant == b.tenant);
    CellTenants {
        generation: state.generation,
        tenants,
    }
}

/// Splits the rows counted per tenant into those of tenants placed on the cell and the rest
/// (isolation drift: data the cell should not hold). Without a desired state yet, every valid
/// tenant id counts as placed (nothing is known to contradict it).
fn split_rows(
    counted: BTreeMap<String, i64>,
    state: Option<&DesiredState>,
) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let mut placed = BTreeMap::new();
    let mut stray = BTreeMap::new();
    for (tenant, rows) in counted {
        let here = TenantId::new(tenant.clone())
            .is_ok_and(|id| state.is_none_or(|s| s.tenants.iter().any(|t| t.tenant == id)));
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
