//! The records file as a document. Each entry of `environments` is read on its own:
//! a valid record is applied; an entry that breaks the rules ([`super::validate`]) is
//! held back — kept verbatim, reported, never started, stopped or deleted — while the
//! rest of the file still applies. Also how a file read from disk merges with host
//! mutations it does not hold yet (journaled, not compacted), so that neither side's
//! change is lost, and how a journal entry is replayed onto a file. Records are found
//! by id through an index, kept up to date by every change of the list.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::journal::Op;
use super::patch::{self, Dirty, Touch};
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
    /// The entry as written in the file: its text, which may be more than a `Value`
    /// can be read from (nested too deep).
    raw: Box<RawValue>,
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
    /// Reads one entry of the file: its text, its value (`Err` when the text cannot be
    /// read as one, nested too deep), and its `id` and `name`; `duplicate` says why it
    /// repeats an earlier one.
    fn read(
        raw: Box<RawValue>,
        value: serde_json::Result<Value>,
        (id, name): (Option<String>, Option<String>),
        duplicate: Option<String>,
    ) -> Self {
        let reason = match (duplicate, value) {
            (Some(why), _) => Err(why),
            (None, Err(e)) => Err(validate::clean(&format!("the record cannot be read: {e}"))),
            (None, Ok(value)) if !value.is_object() => {
                Err("an environment record must be a JSON object".to_owned())
            }
            (None, Ok(value)) => validate::check_raw_size(&value).and_then(|()| {
                // Serde's messages may quote the text (an unknown variant) verbatim.
                let record =
                    Record::deserialize(&value).map_err(|e| validate::clean(&e.to_string()))?;
                validate::check(&record).map(|()| record)
            }),
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

/// The string `id` and `name` of an object entry that cannot be read as a whole: the
/// rest is skipped unread, so an entry nested too deep still names the record it is (a
/// broken edit of a record in force keeps its last valid version in force).
fn id_and_name(raw: &RawValue) -> (Option<String>, Option<String>) {
    if !raw.get().starts_with('{') {
        return (None, None);
    }
    #[derive(Deserialize)]
    struct Names<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
        #[serde(borrow, default)]
        name: Option<&'a RawValue>,
    }
    let text = |v: Option<&RawValue>| v.and_then(|v| serde_json::from_str(v.get()).ok());
    match serde_json::from_str::<Names<'_>>(raw.get()) {
        Ok(names) => (text(names.id), text(names.name)),
        Err(_) => (None, None),
    }
}

/// The whole file; top-level fields the host does not know are kept.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Document {
    pub(super) version: u64,
    /// The newest journal entry the file holds (0: none; a replay applies them all).
    pub(super) journal_seq: u64,
    environments: Vec<Entry>,
    #[serde(flatten)]
    pub(super) extra: Map<String, Value>,
    #[serde(skip)]
    index: Index,
}

