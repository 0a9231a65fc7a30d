//! Which tenants this process may serve (the cell workload contract, `cellfleet_api::workload`).
//!
//! Under a cell agent (started with `WORKLOAD_CONTROL_TOKEN`) the workload serves a tenant only
//! while the last set the agent handed it (`PUT /cellfleet/tenants`) names it `active`, and
//! nothing before the first set arrives. Every refusal happens before the request touches the
//! database, so it is safe to retry. Run by hand without a control token (development), it
//! serves any tenant.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cellfleet_api::workload::{REASON_HEADER, REDIRECT_HEADER, REFUSED_BY_HEADER, refusal};
use cellfleet_api::{CellTenants, TenantState};
use sha2::{Digest, Sha256};

/// The decision for one tenant request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Serve,
    /// Placed elsewhere, or nowhere: 421, retry through the router.
    NotHere,
    /// Placed here, but in this state (not active): 403.
    Inactive(TenantState),
    /// Being moved away (fenced by a move): 503 `moved`, retry through the router.
    Moved,
    /// No tenant set yet: 503, retry shortly.
    NotReady,
}

#[derive(Debug, Default)]
struct Set {
    generation: i64,
    epoch: u64,
    /// Each tenant's state, and whether a move fences it.
    tenants: HashMap<String, (TenantState, bool)>,
    /// Each tenant's feature flags as the fleet resolved them.
    flags: HashMap<String, std::collections::BTreeMap<String, serde_json::Value>>,
}

/// The tenant set in force, shared by every request.
#[derive(Debug, Clone)]
pub struct Tenants {
    /// SHA-256 of the control token; `None`: not under an agent, every tenant is served.
    control: Option<[u8; 32]>,
    set: Arc<RwLock<Option<Set>>>,
}

/// Why the agent's `PUT` was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HandError {
    Unauthorized,
    /// The set is older than the one in force (generation in force).
    Stale(i64),
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Tenants {
    pub fn new(control_token: Option<&str>) -> Tenants {
        Tenants {
            control: control_token.filter(|t| !t.is_empty()).map(digest),
            set: Arc::default(),
        }
    }

    /// Whether the workload enforces a set (it runs under an agent).
    pub fn enforced(&self) -> bool {
        self.control.is_some()
    }

    pub fn decide(&self, tenant: &str) -> Gate {
        if self.control.is_none() {
            return Gate::Serve;
        }
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        match set.as_ref() {
            None => Gate::NotReady,
            Some(set) => match set.tenants.get(tenant) {
                Some((_, true)) => Gate::Moved,
                Some((TenantState::Active, false)) => Gate::Serve,
                Some((state, false)) => Gate::Inactive(*state),
                None => Gate::NotHere,
            },
        }
    }

    /// The feature flags the set in force gives `tenant` (none: not in the set).
    pub fn flags(
        &self,
        tenant: &str,
    ) -> Option<std::collections::BTreeMap<String, serde_json::Value>> {
        let set = self.set.read().unwrap_or_else(|p| p.into_inner());
        set.as_ref().and_then(|s| s.flags.get(tenant).cloned())
    }

    /// The generation of the set in force.
    pub fn generation(&self) -> Option<i64> {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.generation)
    }

    /// Replaces the set, if `authorization` carries the control token and `next` is not older.
    pub fn hand(&self, authorization: Option<&str>, next: CellTenants) -> Result<i64, HandError> {
        let Some(want) = &self.control else {
            return Err(HandError::Unauthorized);
        };
        let given = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| digest(token.trim()));
        if given.as_ref() != Some(want) {
            return Err(HandError::Unauthorized);
        }
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = set.as_ref()
            && (next.generation, next.epoch) < (current.generation, current.epoch)
        {
            return Err(HandError::Stale(current.generation));
        }
        *set = Some(Set {
            generation: next.generation,
            epoch: next.epoch,
            flags: next
                .tenants
                .iter()
                .map(|t| (t.tenant.to_string(), t.flags.clone()))
                .collect(),
            tenants: next
                .tenants
                .into_iter()
                .map(|t| (t.tenant.to_string(), (t.state, t.fenced)))
                .collect(),
        });
        Ok(next.generation)
    }
}

