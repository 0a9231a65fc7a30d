//! The agent loop: long-poll the control plane for this cell's desired state, record it in the
//! ledger, make the cell match it, report.
//!
//! Making the cell match is, in this version, accepting the tenant set into the ledger (which the
//! workload and migration steps of later versions read); the loop, the ledger rules, the reports
//! and the recovery after restarts and control-plane outages are the real protocol.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cellfleet_api::{AgentReport, DesiredState, ErrorBody};

use crate::ledger::{Accepted, Ledger};

#[derive(Debug, Clone)]
pub struct Config {
    pub control_plane: String,
    pub token: String,
    pub cell: String,
    pub data_dir: PathBuf,
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

async fn checked(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&body)
        .map(|e| e.message)
        .unwrap_or(body);
    anyhow::bail!("control plane answered {status}: {message}")
}

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
    // What stops the reconcile now (reported with every report until it clears).
    let mut errors: Vec<String> = Vec::new();
    let mut reported: Option<AgentReport> = None;
    loop {
        let step = async {
            let desired = cp.desired(ledger.generation(), config.poll).await?;
            errors.clear();
            match ledger.accept(&desired) {
                Ok(Accepted::Advanced) => {
                    tracing::info!(
                        generation = desired.generation,
                        tenants = desired.tenants.len(),
                        "desired state accepted"
                    );
                }
                Ok(Accepted::Unchanged) => {}
                Err(e) => {
                    tracing::error!(error = %e, "desired state refused");
                    errors.push(e.to_string());
                }
            }
            let report = AgentReport {
                observed_generation: ledger.generation(),
                errors: errors.clone(),
                ..AgentReport::default()
            };
            // Report when something changed, and at least once per poll as a heartbeat.
            cp.report(&report).await?;
            if reported.as_ref() != Some(&report) {
                tracing::info!(
                    observed = report.observed_generation,
                    errors = report.errors.len(),
                    "reported"
                );
            }
            reported = Some(report);
            anyhow::Ok(!errors.is_empty())
        };
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("cell agent stopping");
                return Ok(());
            }
            result = step => match result {
                Ok(false) => backoff = Duration::from_millis(200),
                Ok(true) => {
                    // A refused desired state will be refused again until the control plane
                    // changes: don't spin on it.
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
