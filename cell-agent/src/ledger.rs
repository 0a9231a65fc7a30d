//! The agent's ledger: the last desired state it accepted, on disk, so that a restarted agent
//! resumes where it was and the control plane can never push it backwards.
//!
//! Rules (SPEC §7): an older generation is rejected; the same generation with different content is
//! an error (the control plane promised that a generation names one content); the same generation
//! with the same content is a no-op; a newer one is written durably (temp file, fsync, rename)
//! *before* the agent acts on it.

use std::path::{Path, PathBuf};

use cellfleet_api::DesiredState;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("desired generation {got} is older than the ledger's {have}: refusing to go back")]
    Stale { got: i64, have: i64 },
    #[error(
        "desired generation {generation} arrived with content different from the ledger's for the same generation"
    )]
    Conflict { generation: i64 },
    #[error("the desired state is for cell {got}, but this agent runs cell {expected}")]
    WrongCell { got: String, expected: String },
    #[error("ledger {path}: {why}")]
    Io { path: PathBuf, why: String },
}

/// What accepting a desired state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Newer: recorded; the agent must now make the cell match it.
    Advanced,
    /// The state the ledger already holds.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    cell: String,
    generation: i64,
    content_hash: String,
    state: DesiredState,
}

#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    cell: String,
    record: Option<Record>,
}

/// The hash of what a generation versions (one definition, shared with the control plane).
fn content_hash(state: &DesiredState) -> String {
    state.content_hash()
}

impl Ledger {
    /// Opens the ledger of `cell` in `data_dir` (empty if the agent never accepted anything).
    pub fn open(data_dir: &Path, cell: &str) -> Result<Ledger, LedgerError> {
        let path = data_dir.join("ledger.json");
        let io = |why: String| LedgerError::Io {
            path: path.clone(),
            why,
        };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| io(format!("cannot create the data directory: {e}")))?;
        let record = match std::fs::read(&path) {
            Ok(bytes) => {
                let record: Record = serde_json::from_slice(&bytes)
                    .map_err(|e| io(format!("unreadable (not a ledger?): {e}")))?;
                if record.cell != cell {
                    return Err(io(format!("belongs to cell {}, not {cell}", record.cell)));
                }
                if content_hash(&record.state) != record.content_hash
                    || record.state.generation != record.generation
                {
                    return Err(io("damaged: its content does not match its hash".into()));
                }
                Some(record)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e.to_string())),
        };
        Ok(Ledger {
            path,
            cell: cell.to_owned(),
            record,
        })
    }

    /// The generation the ledger holds (0 before the first).
    pub fn generation(&self) -> i64 {
        self.record.as_ref().map_or(0, |r| r.generation)
    }

    pub fn state(&self) -> Option<&DesiredState> {
        self.record.as_ref().map(|r| &r.state)
    }

    /// Applies the rules in the module docs to a desired state from the control plane.
    pub fn accept(&mut self, state: &DesiredState) -> Result<Accepted, LedgerError> {
        if state.cell.as_str() != self.cell {
            return Err(LedgerError::WrongCell {
                got: state.cell.to_string(),
                expected: self.cell.clone(),
            });
        }
        let hash = content_hash(state);
        if let Some(have) = &self.record {
            if state.generation < have.generation {
                return Err(LedgerError::Stale {
                    got: state.generation,
                    have: have.generation,
                });
            }
            if state.generation == have.generation {
                return if hash == have.content_hash {
                    Ok(Accepted::Unchanged)
                } else {
                    Err(LedgerError::Conflict {
                        generation: state.generation,
                    })
                };
            }
        }
        let record = Record {
            cell: self.cell.clone(),
            generation: state.generation,
            content_hash: hash,
            state: state.clone(),
        };
        self.write(&record)?;
        self.record = Some(record);
        Ok(Accepted::Advanced)
    }

    fn write(&self, record: &Record) -> Result<(), LedgerError> {
        use std::io::Write;
        let io = |why: String| LedgerError::Io {
            path: self.path.clone(),
            why,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| io(e.to_string()))?;
        let mut file = std::fs::File::create(&tmp).map_err(|e| io(e.to_string()))?;
        file.write_all(&bytes).map_err(|e| io(e.to_string()))?;
        file.sync_all().map_err(|e| io(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cellfleet_api::CellName;

    use super::*;

    fn state(generation: i64, tenants: usize) -> DesiredState {
        let tenant: serde_json::Value = serde_json::json!({
            "tenant": "acme", "env": "prod", "generation": 1, "state": "active", "profile": "mt-standard",
            "quotas": {}, "flags": {},
            "isolation": {
                "database": {"sharing": "shared", "database": "c-db", "schema": "app", "rowScope": "acme"},
                "objectStore": {"sharing": "shared", "bucket": "c-data", "prefix": "tenants/acme/"},
                "queue": {"sharing": "shared", "queue": "jobs", "partitionKey": "acme"},
                "secrets": {"path": "secrets/acme/*", "key": "k"},
                "network": {"sharing": "shared", "network": "c-net", "account": "provider"}
            }
        });
        DesiredState {
            cell: CellName::new("c").unwrap(),
            generation,
            kind: cellfleet_api::CellKind::Pooled,
            migrations: Vec::new(),
            release: None,
            endpoint: None,
            moves: Vec::new(),
            probe: None,
            tenants: (0..tenants)
                .map(|_| serde_json::from_value(tenant.clone()).unwrap())
                .collect(),
        }
    }

    #[test]
    fn newer_advances_same_is_a_no_op_older_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path(), "c").unwrap();
        assert_eq!(ledger.generation(), 0);
        assert_eq!(ledger.accept(&state(2, 0)).unwrap(), Accepted::Advanced);
        assert_eq!(ledger.accept(&state(2, 0)).unwrap(), Accepted::Unchanged);
        assert!(matches!(
            ledger.accept(&state(1, 0)),
            Err(LedgerError::Stale { got: 1, have: 2 })
        ));
        assert!(matches!(
            ledger.accept(&state(2, 1)),
            Err(LedgerError::Conflict { generation: 2 })
        ));
        assert_eq!(ledger.accept(&state(3, 1)).unwrap(), Accepted::Advanced);
        assert!(matches!(
            ledger.accept(&DesiredState {
                cell: CellName::new("d").unwrap(),
                ..state(4, 0)
            }),
            Err(LedgerError::WrongCell { .. })
        ));
        assert_eq!(ledger.generation(), 3);
    }

    #[test]
    fn a_restart_resumes_from_disk_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        Ledger::open(dir.path(), "c")
            .unwrap()
            .accept(&state(5, 1))
            .unwrap();
        let reopened = Ledger::open(dir.path(), "c").unwrap();
        assert_eq!(reopened.generation(), 5);
        assert_eq!(reopened.state().unwrap().tenants.len(), 1);
        let err = Ledger::open(dir.path(), "other").unwrap_err();
        assert!(err.to_string().contains("belongs to cell c"), "{err}");
        let path = dir.path().join("ledger.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("tenants/acme/", "tenants/evil/");
        std::fs::write(&path, text).unwrap();
        let err = Ledger::open(dir.path(), "c").unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        std::fs::write(&path, "not json").unwrap();
        assert!(
            Ledger::open(dir.path(), "c")
                .unwrap_err()
                .to_string()
                .contains("unreadable")
        );
    }
}
