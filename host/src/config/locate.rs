//! Where `tether.toml` is: the one lookup `serve` and `provider inspect` share.
//!
//! Without `--config`, the data directory is searched first and then the current
//! directory; finding neither means the built-in defaults, and the file is then
//! expected in the data directory (where a running host watches for it to appear).
//! Something by that name that is not a file (a directory, a named pipe) is found,
//! and refused when read, rather than skipped.
//! A relative `--config` is looked up the same way; a `--config` naming no file is
//! an error, so a typo never silently means "defaults".

use std::path::{Path, PathBuf};

use super::ConfigError;

/// The file name looked for when `--config` is not given.
pub const CONFIG_FILE_NAME: &str = "tether.toml";

/// Where the operator's settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The file read (or, when none was found, where one is expected).
    pub path: PathBuf,
    /// Whether the operator named it with `--config`.
    pub explicit: bool,
    /// Whether a file was there when it was located.
    pub found: bool,
    /// The directories searched, in order (for "no tether.toml found in ...").
    pub searched: Vec<PathBuf>,
}

impl ConfigSource {
    /// A source read from `path` as given, the defaults if it is missing (tests and
    /// callers that did their own lookup).
    pub fn at(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            explicit: false,
            found: path.exists(),
            searched: path.parent().map(Path::to_owned).into_iter().collect(),
        }
    }

    /// Looks `explicit` (or `tether.toml`) up in `data_dir`, then in the current
    /// directory. An explicit file that is in neither is [`ConfigError::Missing`].
    pub fn locate(explicit: Option<&Path>, data_dir: &Path) -> Result<Self, ConfigError> {
        let cwd = std::env::current_dir().map_err(|source| ConfigError::DataDir {
            path: PathBuf::from("."),
            source,
        })?;
        let data_dir = absolute(&cwd, data_dir);
        let name = explicit.unwrap_or(Path::new(CONFIG_FILE_NAME));
        let searched = if name.is_absolute() {
            vec![]
        } else if data_dir == cwd {
            vec![data_dir.clone()]
        } else {
            vec![data_dir.clone(), cwd]
        };
        let candidates: Vec<PathBuf> = if name.is_absolute() {
            vec![name.to_owned()]
        } else {
            searched.iter().map(|d| d.join(name)).collect()
        };
        // Anything by that name counts, not only a regular file: a directory, a named
        // pipe or a dangling link where the operator's settings should be is reported
        // when it is read, never passed over for the next directory or the defaults.
        if let Some(path) = candidates.iter().find(|p| p.symlink_metadata().is_ok()) {
            return Ok(Self {
                // Not canonicalized: a `tether.toml` that is a symlink is watched where
                // the operator put it.
                path: path.clone(),
                explicit: explicit.is_some(),
                found: true,
                searched,
            });
        }
        if explicit.is_some() {
            return Err(ConfigError::Missing {
                path: name.to_owned(),
                searched: candidates,
            });
        }
        Ok(Self {
            path: data_dir.join(CONFIG_FILE_NAME),
            explicit: false,
            found: false,
            searched,
        })
    }

    /// "dir1, dir2": the directories searched, for messages.
    pub fn searched_list(&self) -> String {
        let dirs: Vec<String> = (self.searched.iter())
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(", ")
    }
}

fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    let joined = cwd.join(path);
    joined.canonicalize().unwrap_or(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_wins_and_an_explicit_missing_file_is_an_error() {
        let data = tempfile::tempdir().unwrap();
        let none = ConfigSource::locate(None, data.path()).unwrap();
        assert!(!none.found);
        assert_eq!(
            none.path,
            data.path().canonicalize().unwrap().join("tether.toml")
        );
        std::fs::write(data.path().join("tether.toml"), "").unwrap();
        let found = ConfigSource::locate(None, data.path()).unwrap();
        assert!(found.found && !found.explicit);
        std::fs::write(data.path().join("other.toml"), "").unwrap();
        let relative = ConfigSource::locate(Some(Path::new("other.toml")), data.path()).unwrap();
        assert!(relative.found && relative.explicit);
        assert!(relative.path.ends_with("other.toml"), "{relative:?}");
        let missing = ConfigSource::locate(Some(Path::new("nope.toml")), data.path());
        let err = missing.unwrap_err().to_string();
        assert!(
            err.contains("nope.toml") && err.contains("not found"),
            "{err}"
        );
    }

    #[test]
    fn something_not_a_file_in_the_data_directory_is_refused_not_passed_over() {
        let data = tempfile::tempdir().unwrap();
        let listen = "127.0.0.1:0".parse().unwrap();
        // A directory in the file's place; a named pipe, the same.
        std::fs::create_dir(data.path().join("tether.toml")).unwrap();
        let source = ConfigSource::locate(None, data.path()).unwrap();
        assert!(source.found, "{source:?}");
        let err = super::super::ServeConfig::load_source(listen, data.path().into(), source)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tether.toml") && err.contains("a directory"),
            "{err}"
        );
        std::fs::remove_dir(data.path().join("tether.toml")).unwrap();
        nix::unistd::mkfifo(
            &data.path().join("tether.toml"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let source = ConfigSource::locate(None, data.path()).unwrap();
        let err = super::super::ServeConfig::load_source(listen, data.path().into(), source)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a named pipe"), "{err}");
    }
}
