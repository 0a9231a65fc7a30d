//! Releases (SPEC §2, §8): immutable application versions, and which release each cell runs.
//!
//! `release deploy` moves cells to a release by hand; release trains (a later issue) will move
//! them in waves with gates. Either way the cell's desired state carries the release, so its agent
//! deploys it.

use cellfleet_api::{ApplyOutcome, ApplyResult, CellName, ManifestFile, ReleaseSpec, ReleaseView};
use serde_json::json;

use super::apply::result;
use super::{Error, Registry, Result, not_found};
use crate::manifest::{Origin, parse_release};
use crate::store::{self, Caller, Tx};

impl Registry {
    /// Registers a release from its manifest. The same manifest again is a no-op; a different one
    /// for an existing version is refused (releases are immutable: make a new version).
    pub async fn create_release(
        &self,
        caller: &Caller,
        file: &ManifestFile,
    ) -> Result<(ReleaseView, bool)> {
        let (version, spec) = parse_release(file)?;
        let mut tx = self.store.begin(caller).await?;
        let applied = apply_release(&mut tx, None, &version, &spec).await?;
        let view = store::get_release(tx.conn(), &version)
            .await?
            .ok_or_else(|| not_found("release", &version))?;
        self.commit(tx).await?;
        Ok((view, applied.outcome == ApplyOutcome::Created))
    }

    pub async fn releases(&self) -> Result<Vec<ReleaseView>> {
        let mut conn = self.store.read().await?;
        Ok(store::list_releases(&mut conn).await?)
    }

    /// Sets the release `cells` (every cell when empty) should run. Returns the cells changed.
    pub async fn deploy_release(
        &self,
        caller: &Caller,
        version: &str,
        cells: &[CellName],
    ) -> Result<Vec<CellName>> {
        let mut tx = self.store.begin(caller).await?;
        let changed = deploy_release_in(&mut tx, version, cells).await?;
        self.commit(tx).await?;
        Ok(changed)
    }
}

/// Assigns `version` to `cells` (every cell when empty) inside `tx`: the cells that changed.
pub(super) async fn deploy_release_in(
    tx: &mut Tx,
    version: &str,
    cells: &[CellName],
) -> Result<Vec<CellName>> {
    if store::get_release(tx.conn(), version).await?.is_none() {
        return Err(not_found("release", version));
    }
    let targets = if cells.is_empty() {
        store::cell_names(tx.conn()).await?
    } else {
        cells.to_vec()
    };
    let mut changed = Vec::new();
    for cell in &targets {
        let row = store::get_cell(tx.conn(), cell)
            .await?
            .ok_or_else(|| not_found("cell", cell))?;
        if row.desired_release.as_deref() == Some(version) {
            continue;
        }
        super::trains::assign_release(tx, cell, Some(version)).await?;
        tx.audit(
            "cell.release",
            &format!("cell/{cell}"),
            json!({ "from": row.desired_release, "to": version }),
        );
        changed.push(cell.clone());
    }
    Ok(changed)
}

/// Stores a release inside a mutation (`release create`, or a `Release` document of an apply,
/// whose `origin` then prefixes errors). The same spec again is `unchanged`; another spec for an
/// existing version is refused; the migrations it needs must be in the stream already.
pub(super) async fn apply_release(
    tx: &mut Tx,
    origin: Option<&Origin>,
    version: &str,
    spec: &ReleaseSpec,
) -> Result<ApplyResult> {
    let at = |message: String| match origin {
        Some(o) => format!("{}: document {}: {message}", o.file, o.document),
        None => message,
    };
    if let Some(existing) = store::get_release(tx.conn(), version).await? {
        if existing.spec == *spec {
            return Ok(result(
                "Release",
                version,
                ApplyOutcome::Unchanged,
                Vec::new(),
            ));
        }
        return Err(Error::Conflict(at(format!(
            "release {version} exists with a different spec; releases are immutable: create a new version"
        ))));
    }
    if let Some(needed) = spec.migrations.as_ref().map(|m| m.up_to) {
        let newest = store::list_migrations(tx.conn())
            .await?
            .last()
            .map_or(0, |m| m.version);
        if needed > newest {
            return Err(Error::Invalid(at(format!(
                "release {version} needs migrations up to V{needed}, but the stream ends at V{newest}: add them first"
            ))));
        }
    }
    let now = tx.now;
    store::insert_release(tx.conn(), version, spec, now).await?;
    tx.audit(
        "release.create",
        &format!("release/{version}"),
        json!({ "spec": spec }),
    );
    Ok(result(
        "Release",
        version,
        ApplyOutcome::Created,
        Vec::new(),
    ))
}
