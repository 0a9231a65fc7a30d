//! The agent's client of the control plane's agent routes (outbound only, with the cell's own
//! token): desired state, reports, and the data path of the moves the cell takes part in.

use std::time::Duration;

use anyhow::Context;
use cellfleet_api::{
    AgentReport, ChunkApplied, DesiredState, ErrorBody, MoveChunk, MoveSideReport, StreamPosition,
};

use crate::agent::Config;

/// The control plane refused the agent itself (401, 403, 404): a bad or revoked token, or a
/// cell name that is not the token's or does not exist. Retrying fast cannot help.
#[derive(Debug, thiserror::Error)]
#[error("the control plane refuses this agent: {status}: {message}")]
pub struct Refused {
    pub status: reqwest::StatusCode,
    pub message: String,
}

/// How a call about a move went wrong: these are states of the move, not of the agent.
#[derive(Debug, thiserror::Error)]
pub enum MoveCallError {
    /// The move is over (or unknown): stop working on it.
    #[error("the move is over: {0}")]
    Gone(String),
    /// The cell has no such part in the move now (its phase changed): wait for the next
    /// desired state.
    #[error("not now: {0}")]
    NotNow(String),
    /// Too much data in flight, or a race: try again shortly.
    #[error("busy: {0}")]
    Busy(String),
    /// The stream is elsewhere than this agent thought: re-read its position.
    #[error("out of step: {0}")]
    OutOfStep(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Talks to the control plane's agent routes.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    http: reqwest::Client,
    base: String,
    token: String,
    cell: String,
}

async fn error_message(resp: reqwest::Response) -> (reqwest::StatusCode, String) {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&body)
        .map(|e| e.message)
        .unwrap_or(body);
    (status, message)
}

async fn checked(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let (status, message) = error_message(resp).await;
    if matches!(status.as_u16(), 401 | 403 | 404) {
        return Err(Refused { status, message }.into());
    }
    anyhow::bail!("control plane answered {status}: {message}")
}

async fn move_checked(resp: reqwest::Response) -> Result<reqwest::Response, MoveCallError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let (status, message) = error_message(resp).await;
    Err(match status.as_u16() {
        404 => MoveCallError::Gone(message),
        403 => MoveCallError::NotNow(message),
        409 => MoveCallError::OutOfStep(message),
        503 => MoveCallError::Busy(message),
        _ => MoveCallError::Other(anyhow::anyhow!(
            "control plane answered {status}: {message}"
        )),
    })
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

    fn move_url(&self, id: &str, what: &str) -> String {
        format!("{}/v1/agent/moves/{id}/{what}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, MoveCallError> {
        let resp =
            req.bearer_auth(&self.token).send().await.map_err(|e| {
                MoveCallError::Other(anyhow::anyhow!("calling the control plane: {e}"))
            })?;
        move_checked(resp).await
    }

    /// Where this cell resumes uploading its stream of move `id`.
    pub async fn move_position(&self, id: &str) -> Result<StreamPosition, MoveCallError> {
        let resp = self
            .send(self.http.get(self.move_url(id, "position")))
            .await?;
        resp.json()
            .await
            .map_err(|e| MoveCallError::Other(e.into()))
    }

    pub async fn upload_chunk(
        &self,
        id: &str,
        chunk: &MoveChunk,
    ) -> Result<StreamPosition, MoveCallError> {
        let resp = self
            .send(self.http.post(self.move_url(id, "chunks")).json(chunk))
            .await?;
        resp.json()
            .await
            .map_err(|e| MoveCallError::Other(e.into()))
    }

    /// Chunks after `after` (`None`: after the last one the control plane knows applied).
    pub async fn download_chunks(
        &self,
        id: &str,
        after: Option<i64>,
    ) -> Result<Vec<MoveChunk>, MoveCallError> {
        let mut req = self.http.get(self.move_url(id, "chunks"));
        if let Some(after) = after {
            req = req.query(&[("after", after.to_string())]);
        }
        let resp = self.send(req).await?;
        resp.json()
            .await
            .map_err(|e| MoveCallError::Other(e.into()))
    }

    pub async fn chunk_applied(&self, id: &str, ack: &ChunkApplied) -> Result<(), MoveCallError> {
        self.send(self.http.post(self.move_url(id, "applied")).json(ack))
            .await?;
        Ok(())
    }

    pub async fn move_side(&self, id: &str, side: &MoveSideReport) -> Result<(), MoveCallError> {
        self.send(self.http.post(self.move_url(id, "side")).json(side))
            .await?;
        Ok(())
    }
}
