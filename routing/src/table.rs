//! The routing table as an immutable value: built from a control-plane snapshot, advanced by
//! applying watched changes into a *new* table (the old one stays valid for readers), looked up
//! without locks or allocation.
//!
//! Wire types are converted to validated domain values here, and a batch of changes is applied
//! all or nothing: a change that would take a `(tenant, env)` back to an older placement generation
//! rejects the whole batch, and the caller keeps its last good table.

use std::collections::HashMap;

use cellfleet_api::{CellName, Generation, RouteChange, RouteEntry, RouteState, RoutesSnapshot};

/// Where one `(tenant, env)` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub cell: CellName,
    pub endpoint: Option<String>,
    pub state: RouteState,
    pub generation: Generation,
    pub requests_per_second: Option<u32>,
}

impl From<&RouteEntry> for Route {
    fn from(e: &RouteEntry) -> Self {
        Route {
            cell: e.cell.clone(),
            endpoint: e.endpoint.clone(),
            state: e.state,
            generation: e.generation,
            requests_per_second: e.requests_per_second,
        }
    }
}

/// Why a snapshot or a batch of changes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("{tenant}/{env}: generation {got} is older than the table's {have}")]
    OlderGeneration {
        tenant: String,
        env: String,
        got: i64,
        have: i64,
    },
    #[error("{tenant}/{env} appears twice in the snapshot")]
    Duplicate { tenant: String, env: String },
    #[error("change {version} is not after the table's version {have}")]
    OutOfOrder { version: i64, have: i64 },
    #[error(
        "a snapshot at version {version} of epoch {epoch} is older than the table's {have} of the same epoch (a lagging replica?)"
    )]
    Behind {
        version: i64,
        have: i64,
        epoch: String,
    },
}

/// One tenant's routes by environment name.
type Envs = Vec<(Box<str>, Route)>;

/// An immutable routing table at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    version: i64,
    /// The history `version` belongs to (empty: none known, e.g. a cache from before epochs).
    epoch: String,
    /// tenant → its environments (almost always one, so a short vector beats a second map).
    /// Hashed with foldhash (randomly seeded per table): keys come from the control plane, and
    /// SipHash alone costs about as much as the rest of a lookup.
    tenants: HashMap<Box<str>, Envs, foldhash::fast::RandomState>,
    len: usize,
}

