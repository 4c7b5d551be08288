//! Drop-in providers: what each `.wasm` in the providers directory provides (or why it
//! failed), and the set of providers in force that results — the built-ins, overlaid
//! by drop-ins of the same name where the operator consented ([`BuiltinReplacement`]).
//!
//! A rescan compares the directory with what it saw last (size, times, inode) and loads
//! only files that changed, so a burst of events costs a directory listing. A changed
//! file is compiled before anything is swapped: until its new content loads, the version
//! loaded from it before stays in force (a file that never loaded provides nothing), and
//! the failure is reported until the file is fixed or removed. A file caught half-written
//! fails like any other and is loaded by the rescan that follows the end of the copy,
//! because finishing the copy changes its size and times. Running environments hold
//! their own instance and are never touched here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::{Engine, EngineError, LoadFailure, LoadedProvider, ProviderSource};
use crate::config::BuiltinReplacement;
use crate::sync::{MutexExt, RwLockExt};

/// Built-ins and drop-in files as last seen, from which the providers in force are
/// derived.
#[derive(Debug, Default)]
pub(super) struct DropIns {
    known: Mutex<Known>,
    /// One rescan at a time: two would load the same changed file twice.
    scan: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Known {
    builtins: BTreeMap<String, Arc<LoadedProvider>>,
    files: BTreeMap<PathBuf, FileEntry>,
    replacements: BTreeMap<String, BuiltinReplacement>,
}

// The consent is a setting (`config`); which drop-in it admits is decided here.
impl BuiltinReplacement {
    fn admits(&self, path: &Path, provider: &LoadedProvider) -> bool {
        match self {
            Self::File(name) => path.file_name().is_some_and(|f| f == name.as_str()),
            Self::Sha256(sha) => provider.sha256 == *sha,
        }
    }
}

#[derive(Debug, Default)]
struct FileEntry {
    /// What the file looked like when it was last read.
    stamp: Option<Stamp>,
    /// The last version that loaded from it.
    loaded: Option<Arc<LoadedProvider>>,
    /// Why its current content does not load.
    error: Option<String>,
}

/// Enough of a file's metadata to notice any rewrite: the change time moves on every
/// write even when a copy preserves the modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            inode: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl DropIns {
    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.locked()
    }
}

impl Engine {
    /// Sets which drop-ins may replace which built-ins (before [`Engine::load_all`]).
    pub fn set_builtin_replacements(&self, replacements: BTreeMap<String, BuiltinReplacement>) {
        self.dropins.known().replacements = replacements;
        self.publish();
    }

    /// Records a loaded provider (a built-in, or a drop-in file's content) and
    /// republishes the providers in force.
    pub(super) fn register(&self, provider: Arc<LoadedProvider>) {
        {
            let mut known = self.dropins.known();
            match &provider.source {
                ProviderSource::BuiltIn => {
                    known
                        .builtins
                        .insert(provider.description.name.clone(), provider);
                }
                ProviderSource::DropIn { path } => {
                    let entry = known.files.entry(path.clone()).or_default();
                    entry.loaded = Some(provider);
                    entry.error = None;
                }
            }
        }
        self.publish();
    }

    /// Brings the drop-ins in line with `dir`: loads new and changed `*.wasm` files,
    /// forgets removed ones. A missing directory has no drop-ins.
    pub async fn rescan(&self, dir: &Path) {
        let _scan = self.dropins.scan.lock().await;
        let listed = match list(dir) {
            Ok(listed) => listed,
            Err(e) => {
                // Unloading everything because a listing failed would be worse than
                // waiting for the next event.
                tracing::error!(dir = %dir.display(), error = %e, "cannot list the providers directory");
                return;
            }
        };
        let (removed, changed) = {
            let known = self.dropins.known();
            let removed: Vec<PathBuf> = (known.files.keys())
                .filter(|p| !listed.contains_key(*p))
                .cloned()
                .collect();
            let changed: Vec<(PathBuf, Stamp)> = (listed.iter())
                .filter(|(p, s)| known.files.get(*p).and_then(|e| e.stamp) != Some(**s))
                .map(|(p, s)| (p.clone(), *s))
                .collect();
            (removed, changed)
        };
        if removed.is_empty() && changed.is_empty() {
            return;
        }
        for path in &removed {
            tracing::info!(path = %path.display(), "provider file removed");
            self.dropins.known().files.remove(path);
        }
        for (path, stamp) in changed {
            let outcome = self.load_changed(&path).await;
            let mut known = self.dropins.known();
            let entry = known.files.entry(path.clone()).or_default();
            entry.stamp = Some(stamp);
            match outcome {
                Ok(Some(provider)) => {
                    entry.loaded = Some(provider);
                    entry.error = None;
                }
                Ok(None) => entry.error = None,
                Err(e) => {
                    let error = crate::untrusted::logged(&e.to_string());
                    tracing::error!(path = %path.display(), %error, "provider failed to load");
                    entry.error = Some(e.to_string());
                }
            }
        }
        self.publish();
    }

