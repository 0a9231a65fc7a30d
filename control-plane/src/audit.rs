//! The audit chain: every record carries the hash of its predecessor, so editing, removing or
//! reordering records is detectable (`cellfleet audit verify`).
//!
//! Pure functions over stored rows; the store appends and reads them. The hash covers the exact
//! stored text of every field, so nothing is re-serialised between writing and verifying.

use cellfleet_api::{AuditVerification, AuditViolation};
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
        first_bad: None,
    }
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
}
