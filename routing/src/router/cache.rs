//! The router's on-disk copy of its last good table (static stability): a router that starts
//! while the control plane is down serves what it last knew instead of refusing everyone.
//!
//! Two files in the cache directory, each replaced atomically (write a temporary file, fsync,
//! rename, fsync the directory), so a crash leaves either the old or the new file, never half:
//! - `routes.json`: the table as a snapshot, written whenever a new table is published;
//! - `synced.json`: `{version, syncedAtMs}`, rewritten while connected, so that after a restart
//!   the staleness counts from the last time that version was known current, not from when it
//!   was first received.

use std::io::Write;
use std::path::{Path, PathBuf};

use cellfleet_api::RoutesSnapshot;
use serde::{Deserialize, Serialize};

use crate::{RoutingError, RoutingTable};

const ROUTES: &str = "routes.json";
const SYNCED: &str = "synced.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoutesFile {
    saved_at_ms: i64,
    snapshot: RoutesSnapshot,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyncedFile {
    version: i64,
    synced_at_ms: i64,
}

/// Why the cached table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a routing table this router wrote: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Table { path: PathBuf, source: RoutingError },
}

/// A table restored from disk and when it was last known current (Unix ms).
#[derive(Debug)]
pub struct Restored {
    pub table: RoutingTable,
    pub as_of_ms: i64,
}

/// The cached table, if the directory holds one.
pub fn load(dir: &Path) -> Result<Option<Restored>, CacheError> {
    let path = dir.join(ROUTES);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Io { path, source }),
    };
    let file: RoutesFile = serde_json::from_slice(&bytes).map_err(|source| CacheError::Format {
        path: path.clone(),
        source,
    })?;
    let table = RoutingTable::from_snapshot(&file.snapshot)
        .map_err(|source| CacheError::Table { path, source })?;
    // The sync marker only counts for the very version it names.
    let synced = std::fs::read(dir.join(SYNCED))
        .ok()
        .and_then(|b| serde_json::from_slice::<SyncedFile>(&b).ok())
        .filter(|s| s.version == table.version())
        .map_or(0, |s| s.synced_at_ms);
    Ok(Some(Restored {
        as_of_ms: file.saved_at_ms.max(synced),
        table,
    }))
}

/// Writes `table` as the cached table, known current at `now_ms`.
pub fn save(dir: &Path, table: &RoutingTable, now_ms: i64) -> Result<(), CacheError> {
    let file = RoutesFile {
        saved_at_ms: now_ms,
        snapshot: table.to_snapshot(),
    };
    write_atomically(dir, ROUTES, &file)
}

/// Records that the cached table at `version` was known current at `now_ms`.
pub fn mark_synced(dir: &Path, version: i64, now_ms: i64) -> Result<(), CacheError> {
    let file = SyncedFile {
        version,
        synced_at_ms: now_ms,
    };
    write_atomically(dir, SYNCED, &file)
}

fn write_atomically(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), CacheError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| CacheError::Io {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec(value).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// This router's stable id: read from `dir/router-id`, or made (`rt-` + 64 random bits) and kept
/// there on first start, so the control plane knows it across restarts.
pub fn router_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("router-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let mut bytes = [0u8; 8];
    rand::fill(&mut bytes);
    let id = format!(
        "rt-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::create_dir_all(dir)?;
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use cellfleet_api::{Generation, RouteEntry, RouteState};

    fn table(version: i64) -> RoutingTable {
        RoutingTable::from_snapshot(&RoutesSnapshot {
            epoch: String::new(),
            version,
            entries: vec![RouteEntry {
                tenant: "acme".parse().unwrap(),
                env: "prod".parse().unwrap(),
                cell: "a".parse().unwrap(),
                endpoint: Some("http://10.0.0.1:80".into()),
                state: RouteState::Active,
                generation: Generation(3),
                requests_per_second: Some(7),
                version,
            }],
        })
        .unwrap()
    }

    #[test]
    fn a_saved_table_comes_back_with_its_sync_time() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none(), "nothing cached yet");
        save(dir.path(), &table(4), 1_000).unwrap();
        let restored = load(dir.path()).unwrap().unwrap();
        assert_eq!(restored.table, table(4));
        assert_eq!(restored.as_of_ms, 1_000);

        mark_synced(dir.path(), 4, 5_000).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().as_of_ms, 5_000);
        // A marker for another version says nothing about this table.
        mark_synced(dir.path(), 9, 8_000).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().as_of_ms, 1_000);
    }

    #[test]
    fn a_damaged_cache_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ROUTES), b"{\"savedAtMs\": 1, \"snap").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("routes.json"), "{err}");
    }
}
