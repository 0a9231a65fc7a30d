//! Reading, verifying and anchoring the audit log (see `crate::audit` for the chain and its
//! checkpoints, `crate::audit_key` for the key).

use cellfleet_api::{AuditCheckpoint, AuditKeyView, AuditRecord, AuditVerification};

use super::{Error, Registry, Result};
use crate::audit::{CopySource, verify_anchored};
use crate::store;

impl Registry {
    /// The newest `limit` audit records (optionally of one target and its children), oldest first.
    pub async fn audit(&self, target: Option<&str>, limit: i64) -> Result<Vec<AuditRecord>> {
        let mut conn = self.store.read().await?;
        Ok(store::audit_list(&mut conn, target, limit.clamp(1, 10_000)).await?)
    }

    /// Re-computes the whole chain and checks it against every signed checkpoint: those in the
    /// registry, those in this server's checkpoint log, and `copies` kept elsewhere.
    pub async fn verify_audit(&self, copies: &[AuditCheckpoint]) -> Result<AuditVerification> {
        // One snapshot for head, records and checkpoints, so a record appended meanwhile is not
        // mistaken for tampering, and a record added behind the head's back is.
        let mut snapshot = self.store.read_snapshot().await?;
        let head = store::audit_head(&mut snapshot).await?;
        let records = store::audit_all(&mut snapshot).await?;
        let stored = store::audit_checkpoints(&mut snapshot).await?;
        drop(snapshot);
        let mut all: Vec<(AuditCheckpoint, CopySource)> = stored
            .into_iter()
            .map(|c| (c, CopySource::Registry))
            .collect();
        if let Some(key) = &self.audit_key {
            let logged = key.logged().map_err(|e| Error::Io(e.to_string()))?;
            all.extend(logged.into_iter().map(|c| (c, CopySource::Log)));
        }
        all.extend(copies.iter().cloned().map(|c| (c, CopySource::Caller)));
        let key = self.audit_key.as_ref().map(|k| k.verifying_key());
        Ok(verify_anchored(records, head, &all, key.as_ref()))
    }

    /// Signs the chain's head if no checkpoint covers it yet, stores the checkpoint and copies it
    /// outside the registry. Returns it (`None`: no key, an empty log, or the head is covered).
    pub async fn checkpoint_audit(&self) -> Result<Option<AuditCheckpoint>> {
        let Some(key) = &self.audit_key else {
            return Ok(None);
        };
        let mut snapshot = self.store.read_snapshot().await?;
        let (seq, hash) = store::audit_head(&mut snapshot).await?;
        let newest = store::audit_checkpoints(&mut snapshot)
            .await?
            .last()
            .map(|c| c.seq);
        drop(snapshot);
        if seq == 0 || newest.is_some_and(|n| n >= seq) {
            return Ok(None);
        }
        let cp = key.sign(seq, &hash, chrono::Utc::now());
        let mut conn = self.store.read().await?;
        store::insert_checkpoint(&mut conn, &cp).await?;
        // The copy outside the database is what a database writer cannot reach: failing to make
        // it is an error the operator must see.
        key.emit(&cp).map_err(|e| Error::Io(e.to_string()))?;
        Ok(Some(cp))
    }

    pub async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>> {
        let mut conn = self.store.read().await?;
        Ok(store::audit_checkpoints(&mut conn).await?)
    }

    /// The public half of the audit key.
    pub async fn audit_key(&self) -> Result<AuditKeyView> {
        self.audit_key
            .as_ref()
            .map(|k| k.view())
            .ok_or_else(|| super::not_found("audit key", "(none configured)"))
    }
}
