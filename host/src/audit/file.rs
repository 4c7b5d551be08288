//! The files of the audit log: appending to `audit.jsonl` durably, rotating it by
//! size into `audit.jsonl.1` … `.N`, and opening them all for a read. Rotation and the
//! opening of files for a read take the same lock, so a read sees every file exactly
//! once; reading the opened files needs no lock (a rename leaves an open file intact).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sync::MutexExt;

/// `audit.jsonl` open for appending.
#[derive(Debug)]
pub(super) struct LogFile {
    path: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
    keep: usize,
    /// Held while renaming files, and while a read opens them.
    files: Arc<Mutex<()>>,
}

impl LogFile {
    /// Opens (or creates, private to the operator) the log at `path`. A last line
    /// torn by a crash is ended first, so the next entry starts a line of its own.
    pub(super) fn open(
        path: &Path,
        max_bytes: u64,
        keep: usize,
        files: Arc<Mutex<()>>,
    ) -> std::io::Result<Self> {
        let dir = parent(path);
        std::fs::create_dir_all(dir)?;
        let mut file = open_append(path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                tracing::warn!(path = %path.display(), "the audit log's last line is torn (a crash while writing); it is skipped on read");
                file.write_all(b"\n")?;
                file.sync_data()?;
                len += 1;
            }
        }
        sync_dir(dir)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            max_bytes,
            keep,
            files,
        })
    }

    /// Appends `bytes` (whole lines) and makes them durable; rotates first when they
    /// would take the file past its size.
    pub(super) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.len > 0 && self.len + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        // A write or sync that fails (a full disk) is cut off again, so the next
        // line does not follow half a line and nothing unsynced counts as written.
        let written = self.file.write_all(bytes).and_then(|()| {
            // Data only: the file's size is metadata fdatasync covers; its times are not needed.
            self.file.sync_data()
        });
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let _files = self.files.locked();
        if self.keep == 0 {
            remove(&self.path)?;
        } else {
            remove(&rotated(&self.path, self.keep))?;
            for i in (1..self.keep).rev() {
                rename(&rotated(&self.path, i), &rotated(&self.path, i + 1))?;
            }
            rename(&self.path, &rotated(&self.path, 1))?;
        }
        self.file = open_append(&self.path)?;
        self.len = 0;
        sync_dir(parent(&self.path))?;
        tracing::debug!(path = %self.path.display(), "rotated the audit log");
        Ok(())
    }
}

/// Every file of the log at `path`, newest first, opened under the rotation lock.
pub(super) fn open_all(path: &Path, keep: usize, files: &Mutex<()>) -> std::io::Result<Vec<File>> {
    let _files = files.locked();
    let mut out = Vec::new();
    for i in 0..=keep {
        let p = if i == 0 {
            path.to_owned()
        } else {
            rotated(path, i)
        };
        // A named pipe in a file's place would hold this read, and with it the
        // rotation lock the writer needs; a link would show a file from elsewhere.
        match crate::untrusted::open_own(&p) {
            Ok(f) => out.push(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Which file: the error is reported against the log as a whole.
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", p.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// `audit.jsonl.i`.
pub(super) fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Opens for appending; created 0600, as it names users and their addresses. Only a
/// regular file, never through a link (`untrusted::open_to_write`).
fn open_append(path: &Path) -> std::io::Result<File> {
    crate::untrusted::open_to_write(
        path,
        OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600),
    )
}

/// Removes `path` to make room. A directory someone left there is moved aside whole
/// (`atomic::move_directory_aside`): it would otherwise fail every rotation, and with
/// it every change waiting for its entry, for good.
fn remove(path: &Path) -> std::io::Result<()> {
    crate::atomic::move_directory_aside(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a create or rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
