//! The records file as a document. Each entry of `environments` is read on its own:
//! a valid record is applied; an entry that breaks the rules ([`super::validate`]) is
//! held back — kept verbatim, reported, never started, stopped or deleted — while the
//! rest of the file still applies. Also how a file read from disk merges with host
//! mutations not yet written, so that neither side's change is lost.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::{Changes, Record, validate};
use crate::untrusted;

/// Version of the file layout written by this host.
pub(super) const FORMAT_VERSION: u64 = 1;

/// One entry of `environments`.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    /// A valid record, applied.
    Good(Record),
    /// An entry that breaks the rules, kept as written.
    Held(Held),
}

/// An entry held back, with why.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// The entry as written in the file.
    raw: Value,
    /// Its `id`, if it has a string one.
    pub(super) id: Option<String>,
    /// Its `name`, if it has a string one.
    pub(super) name: Option<String>,
    /// Why it is held back.
    pub(super) reason: String,
    /// The version in force before an edit broke the record; it stays in force (the
    /// environment keeps running or stays stopped) until the entry is fixed.
    pub(super) last_good: Option<Record>,
}

impl Entry {
    /// Reads one entry of the file; `duplicate` says why it repeats an earlier one.
    fn read(raw: Value, duplicate: Option<String>) -> Self {
        let field = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        let (id, name) = (field("id"), field("name"));
        let reason = if let Some(why) = duplicate {
            Err(why)
        } else if !raw.is_object() {
            Err("an environment record must be a JSON object".to_owned())
        } else {
            validate::check_raw_size(&raw).and_then(|()| {
                // Serde's messages may quote the text (an unknown variant) verbatim.
                let record =
                    Record::deserialize(&raw).map_err(|e| validate::clean(&e.to_string()))?;
                validate::check(&record).map(|()| record)
            })
        };
        match reason {
            Ok(record) => Self::Good(record),
            Err(reason) => Self::Held(Held {
                raw,
                id,
                name,
                reason,
                last_good: None,
            }),
        }
    }

    fn id(&self) -> Option<&str> {
        match self {
            Self::Good(r) => Some(&r.id),
            Self::Held(h) => h.id.as_deref(),
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Self::Good(r) => Some(&r.name),
            Self::Held(h) => h.name.as_deref(),
        }
    }

    /// The record in force for this entry, if any.
    pub(super) fn effective(&self) -> Option<&Record> {
        match self {
            Self::Good(r) => Some(r),
            Self::Held(h) => h.last_good.as_ref(),
        }
    }

    fn effective_mut(&mut self) -> Option<&mut Record> {
        match self {
            Self::Good(r) => Some(r),
            Self::Held(h) => h.last_good.as_mut(),
        }
    }
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Good(r) => r.serialize(s),
            Self::Held(h) => h.raw.serialize(s),
        }
    }
}

