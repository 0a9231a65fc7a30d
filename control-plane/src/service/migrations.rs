//! The fleet-wide, append-only stream of cell-database migrations (SPEC §2, §7).
//!
//! Files are named `V{version}__{name}.{expand|contract}.sql` — a bare file name: a path (`../V9__x…`)
//! is refused rather than stripped, since a stray file from elsewhere would take a version for
//! good. Adding the same file again is a no-op; a different text (checksum) for a version already
//! in the stream, a version below the newest, or one that skips versions is refused: the stream
//! only grows by the next version at its end, so every cell applies the same SQL in the same order
//! and no version number is lost to a typo. Adding migrations changes every cell's desired state.

use cellfleet_api::{Migration, MigrationAdded, MigrationFile, Phase};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Error, Registry, Result};
use crate::store::{self, Caller};

/// Largest accepted migration text.
const MAX_SQL_BYTES: usize = 1024 * 1024;

/// Parses `V{version}__{name}.{phase}.sql` and its text.
pub fn parse_file(file: &MigrationFile) -> Result<Migration> {
    let bad = |why: &str| Error::Invalid(format!("{}: {why}", file.name));
    if file.name.contains(['/', '\\']) || file.name.starts_with('.') {
        return Err(bad(
            "a migration is named by its bare file name (V{version}__{name}.{expand|contract}.sql), without a path",
        ));
    }
    let stem = file
        .name
        .strip_suffix(".sql")
        .ok_or_else(|| bad("a migration file name ends in .sql"))?;
    let (rest, phase) = stem
        .rsplit_once('.')
        .ok_or_else(|| bad("expected V{version}__{name}.{expand|contract}.sql"))?;
    let phase: Phase = phase.parse().map_err(|e: String| bad(&e))?;
    let (version, name) = rest
        .strip_prefix('V')
        .and_then(|r| r.split_once("__"))
        .ok_or_else(|| bad("expected V{version}__{name}.{expand|contract}.sql"))?;
    let version: i64 = version
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| bad("the version must be a positive integer"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(bad(
            "the name may only contain lowercase letters, digits and '_'",
        ));
    }
    if file.content.trim().is_empty() {
        return Err(bad("the migration is empty"));
    }
    if file.content.len() > MAX_SQL_BYTES {
        return Err(bad("the migration is larger than 1 MiB"));
    }
    Ok(Migration {
        version,
        name: name.to_owned(),
        phase,
        checksum: hex::encode(Sha256::digest(file.content.as_bytes())),
        sql: file.content.clone(),
    })
}

impl Registry {
    pub async fn migrations(&self) -> Result<Vec<Migration>> {
        let mut conn = self.store.read().await?;
        Ok(store::list_migrations(&mut conn).await?)
    }

    /// Appends migrations to the stream (all or nothing).
    pub async fn add_migrations(
        &self,
        caller: &Caller,
        files: &[MigrationFile],
    ) -> Result<Vec<MigrationAdded>> {
        let mut new: Vec<Migration> = files.iter().map(parse_file).collect::<Result<_>>()?;
        new.sort_by_key(|m| m.version);
        if let Some(w) = new.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(Error::Invalid(format!(
                "two files have version {}",
                w[0].version
            )));
        }
        let mut tx = self.store.begin(caller).await?;
        let stream = store::list_migrations(tx.conn()).await?;
        let mut newest = stream.last().map_or(0, |m| m.version);
        let mut results = Vec::with_capacity(new.len());
        for m in &new {
            if let Some(have) = stream.iter().find(|s| s.version == m.version) {
                if have.checksum != m.checksum || have.name != m.name || have.phase != m.phase {
                    return Err(Error::Conflict(format!(
                        "V{} ({}) is already in the stream with different content (checksum {}); the stream is append-only: add a new version instead",
                        m.version, have.name, have.checksum
                    )));
                }
                results.push(MigrationAdded {
                    version: m.version,
                    name: m.name.clone(),
                    outcome: "unchanged".into(),
                });
                continue;
            }
            if m.version <= newest {
                return Err(Error::Conflict(format!(
                    "V{} ({}) would go before V{newest}, the newest in the stream; the stream is append-only",
                    m.version, m.name
                )));
            }
            if m.version > newest + 1 {
                return Err(Error::Conflict(format!(
                    "V{} ({}) would skip V{}{}: the stream grows by the next version, V{}",
                    m.version,
                    m.name,
                    newest + 1,
                    if m.version > newest + 2 {
                        format!("–V{}", m.version - 1)
                    } else {
                        String::new()
                    },
                    newest + 1
                )));
            }
            let now = tx.now;
            store::insert_migration(tx.conn(), m, now).await?;
            tx.audit(
                "migration.add",
                &format!("migration/{}", m.version),
                json!({ "name": m.name, "phase": m.phase, "checksum": m.checksum }),
            );
            newest = m.version;
            results.push(MigrationAdded {
                version: m.version,
                name: m.name.clone(),
                outcome: "created".into(),
            });
        }
        if results.iter().any(|r| r.outcome == "created") {
            for cell in store::cell_names(tx.conn()).await? {
                tx.touch(&cell);
            }
        }
        self.commit(tx).await?;
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file(name: &str, content: &str) -> MigrationFile {
        MigrationFile {
            name: name.into(),
            content: content.into(),
        }
    }

    #[test]
    fn file_names_carry_version_name_and_phase() {
        let m = parse_file(&file(
            "V3__add_notes.expand.sql",
            "CREATE TABLE notes (id INT);",
        ))
        .unwrap();
        assert_eq!(
            (m.version, m.name.as_str(), m.phase),
            (3, "add_notes", Phase::Expand)
        );
        assert_eq!(m.checksum.len(), 64);
        for (name, why) in [
            ("V3__x.sql", "expected V{version}__{name}"),
            ("V0__x.expand.sql", "positive integer"),
            ("V3__X.expand.sql", "lowercase"),
            ("V3__x.later.sql", "unknown phase"),
            ("3__x.expand.sql", "expected V{version}__{name}"),
            ("V3__x.expand.txt", "ends in .sql"),
            ("../../V9__x.expand.sql", "without a path"),
            ("migrations/V3__x.expand.sql", "without a path"),
            ("..\\V3__x.expand.sql", "without a path"),
        ] {
            let err = parse_file(&file(name, "SELECT 1;"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(name) && err.contains(why), "{name}: {err}");
        }
        assert!(
            parse_file(&file("V1__x.expand.sql", "  "))
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
