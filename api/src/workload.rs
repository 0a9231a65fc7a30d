//! The cell workload contract: what a cell agent and the application it runs say to each other.
//!
//! The agent starts the workload with `WORKLOAD_INSTANCE` (a fresh random nonce per process) and
//! `WORKLOAD_CONTROL_TOKEN` (a secret for the control route) in its environment, besides
//! `WORKLOAD_LISTEN`, `WORKLOAD_DATABASE_URL`, `WORKLOAD_RELEASE` and `WORKLOAD_CELL`. The
//! workload answers:
//!
//! - `GET /healthz` with [`WorkloadHealth`]: the agent believes a workload is healthy only when
//!   the answer carries the instance it started, at the release it deployed — a port held by any
//!   other process does not pass for its workload;
//! - `PUT /cellfleet/tenants` (bearer: the control token) with [`CellTenants`]: the tenants it may
//!   serve. It serves a tenant only while the latest set names it `active`; it refuses every
//!   other tenant before touching data, with an answer that is safe to retry (see
//!   [`refusal`]); until the first set arrives it serves no tenant at all.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::TenantId;
use crate::model::TenantState;

/// The header a workload names the reason of a refusal in (shared with the edge router).
pub const REASON_HEADER: &str = "x-cellfleet-reason";

/// On a refusal the edge may deliver elsewhere (`moved`, `not-placed-here`): the cell that
/// refused. The edge sends it back with the request it delivers once more, so the router holds
/// that request until its table routes the tenant elsewhere; a request that carries it is never
/// redirected again.
pub const REFUSED_BY_HEADER: &str = "x-cellfleet-refused-by";

/// Set by an edge that re-routes refused requests by following a redirect (Envoy's internal
/// redirects): a refusal the edge may deliver elsewhere is then a `307` to the same URL (with
/// the same reason headers) instead of its `421`/`503`, unless the request already carries
/// [`REFUSED_BY_HEADER`].
pub const REDIRECT_HEADER: &str = "x-cellfleet-redirect";

/// `GET /healthz` of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadHealth {
    pub status: String,
    pub release: String,
    /// The `WORKLOAD_INSTANCE` this process was started with.
    pub instance: String,
    pub cell: String,
    /// The generation of the tenant set in force (none before the agent sent one).
    pub tenants_generation: Option<i64>,
}

/// One tenant a cell's workload knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellTenant {
    pub tenant: TenantId,
    pub state: TenantState,
    /// A move is cutting the tenant over: refuse its requests as moved (`503`, retry-safe).
    #[serde(default)]
    pub fenced: bool,
    /// The tenant's feature flags as the fleet resolves them (its own, fleet flags aimed at it,
    /// kills): the workload exposes what it sees at `GET /cellfleet/flags?tenant=…`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub flags: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The tenants a cell's workload may serve: those placed on the cell (from the agent's desired
/// state) with their state. Only `active` tenants are served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellTenants {
    /// The desired-state generation the set comes from; a workload ignores an older one.
    pub generation: i64,
    /// Orders sets of one generation (the agent's moves change the set between generations).
    #[serde(default)]
    pub epoch: u64,
    pub tenants: Vec<CellTenant>,
}

/// How a workload refuses a tenant request it must not serve, before applying anything.
pub mod refusal {
    /// The tenant is not placed on this cell (unknown, a draft, or placed elsewhere): `421
    /// Misdirected Request` — by RFC 9110 §15.5.20 any request may be retried elsewhere, whatever
    /// its method — with `Retry-After`, since the routing table may be catching up.
    pub const NOT_HERE: (u16, &str) = (421, "not-placed-here");
    /// The tenant is placed here but not active (suspended, archived): `403`.
    pub const INACTIVE: u16 = 403;
    /// The workload has not received its tenant set yet (it just started): `503` +
    /// `Retry-After`.
    pub const NOT_READY: (u16, &str) = (503, "not-ready");
    /// The tenant is being moved away (fenced): `503` + `Retry-After`; the edge sends the
    /// request once more through the router, which holds it until the new route arrives.
    pub const MOVED: (u16, &str) = (503, "moved");
    /// The reasons of refusals an edge may deliver to another cell (with [`super::REFUSED_BY_HEADER`]).
    pub const REROUTABLE: [&str; 2] = [NOT_HERE.1, MOVED.1];
    /// The marker of a database error raised by a move's write guard: a request that hit it was
    /// not applied, and is answered as moved.
    pub const GUARD_MARKER: &str = "cellfleet-fenced";
}