    /// Loads `path` unless its content is what already loaded from it (`None` then).
    async fn load_changed(&self, path: &Path) -> Result<Option<Arc<LoadedProvider>>, EngineError> {
        let bytes = read_drop_in(path).await?;
        let unchanged = {
            let known = self.dropins.known();
            known.files.get(path).is_some_and(|e| {
                e.error.is_none()
                    && e.loaded
                        .as_ref()
                        .is_some_and(|p| p.sha256 == hex::encode(Sha256::digest(&bytes)))
            })
        };
        if unchanged {
            return Ok(None);
        }
        let source = ProviderSource::DropIn {
            path: path.to_owned(),
        };
        self.load(bytes, source).await.map(Some)
    }

    /// Derives the providers in force and the failures from what is known, and logs
    /// what that changes.
    fn publish(&self) {
        let (active, failures) = self.dropins.known().resolve();
        let mut providers = self.providers.write_locked();
        for (name, p) in &active {
            let version = &p.description.version;
            match providers.get(name) {
                None => {
                    tracing::info!(provider = %name, %version, world = p.world.as_str(), source = ?p.source, sha256 = %p.sha256, "provider loaded")
                }
                Some(old) if old.sha256 != p.sha256 => tracing::info!(
                    provider = %name, %version, from = %old.description.version, world = p.world.as_str(), source = ?p.source, sha256 = %p.sha256,
                    "provider replaced; running environments keep their instance until restarted"
                ),
                Some(_) => {}
            }
        }
        for name in providers.keys().filter(|n| !active.contains_key(*n)) {
            tracing::warn!(provider = %name, "provider unloaded; running environments keep their instance until stopped");
        }
        *providers = active;
        drop(providers);
        *self.write_failures() = failures;
    }

    /// The current load failure of the drop-in file at `path`, if any.
    pub fn failure_of(&self, path: &Path) -> Option<LoadFailure> {
        self.failures().into_iter().find(|f| f.path == path)
    }
}

impl Known {
    /// Built-ins overlaid by the drop-ins the operator let replace them and by drop-ins
    /// of other names (the first file in name order wins a name), and every file whose
    /// content does not load, whose name is taken, or that claims a built-in's name
    /// without the operator's consent.
    fn resolve(&self) -> (BTreeMap<String, Arc<LoadedProvider>>, Vec<LoadFailure>) {
        let mut active = self.builtins.clone();
        let mut owner: BTreeMap<&str, &Path> = BTreeMap::new();
        let mut failures = Vec::new();
        for (path, entry) in &self.files {
            if let Some(p) = &entry.loaded {
                let name = p.description.name.as_str();
                let builtin = super::builtin::BUILTINS.iter().any(|(b, _)| *b == name);
                let consented = (self.replacements.get(name)).is_some_and(|r| r.admits(path, p));
                match owner.get(name) {
                    _ if builtin && !consented => failures.push(LoadFailure {
                        path: path.clone(),
                        error: unconsented(name, path, &p.sha256),
                    }),
                    Some(first) => failures.push(LoadFailure {
                        path: path.clone(),
                        error: format!(
                            "provides {name:?}, which {} already provides; the first file in name order is used",
                            first.display()
                        ),
                    }),
                    None => {
                        owner.insert(name, path);
                        active.insert(name.to_owned(), p.clone());
                    }
                }
            }
            if let Some(error) = &entry.error {
                let error = match &entry.loaded {
                    Some(p) => format!(
                        "{error} (still serving {} {} as loaded from this file before)",
                        p.description.name, p.description.version
                    ),
                    None => error.clone(),
                };
                failures.push(LoadFailure {
                    path: path.clone(),
                    error,
                });
            }
        }
        (active, failures)
    }
}

/// Why a drop-in claiming the built-in `name` is not used, naming the key to set.
fn unconsented(name: &str, path: &Path, sha256: &str) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    format!(
        "provides {name:?}, the name of a built-in provider, which a drop-in replaces only \
         with the operator's consent; the built-in stays in force. To use this file, set \
         [providers.{name}] replace_builtin = {{ file = {file:?} }} (or {{ sha256 = \"{sha256}\" }}) \
         in tether.toml"
    )
}