impl RoutingTable {
    /// The empty table at version 0.
    pub fn empty() -> Self {
        RoutingTable::default()
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    /// The epoch of the control plane's history this table follows (empty: unknown).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Number of `(tenant, env)` routes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The route of `(tenant, env)`: a hash lookup by `&str` and a scan of the tenant's few
    /// environments; nothing is allocated.
    pub fn lookup(&self, tenant: &str, env: &str) -> Option<&Route> {
        self.tenants
            .get(tenant)?
            .iter()
            .find(|(e, _)| &**e == env)
            .map(|(_, r)| r)
    }

    /// Builds a table from a full snapshot.
    pub fn from_snapshot(snapshot: &RoutesSnapshot) -> Result<Self, RoutingError> {
        let mut table = RoutingTable {
            version: snapshot.version,
            epoch: snapshot.epoch.clone(),
            ..RoutingTable::default()
        };
        for e in &snapshot.entries {
            let envs = table.tenants.entry(e.tenant.as_str().into()).or_default();
            if envs.iter().any(|(env, _)| &**env == e.env.as_str()) {
                return Err(RoutingError::Duplicate {
                    tenant: e.tenant.to_string(),
                    env: e.env.to_string(),
                });
            }
            envs.push((e.env.as_str().into(), Route::from(e)));
            table.len += 1;
        }
        Ok(table)
    }

    /// The table a snapshot makes of this one. A snapshot of another epoch (a history that is
    /// not this table's, e.g. a registry restored from an older copy) replaces the table whatever
    /// it holds; within one epoch, a snapshot behind the table or one that takes a route back a
    /// generation is refused.
    pub fn replaced_by(&self, snapshot: &RoutesSnapshot) -> Result<Self, RoutingError> {
        let next = RoutingTable::from_snapshot(snapshot)?;
        if self.epoch.is_empty() || next.epoch != self.epoch {
            return Ok(next);
        }
        if next.version < self.version {
            return Err(RoutingError::Behind {
                version: next.version,
                have: self.version,
                epoch: next.epoch,
            });
        }
        for (tenant, envs) in &next.tenants {
            for (env, route) in envs {
                if let Some(have) = self.lookup(tenant, env)
                    && route.generation < have.generation
                {
                    return Err(RoutingError::OlderGeneration {
                        tenant: tenant.to_string(),
                        env: env.to_string(),
                        got: route.generation.0,
                        have: have.generation.0,
                    });
                }
            }
        }
        Ok(next)
    }

    /// The table after `changes` (in version order), as a new value; `self` is untouched.
    /// Changes at or below the table's version are skipped (already applied).
    pub fn apply(&self, changes: &[RouteChange]) -> Result<Self, RoutingError> {
        let mut next = self.clone();
        for c in changes {
            if c.version <= self.version {
                continue;
            }
            if c.version <= next.version {
                return Err(RoutingError::OutOfOrder {
                    version: c.version,
                    have: next.version,
                });
            }
            let envs = next.tenants.entry(c.tenant.as_str().into()).or_default();
            let slot = envs.iter().position(|(e, _)| &**e == c.env.as_str());
            match (&c.entry, slot) {
                (Some(entry), Some(i)) => {
                    let have = envs[i].1.generation;
                    if entry.generation < have {
                        return Err(RoutingError::OlderGeneration {
                            tenant: c.tenant.to_string(),
                            env: c.env.to_string(),
                            got: entry.generation.0,
                            have: have.0,
                        });
                    }
                    envs[i].1 = Route::from(entry);
                }
                (Some(entry), None) => {
                    envs.push((c.env.as_str().into(), Route::from(entry)));
                    next.len += 1;
                }
                (None, Some(i)) => {
                    envs.swap_remove(i);
                    next.len -= 1;
                }
                (None, None) => {}
            }
            if envs.is_empty() {
                next.tenants.remove(c.tenant.as_str());
            }
            next.version = c.version;
        }
        Ok(next)
    }

    /// This table, marked as following `epoch` (for a table that did not know its epoch).
    pub fn with_epoch(mut self, epoch: &str) -> Self {
        epoch.clone_into(&mut self.epoch);
        self
    }

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.tenants
            .values()
            .flat_map(|envs| envs.iter().map(|(_, r)| r))
    }

