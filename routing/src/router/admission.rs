//! Whether a request for `(tenant, env)` goes through, and where: the routing decision every
//! endpoint of the router shares.
//!
//! - unknown tenant → refused; suspended → refused with the reason;
//! - active → its cell, unless over its request-rate quota (retry later);
//! - frozen (a move is cutting over) → **held**: the request waits for the next published table
//!   and decides again, until the hold bound passes (retry later). Clients of a move see a short
//!   delay instead of an error, and no request is ever sent to a cell that might be fenced.
//! - a request the edge sends once more because a cell refused it as moved (it names that cell,
//!   `X-Cellfleet-Refused-By`) is held the same way while the table still routes it there: this
//!   router has not seen the new placement yet, and sending it back would only be refused again.

use std::time::Duration;

use axum::http::HeaderValue;
use cellfleet_api::RouteState;
use tokio::time::Instant;

use super::RouterState;
use crate::Route;

/// Where an admitted request goes, as header values ready to send.
#[derive(Debug, Clone)]
pub struct Destination {
    pub cell: HeaderValue,
    /// `None`: the cell declares no endpoint (or one that cannot be a header value).
    pub endpoint: Option<HeaderValue>,
    pub generation: i64,
    /// The table version the decision was made on.
    pub version: i64,
}

/// Why a request is refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request names no tenant.
    NoTenant,
    UnknownTenant,
    Suspended,
}

/// Why a request should be retried later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Later {
    /// The tenant's entry stayed frozen for the whole hold bound.
    Frozen,
    RateLimited,
}

/// A request that does not go through, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Refused(Refusal),
    Retry { why: Later, after: Duration },
}

/// The decision for one request.
#[derive(Debug, Clone)]
pub enum Admission {
    Routed(Destination),
    Denied(Denial),
}

/// What one look at one table says.
enum Look {
    Decided(Admission),
    Frozen,
}

fn look(
    state: &RouterState,
    route: Option<&Route>,
    tenant: &str,
    env: &str,
    version: i64,
    refused_by: Option<&str>,
) -> Look {
    let Some(route) = route else {
        return Look::Decided(Admission::Denied(Denial::Refused(Refusal::UnknownTenant)));
    };
    match route.state {
        RouteState::Suspended => {
            Look::Decided(Admission::Denied(Denial::Refused(Refusal::Suspended)))
        }
        RouteState::Frozen => Look::Frozen,
        RouteState::Active if refused_by == Some(route.cell.as_str()) => Look::Frozen,
        RouteState::Active => {
            if let Some(rps) = route.requests_per_second
                && let Err(after) = state.inner.quotas.check(tenant, env, rps)
            {
                return Look::Decided(Admission::Denied(Denial::Retry {
                    why: Later::RateLimited,
                    after,
                }));
            }
            let Ok(cell) = HeaderValue::from_str(route.cell.as_str()) else {
                return Look::Decided(Admission::Denied(Denial::Refused(Refusal::UnknownTenant)));
            };
            Look::Decided(Admission::Routed(Destination {
                cell,
                endpoint: route
                    .endpoint
                    .as_deref()
                    .and_then(|e| HeaderValue::from_str(e).ok()),
                generation: route.generation.0,
                version,
            }))
        }
    }
}

/// Decides for `(tenant, env)`, holding a frozen tenant's request until its route is unfrozen or
/// the hold bound passes — and a request `refused_by` a cell as moved until the route leads
/// elsewhere.
pub async fn admit(
    state: &RouterState,
    tenant: &str,
    env: &str,
    refused_by: Option<&str>,
) -> Admission {
    let mut held: Option<(tokio::sync::watch::Receiver<i64>, Instant, Instant)> = None;
    loop {
        let decided = {
            let table = state.inner.table.load();
            look(
                state,
                table.lookup(tenant, env),
                tenant,
                env,
                table.version(),
                refused_by,
            )
        };
        match (decided, &mut held) {
            (Look::Decided(admission), held) => {
                if let Some((_, since, _)) = held {
                    state.inner.metrics.held(since.elapsed());
                }
                return admission;
            }
            (Look::Frozen, None) => {
                // Subscribe, then look again: a table published between the first look and the
                // subscription is not missed.
                let started = Instant::now();
                held = Some((
                    state.inner.published.subscribe(),
                    started,
                    started + state.inner.config.hold,
                ));
            }
            (Look::Frozen, Some((published, since, deadline))) => {
                let woke = tokio::time::timeout_at(*deadline, published.changed()).await;
                if !matches!(woke, Ok(Ok(()))) {
                    state.inner.metrics.held(since.elapsed());
                    return Admission::Denied(Denial::Retry {
                        why: Later::Frozen,
                        after: Duration::from_secs(1),
                    });
                }
            }
        }
    }
}
