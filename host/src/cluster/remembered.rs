//! What this host last synced with the records bucket, kept on disk between runs
//! (`.codebolt/cluster/records-synced.json`): for each record, the bucket revision
//! this host last saw or wrote, and which bucket that was.
//!
//! At start it tells a record removed from (or changed in) `environments.json` while
//! the host was stopped — the bucket still at the revision this host left it at —
//! from a record this host never had, or one another host changed since. The file is
//! only ever behind the truth (it is written between the sync's steps, after what it
//! names is in the local store), and a file behind the truth only makes the cluster's
//! copy win, as it does without one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The most this file may hold; far above 20,000 records' worth.
const MAX_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    /// The bucket the revisions are of: its stream's creation time, so revisions of
    /// a bucket made again (or of another NATS) are never taken for these.
    bucket: String,
    /// Bucket key → revision.
    revisions: BTreeMap<String, u64>,
}

/// The file of one host's records sync.
#[derive(Debug)]
pub(super) struct Remembered {
    /// The data directory, from which `cluster/` is reached through no link.
    root: PathBuf,
    path: PathBuf,
    bucket: String,
}

impl Remembered {
    /// The file beside the records file at `records`, for the bucket made at `bucket`.
    pub(super) fn beside(records: &Path, bucket: String) -> Self {
        let dir = records.parent().unwrap_or(Path::new("."));
        Self {
            root: dir.parent().unwrap_or(dir).to_owned(),
            path: dir.join("cluster").join("records-synced.json"),
            bucket,
        }
    }

    /// The revisions this host last synced; none when the file is missing, broken,
    /// too large or of another bucket (all logged but the first).
    pub(super) fn load(&self) -> HashMap<String, u64> {
        match self.read() {
            Ok(Some(file)) if file.bucket == self.bucket => file
                .revisions
                .into_iter()
                .filter(|(key, _)| super::records::id_of_key(key).is_some())
                .collect(),
            Ok(Some(_)) => {
                tracing::warn!(path = %self.path.display(), "cluster: the records last synced were of another bucket; the cluster's copies win");
                HashMap::new()
            }
            Ok(None) => HashMap::new(),
            Err(why) => {
                tracing::warn!(path = %self.path.display(), %why, "cluster: cannot read the records last synced; the cluster's copies win");
                HashMap::new()
            }
        }
    }

    fn read(&self) -> Result<Option<File>, String> {
        // Opened without waiting (a named pipe in its place would hold the start) and
        // read no further than the limit.
        let file = match crate::untrusted::open_regular(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let bytes = crate::untrusted::read_at_most(file, MAX_BYTES)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("it is more than {MAX_BYTES} bytes"))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Replaces the file with `revisions`, off the async threads (it may be large).
    pub(super) async fn save(&self, revisions: BTreeMap<String, u64>) {
        let file = self.file(revisions);
        let (root, path) = (self.root.clone(), self.path.clone());
        let saved = tokio::task::spawn_blocking(move || write(&root, &path, &file)).await;
        match saved {
            Ok(saved) => self.report(saved),
            Err(e) => self.report(Err(std::io::Error::other(e))),
        }
    }

    /// Replaces the file with `revisions` at once: at shutdown, when a task handed
    /// the write might never run.
    pub(super) fn save_now(&self, revisions: BTreeMap<String, u64>) {
        self.report(write(&self.root, &self.path, &self.file(revisions)));
    }

    fn file(&self, revisions: BTreeMap<String, u64>) -> File {
        File {
            bucket: self.bucket.clone(),
            revisions,
        }
    }

    fn report(&self, saved: std::io::Result<()>) {
        if let Err(e) = saved {
            tracing::warn!(path = %self.path.display(), error = %e, "cluster: cannot save the records last synced");
        }
    }
}

/// Replaces the file at `path` relative to its directory, made or opened from `root`
/// through no link (see `own_dirs`): a link in place of `cluster/` would carry the
/// write elsewhere.
fn write(root: &Path, path: &Path, file: &File) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other("no file name"));
    };
    crate::own_dirs::create(root, dir)?.replace_file(&name.to_string_lossy(), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(dir: &Path, bucket: &str) -> Remembered {
        Remembered::beside(&dir.join("environments.json"), bucket.into())
    }

    /// `cluster/` swapped for a link to a directory elsewhere: the file is not
    /// written there (the save fails, and is logged).
    #[test]
    fn a_cluster_directory_that_is_a_link_is_not_written_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let codebolt = dir.path().join(".codebolt");
        std::fs::create_dir(&codebolt).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), codebolt.join("cluster")).expect("symlink");
        let one = at(&codebolt, "1");
        let written = write(&one.root, &one.path, &one.file(BTreeMap::new()));
        let e = written.expect_err("written through the link");
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let names: Vec<_> = std::fs::read_dir(outside.path()).expect("ls").collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[tokio::test]
    async fn revisions_come_back_only_for_the_same_bucket_and_valid_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = at(dir.path(), "1");
        assert!(one.load().is_empty(), "no file yet");
        let saved = BTreeMap::from([
            ("env-1".to_owned(), 7),
            ("_612e62".to_owned(), 9),
            ("_zz".to_owned(), 3),
            ("a.b".to_owned(), 4),
        ]);
        one.save(saved).await;
        let loaded = one.load();
        assert_eq!(
            loaded,
            HashMap::from([("env-1".to_owned(), 7), ("_612e62".to_owned(), 9)])
        );
        assert!(at(dir.path(), "2").load().is_empty(), "another bucket's");
    }

    #[test]
    fn a_broken_or_oversized_file_counts_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = at(dir.path(), "1");
        std::fs::create_dir_all(dir.path().join("cluster")).expect("dir");
        std::fs::write(&one.path, b"{\"bucket\":\"1\",\"revisions\":{\"a\":-1}}").expect("write");
        assert!(one.load().is_empty());
        std::fs::write(&one.path, b"{\"bucket\":\"1\",\"revisions\":{},\"more\":1}")
            .expect("write");
        assert!(one.load().is_empty());
        let big = std::fs::File::create(&one.path).expect("create");
        big.set_len(MAX_BYTES + 1).expect("grow");
        assert!(one.load().is_empty());
        // A named pipe with no writer is refused at once, not waited on.
        std::fs::remove_file(&one.path).expect("remove");
        nix::unistd::mkfifo(&one.path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(one.load().is_empty());
    }
}