/// The answer to a refused tenant request.
pub fn refused(gate: &Gate, tenant: &str, cell: &str) -> Response {
    let (status, reason, message, retry) = match gate {
        Gate::Serve => return StatusCode::OK.into_response(),
        Gate::NotHere => (
            refusal::NOT_HERE.0,
            refusal::NOT_HERE.1.to_owned(),
            format!(
                "tenant {tenant:?} is not served by cell {cell:?}; nothing was done: retry through the router"
            ),
            true,
        ),
        Gate::Inactive(state) => (
            refusal::INACTIVE,
            state.to_string(),
            format!("tenant {tenant:?} is {state}"),
            false,
        ),
        Gate::Moved => (
            refusal::MOVED.0,
            refusal::MOVED.1.to_owned(),
            format!(
                "tenant {tenant:?} is being moved to another cell; nothing was done: retry through the router"
            ),
            true,
        ),
        Gate::NotReady => (
            refusal::NOT_READY.0,
            refusal::NOT_READY.1.to_owned(),
            "the workload is starting and has no tenant set yet; nothing was done: retry shortly"
                .to_owned(),
            true,
        ),
    };
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
        axum::Json(serde_json::json!({ "error": message, "reason": reason })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&reason) {
        response.headers_mut().insert(REASON_HEADER, v);
    }
    if retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// What the edge asked for a refusal it may deliver to another cell, read from the request
/// before it is handled (the handler consumes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRetry {
    /// Answer such a refusal with a `307` to this URL (the request's own).
    redirect: Option<String>,
}

impl EdgeRetry {
    pub fn of(headers: &HeaderMap, uri: &Uri) -> EdgeRetry {
        let asked = headers.get(REDIRECT_HEADER).is_some();
        let refused_before = headers.get(REFUSED_BY_HEADER).is_some();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|p| matches!(*p, "http" | "https"))
            .unwrap_or("http");
        let redirect = match (asked && !refused_before, host) {
            (true, Some(host)) => Some(format!(
                "{scheme}://{host}{}",
                uri.path_and_query().map_or("/", |p| p.as_str())
            )),
            _ => None,
        };
        EdgeRetry { redirect }
    }

    /// Names this cell on a refusal the edge may deliver elsewhere, and makes it the redirect the
    /// edge asked for.
    pub fn finish(&self, mut response: Response, cell: &str) -> Response {
        let reroutable = response
            .headers()
            .get(REASON_HEADER)
            .and_then(|r| r.to_str().ok())
            .is_some_and(|r| refusal::REROUTABLE.contains(&r));
        if !reroutable {
            return response;
        }
        if let Ok(v) = HeaderValue::from_str(cell) {
            response.headers_mut().insert(REFUSED_BY_HEADER, v);
        }
        if let Some(url) = &self.redirect
            && let Ok(location) = HeaderValue::from_str(url)
        {
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use cellfleet_api::CellTenant;

    fn set(generation: i64, tenants: &[(&str, TenantState)]) -> CellTenants {
        CellTenants {
            generation,
            tenants: tenants
                .iter()
                .map(|(t, s)| CellTenant {
                    tenant: t.parse().unwrap(),
                    state: *s,
                    fenced: false,
                    flags: Default::default(),
                })
                .collect(),
            epoch: 0,
        }
    }

    #[test]
    fn without_a_control_token_every_tenant_is_served() {
        let t = Tenants::new(None);
        assert_eq!(t.decide("anyone"), Gate::Serve);
        assert_eq!(
            t.hand(Some("Bearer x"), set(1, &[])),
            Err(HandError::Unauthorized)
        );
    }

    #[test]
    fn under_an_agent_only_active_tenants_of_the_set_are_served() {
        let t = Tenants::new(Some("tok"));
        assert_eq!(t.decide("acme"), Gate::NotReady);
        assert_eq!(
            t.hand(Some("Bearer nope"), set(1, &[])),
            Err(HandError::Unauthorized)
        );
        assert_eq!(t.hand(None, set(1, &[])), Err(HandError::Unauthorized));
        let s = set(
            3,
            &[
                ("acme", TenantState::Active),
                ("globex", TenantState::Suspended),
            ],
        );
        assert_eq!(t.hand(Some("bearer tok"), s), Ok(3));
        assert_eq!(t.generation(), Some(3));
        assert_eq!(t.decide("acme"), Gate::Serve);
        assert_eq!(t.decide("globex"), Gate::Inactive(TenantState::Suspended));
        assert_eq!(t.decide("initech"), Gate::NotHere);
        // An older set never replaces a newer one.
        assert_eq!(
            t.hand(Some("Bearer tok"), set(2, &[])),
            Err(HandError::Stale(3))
        );
        assert_eq!(t.decide("acme"), Gate::Serve);
        // A newer one does, entirely.
        assert_eq!(t.hand(Some("Bearer tok"), set(4, &[])), Ok(4));
        assert_eq!(t.decide("acme"), Gate::NotHere);
        // A fenced tenant (a move cutting over) is refused as moved; a later epoch of the same
        // generation replaces the set.
        let mut fenced = set(4, &[("acme", TenantState::Active)]);
        fenced.epoch = 2;
        fenced.tenants[0].fenced = true;
        assert_eq!(t.hand(Some("Bearer tok"), fenced), Ok(4));
        assert_eq!(t.decide("acme"), Gate::Moved);
        let mut older = set(4, &[("acme", TenantState::Active)]);
        older.epoch = 1;
        assert_eq!(t.hand(Some("Bearer tok"), older), Err(HandError::Stale(4)));
    }
}
