//! The write-ahead journal beside the records file (`environments.journal`): every
//! host mutation is appended here and synced before it is acknowledged, and a later
//! compaction ([`super::compact`]) folds the journal into `environments.json`.
//!
//! One entry per line: `<seq> <len> <crc32> <payload>\n`, where `seq` is the
//! mutation's sequence number (strictly increasing), `len` the payload's length in
//! bytes, `crc32` the payload's CRC-32 as 8 hex digits, and the payload one compact
//! JSON object: `{"op":"insert","record":{…}}`, `{"op":"update","id":…,"fields":{…}}`
//! (the top-level fields the mutation changed; `null` removes one) or
//! `{"op":"remove","id":…}`. Compact JSON never holds a raw newline, so a damaged line
//! never swallows the next one.
//!
//! Reading back: bad lines at the very end are a torn append (the host died before
//! its sync, so nothing in them was acknowledged) and are dropped; a bad line with a
//! good one after it is damage, reported with the file and the byte offset, while
//! every good entry still applies.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Record, validate};

/// Longest payload accepted when reading back: a whole record at its limit, escaped.
pub(super) const MAX_PAYLOAD_BYTES: usize = 2 * validate::MAX_RECORD_BYTES + 64 * 1024;

/// One mutation as journaled, read back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum Op {
    /// A new record.
    Insert {
        /// The record as created.
        record: Box<Record>,
    },
    /// Fields of a record changed.
    Update {
        /// The record's id.
        id: String,
        /// Each changed top-level field with its new value; `null`: removed.
        fields: Map<String, Value>,
    },
    /// A record deleted.
    Remove {
        /// The record's id.
        id: String,
    },
}

/// One mutation as journaled, to write (borrowing what it writes).
#[derive(Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(super) enum OpRef<'a> {
    /// See [`Op::Insert`].
    Insert {
        /// The record as created.
        record: &'a Record,
    },
    /// See [`Op::Update`].
    Update {
        /// The record's id.
        id: &'a str,
        /// Changed fields.
        fields: &'a Map<String, Value>,
    },
    /// See [`Op::Remove`].
    Remove {
        /// The record's id.
        id: &'a str,
    },
}

impl Op {
    /// The id of the record it changes.
    pub(super) fn id(&self) -> &str {
        match self {
            Op::Insert { record } => &record.id,
            Op::Update { id, .. } | Op::Remove { id } => id,
        }
    }
}

/// Appends entry `seq` for `op` to `out`.
pub(super) fn encode(seq: u64, op: &OpRef<'_>, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let payload = serde_json::to_vec(op)?;
    let crc = crc32fast::hash(&payload);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{seq} {} {crc:08x} ", payload.len());
    out.extend_from_slice(&payload);
    out.push(b'\n');
    Ok(())
}

/// What a journal file holds.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Good entries, in order.
    pub(super) entries: Vec<(u64, Op)>,
    /// Length of the file up to the end of its last good entry.
    pub(super) good_len: u64,
    /// Why the bytes after the last good entry were dropped, if there were any.
    pub(super) torn: Option<String>,
    /// Bad entries with a good one after them: damage, one line each.
    pub(super) damaged: Vec<String>,
}

/// Reads the entries of `bytes`, the content of the journal at `path`.
pub(super) fn scan(path: &Path, bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    // Bad lines not yet known to be followed by a good one.
    let mut bad: Vec<String> = Vec::new();
    let mut last_seq = 0;
    let mut at = 0;
    while at < bytes.len() {
        let Some(nl) = memchr::memchr(b'\n', &bytes[at..]).map(|i| at + i) else {
            bad.push(format!(
                "{}: the entry at byte {at} has no end ({} bytes)",
                path.display(),
                bytes.len() - at
            ));
            break;
        };
        match parse_line(&bytes[at..nl], last_seq) {
            Ok((seq, op)) => {
                scan.damaged.append(&mut bad);
                scan.entries.push((seq, op));
                scan.good_len = (nl + 1) as u64;
                last_seq = seq;
            }
            Err(why) => bad.push(format!("{}: the entry at byte {at}: {why}", path.display())),
        }
        at = nl + 1;
    }
    if !bad.is_empty() {
        scan.torn = Some(bad.join("; "));
    }
    scan
}

