//! What the host changed since the records file was last compacted, per record, and
//! how such a change is laid over a version of the record from the file.
//!
//! A host update is kept as the top-level fields it changed (as JSON), not as a whole
//! record: laid over a record someone edited by hand meanwhile, it keeps the hand's
//! other fields. The journal stores updates the same way, so a replay after a crash
//! merges exactly as the live host would have.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Record, validate};

/// A record as a JSON object, fields as the file names them.
pub(super) type Fields = Map<String, Value>;

/// The field every host change stamps with its time.
pub(super) const UPDATED_AT: &str = "updatedAt";

/// What the host did to a record since the last compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Touch {
    /// Created it.
    Inserted,
    /// Changed it.
    Updated,
    /// Deleted it.
    Removed,
}

impl Touch {
    /// The net effect of `self` followed by `later`.
    pub(super) fn then(self, later: Touch) -> Touch {
        match (self, later) {
            (Touch::Inserted, Touch::Updated) => Touch::Inserted,
            (_, later) => later,
        }
    }
}

/// A record the host changed since the last compaction.
#[derive(Debug, Clone)]
pub(super) struct Dirty {
    /// The net effect.
    pub(super) touch: Touch,
    /// The fields the host's updates set.
    pub(super) fields: BTreeSet<String>,
    /// The record as the file held it when the host first changed it (for telling a
    /// hand's change of the same field apart); `None` for a record the host made.
    pub(super) base: Option<Fields>,
}

impl Dirty {
    /// The first touch of a record whose file version is `base`.
    pub(super) fn new(touch: Touch, base: Option<Fields>) -> Self {
        Self {
            touch,
            fields: BTreeSet::new(),
            base,
        }
    }

    /// `self` followed by `later`: the touches combined, the fields joined, the
    /// older base kept.
    pub(super) fn then(mut self, later: Dirty) -> Dirty {
        self.touch = self.touch.then(later.touch);
        self.fields.extend(later.fields);
        self
    }
}

/// `record` as a JSON object.
pub(super) fn fields_of(record: &Record) -> Fields {
    match serde_json::to_value(record) {
        Ok(Value::Object(map)) => map,
        _ => Fields::new(),
    }
}

/// The top-level fields whose values differ from `before` to `after`; one `after`
/// no longer has is `null`.
pub(super) fn changed(before: &Fields, after: &Fields) -> Fields {
    let mut out = Fields::new();
    for (k, v) in after {
        if before.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

/// `record` with `fields` laid over it (`null` removes a field), checked against
/// the record rules like a hand edit.
pub(super) fn apply(record: &Record, fields: &Fields) -> Result<Record, String> {
    let mut map = fields_of(record);
    for (k, v) in fields {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    let record =
        Record::deserialize(Value::Object(map)).map_err(|e| validate::clean(&e.to_string()))?;
    validate::check(&record)?;
    Ok(record)
}

/// `mine`'s values of `fields` (absent ones as `null`).
pub(super) fn pick(mine: &Fields, fields: &BTreeSet<String>) -> Fields {
    fields
        .iter()
        .map(|k| (k.clone(), mine.get(k).cloned().unwrap_or(Value::Null)))
        .collect()
}

/// The fields both the host and a hand changed since `base`, to different values
/// (`updatedAt` aside: every host change stamps it).
pub(super) fn conflicts(
    base: &Fields,
    theirs: &Fields,
    mine: &Fields,
    fields: &BTreeSet<String>,
) -> Vec<String> {
    fields
        .iter()
        .filter(|k| k.as_str() != UPDATED_AT)
        .filter(|k| theirs.get(*k) != base.get(*k) && theirs.get(*k) != mine.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record::new("a".into(), "alpha".into(), "p".into(), Map::new())
    }

    #[test]
    fn a_change_laid_over_a_hand_edited_record_keeps_the_hands_other_fields() {
        let base = record();
        let mut mine = base.clone();
        mine.restarts = 4;
        mine.last_error = Some("boom".into());
        let mut theirs = base.clone();
        theirs.config.insert("k".into(), "hand".into());
        theirs.last_error = Some("hand".into());
        let (b, m, t) = (fields_of(&base), fields_of(&mine), fields_of(&theirs));
        let touched: BTreeSet<String> = changed(&b, &m).keys().cloned().collect();
        let merged = apply(&theirs, &pick(&m, &touched)).unwrap();
        assert_eq!(merged.restarts, 4);
        assert_eq!(merged.config["k"], "hand");
        assert_eq!(merged.last_error.as_deref(), Some("boom"), "the host wins");
        assert_eq!(
            conflicts(&b, &t, &m, &touched),
            vec!["lastError".to_owned()]
        );

        // A field the host removed is removed.
        let mut cleared = mine.clone();
        cleared.last_error = None;
        let patch = changed(&m, &fields_of(&cleared));
        assert!(patch["lastError"].is_null());
        assert_eq!(apply(&mine, &patch).unwrap().last_error, None);
    }

    #[test]
    fn a_change_that_breaks_the_rules_is_refused() {
        let patch: Fields = serde_json::from_value(serde_json::json!({"name": "../x"})).unwrap();
        assert!(apply(&record(), &patch).is_err());
    }
}