/// The bytes of the component file at `path`, refused unread past
/// [`MAX_COMPONENT_BYTES`](super::MAX_COMPONENT_BYTES).
pub async fn read_component(path: &Path) -> Result<Vec<u8>, EngineError> {
    read_checked(path, false).await
}

/// The bytes of the drop-in at `path`, as [`read_component`], refused if users other
/// than the host's may change it: whoever may swap a drop-in's bytes chooses the code
/// that runs with the grants the operator gave its name.
async fn read_drop_in(path: &Path) -> Result<Vec<u8>, EngineError> {
    read_checked(path, true).await
}

async fn read_checked(path: &Path, private: bool) -> Result<Vec<u8>, EngineError> {
    use tokio::io::AsyncReadExt;
    let io = |source| EngineError::Io {
        path: path.to_owned(),
        source,
    };
    let limit = super::MAX_COMPONENT_BYTES as u64;
    let too_large = |bytes| EngineError::TooLarge {
        path: path.to_owned(),
        bytes,
    };
    // A named pipe swapped in after the listing is refused, not waited on.
    let opened = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || crate::untrusted::open_regular(&path)).await
    };
    let file = opened
        .map_err(|e| io(std::io::Error::other(e)))?
        .map(tokio::fs::File::from_std)
        .map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    if private && let Some(why) = crate::untrusted::others_may_change(&meta) {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{why}; whoever may change it chooses what this provider runs"),
        )));
    }
    let len = meta.len();
    if len > limit {
        return Err(too_large(len));
    }
    // The length may change while the file is read: one byte past the limit is
    // enough to tell, and all that is held.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    (file.take(limit + 1).read_to_end(&mut bytes).await).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The `*.wasm` files in `dir` with their stamps. Hidden files are skipped: copy tools