/// One line without its newline: its sequence number and operation.
fn parse_line(line: &[u8], last_seq: u64) -> Result<(u64, Op), String> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let mut field = |what: &str| {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or_else(|| format!("no {what}"))
    };
    let seq: u64 = field("sequence number")?
        .parse()
        .map_err(|_| "the sequence number is not a number".to_owned())?;
    let len: usize = field("length")?
        .parse()
        .map_err(|_| "the length is not a number".to_owned())?;
    let crc = field("checksum")?;
    let crc = u32::from_str_radix(crc, 16)
        .ok()
        .filter(|_| crc.len() == 8)
        .ok_or_else(|| "the checksum is not 8 hex digits".to_owned())?;
    let payload = parts.next().unwrap_or_default();
    if len > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "{len} bytes is over the limit of {MAX_PAYLOAD_BYTES}"
        ));
    }
    if payload.len() != len {
        return Err(format!("{} bytes where it says {len}", payload.len()));
    }
    if crc32fast::hash(payload) != crc {
        return Err("the checksum does not match".to_owned());
    }
    if seq <= last_seq {
        return Err(format!("sequence number {seq} does not follow {last_seq}"));
    }
    let op: Op = serde_json::from_slice(payload)
        .map_err(|e| format!("not an entry: {}", validate::clean(&e.to_string())))?;
    check(&op)?;
    Ok((seq, op))
}

