//! Who may do what: bearer tokens and the role matrix (SPEC §11).
//!
//! Every route names one [`Action`]; [`allows`] is the whole matrix. A token is 256 random bits
//! shown once at creation; only its SHA-256 is stored (see `store::tokens`). `agent` tokens are
//! bound to one cell and may only use the agent routes for that cell; `edge` tokens only read
//! routes. Neither can use any operator route.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cellfleet_api::{CellName, Role};
use sha2::{Digest, Sha256};

/// What a route does, for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read regions, cells, tenants, placements, explanations and contexts.
    ReadFleet,
    /// Read the audit log and verify it.
    ReadAudit,
    /// Read `/metrics` and `/openapi.json`.
    ReadMetadata,
    /// Declare regions and cells (`apply` of kinds Region and Cell).
    ManageInfrastructure,
    /// Onboard tenants and change their lifecycle (`apply` of kind Tenant, `tenant …`).
    ManageTenants,
    /// Create, list and revoke API tokens.
    ManageTokens,
    /// A cell agent reading its own cell's desired state and reporting (agent tokens only).
    AgentSync,
    /// Read the routing table (edge proxies, and every reader).
    ReadRoutes,
    /// Checkpoint the audit chain on demand.
    ManageAudit,
    /// Run release trains, stop the line, roll feature flags out.
    ManageReleases,
    /// Run, approve and abort runbooks (each runbook names the roles that may run it).
    RunRunbooks,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::ReadFleet,
        Action::ReadAudit,
        Action::ReadMetadata,
        Action::ManageInfrastructure,
        Action::ManageTenants,
        Action::ManageTokens,
        Action::AgentSync,
        Action::ReadRoutes,
        Action::ManageAudit,
        Action::ManageReleases,
        Action::RunRunbooks,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Action::ReadFleet => "read the fleet",
            Action::ReadAudit => "read the audit log",
            Action::ReadMetadata => "read metrics and the API description",
            Action::ManageInfrastructure => "change regions and cells",
            Action::ManageTenants => "change tenants",
            Action::ManageTokens => "manage API tokens",
            Action::AgentSync => "use the cell agent routes",
            Action::ReadRoutes => "read the routing table",
            Action::ManageAudit => "checkpoint the audit log",
            Action::ManageReleases => "run release trains and flags",
            Action::RunRunbooks => "run runbooks",
        }
    }
}

/// The role matrix.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        // Agent routes act for one cell: only a token bound to that cell may use them.
        Role::Admin => action != AgentSync,
        Role::Sre => matches!(
            action,
            ReadFleet
                | ReadAudit
                | ReadMetadata
                | ReadRoutes
                | ManageInfrastructure
                | ManageReleases
                | RunRunbooks
        ),
        Role::Operator => matches!(
            action,
            ReadFleet | ReadAudit | ReadMetadata | ReadRoutes | ManageTenants | RunRunbooks
        ),
        Role::Viewer => matches!(action, ReadFleet | ReadAudit | ReadMetadata | ReadRoutes),
        Role::Agent => action == AgentSync,
        Role::Edge => action == ReadRoutes,
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
    /// The one cell an `agent` token is bound to.
    pub cell: Option<CellName>,
}

impl Principal {
    /// How the caller appears in the audit log.
    pub fn actor(&self) -> String {
        format!("token:{} ({})", self.token_id, self.role)
    }
}

/// Prefix of every token secret, so leaked tokens are easy to recognise in logs and scanners.
pub const TOKEN_PREFIX: &str = "cft_";

/// A fresh token secret and its stored hash.
pub fn generate_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_token(&secret);
    (secret, hash)
}

/// The stored form of a token secret.
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A short public id for a token (shown in lists and the audit log; not a secret).
pub fn new_token_id() -> String {
    let mut bytes = [0u8; 6];
    rand::fill(&mut bytes);
    format!("tok_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = generate_token();
        let (b, hb) = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43);
        assert_eq!(hash_token(&a), ha);
        assert_ne!(ha, hb);
        assert!(!ha.contains(&a));
    }

    #[test]
    fn only_admins_manage_tokens_and_only_agents_sync() {
        for role in Role::ALL {
            assert_eq!(allows(*role, Action::ManageTokens), *role == Role::Admin);
            assert_eq!(allows(*role, Action::AgentSync), *role == Role::Agent);
            if matches!(role, Role::Edge | Role::Agent) {
                let operator_actions = Action::ALL
                    .iter()
                    .filter(|a| !matches!(a, Action::AgentSync | Action::ReadRoutes));
                assert!(operator_actions.clone().all(|a| !allows(*role, *a)));
            }
        }
    }
}
