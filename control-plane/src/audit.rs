//! The audit chain: every record carries the hash of its predecessor, so editing, removing or
//! reordering records is detectable (`cellfleet audit verify`).
//!
//! Pure functions over stored rows; the store appends and reads them. The hash covers the exact
//! stored text of every field, so nothing is re-serialised between writing and verifying.
//!
//! **Anchors.** The chain alone is unkeyed: someone who can write the database can edit a record
//! and recompute every later hash and the head, and the chain verifies. So the head is
//! periodically *checkpointed*: "record N has hash H", signed with an Ed25519 key the registry
//! does not hold (`audit_key`), stored in the registry and copied outside it (the server's
//! checkpoint log, its logs, any copy an operator keeps) — Certificate Transparency's signed tree
//! heads, for a linear chain. [`verify_anchored`] checks the chain against every checkpoint it is
//! given: a rewrite, a truncation or a wipe of anything a checkpoint covers no longer matches the
//! signed hash, and the first record after the last checkpoint that still matches is where the
//! tampering starts. Records after the newest checkpoint are not anchored yet (`unanchored`).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cellfleet_api::{AuditCheckpoint, AuditVerification, AuditViolation};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// One audit row exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub correlation_id: String,
    pub payload: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of a record: SHA-256 over an unambiguous encoding (a JSON array) of its fields and
/// its predecessor's hash.
pub fn record_hash(r: &StoredRecord) -> String {
    let fields = (
        &r.prev_hash,
        r.seq,
        r.at_ms,
        &r.actor,
        &r.action,
        &r.target,
        &r.correlation_id,
        &r.payload,
    );
    // Serialising a tuple of strings and integers cannot fail.
    let encoded = serde_json::to_vec(&fields).unwrap_or_default();
    hex::encode(Sha256::digest(&encoded))
}

/// Walks the chain in `seq` order and reports the first record that does not verify. `head` is the
/// `(seq, hash)` the store recorded for the newest record, which catches removal at the tail.
pub fn verify(
    records: impl IntoIterator<Item = StoredRecord>,
    head: (i64, String),
) -> AuditVerification {
    let mut expected_seq = 1;
    let mut prev_hash = String::new();
    let mut count = 0;
    let bad = |seq: i64, problem: String, count: i64| AuditVerification {
        ok: false,
        records: count,
        first_bad: Some(AuditViolation { seq, problem }),
        ..AuditVerification::default()
    };
    for r in records {
        count += 1;
        if r.seq != expected_seq {
            return bad(
                expected_seq,
                format!(
                    "record {expected_seq} is missing (the next stored record is {})",
                    r.seq
                ),
                count,
            );
        }
        if r.prev_hash != prev_hash {
            return bad(
                r.seq,
                format!(
                    "record {} does not follow record {}: the chain was broken by removing, inserting or reordering records",
                    r.seq,
                    r.seq - 1
                ),
                count,
            );
        }
        if record_hash(&r) != r.hash {
            return bad(
                r.seq,
                format!(
                    "record {} was edited: its contents do not match its hash",
                    r.seq
                ),
                count,
            );
        }
        prev_hash = r.hash;
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    if head.0 != last || head.1 != prev_hash {
        return bad(
            last + 1,
            format!(
                "the chain ends at record {last} but the head says {}: the newest records were removed",
                head.0
            ),
            count,
        );
    }
    AuditVerification {
        ok: true,
        records: count,
        ..AuditVerification::default()
    }
}

/// The exact bytes a checkpoint signs.
pub fn checkpoint_statement(seq: i64, hash: &str, at_ms: i64) -> String {
    format!("cellfleet audit checkpoint v1\nseq {seq}\nhash {hash}\nat {at_ms}\n")
}

/// The id of a public key: the first 16 hex digits of SHA-256 over its bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_owned()
}

/// Whether `cp` carries a valid signature of `key`.
pub fn signature_valid(cp: &AuditCheckpoint, key: &VerifyingKey) -> bool {
    let Ok(bytes) = STANDARD.decode(&cp.signature) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&bytes) else {
        return false;
    };
    cp.key_id == key_id(key)
        && key
            .verify_strict(
                checkpoint_statement(cp.seq, &cp.hash, cp.at.timestamp_millis()).as_bytes(),
                &signature,
            )
            .is_ok()
}