/// Where entries are, by id and name.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Position of the first entry with each id.
    ids: HashMap<String, usize>,
    /// Position of the first held entry with each id.
    held_ids: HashMap<String, usize>,
    /// Every name an entry has, held or not.
    names: HashSet<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    journal_seq: u64,
    /// Each entry's text, read on its own by [`Entry::read`]: skipping over an entry
    /// has no nesting limit, reading one does.
    #[serde(default)]
    environments: Vec<Box<RawValue>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
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
                // Each entry is read on its own, so one nested deeper than the parser
                // goes is held back alone instead of making the whole file unreadable.
                let value = serde_json::from_str::<Value>(entry.get());
                let (id, name) = match &value {
                    Ok(v) => {
                        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                        (field("id"), field("name"))
                    }
                    Err(_) => id_and_name(&entry),
                };
                let dup_id = id.clone().filter(|id| !ids.insert(id.clone()));
                let dup_name = name.clone().filter(|n| !names.insert(n.clone()));
                let duplicate = match (dup_id, dup_name) {
                    (Some(id), _) => {
                        Some(format!("another record has id {}", untrusted::named(&id)))
                    }
                    (None, Some(n)) => {
                        Some(format!("another record has name {}", untrusted::named(&n)))
                    }
                    (None, None) => None,
                };
                Entry::read(entry, value, (id, name), duplicate)
            })
            .collect();
        let mut doc = Document {
            version: raw.version,
            journal_seq: raw.journal_seq,
            environments,
            extra: raw.extra,
            index: Index::default(),
        };
        doc.reindex();
        Ok(doc)
    }

    /// Builds the index again after the list changed as a whole.
    fn reindex(&mut self) {
        let mut index = Index::default();
        for (i, e) in self.environments.iter().enumerate() {
            if let Some(id) = e.id() {
                index.ids.entry(id.to_owned()).or_insert(i);
                if matches!(e, Entry::Held(_)) {
                    index.held_ids.entry(id.to_owned()).or_insert(i);
                }
            }
            if let Some(name) = e.name() {
                index.names.insert(name.to_owned());
            }
        }
        self.index = index;
    }

    /// Every record in force, in file order.
    pub(super) fn records(&self) -> impl Iterator<Item = &Record> {
        self.environments.iter().filter_map(Entry::effective)
    }

    /// The record in force with `id`.
    pub(super) fn find(&self, id: &str) -> Option<&Record> {
        let entry = self.environments.get(*self.index.ids.get(id)?)?;
        entry.effective().filter(|r| r.id == id)
    }

    /// The record in force with `id`, and whether it is a valid entry (else its
    /// changes stay in memory: the file keeps the text as written).
    pub(super) fn find_mut(&mut self, id: &str) -> Option<(&mut Record, bool)> {
        let entry = self.environments.get_mut(*self.index.ids.get(id)?)?;
        let good = matches!(entry, Entry::Good(_));
        entry
            .effective_mut()
            .filter(|r| r.id == id)
            .map(|r| (r, good))
    }

    /// The first entry held back with `id`.
    pub(super) fn held_with(&self, id: &str) -> Option<&Held> {
        match self.environments.get(*self.index.held_ids.get(id)?)? {
            Entry::Held(h) => Some(h),
            Entry::Good(_) => None,
        }
    }

    /// Adds a valid record at the end (its id and name are unused).
    pub(super) fn push(&mut self, record: Record) {
        let i = self.environments.len();
        self.index.ids.entry(record.id.clone()).or_insert(i);
        self.index.names.insert(record.name.clone());
        self.environments.push(Entry::Good(record));
    }

    /// Removes the valid record with `id` (never a held entry), returning it.
    pub(super) fn remove_good(&mut self, id: &str) -> Option<Record> {
        let pos = *self.index.ids.get(id)?;
        if !matches!(self.environments.get(pos), Some(Entry::Good(_))) {
            return None;
        }
        let removed = self.environments.remove(pos);
        self.reindex();
        match removed {
            Entry::Good(r) => Some(r),
            Entry::Held(_) => None,
        }
    }

    /// Builds the index again after a record's name changed in place.
    pub(super) fn renamed(&mut self) {
        self.reindex();
    }

    /// A copy to write out, without the index.
    pub(super) fn snapshot(&self, journal_seq: u64) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            journal_seq,
            environments: self.environments.clone(),
            extra: self.extra.clone(),
        }
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
        self.index.names.contains(name)
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
                    raw: serde_json::value::to_raw_value(r)
                        .unwrap_or_else(|_| RawValue::NULL.to_owned()),
                    id: Some(r.id.clone()),
                    name: Some(r.name.clone()),
                    reason,
                    last_good: None,
                });
            }
        }
    }

    /// `file` (just read from disk) with the host's changes it does not hold yet
    /// (`dirty`; the records from `self`, the host's memory) laid on top, and what
    /// conflicted. The file is authoritative for every record the host did not
    /// change. For one it did: a record the host made is added; a host deletion
    /// removes it; a host update lays the fields the host set over the file's
    /// version, so a hand's change of other fields stays while the host's value wins
    /// a field both changed (a conflict); an edit that removed the record wins over a
    /// host update (a conflict); an edit that broke it keeps the text as written with
    /// the host's version in force behind it. Each updated record's base becomes the
    /// file's version, so the next edit is compared with this one.
    pub(super) fn merged(
        &self,
        mut file: Document,
        dirty: &mut HashMap<String, Dirty>,
    ) -> (Document, Vec<String>) {
        let mut conflicts = Vec::new();
        for entry in &mut file.environments {
            if let Entry::Held(h) = entry
                && let Some(id) = &h.id
            {
                h.last_good = self.find(id).cloned();
            }
        }
        let mut gone = HashSet::new();
        let mut added = Vec::new();
        let mut settled = Vec::new();
        for (id, d) in dirty.iter_mut() {
            let pos = file.index.ids.get(id.as_str()).copied();
            let shown = untrusted::named(id);
            match (d.touch, self.find(id), pos) {
                (Touch::Removed, _, Some(p)) => {
                    if let Entry::Good(theirs) = &file.environments[p] {
                        if d.base
                            .as_ref()
                            .is_some_and(|b| *b != patch::fields_of(theirs))
                        {
                            conflicts.push(format!(
                                "record {shown} was edited by hand and deleted by the host since the last compaction; the deletion wins"
                            ));
                        }
                        gone.insert(id.clone());
                    }
                }
                (Touch::Updated, Some(mine), Some(p)) => match &mut file.environments[p] {
                    Entry::Good(theirs) => {
                        let (t, m) = (patch::fields_of(theirs), patch::fields_of(mine));
                        if let Some(base) = &d.base {
                            for field in patch::conflicts(base, &t, &m, &d.fields) {
                                conflicts.push(format!(
                                    "field {field} of record {shown} was changed by hand and by the host since the last compaction; the host's value is kept"
                                ));
                            }
                        }
                        *theirs = patch::apply(theirs, &patch::pick(&m, &d.fields))
                            .unwrap_or_else(|why| {
                                conflicts.push(format!(
                                    "the hand edit of record {shown} does not combine with the host's change ({why}); the host's version is kept"
                                ));
                                mine.clone()
                            });
                        d.base = Some(t);
                    }
                    Entry::Held(h) => h.last_good = Some(mine.clone()),
                },
                (Touch::Inserted, Some(mine), Some(p)) => match &mut file.environments[p] {
                    Entry::Good(theirs) => *theirs = mine.clone(),
                    Entry::Held(h) => h.last_good = Some(mine.clone()),
                },
                (Touch::Inserted, Some(mine), None) => added.push(mine.clone()),
                (Touch::Updated, _, None) => {
                    conflicts.push(format!(
                        "record {shown} was changed by the host and removed by hand since the last compaction; the removal wins"
                    ));
                    settled.push(id.clone());
                }
                _ => {}
            }
        }
        for id in settled {
            dirty.remove(&id);
        }
        if !gone.is_empty() {
            file.environments
                .retain(|e| !matches!(e, Entry::Good(r) if gone.contains(&r.id)));
        }
        file.environments.extend(added.into_iter().map(Entry::Good));
        file.hold_duplicates();
        file.reindex();
        (file, conflicts)
    }

    /// Applies a journaled mutation onto this document, read from the file, the way
    /// a live merge would ([`Document::merged`]): a record the host made or updated
    /// gets the host's version or fields, a deleted one goes, and an update of a
    /// record the file no longer has is dropped (a hand's removal wins). `Err`: why
    /// the entry did not apply.
    pub(super) fn replay(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Insert { record } => match self.index.ids.get(&record.id).copied() {
                Some(p) => match &mut self.environments[p] {
                    Entry::Good(r) => {
                        *r = *record;
                        self.reindex();
                    }
                    Entry::Held(h) => h.last_good = Some(*record),
                },
                None => {
                    let taken = self.name_taken(&record.name);
                    self.push(*record);
                    if taken {
                        self.hold_duplicates();
                        self.reindex();
                    }
                }
            },
            Op::Update { id, fields } => {
                let shown = untrusted::named(&id);
                let Some((record, good)) = self.find_mut(&id) else {
                    return Err(format!("record {shown} is no longer in the file"));
                };
                if !good {
                    return Err(format!("record {shown} is held back as invalid"));
                }
                let new = patch::apply(record, &fields)
                    .map_err(|why| format!("record {shown}: {why}"))?;
                let renamed = new.name != record.name;
                *record = new;
                if renamed {
                    self.reindex();
                }
            }
            Op::Remove { id } => {
                self.remove_good(&id);
            }
        }
        Ok(())
    }
}

/// The file as the host writes it, cut from memory at one journal entry.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Snapshot {
    version: u64,
    journal_seq: u64,
    environments: Vec<Entry>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl Snapshot {
    /// The file's text; `hint` is the size of the last one.
    pub(super) fn to_bytes(&self, hint: usize) -> serde_json::Result<Vec<u8>> {
        // Growing the buffer from empty copied the document over and over.
        let mut bytes = Vec::with_capacity(hint + hint / 8);
        serde_json::to_writer_pretty(&mut bytes, self)?;
        Ok(bytes)
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
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}