/// The whole file; top-level fields the host does not know are kept.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Document {
    pub(super) version: u64,
    pub(super) environments: Vec<Entry>,
    #[serde(flatten)]
    pub(super) extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct RawDocument {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    environments: Vec<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// What the host did to a record since its last write.
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

impl Document {
    /// Parses the file; `Err` only when the file as a whole is not a records file
    /// (bad JSON, `environments` not a list). Bad entries are held, not fatal.
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawDocument = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let environments = (raw.environments.into_iter())
            .map(|entry| {
                let field = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_owned);
                let dup_id = field("id").filter(|id| !ids.insert(id.clone()));
                let dup_name = field("name").filter(|n| !names.insert(n.clone()));
                let duplicate = match (dup_id, dup_name) {
                    (Some(id), _) => {
                        Some(format!("another record has id {}", untrusted::named(&id)))
                    }
                    (None, Some(n)) => {
                        Some(format!("another record has name {}", untrusted::named(&n)))
                    }
                    (None, None) => None,
                };
                Entry::read(entry, duplicate)
            })
            .collect();
        Ok(Document {
            version: raw.version,
            environments,
            extra: raw.extra,
        })
    }

    /// Every record in force, in file order.
    pub(super) fn records(&self) -> impl Iterator<Item = &Record> {
        self.environments.iter().filter_map(Entry::effective)
    }

    /// The record in force with `id`.
    pub(super) fn find(&self, id: &str) -> Option<&Record> {
        self.records().find(|r| r.id == id)
    }

    /// The record in force with `id`, and whether it is a valid entry (else its
    /// changes stay in memory: the file keeps the text as written).
    pub(super) fn find_mut(&mut self, id: &str) -> Option<(&mut Record, bool)> {
        self.environments.iter_mut().find_map(|e| {
            let good = matches!(e, Entry::Good(_));
            e.effective_mut().filter(|r| r.id == id).map(|r| (r, good))
        })
    }

    /// Entries held back, with their position in the file.
    pub(super) fn held(&self) -> impl Iterator<Item = (usize, &Held)> {
        self.environments
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Held(h) => Some((i, h)),
                Entry::Good(_) => None,
            })
    }

    /// Whether any entry, held or not, has this name.
    pub(super) fn name_taken(&self, name: &str) -> bool {
        self.environments.iter().any(|e| e.name() == Some(name))
    }

    /// Holds back an entry whose id or name an earlier entry already has (after a
    /// merge; [`Document::parse`] does the same on the text as written).
    fn hold_duplicates(&mut self) {
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for entry in &mut self.environments {
            let dup_id = entry.id().is_some_and(|id| !ids.insert(id.to_owned()));
            let dup_name = entry.name().is_some_and(|n| !names.insert(n.to_owned()));
            if let (Entry::Good(r), true) = (&*entry, dup_id || dup_name) {
                let reason = if dup_id {
                    format!("another record has id {}", untrusted::named(&r.id))
                } else {
                    format!("another record has name {}", untrusted::named(&r.name))
                };
                *entry = Entry::Held(Held {
                    raw: serde_json::to_value(r).unwrap_or(Value::Null),
                    id: Some(r.id.clone()),
                    name: Some(r.name.clone()),
                    reason,
                    last_good: None,
                });
            }
        }
    }

    /// `file` (just read from disk) with the host's unwritten mutations (`dirty`, from
    /// `self`, the host's memory) on top. The file is authoritative for every record
    /// the host did not touch; a record the host changed keeps the host's version
    /// unless the edit removed it (the removal wins) or broke it (the text is kept and
    /// the host's version stays in force behind it).
    pub(super) fn merged(&self, mut file: Document, dirty: &HashMap<String, Touch>) -> Document {
        for entry in &mut file.environments {
            if let Entry::Held(h) = entry
                && let Some(id) = &h.id
            {
                h.last_good = self.find(id).cloned();
            }
        }
        for (id, touch) in dirty {
            let pos = file
                .environments
                .iter()
                .position(|e| e.id() == Some(id.as_str()));
            let mine = self.find(id);
            match (touch, mine, pos) {
                (Touch::Removed, _, Some(p)) => {
                    if matches!(file.environments[p], Entry::Good(_)) {
                        file.environments.remove(p);
                    }
                }
                (_, Some(r), Some(p)) => match &mut file.environments[p] {
                    Entry::Good(theirs) => *theirs = r.clone(),
                    Entry::Held(h) => h.last_good = Some(r.clone()),
                },
                (Touch::Inserted, Some(r), None) => file.environments.push(Entry::Good(r.clone())),
                // Updated here, removed by hand: the removal wins.
                _ => {}
            }
        }
        file.hold_duplicates();
        file
    }
}

/// Ids added, records changed and records removed between two versions of the list.
pub(super) fn diff<'a>(
    old: impl Iterator<Item = &'a Record>,
    new: impl Iterator<Item = &'a Record>,
) -> Changes {
    let old: Vec<&Record> = old.collect();
    let old_by_id: HashMap<&str, &Record> = old.iter().map(|r| (r.id.as_str(), *r)).collect();
    let mut seen = HashSet::new();
    let mut changes = Changes::default();
    for r in new {
        seen.insert(r.id.as_str());
        match old_by_id.get(r.id.as_str()) {
            None => changes.added.push(r.id.clone()),
            Some(before) if *before != r => changes.changed.push((*before).clone()),
            Some(_) => {}
        }
    }
    changes.removed = (old.into_iter())
        .filter(|r| !seen.contains(r.id.as_str()))
        .cloned()
        .collect();
    changes
}

impl Changes {
    /// Folds `later` (found after `self`) into one set of changes with the same net
    /// effect, so a record added then removed is neither.
    pub(super) fn absorb(&mut self, later: Changes) {
        for id in later.added {
            if let Some(p) = self.removed.iter().position(|r| r.id == id) {
                let before = self.removed.remove(p);
                self.changed.push(before);
            } else {
                self.added.push(id);
            }
        }
        for before in later.changed {
            let known =
                self.added.contains(&before.id) || self.changed.iter().any(|r| r.id == before.id);
            if !known {
                self.changed.push(before);
            }
        }
        for gone in later.removed {
            if let Some(p) = self.added.iter().position(|id| *id == gone.id) {
                self.added.remove(p);
            } else if let Some(p) = self.changed.iter().position(|r| r.id == gone.id) {
                let before = self.changed.remove(p);
                self.removed.push(before);
            } else {
                self.removed.push(gone);
            }
        }
    }

    /// Whether nothing changed.
    pub(super) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}
