//! Per-tenant request-rate quotas (`quotas.requestsPerSecond` of the routing entry), enforced
//! with one GCRA limiter (`governor`) per `(tenant, env)`.
//!
//! Limiters live beside the routing table, not in it: tables are replaced on every change, and a
//! tenant's budget must not refill because some other tenant moved. A limiter is created on the
//! tenant's first request and replaced when its quota changes; [`Quotas::retain`] drops those of
//! tenants no longer routed. Only tenants with a quota ever touch the map.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::RoutingTable;

struct Limiter {
    env: Box<str>,
    per_second: u32,
    limiter: Arc<DefaultDirectRateLimiter>,
}

/// The limiters of every tenant with a quota (see the module docs).
#[derive(Default)]
pub struct Quotas {
    by_tenant: DashMap<Box<str>, Vec<Limiter>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("tenants", &self.by_tenant.len())
            .finish()
    }
}

impl Quotas {
    /// Takes one request from `(tenant, env)`'s budget of `per_second` (burst: one second's
    /// worth). `Err(wait)`: over quota, retry after `wait`.
    pub fn check(&self, tenant: &str, env: &str, per_second: u32) -> Result<(), Duration> {
        let Some(rate) = NonZeroU32::new(per_second) else {
            // A quota of zero requests per second admits nothing.
            return Err(Duration::from_secs(1));
        };
        let current = self.by_tenant.get(tenant).and_then(|envs| {
            envs.iter()
                .find(|l| &*l.env == env && l.per_second == per_second)
                .map(|l| l.limiter.clone())
        });
        let limiter = match current {
            Some(limiter) => limiter,
            None => {
                let mut envs = self.by_tenant.entry(tenant.into()).or_default();
                match envs.iter().position(|l| &*l.env == env) {
                    // Another request created it meanwhile, with this quota: share it.
                    Some(i) if envs[i].per_second == per_second => envs[i].limiter.clone(),
                    found => {
                        let limiter = Arc::new(RateLimiter::direct(Quota::per_second(rate)));
                        let fresh = Limiter {
                            env: env.into(),
                            per_second,
                            limiter: limiter.clone(),
                        };
                        match found {
                            Some(i) => envs[i] = fresh,
                            None => envs.push(fresh),
                        }
                        limiter
                    }
                }
            }
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the limiters of routes `table` no longer has.
    pub fn retain(&self, table: &RoutingTable) {
        self.by_tenant.retain(|tenant, envs| {
            envs.retain(|l| table.lookup(tenant, &l.env).is_some());
            !envs.is_empty()
        });
    }

    /// Number of tenants holding a limiter.
    pub fn len(&self) -> usize {
        self.by_tenant.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_tenant_gets_its_quota_and_no_more_and_others_are_unaffected() {
        let q = Quotas::default();
        let admitted = (0..50)
            .filter(|_| q.check("acme", "prod", 10).is_ok())
            .count();
        // A burst of one second's worth (plus at most what refilled during the loop).
        assert!((10..=11).contains(&admitted), "admitted {admitted}");
        let wait = q.check("acme", "prod", 10).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(
            q.check("acme", "staging", 10).is_ok(),
            "envs have their own"
        );
        assert!(
            q.check("globex", "prod", 10).is_ok(),
            "tenants have their own"
        );
        // A raised quota takes effect at once with a fresh budget.
        assert!(q.check("acme", "prod", 1000).is_ok());
        assert!(q.check("zero", "prod", 0).is_err());
    }

    #[test]
    fn limiters_of_unrouted_tenants_are_dropped() {
        let q = Quotas::default();
        q.check("acme", "prod", 5).ok();
        q.check("gone", "prod", 5).ok();
        let table = RoutingTable::from_snapshot(&cellfleet_api::RoutesSnapshot {
            epoch: String::new(),
            version: 1,
            entries: vec![cellfleet_api::RouteEntry {
                tenant: "acme".parse().unwrap(),
                env: "prod".parse().unwrap(),
                cell: "a".parse().unwrap(),
                endpoint: None,
                state: cellfleet_api::RouteState::Active,
                generation: cellfleet_api::Generation(1),
                requests_per_second: Some(5),
                version: 1,
            }],
        })
        .unwrap();
        q.retain(&table);
        assert_eq!(q.len(), 1);
    }
}