/// Where a checkpoint copy came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopySource {
    /// The registry's own table.
    Registry,
    /// The server's checkpoint log (outside the database).
    Log,
    /// Given by the caller (a copy kept elsewhere).
    Caller,
}

impl CopySource {
    fn describe(self) -> &'static str {
        match self {
            CopySource::Registry => "the registry",
            CopySource::Log => "the checkpoint log",
            CopySource::Caller => "the copy given",
        }
    }
}

/// Verifies the chain and then every checkpoint copy against it (see the module docs). Without
/// a key (none configured) only the chain is checked.
pub fn verify_anchored(
    records: Vec<StoredRecord>,
    head: (i64, String),
    copies: &[(AuditCheckpoint, CopySource)],
    key: Option<&VerifyingKey>,
) -> AuditVerification {
    let stored: BTreeMap<i64, String> = records.iter().map(|r| (r.seq, r.hash.clone())).collect();
    let newest_stored = records.last().map_or(0, |r| r.seq);
    let chain = verify(records, head.clone());
    // Problems of the records come first (`first_bad` is where the records' tampering starts);
    // problems of the checkpoints themselves (forged, deleted) after them.
    let mut problems: Vec<AuditViolation> = chain.first_bad.iter().cloned().collect();
    let mut checkpoint_problems: Vec<AuditViolation> = Vec::new();
    let Some(key) = key else {
        return AuditVerification {
            problems,
            unanchored: head.0,
            ..chain
        };
    };
    let mut valid: Vec<&AuditCheckpoint> = Vec::new();
    for (cp, source) in copies {
        if signature_valid(cp, key) {
            valid.push(cp);
        } else {
            checkpoint_problems.push(AuditViolation {
                seq: cp.seq,
                problem: format!(
                    "the checkpoint of record {} in {} has no valid signature of key {}: forged or damaged",
                    cp.seq,
                    source.describe(),
                    key_id(key)
                ),
            });
        }
    }
    // Checkpoints copied outside the registry must still be in it.
    for (cp, source) in copies {
        if *source != CopySource::Registry
            && signature_valid(cp, key)
            && !copies
                .iter()
                .any(|(c, s)| *s == CopySource::Registry && c.seq == cp.seq)
        {
            checkpoint_problems.push(AuditViolation {
                seq: cp.seq,
                problem: format!(
                    "the checkpoint of record {} ({}) is in {} but not in the registry: checkpoints were deleted",
                    cp.seq,
                    cp.at.format("%Y-%m-%d %H:%M:%S UTC"),
                    source.describe()
                ),
            });
        }
    }
    valid.sort_by_key(|c| c.seq);
    valid.dedup_by(|a, b| a == b);
    // Walk the valid checkpoints oldest first: each must match the chain as stored.
    let mut anchored: i64 = 0;
    let mut broken = false;
    for cp in &valid {
        match stored.get(&cp.seq) {
            Some(hash) if *hash == cp.hash => {
                if !broken {
                    anchored = anchored.max(cp.seq);
                }
            }
            Some(hash) => {
                broken = true;
                problems.push(AuditViolation {
                    seq: anchored + 1,
                    problem: format!(
                        "records {}–{} were rewritten: the signed checkpoint of record {} ({}) says hash {}, the registry has {}{}",
                        anchored + 1,
                        cp.seq,
                        cp.seq,
                        cp.at.format("%Y-%m-%d %H:%M:%S UTC"),
                        short(&cp.hash),
                        short(hash),
                        if anchored > 0 {
                            format!("; record {anchored} still matches its checkpoint")
                        } else {
                            String::new()
                        }
                    ),
                });
            }
            None => {
                broken = true;
                problems.push(AuditViolation {
                    seq: newest_stored + 1,
                    problem: format!(
                        "records {}–{} were removed: the signed checkpoint of record {} ({}) says they existed",
                        newest_stored + 1,
                        cp.seq,
                        cp.seq,
                        cp.at.format("%Y-%m-%d %H:%M:%S UTC"),
                    ),
                });
            }
        }
    }
    problems.sort_by_key(|p| p.seq);
    checkpoint_problems.sort_by_key(|p| p.seq);
    problems.extend(checkpoint_problems);
    problems.dedup();
    problems.truncate(100);
    AuditVerification {
        ok: problems.is_empty(),
        records: chain.records,
        first_bad: problems.first().cloned(),
        problems,
        checkpoints: valid.len() as i64,
        anchored_through: (anchored > 0).then_some(anchored),
        unanchored: (head.0 - anchored).max(0),
        key_id: Some(key_id(key)),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<StoredRecord> {
        let mut out: Vec<StoredRecord> = Vec::new();
        for seq in 1..=n {
            let mut r = StoredRecord {
                seq,
                at_ms: 1_700_000_000_000 + seq,
                actor: "token:tok_1 (admin)".into(),
                action: "tenant.create".into(),
                target: format!("tenant/t{seq}"),
                correlation_id: format!("c{seq}"),
                payload: "{}".into(),
                prev_hash: out.last().map(|p| p.hash.clone()).unwrap_or_default(),
                hash: String::new(),
            };
            r.hash = record_hash(&r);
            out.push(r);
        }
        out
    }

    fn head(c: &[StoredRecord]) -> (i64, String) {
        c.last()
            .map(|r| (r.seq, r.hash.clone()))
            .unwrap_or((0, String::new()))
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(5);
        let h = head(&c);
        let v = verify(c, h);
        assert!(v.ok);
        assert_eq!(v.records, 5);
        assert!(verify(Vec::new(), (0, String::new())).ok);
    }

    #[test]
    fn an_edited_record_is_found() {
        let mut c = chain(5);
        let h = head(&c);
        c[2].payload = r#"{"evil":true}"#.into();
        let v = verify(c, h);
        assert_eq!(v.first_bad.unwrap().seq, 3);
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let mut c = chain(5);
        let h = head(&c);
        c[1].actor = "someone else".into();
        c[1].hash = record_hash(&c[1]);
        let bad = verify(c, h).first_bad.unwrap();
        assert_eq!(bad.seq, 3);
        assert!(bad.problem.contains("does not follow"), "{}", bad.problem);
    }

    #[test]
    fn a_removed_record_is_found() {
        let mut c = chain(5);
        let h = head(&c);
        c.remove(1);
        let bad = verify(c, h).first_bad.unwrap();
        assert_eq!(bad.seq, 2);
        assert!(bad.problem.contains("missing"), "{}", bad.problem);
    }

    #[test]
    fn reordered_records_are_found() {
        let mut c = chain(5);
        let h = head(&c);
        // Swap the contents of records 2 and 3 but keep the sequence numbers in order.
        let (a, b) = (c[1].clone(), c[2].clone());
        c[1] = StoredRecord { seq: 2, ..b };
        c[2] = StoredRecord { seq: 3, ..a };
        assert_eq!(verify(c, h).first_bad.unwrap().seq, 2);
    }

    #[test]
    fn removing_the_newest_records_is_found() {
        let mut c = chain(5);
        let h = head(&c);
        c.truncate(3);
        let bad = verify(c, h).first_bad.unwrap();
        assert_eq!(bad.seq, 4);
        assert!(
            bad.problem.contains("newest records were removed"),
            "{}",
            bad.problem
        );
    }

    // ---- anchored verification -------------------------------------------------------------

    use crate::audit_key::AuditKey;

    /// What a database writer can do: edit a record and recompute every later hash (and the
    /// head), so the chain itself verifies.
    fn rewrite_consistently(c: &mut [StoredRecord], index: usize) {
        c[index].payload = r#"{"evil":true}"#.into();
        for i in index..c.len() {
            if i > 0 {
                c[i].prev_hash = c[i - 1].hash.clone();
            }
            c[i].hash = record_hash(&c[i]);
        }
    }

    fn checkpoint(key: &AuditKey, c: &[StoredRecord], seq: i64) -> AuditCheckpoint {
        key.sign(seq, &c[(seq - 1) as usize].hash, chrono::Utc::now())
    }

    fn registry(cps: &[AuditCheckpoint]) -> Vec<(AuditCheckpoint, CopySource)> {
        cps.iter()
            .cloned()
            .map(|c| (c, CopySource::Registry))
            .collect()
    }

    #[test]
    fn checkpoints_anchor_the_chain() {
        let key = AuditKey::ephemeral();
        let c = chain(10);
        let cps = [checkpoint(&key, &c, 4), checkpoint(&key, &c, 8)];
        let h = head(&c);
        let v = verify_anchored(c, h, &registry(&cps), Some(&key.verifying_key()));
        assert!(v.ok, "{v:?}");
        assert_eq!(
            (v.checkpoints, v.anchored_through, v.unanchored),
            (2, Some(8), 2)
        );
        assert_eq!(v.key_id.as_deref(), Some(key.key_id()));
    }

    #[test]
    fn a_consistent_rewrite_is_caught_after_the_last_matching_checkpoint() {
        let key = AuditKey::ephemeral();
        let mut c = chain(10);
        let cps = [checkpoint(&key, &c, 4), checkpoint(&key, &c, 8)];
        rewrite_consistently(&mut c, 5); // record 6
        let h = head(&c);
        // The chain alone cannot see it.
        assert!(verify(c.clone(), h.clone()).ok);
        let v = verify_anchored(c, h, &registry(&cps), Some(&key.verifying_key()));
        assert!(!v.ok);
        let bad = v.first_bad.unwrap();
        assert_eq!(
            bad.seq, 5,
            "the first record after the last matching checkpoint"
        );
        assert!(
            bad.problem.starts_with("records 5–8 were rewritten"),
            "{}",
            bad.problem
        );
        assert_eq!(v.anchored_through, Some(4));
    }

    #[test]
    fn a_rewrite_after_the_newest_checkpoint_is_not_anchored_yet() {
        let key = AuditKey::ephemeral();
        let mut c = chain(10);
        let cps = [checkpoint(&key, &c, 8)];
        rewrite_consistently(&mut c, 9); // record 10: in the unanchored window
        let h = head(&c);
        let v = verify_anchored(c, h, &registry(&cps), Some(&key.verifying_key()));
        assert!(v.ok, "the documented window: {v:?}");
        assert_eq!(v.unanchored, 2);
    }

    #[test]
    fn a_wipe_or_truncation_below_a_checkpoint_is_caught() {
        let key = AuditKey::ephemeral();
        let c = chain(10);
        let cps = [checkpoint(&key, &c, 8)];
        // Everything gone, head reset: the chain of nothing verifies, the checkpoint does not.
        let v = verify_anchored(
            Vec::new(),
            (0, String::new()),
            &registry(&cps),
            Some(&key.verifying_key()),
        );
        assert!(!v.ok);
        assert_eq!(v.first_bad.as_ref().unwrap().seq, 1);
        assert!(
            v.first_bad
                .as_ref()
                .unwrap()
                .problem
                .starts_with("records 1–8 were removed"),
            "{v:?}"
        );
        // The newest five records gone and the head moved back consistently.
        let mut short = chain(10);
        short.truncate(5);
        let h = head(&short);
        let v = verify_anchored(short, h, &registry(&cps), Some(&key.verifying_key()));
        assert_eq!(v.first_bad.unwrap().seq, 6);
    }

    #[test]
    fn forged_and_deleted_checkpoints_are_caught() {
        let key = AuditKey::ephemeral();
        let mut c = chain(10);
        let genuine = checkpoint(&key, &c, 8);
        rewrite_consistently(&mut c, 2);
        let h = head(&c);
        // The writer deletes the registry's checkpoints and signs their own with another key.
        let forger = AuditKey::ephemeral();
        let forged = checkpoint(&forger, &c, 8);
        let copies = vec![(forged, CopySource::Registry), (genuine, CopySource::Log)];
        let v = verify_anchored(c, h, &copies, Some(&key.verifying_key()));
        assert!(!v.ok);
        let problems: Vec<&str> = v.problems.iter().map(|p| p.problem.as_str()).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("no valid signature") && p.contains("the registry")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("records 1–8 were rewritten")),
            "{problems:?}"
        );
        assert_eq!(v.first_bad.unwrap().seq, 1);
    }

    #[test]
    fn a_checkpoint_kept_elsewhere_but_gone_from_the_registry_is_named() {
        let key = AuditKey::ephemeral();
        let c = chain(6);
        let cp = checkpoint(&key, &c, 6);
        let h = head(&c);
        let v = verify_anchored(
            c,
            h,
            &[(cp, CopySource::Caller)],
            Some(&key.verifying_key()),
        );
        assert!(!v.ok);
        assert!(
            v.first_bad
                .unwrap()
                .problem
                .contains("not in the registry: checkpoints were deleted"),
        );
    }
}