/// The rules a hand edit meets hold for a journaled record too.
fn check(op: &Op) -> Result<(), String> {
    match op {
        Op::Insert { record } => validate::check(record),
        Op::Update { id, .. } | Op::Remove { id } => crate::names::validate("environment", id)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

/// The journal beside the records file `records`.
pub(super) fn path_for(records: &Path) -> PathBuf {
    records.with_extension("journal")
}

/// Where the journal is moved at the start of a compaction, until the compacted file
/// is durable.
pub(super) fn old_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().unwrap_or_default().to_owned();
    name.push(".old");
    journal.with_file_name(name)
}

/// The content of `path`, empty if there is none.
pub(super) fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    match super::file::read_bounded(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// Opens the journal for appending (making its directory), made durable in the
/// directory if it is new.
pub(super) fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let existed = path.exists();
    let file = open_to_append(path)?;
    if !existed {
        sync_dir(path)?;
    }
    Ok(file)
}

/// `path` opened to append, created 0600; only a regular file, never through a link.
fn open_to_append(path: &Path) -> std::io::Result<File> {
    crate::untrusted::open_to_write(
        path,
        OpenOptions::new().append(true).create(true).mode(0o600),
    )
}

/// Appends `bytes` and syncs them: once this returns, they survive a crash.
pub(super) fn append(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = file;
    f.write_all(bytes)?;
    file.sync_data()
}

/// The journal as the store appends to it.
#[derive(Debug)]
pub(super) struct Appender {
    /// `environments.journal`.
    pub(super) path: PathBuf,
    /// `environments.journal.old`.
    pub(super) old: PathBuf,
    /// The open journal (shared with the blocking task that appends).
    pub(super) file: std::sync::Arc<File>,
    /// Its length.
    pub(super) len: u64,
    /// Whether `old` holds entries a compaction has not made durable in the file yet.
    pub(super) old_exists: bool,
    /// The newest entry appended and synced.
    pub(super) durable: u64,
    /// Why appending cannot go on (a rotation failed half-way and could not be undone).
    pub(super) broken: Option<String>,
    /// A failed append may have left part of itself past `len`, and cutting it off
    /// failed too (the filesystem took no writes at all): it is cut off before the
    /// next append.
    pub(super) cut_pending: bool,
}

/// Why a rotation failed, and whether the journal is back as it was.
#[derive(Debug)]
pub(super) struct RotateError {
    /// What failed.
    pub(super) error: std::io::Error,
    /// Whether `path` is the journal that was being appended to again.
    pub(super) restored: bool,
}

/// Moves the journal aside to `old` and starts an empty one; both are durable in the
/// directory before anything is appended to the new file. On failure the move is
/// undone if it happened.
pub(super) fn rotate(path: &Path, old: &Path) -> Result<File, RotateError> {
    // Nothing of the host's is at `old` when a rotation begins; a directory someone
    // made there would fail every rename, and the journal would grow for good.
    crate::atomic::move_directory_aside(old).map_err(|error| RotateError {
        error,
        restored: true,
    })?;
    std::fs::rename(path, old).map_err(|error| RotateError {
        error,
        restored: true,
    })?;
    let fresh = open_to_append(path).and_then(|file| sync_dir(path).map(|()| file));
    fresh.map_err(|error| RotateError {
        error,
        // Over the new empty file, if it was made.
        restored: std::fs::rename(old, path).is_ok(),
    })
}

/// Removes `path` if it is there.
pub(super) fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Keeps a copy of a damaged journal beside it (`<name>.damaged-<ns>`), for a person.
pub(super) fn keep_copy(path: &Path) -> std::io::Result<Option<PathBuf>> {
    crate::atomic::keep_copy_beside(path, "damaged", super::file::MAX_FILE_BYTES)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record::new(id.into(), id.into(), "local-process".into(), Map::new())
    }

    fn sample() -> Vec<u8> {
        sample_with(&record("a"))
    }

    fn sample_with(a: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        let fields: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"restarts": 3, "lastError": null})).unwrap();
        encode(1, &OpRef::Insert { record: a }, &mut out).unwrap();
        encode(
            2,
            &OpRef::Update {
                id: "a",
                fields: &fields,
            },
            &mut out,
        )
        .unwrap();
        encode(3, &OpRef::Remove { id: "a" }, &mut out).unwrap();
        out
    }

    /// A directory made at `environments.journal.old` while the host ran failed every
    /// rotation, so no compaction ever ended and the journal grew for good.
    #[test]
    fn a_rotation_moves_a_directory_in_its_way_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("environments.journal");
        let old = old_path(&path);
        let entries = sample();
        append(&open_append(&path).unwrap(), &entries).unwrap();
        std::fs::create_dir_all(old.join("inside")).unwrap();
        let fresh = rotate(&path, &old).unwrap();
        assert_eq!(fresh.metadata().unwrap().len(), 0);
        assert_eq!(std::fs::read(&old).unwrap(), entries);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("environments.journal.old.rejected-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(dir.path().join(&aside[0]).join("inside").is_dir());
    }

    #[test]
    fn entries_round_trip() {
        let a = record("a");
        let bytes = sample_with(&a);
        let scan = scan(Path::new("j"), &bytes);
        assert!(scan.torn.is_none() && scan.damaged.is_empty(), "{scan:?}");
        assert_eq!(scan.good_len, bytes.len() as u64);
        let seqs: Vec<u64> = scan.entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(
            scan.entries[0].1,
            Op::Insert {
                record: Box::new(a)
            }
        );
        match &scan.entries[1].1 {
            Op::Update { id, fields } => {
                assert_eq!(id, "a");
                assert_eq!(fields["restarts"], 3);
                assert!(fields["lastError"].is_null());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(scan.entries[2].1, Op::Remove { id: "a".into() });
    }

    #[test]
    fn a_torn_last_entry_is_dropped_at_any_cut() {
        let bytes = sample();
        let last_start = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .unwrap()
            + 1;
        for cut in last_start + 1..bytes.len() {
            let scan = scan(Path::new("j"), &bytes[..cut]);
            assert_eq!(scan.entries.len(), 2, "cut at {cut}");
            assert_eq!(scan.good_len, last_start as u64);
            assert!(
                scan.torn.is_some() && scan.damaged.is_empty(),
                "cut at {cut}"
            );
        }
        // Zeros where the appended bytes never reached the disk are torn too.
        let mut zeros = bytes[..last_start].to_vec();
        zeros.extend_from_slice(&[0; 300]);
        let scan = scan(Path::new("j"), &zeros);
        assert_eq!(scan.entries.len(), 2);
        assert!(scan.damaged.is_empty());
    }

    #[test]
    fn a_damaged_middle_entry_is_an_error_naming_the_file_and_the_rest_applies() {
        let bytes = sample();
        let first_end = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        let second_end = first_end + bytes[first_end..].iter().position(|b| *b == b'\n').unwrap();
        let mut broken = bytes.clone();
        // One flipped bit in the second entry's payload.
        broken[second_end - 3] ^= 0x01;
        let scan = scan(Path::new("/d/environments.journal"), &broken);
        let seqs: Vec<u64> = scan.entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(scan.damaged.len(), 1, "{scan:?}");
        assert!(
            scan.damaged[0].contains("/d/environments.journal")
                && scan.damaged[0].contains(&format!("byte {first_end}"))
                && scan.damaged[0].contains("checksum"),
            "{}",
            scan.damaged[0]
        );
        assert!(scan.torn.is_none());
    }

    #[test]
    fn entries_out_of_order_or_breaking_the_record_rules_are_refused() {
        let mut out = Vec::new();
        encode(5, &OpRef::Remove { id: "a" }, &mut out).unwrap();
        encode(4, &OpRef::Remove { id: "b" }, &mut out).unwrap();
        encode(6, &OpRef::Remove { id: "../x" }, &mut out).unwrap();
        encode(7, &OpRef::Remove { id: "c" }, &mut out).unwrap();
        let scan = scan(Path::new("j"), &out);
        let seqs: Vec<u64> = scan.entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![5, 7]);
        assert!(
            scan.damaged[0].contains("does not follow"),
            "{:?}",
            scan.damaged
        );
        assert!(scan.damaged[1].contains("invalid"), "{:?}", scan.damaged);
    }
}