    /// The table as a snapshot (for persisting the last good table).
    pub fn to_snapshot(&self) -> RoutesSnapshot {
        let mut entries: Vec<RouteEntry> = Vec::with_capacity(self.len);
        for (tenant, envs) in &self.tenants {
            for (env, r) in envs {
                if let (Ok(tenant), Ok(env)) = (tenant.parse(), env.parse()) {
                    entries.push(RouteEntry {
                        tenant,
                        env,
                        cell: r.cell.clone(),
                        endpoint: r.endpoint.clone(),
                        state: r.state,
                        generation: r.generation,
                        requests_per_second: r.requests_per_second,
                        version: self.version,
                    });
                }
            }
        }
        entries.sort_by(|a, b| (&a.tenant, &a.env).cmp(&(&b.tenant, &b.env)));
        RoutesSnapshot {
            version: self.version,
            entries,
            epoch: self.epoch.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(
        tenant: &str,
        env: &str,
        cell: &str,
        generation: i64,
        state: RouteState,
    ) -> RouteEntry {
        RouteEntry {
            tenant: tenant.parse().unwrap(),
            env: env.parse().unwrap(),
            cell: cell.parse().unwrap(),
            endpoint: Some(format!("http://{cell}:80")),
            state,
            generation: Generation(generation),
            requests_per_second: None,
            version: 1,
        }
    }

    fn change(version: i64, tenant: &str, env: &str, e: Option<RouteEntry>) -> RouteChange {
        RouteChange {
            version,
            tenant: tenant.parse().unwrap(),
            env: env.parse().unwrap(),
            entry: e,
        }
    }

    fn table() -> RoutingTable {
        RoutingTable::from_snapshot(&RoutesSnapshot {
            epoch: String::new(),
            version: 5,
            entries: vec![
                entry("acme", "prod", "a", 1, RouteState::Active),
                entry("acme", "staging", "s", 1, RouteState::Active),
                entry("globex", "prod", "b", 2, RouteState::Suspended),
            ],
        })
        .unwrap()
    }

    fn snapshot(epoch: &str, version: i64, generation: i64) -> RoutesSnapshot {
        RoutesSnapshot {
            epoch: epoch.to_owned(),
            version,
            entries: vec![entry("acme", "prod", "a", generation, RouteState::Active)],
        }
    }

    #[test]
    fn a_snapshot_of_another_epoch_replaces_the_table_and_one_of_the_same_may_not_go_back() {
        let held = RoutingTable::from_snapshot(&snapshot("e1", 9, 4)).unwrap();
        // Same epoch: behind the table, or a route a generation back, is refused.
        assert!(matches!(
            held.replaced_by(&snapshot("e1", 8, 4)),
            Err(RoutingError::Behind {
                version: 8,
                have: 9,
                ..
            })
        ));
        assert!(matches!(
            held.replaced_by(&snapshot("e1", 10, 3)),
            Err(RoutingError::OlderGeneration {
                got: 3,
                have: 4,
                ..
            })
        ));
        let newer = held.replaced_by(&snapshot("e1", 10, 5)).unwrap();
        assert_eq!((newer.version(), newer.epoch()), (10, "e1"));
        // Another epoch (the registry was restored from an older copy): taken as it is.
        let restored = held.replaced_by(&snapshot("e2", 5, 2)).unwrap();
        assert_eq!((restored.version(), restored.epoch()), (5, "e2"));
        assert_eq!(
            restored.lookup("acme", "prod").unwrap().generation,
            Generation(2)
        );
        // A table that knows no epoch (a cache from before epochs) takes any snapshot.
        let unknown = table();
        assert_eq!(
            unknown
                .replaced_by(&snapshot("e1", 1, 1))
                .unwrap()
                .version(),
            1
        );
    }

    #[test]
    fn lookups_find_each_env() {
        let t = table();
        assert_eq!((t.version(), t.len()), (5, 3));
        assert_eq!(t.lookup("acme", "prod").unwrap().cell.as_str(), "a");
        assert_eq!(t.lookup("acme", "staging").unwrap().cell.as_str(), "s");
        assert_eq!(
            t.lookup("globex", "prod").unwrap().state,
            RouteState::Suspended
        );
        assert!(t.lookup("acme", "dev").is_none());
        assert!(t.lookup("nobody", "prod").is_none());
    }

    #[test]
    fn changes_make_a_new_table_and_leave_the_old_one() {
        let t = table();
        let next = t
            .apply(&[
                change(
                    6,
                    "acme",
                    "prod",
                    Some(entry("acme", "prod", "c", 2, RouteState::Frozen)),
                ),
                change(7, "globex", "prod", None),
                change(
                    8,
                    "initech",
                    "prod",
                    Some(entry("initech", "prod", "d", 1, RouteState::Active)),
                ),
            ])
            .unwrap();
        assert_eq!((next.version(), next.len()), (8, 3));
        assert_eq!(
            next.lookup("acme", "prod").unwrap().state,
            RouteState::Frozen
        );
        assert!(next.lookup("globex", "prod").is_none());
        assert_eq!(
            t.lookup("acme", "prod").unwrap().cell.as_str(),
            "a",
            "readers of the old table see it unchanged"
        );
        // Already-applied changes are skipped; a snapshot round trip is lossless.
        assert_eq!(
            next.apply(&[change(7, "globex", "prod", None)]).unwrap(),
            next
        );
        assert_eq!(
            RoutingTable::from_snapshot(&next.to_snapshot()).unwrap(),
            next
        );
    }

    #[test]
    fn a_batch_going_back_a_generation_is_refused_whole() {
        let t = table();
        let err = t
            .apply(&[
                change(6, "acme", "staging", None),
                change(
                    7,
                    "globex",
                    "prod",
                    Some(entry("globex", "prod", "b", 1, RouteState::Active)),
                ),
            ])
            .unwrap_err();
        assert_eq!(
            err,
            RoutingError::OlderGeneration {
                tenant: "globex".into(),
                env: "prod".into(),
                got: 1,
                have: 2
            }
        );
        assert!(t.lookup("acme", "staging").is_some());
        let dup = RoutesSnapshot {
            epoch: String::new(),
            version: 1,
            entries: vec![
                entry("a", "prod", "x", 1, RouteState::Active),
                entry("a", "prod", "y", 1, RouteState::Active),
            ],
        };
        assert!(matches!(
            RoutingTable::from_snapshot(&dup),
            Err(RoutingError::Duplicate { .. })
        ));
    }
}
