//! Field-level differences between an object as stored and as applied, for `apply --dry-run`
//! and for the apply summary.

use cellfleet_api::FieldChange;
use serde_json::Value;

/// The leaf fields that differ between `old` (absent for a new object) and `new`, with dotted
/// paths under `prefix`. Objects are compared field by field; arrays and scalars as a whole.
pub fn diff(prefix: &str, old: Option<&Value>, new: Option<&Value>) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk(prefix, old, new, &mut out);
    out
}

fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(&join(path, k), a.get(k), b.get(k), out);
            }
        }
        (None, Some(Value::Object(b))) => {
            for (k, v) in b {
                walk(&join(path, k), None, Some(v), out);
            }
        }
        (Some(Value::Object(a)), None) => {
            for (k, v) in a {
                walk(&join(path, k), Some(v), None, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            path: path.to_owned(),
            from: a.cloned(),
            to: b.cloned(),
        }),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reports_changed_added_and_removed_leaves() {
        let old = json!({"capacity": 50, "labels": {"canary": "true"}, "endpoint": "http://a"});
        let new = json!({"capacity": 60, "labels": {"canary": "true", "tier": "gold"}});
        let changes = diff("spec", Some(&old), Some(&new));
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.capacity", "spec.endpoint", "spec.labels.tier"]
        );
        assert_eq!(changes[0].from, Some(json!(50)));
        assert_eq!(changes[1].to, None);
        assert!(diff("spec", Some(&old), Some(&old)).is_empty());
        assert_eq!(diff("spec", None, Some(&new)).len(), 3);
    }
}
