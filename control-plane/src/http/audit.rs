//! Audit routes: the log, its verification against signed checkpoints, the checkpoints and the
//! public key that verifies them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cellfleet_api::{
    AuditCheckpoint, AuditKeyView, AuditRecord, AuditVerification, ErrorBody, VerifyAuditRequest,
};
use serde::Deserialize;

use super::extract::{ApiQuery, Auth, OptionalJson};
use super::{ApiError, AppState};
use crate::auth::Action;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records of this target (e.g. `tenant/acme`) and its children (`tenant/acme/prod`).
    pub target: Option<String>,
    /// How many of the newest records (default 100, at most 10000).
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = [AuditRecord])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    auth.require(Action::ReadAudit)?;
    Ok(Json(
        state
            .registry
            .audit(q.target.as_deref(), q.limit.unwrap_or(100))
            .await?,
    ))
}

/// Re-computes the chain and checks it against the signed checkpoints the server has.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, description = "Verification result (ok=false names where tampering starts)", body = AuditVerification)))]
pub async fn verify(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<AuditVerification>, ApiError> {
    auth.require(Action::ReadAudit)?;
    Ok(Json(state.registry.verify_audit(&[]).await?))
}

/// The same, also against checkpoint copies kept elsewhere (from `audit checkpoints -o json`, a
/// log pipeline, …).
#[utoipa::path(post, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    request_body = Option<VerifyAuditRequest>,
    responses((status = 200, description = "Verification result (ok=false names where tampering starts)", body = AuditVerification),
        (status = 400, body = ErrorBody)))]
pub async fn verify_with_copies(
    State(state): State<AppState>,
    auth: Auth,
    OptionalJson(req): OptionalJson<VerifyAuditRequest>,
) -> Result<Json<AuditVerification>, ApiError> {
    auth.require(Action::ReadAudit)?;
    let copies = req.unwrap_or_default().checkpoints;
    Ok(Json(state.registry.verify_audit(&copies).await?))
}

#[utoipa::path(get, path = "/v1/audit/checkpoints", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = [AuditCheckpoint])))]
pub async fn checkpoints(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<AuditCheckpoint>>, ApiError> {
    auth.require(Action::ReadAudit)?;
    Ok(Json(state.registry.audit_checkpoints().await?))
}

/// Checkpoints the chain's head now (the server also does so periodically). 201 with the new
/// checkpoint, or 200 with `null` when a checkpoint already covers the head.
#[utoipa::path(post, path = "/v1/audit/checkpoints", tag = "audit", security(("bearer" = [])),
    responses((status = 201, body = AuditCheckpoint), (status = 200, description = "The head is covered already")))]
pub async fn checkpoint(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<(StatusCode, Json<Option<AuditCheckpoint>>), ApiError> {
    auth.require(Action::ManageAudit)?;
    let made = state.registry.checkpoint_audit().await?;
    let status = if made.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(made)))
}

/// The public half of the audit key (verify checkpoints anywhere with it).
#[utoipa::path(get, path = "/v1/audit/key", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = AuditKeyView), (status = 404, body = ErrorBody)))]
pub async fn key(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<AuditKeyView>, ApiError> {
    auth.require(Action::ReadAudit)?;
    Ok(Json(state.registry.audit_key().await?))
}