/// write into hidden temporaries before renaming. An entry that cannot be followed (a
/// symlink in a loop, or into a directory the host may not read) is listed with its
/// own stamp, so its load fails and is reported for that file alone: failing the
/// whole listing would keep every other drop-in from loading, changing or going.
fn list(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut listed = BTreeMap::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".wasm") {
            continue;
        }
        // Follows symlinks: an operator may link a provider in from elsewhere.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                listed.insert(path, Stamp::of(&meta));
            }
            Ok(_) => {}
            // Removed between the listing and now (or a link to nothing): the next
            // event rescans.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => match std::fs::symlink_metadata(&path) {
                Ok(meta) => {
                    listed.insert(path, Stamp::of(&meta));
                }
                Err(e) => {
                    let error = crate::untrusted::logged(&e.to_string());
                    tracing::warn!(path = %path.display(), %error, "provider file cannot be read; skipped");
                }
            },
        }
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;

    mod guests {
        #![allow(dead_code, unreachable_pub)]
        include!(concat!(env!("OUT_DIR"), "/guests.rs"));
    }

    fn engine() -> Engine {
        Engine::new(LimitsConfig::default(), Default::default()).expect("engine")
    }

    fn sha(engine: &Engine, name: &str) -> Option<String> {
        engine.provider(name).map(|p| p.sha256.clone())
    }

    /// A drop-in swapped for a named pipe between the listing and the read is
    /// refused, not waited on (which would hold a blocking thread for good).
    #[tokio::test]
    async fn a_named_pipe_in_a_component_s_place_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = dir.path().join("p.wasm");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), read_component(&pipe))
            .await
            .expect("the read waited on the pipe");
        let refused = read.expect_err("a pipe is no component").to_string();
        assert!(refused.contains("named pipe"), "{refused}");
    }

    #[tokio::test]
    async fn new_replaced_broken_fixed_and_removed_files_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let handoff = std::fs::read(guests::HANDOFF).unwrap();
        let file = dir.path().join("handoff.wasm");

        engine.rescan(dir.path()).await;
        assert!(engine.provider("handoff").is_none());

        std::fs::write(&file, &handoff).unwrap();
        engine.rescan(dir.path()).await;
        let first = sha(&engine, "handoff").expect("a new file loads");

        let second = guests::rebuilt(&handoff, "v2");
        std::fs::write(&file, &second).unwrap();
        engine.rescan(dir.path()).await;
        let now = sha(&engine, "handoff").expect("still loaded");
        assert_ne!(now, first, "the replacement is in force");
        assert_eq!(now, hex::encode(Sha256::digest(&second)));

        // Broken new content: the last good version stays and the failure is reported.
        std::fs::write(&file, b"\0asm garbage").unwrap();
        engine.rescan(dir.path()).await;
        assert_eq!(sha(&engine, "handoff"), Some(now.clone()));
        let failure = engine.failure_of(&file).expect("reported");
        assert!(failure.error.contains("still serving"), "{}", failure.error);

        std::fs::write(&file, &handoff).unwrap();
        engine.rescan(dir.path()).await;
        assert_eq!(sha(&engine, "handoff"), Some(first));
        assert!(engine.failures().is_empty(), "fixed, so cleared");

        std::fs::remove_file(&file).unwrap();
        engine.rescan(dir.path()).await;
        assert!(engine.provider("handoff").is_none());
        assert!(engine.failures().is_empty());
    }

    #[tokio::test]
    async fn a_half_written_file_fails_then_loads_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let handoff = std::fs::read(guests::HANDOFF).unwrap();
        let file = dir.path().join("handoff.wasm");
        std::fs::write(&file, &handoff[..handoff.len() / 2]).unwrap();
        engine.rescan(dir.path()).await;
        assert!(engine.provider("handoff").is_none());
        assert!(engine.failure_of(&file).is_some());
        // Nothing changed: no retry, the failure stands.
        engine.rescan(dir.path()).await;
        assert!(engine.failure_of(&file).is_some());

        std::fs::write(&file, &handoff).unwrap();
        engine.rescan(dir.path()).await;
        assert!(engine.provider("handoff").is_some());
        assert!(engine.failures().is_empty());
    }

    #[tokio::test]
    async fn a_built_in_is_replaced_only_by_the_file_the_operator_names() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        engine.load_all(dir.path()).await;
        let builtin = sha(&engine, "local-process").expect("built-in loaded");
        let (_, bytes) = super::super::builtin::BUILTINS[0];

        // No consent: refused with the key to set, the built-in stays.
        std::fs::write(dir.path().join("a.wasm"), guests::rebuilt(bytes, "a")).unwrap();
        std::fs::write(dir.path().join("b.wasm"), guests::rebuilt(bytes, "b")).unwrap();
        engine.rescan(dir.path()).await;
        assert_eq!(sha(&engine, "local-process"), Some(builtin.clone()));
        let refused = engine
            .failure_of(&dir.path().join("a.wasm"))
            .expect("refused");
        assert!(
            refused
                .error
                .contains("[providers.local-process] replace_builtin = { file = \"a.wasm\" }"),
            "{}",
            refused.error
        );

        // Consent names a.wasm: it replaces the built-in, b.wasm is still refused.
        let consent = BuiltinReplacement::File("a.wasm".into());
        engine.set_builtin_replacements(BTreeMap::from([("local-process".into(), consent)]));
        let p = engine.provider("local-process").expect("loaded");
        assert!(matches!(&p.source, ProviderSource::DropIn { path } if path.ends_with("a.wasm")));
        assert!(engine.failure_of(&dir.path().join("a.wasm")).is_none());
        let b = engine
            .failure_of(&dir.path().join("b.wasm"))
            .expect("b refused");
        assert!(b.error.contains("replace_builtin"), "{}", b.error);

        // By hash: b.wasm's content, wherever it sits.
        let b_sha = hex::encode(Sha256::digest(guests::rebuilt(bytes, "b")));
        let consent = BuiltinReplacement::Sha256(b_sha.clone());
        engine.set_builtin_replacements(BTreeMap::from([("local-process".into(), consent)]));
        assert_eq!(sha(&engine, "local-process"), Some(b_sha));

        std::fs::remove_file(dir.path().join("b.wasm")).unwrap();
        engine.rescan(dir.path()).await;
        assert_eq!(sha(&engine, "local-process"), Some(builtin));
    }

    #[tokio::test]
    async fn two_drop_ins_of_one_name_conflict_visibly() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let handoff = std::fs::read(guests::HANDOFF).unwrap();
        std::fs::write(dir.path().join("a.wasm"), guests::rebuilt(&handoff, "a")).unwrap();
        std::fs::write(dir.path().join("b.wasm"), guests::rebuilt(&handoff, "b")).unwrap();
        engine.rescan(dir.path()).await;
        let p = engine.provider("handoff").expect("loaded");
        assert!(matches!(&p.source, ProviderSource::DropIn { path } if path.ends_with("a.wasm")));
        let conflict = engine
            .failure_of(&dir.path().join("b.wasm"))
            .expect("the second file is reported");
        assert!(
            conflict.error.contains("already provides"),
            "{}",
            conflict.error
        );
        std::fs::remove_file(dir.path().join("a.wasm")).unwrap();
        engine.rescan(dir.path()).await;
        let p = engine.provider("handoff").expect("loaded");
        assert!(matches!(&p.source, ProviderSource::DropIn { path } if path.ends_with("b.wasm")));
        assert!(engine.failures().is_empty());
    }
}
