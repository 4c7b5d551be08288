//! Two hosts' concurrent changes to one record, laid together field by field: each
//! side's change of a field the other left alone is kept; where both changed one
//! field, the change being written now wins and the other is reported.

use serde_json::{Map, Value};

/// Fields only the host holding an environment's lease may change: what its
/// provider instance reported and the runtime token of its start.
pub(super) const OWNER_FIELDS: &[&str] = &[
    "resourceId",
    "workspacePath",
    "providerState",
    "runtimeGeneration",
    "runtimeTokenSha256",
    "restarts",
    "restartHistory",
    "lastHost",
];

/// A field both sides changed to different values.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Clash {
    /// The field.
    pub(super) field: String,
    /// The other side's value, which lost.
    pub(super) lost: Value,
    /// The value kept.
    pub(super) kept: Value,
}

/// `mine` laid over `theirs`, both changed from `base`: the merged record and the
/// fields where `theirs` lost. `updatedAt` is the later of the two and never a clash.
pub(super) fn merge(
    base: &Map<String, Value>,
    mine: &Map<String, Value>,
    theirs: &Map<String, Value>,
) -> (Map<String, Value>, Vec<Clash>) {
    let mut out = theirs.clone();
    let mut clashes = Vec::new();
    let null = Value::Null;
    let keys: std::collections::BTreeSet<&String> = mine.keys().chain(base.keys()).collect();
    for key in keys {
        let b = base.get(key).unwrap_or(&null);
        let m = mine.get(key).unwrap_or(&null);
        let t = theirs.get(key).unwrap_or(&null);
        if m == b || m == t {
            continue; // Not changed here, or changed alike.
        }
        if key == "updatedAt" {
            if m.as_str() > t.as_str() {
                out.insert(key.clone(), m.clone());
            }
            continue;
        }
        if t != b {
            clashes.push(Clash {
                field: key.clone(),
                lost: t.clone(),
                kept: m.clone(),
            });
        }
        if m.is_null() && !mine.contains_key(key) {
            out.remove(key);
        } else {
            out.insert(key.clone(), m.clone());
        }
    }
    (out, clashes)
}

/// The owner's fields that `theirs` changed from `base` to something `mine` does not
/// have either: changed by another writer than the one `mine` is from.
pub(super) fn owner_fields_changed(
    base: &Map<String, Value>,
    mine: &Map<String, Value>,
    theirs: &Map<String, Value>,
) -> Vec<&'static str> {
    (OWNER_FIELDS.iter().copied())
        .filter(|&f| theirs.get(f) != base.get(f) && theirs.get(f) != mine.get(f))
        .collect()
}

/// `mine` with the owner's fields put back to `theirs`: a host that does not hold
/// the lease never writes what only the lease holder may.
pub(super) fn fence(mine: &mut Map<String, Value>, theirs: &Map<String, Value>) -> bool {
    let mut fenced = false;
    for &field in OWNER_FIELDS {
        if mine.get(field) != theirs.get(field) {
            fenced = true;
            match theirs.get(field) {
                Some(v) => mine.insert(field.to_owned(), v.clone()),
                None => mine.remove(field),
            };
        }
    }
    fenced
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn changes_of_different_fields_are_both_kept() {
        let base = obj(json!({"a": 1, "b": 1, "updatedAt": "2026-01-01T00:00:00Z"}));
        let mine = obj(json!({"a": 2, "b": 1, "updatedAt": "2026-01-01T00:00:02Z"}));
        let theirs = obj(json!({"a": 1, "b": 3, "updatedAt": "2026-01-01T00:00:01Z"}));
        let (out, clashes) = merge(&base, &mine, &theirs);
        assert_eq!(
            Value::Object(out),
            json!({"a": 2, "b": 3, "updatedAt": "2026-01-01T00:00:02Z"})
        );
        assert!(clashes.is_empty());
    }

    #[test]
    fn one_field_changed_on_both_sides_keeps_mine_and_reports_theirs() {
        let base = obj(json!({"a": 1}));
        let (out, clashes) = merge(&base, &obj(json!({"a": 2})), &obj(json!({"a": 3})));
        assert_eq!(Value::Object(out), json!({"a": 2}));
        assert_eq!(clashes.len(), 1);
        assert_eq!(clashes[0].lost, json!(3));
    }

    #[test]
    fn a_field_removed_here_is_removed_and_one_added_there_is_kept() {
        let base = obj(json!({"a": 1}));
        let (out, clashes) = merge(&base, &obj(json!({})), &obj(json!({"a": 1, "c": 5})));
        assert_eq!(Value::Object(out), json!({"c": 5}));
        assert!(clashes.is_empty());
    }

    #[test]
    fn owner_fields_changed_by_another_writer_are_told_from_this_hosts_own() {
        let base = obj(json!({"resourceId": "r1", "restarts": 0, "config": {}}));
        // Another writer's change of a config, and this host's own change landed.
        let theirs = obj(json!({"resourceId": "r1", "restarts": 1, "config": {"x": 1}}));
        let here = obj(json!({"resourceId": "r1", "restarts": 1, "config": {}}));
        assert!(owner_fields_changed(&base, &here, &theirs).is_empty());
        // A resource id this host never had.
        let theirs = obj(json!({"resourceId": "r2", "restarts": 1}));
        assert_eq!(owner_fields_changed(&base, &here, &theirs), ["resourceId"]);
    }

    #[test]
    fn fencing_puts_the_owners_fields_back() {
        let mut mine = obj(json!({"resourceId": "mine", "config": {"x": 1}}));
        let theirs = obj(json!({"resourceId": "owner's", "config": {}}));
        assert!(fence(&mut mine, &theirs));
        assert_eq!(
            Value::Object(mine),
            json!({"resourceId": "owner's", "config": {"x": 1}})
        );
    }
}
