//! The files of the per-environment logs, their writer thread, tails and followers.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;

use crate::own_dirs::OwnDir;
use crate::sync::MutexExt;

/// A log file is rotated to `<id>.log.1` past this size, so one environment's logs take
/// at most twice this on disk.
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Lines queued for the writer at most; more are dropped (and counted).
const QUEUE: usize = 16_384;
/// Most lines a tail returns.
pub(crate) const MAX_TAIL: usize = 10_000;
/// Lines a follower may fall behind before it misses some (it is told how many).
const FOLLOW_BUFFER: usize = 1024;

/// How a line's `ts` is written: UTC, microseconds, fixed width, so that text order is
/// time order.
const TS_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// `at` as a line's `ts`.
pub(crate) fn ts(at: time::OffsetDateTime) -> String {
    (at.to_offset(time::UtcOffset::UTC).format(TS_FORMAT)).unwrap_or_default()
}

/// Now, as a line's `ts`.
pub(crate) fn now_ts() -> String {
    ts(time::OffsetDateTime::now_utc())
}

/// An RFC 3339 time as a line's `ts`, to compare with; `None` if it is not one.
pub(crate) fn parse_since(since: &str) -> Option<String> {
    let at = time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339);
    at.ok().map(ts)
}

/// The logs of this host's environments, if `serve` set them up.
static INSTALLED: RwLock<Option<Arc<EnvLogs>>> = RwLock::new(None);

/// One line for one environment's log.
#[derive(Debug)]
pub(super) struct Line {
    pub(super) env: String,
    pub(super) json: String,
}

/// The per-environment logs under one data directory.
#[derive(Debug)]
pub(crate) struct EnvLogs {
    /// The data directory, below which no directory of `dir` may be a link.
    root: PathBuf,
    dir: PathBuf,
    queue: SyncSender<Line>,
    /// Live followers, by environment.
    followers: Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>,
    dropped: AtomicU64,
    /// Why the last write of each environment whose last write failed failed: a run
    /// of failures is logged once per log (one file that cannot be written, a link
    /// left in its place, is not logged again at every batch the others' succeed
    /// in), and `/healthz` names them while they last.
    failing: Mutex<HashMap<String, String>>,
    /// The environments that have a log: lines for any other (one deleted a moment
    /// ago, say) are dropped, so a deleted environment's file is never made again.
    known: Mutex<HashSet<String>>,
}

/// A live follow of one environment's log.
#[derive(Debug)]
pub(crate) struct Follow(pub(crate) broadcast::Receiver<Arc<str>>);

impl EnvLogs {
    /// Logs under `dir` (created), below the data directory `root`, with their writer
    /// thread; installed as the destination of [`super::EnvLogLayer`].
    pub(crate) fn install(root: PathBuf, dir: PathBuf) -> std::io::Result<Arc<Self>> {
        crate::own_dirs::create(&root, &dir)?;
        let (queue, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let logs = Arc::new(Self {
            root,
            dir,
            queue,
            followers: Mutex::default(),
            dropped: AtomicU64::new(0),
            failing: Mutex::default(),
            known: Mutex::default(),
        });
        let writer = Arc::downgrade(&logs);
        // Detached: it ends by itself once the logs are dropped and its queue closes.
        std::thread::Builder::new()
            .name("env-logs".into())
            .spawn(move || write_loop(&writer, &rx))?;
        *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(logs.clone());
        Ok(logs)
    }

    /// The installed logs, if any.
    pub(super) fn installed() -> Option<Arc<Self>> {
        INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues a line; dropped (and counted) when the writer is that far behind.
    pub(super) fn push(&self, line: Line) {
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn path(&self, env: &str) -> PathBuf {
        self.dir.join(name(env))
    }

    /// The logs' directory, reached through no link (see `own_dirs`): a link put in
    /// its place would have logs written, read and removed in a directory elsewhere.
    /// Files are opened, rotated and removed relative to it.
    fn own_dir(&self) -> std::io::Result<OwnDir> {
        crate::own_dirs::open(&self.root, &self.dir)
    }

    /// The last `tail` lines (at most [`MAX_TAIL`]) of `env`'s log with a `ts` at or
    /// after `since` (RFC 3339), oldest first.
    pub(crate) fn tail(&self, env: &str, tail: usize, since: Option<&str>) -> Vec<String> {
        let tail = tail.min(MAX_TAIL);
        let dir = match self.own_dir() {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "environments' logs are not read");
                return Vec::new();
            }
        };
        let current = name(env);
        let mut lines: Vec<String> = Vec::new();
        for file in [rotated(&current), current] {
            let Some(end) = read_end(&dir, &file) else {
                continue;
            };
            for line in end.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                // A line a crash cut short (ended by the next start) is left out; one
                // that is not UTF-8 must not end the reading of the lines after it.
                let Ok(line) = String::from_utf8(line.to_vec()) else {
                    continue;
                };
                if serde_json::from_str::<serde::de::IgnoredAny>(&line).is_err() {
                    continue;
                }
                if since.is_none_or(|s| ts_of(&line).is_some_and(|ts| ts >= s)) {
                    lines.push(line);
                }
            }
        }
        let skip = lines.len().saturating_sub(tail);
        lines.split_off(skip)
    }

    /// Lines written to `env`'s log from now on.
    pub(crate) fn follow(&self, env: &str) -> Follow {
        let mut followers = self.followers.locked();
        let sender = followers
            .entry(env.to_owned())
            .or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0);
        Follow(sender.subscribe())
    }

    /// Keeps a log for `env` from now on.
    pub(crate) fn track(&self, env: &str) {
        self.known.locked().insert(env.to_owned());
    }

    /// Removes `env`'s log (its environment was deleted) and ends its followers.
    pub(crate) fn remove(&self, env: &str) {
        let mut known = self.known.locked();
        known.remove(env);
        let current = name(env);
        if let Ok(dir) = self.own_dir() {
            let _ = dir.remove_file(&rotated(&current));
            let _ = dir.remove_file(&current);
        }
        self.followers.locked().remove(env);
        self.failing.locked().remove(env);
    }

    /// For `/healthz`: the logs whose last write failed and why (a few, then how
    /// many more), empty while every write works.
    pub(crate) fn failing(&self) -> Vec<String> {
        const SHOWN: usize = 3;
        let failing = self.failing.locked();
        let mut whys: Vec<&String> = failing.values().collect();
        whys.sort();
        let mut out: Vec<String> = (whys.iter().take(SHOWN))
            .map(|why| format!("environment log: {why}; its lines are dropped"))
            .collect();
        if whys.len() > SHOWN {
            out.push(format!(
                "environment logs: {} more cannot be written",
                whys.len() - SHOWN
            ));
        }
        out
    }

    /// Lines dropped because the writer was behind, since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends a batch of lines, rotating files that grow past the bound, and hands
    /// each line to the environment's followers.
    fn write(&self, batch: Vec<Line>) {
        // Held while writing, so a removal waits for the batch and wins after it.
        let known = self.known.locked();
        let mut by_env: HashMap<String, Vec<String>> = HashMap::new();
        for line in batch {
            if known.contains(&line.env) {
                by_env.entry(line.env).or_default().push(line.json);
            }
        }
        // Once per batch: the directory is the same for every environment's log.
        let own_dir = self.own_dir();
        for (env, lines) in by_env {
            let path = self.path(&env);
            let written = match &own_dir {
                Ok(dir) => append(dir, &name(&env), &lines),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            if let Err(e) = written {
                // Counted with the dropped lines (a full disk drops them); reported
                // once per run of failures, and not through tracing, which would log
                // into the log being written, nor with `eprintln!`, which panics when
                // stderr is on the same full disk.
                self.dropped
                    .fetch_add(lines.len() as u64, Ordering::Relaxed);
                let why = format!("writing {}: {e}", path.display());
                if self
                    .failing
                    .locked()
                    .insert(env.clone(), why.clone())
                    .is_none()
                {
                    let _ = writeln!(
                        std::io::stderr(),
                        "env-logs: {why}; lines are dropped and counted until writes work again",
                    );
                }
                continue;
            }
            self.failing.locked().remove(&env);
            let followers = self.followers.locked();
            if let Some(sender) = followers.get(&env) {
                for line in lines {
                    let _ = sender.send(line.into());
                }
            }
        }
    }
}

/// The whole lines in the last [`MAX_FILE_BYTES`] of the log file `path` (all the
/// host writes to one before it rotates), or `None` when it cannot be read or is no
/// regular file (a named pipe would hold the read for good; a link would show its
/// owner a file from elsewhere). A file grown past that
/// by something else costs a tail no more time or memory than one the host wrote.
fn read_end(dir: &OwnDir, name: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(name);
    let opened = dir.open_file(name, nix::fcntl::OFlag::O_RDONLY, 0);
    let mut file = crate::untrusted::opened_own(&path, opened)
        .inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "an environment's log file cannot be read; its lines are left out of the tail");
            }
        })
        .ok()?;
    let len = file.metadata().ok()?.len();
    // From the byte before the window: if it ends a line, the window starts a whole one.
    let start = len.saturating_sub(MAX_FILE_BYTES + 1);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    (file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)).ok()?;
    if start > 0 {
        // Up to the first newline is the end of a line begun before the window (only
        // that newline when the window starts a line): left out.
        let first = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..first);
    }
    Some(bytes)
}

/// The file name of `env`'s log.
fn name(env: &str) -> String {
    format!("{env}.log")
}

/// The name a log is rotated to.
fn rotated(current: &str) -> String {
    format!("{current}.1")
}

/// Appends `lines` to `path`, moving it to `.1` whenever the next line would take it
/// past the bound. A new file is its owner's only: it holds what runtimes print and
/// providers log, which the API shows only to the environment's owner. Anything but a
/// regular file in its place (a link, a named pipe) is refused, not written through.
fn append(dir: &OwnDir, name: &str, lines: &[String]) -> std::io::Result<()> {
    use nix::fcntl::OFlag;
    let path = dir.join(name);
    let open = || {
        let flags = OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_RDWR;
        crate::untrusted::opened_to_write(&path, dir.open_file(name, flags, 0o600))
    };
    let mut file = open()?;
    let mut size = file.metadata()?.len();
    let mut text = String::new();
    if size > 0 && !ends_a_line(&file, size)? {
        // The last line was cut short by a crash: end it, so the next starts its own.
        text.push('\n');
    }
    for line in lines {
        let len = line.len() as u64 + 1;
        if size > 0 && size + (text.len() as u64) + len > MAX_FILE_BYTES {
            write_or_cut(&mut file, text.as_bytes(), size)?;
            text.clear();
            rotate(dir, name)?;
            file = open()?;
            size = 0;
        }
        text.push_str(line);
        text.push('\n');
    }
    write_or_cut(&mut file, text.as_bytes(), size)
}

/// Moves `path` to `<path>.1`. A directory someone left at `.1` is moved aside whole
/// first (`.1.rejected-<ns>`): the rename over it would fail, and with it every
/// write of this log from then on.
fn rotate(dir: &OwnDir, name: &str) -> std::io::Result<()> {
    let to = rotated(name);
    if dir
        .kind_of(&to)
        .is_ok_and(|k| k == nix::sys::stat::SFlag::S_IFDIR)
    {
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let aside = format!("{to}.rejected-{stamp}");
        dir.rename(&to, &aside)?;
        tracing::warn!(path = %dir.join(&to).display(), moved = %dir.join(&aside).display(), "a directory in the place of one of the host's files was moved aside");
    }
    dir.rename(name, &to)
}

/// Whether `file`, `len` bytes long (more than 0), ends in a newline.
fn ends_a_line(file: &std::fs::File, len: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] == b'\n')
}

/// Appends `bytes` to `file` of length `len`; a write that fails half-way (a full
/// disk) is cut off again, so the log never holds half a line.
fn write_or_cut(file: &mut std::fs::File, bytes: &[u8], len: u64) -> std::io::Result<()> {
    file.write_all(bytes).inspect_err(|_| {
        let _ = file.set_len(len);
    })
}

/// The `"ts"` of a line as written (the first field).
fn ts_of(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("{\"ts\":\"")?;
    rest.split('"').next()
}

/// Writes queued lines in batches until the logs are dropped.
fn write_loop(logs: &std::sync::Weak<EnvLogs>, rx: &Receiver<Line>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(4096));
        let Some(logs) = logs.upgrade() else { return };
        logs.write(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(env: &str, ts: &str, message: &str) -> Line {
        Line {
            env: env.into(),
            json: format!("{{\"ts\":\"{ts}\",\"message\":\"{message}\"}}"),
        }
    }

    #[test]
    fn a_tail_reads_whole_lines_from_the_end_of_a_file_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        let own = crate::own_dirs::open(dir.path(), dir.path()).unwrap();
        // Lines of 100 bytes: the window of MAX_FILE_BYTES starts mid-line.
        let text: String = (0..30_000).map(|i| format!("{i:099}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let end = read_end(&own, "e.log").unwrap();
        assert!(end.len() as u64 <= MAX_FILE_BYTES);
        assert!(end.ends_with(format!("{:099}\n", 29_999).as_bytes()));
        let first = end.split(|&b| b == b'\n').next().unwrap();
        assert_eq!(first.len(), 99, "{}", String::from_utf8_lossy(first));
        // A window that starts a line keeps it.
        let exact: String = (0..(MAX_FILE_BYTES / 64 + 1))
            .map(|i| format!("{i:063}\n"))
            .collect();
        std::fs::write(&path, &exact).unwrap();
        let end = read_end(&own, "e.log").unwrap();
        assert_eq!(end.len() as u64, MAX_FILE_BYTES);
        assert_eq!(&end[..64], format!("{:063}\n", 1).as_bytes());
        let pipe = dir.path().join("pipe.log");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_end(&own, "pipe.log").is_none());
    }

    #[test]
    fn logs_that_cannot_be_written_are_named_a_few_then_counted() {
        let dir = tempfile::tempdir().unwrap();
        let logs = EnvLogs::install(dir.path().to_owned(), dir.path().join("logs")).unwrap();
        for env in ["e1", "e2", "e3", "e4", "e5"] {
            logs.track(env);
            std::fs::create_dir(dir.path().join(format!("logs/{env}.log"))).unwrap();
            logs.write(vec![line(env, "2026-01-01T00:00:00Z", "a")]);
        }
        let failing = logs.failing();
        assert_eq!(failing.len(), 4, "{failing:?}");
        assert!(failing[0].contains("e1.log: it is a directory, not a regular file"));
        assert_eq!(failing[3], "environment logs: 2 more cannot be written");
        logs.remove("e1");
        std::fs::remove_dir(dir.path().join("logs/e2.log")).unwrap();
        logs.write(vec![line("e2", "2026-01-01T00:00:01Z", "b")]);
        assert_eq!(logs.failing().len(), 3);
    }

    /// A directory at `<id>.log.1` made every rotation fail, and so every write of
    /// the log once it was full; it is moved aside and the rotation goes on.
    #[test]
    fn a_directory_in_the_place_of_the_rotated_log_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let logs = EnvLogs::install(dir.path().to_owned(), dir.path().join("logs")).unwrap();
        logs.track("e1");
        std::fs::create_dir_all(dir.path().join("logs/e1.log.1/inside")).unwrap();
        let big = "x".repeat(4096);
        let many: Vec<Line> = (0..300)
            .map(|_| line("e1", "2026-01-01T00:00:03Z", &big))
            .collect();
        logs.write(many);
        logs.write(vec![line("e1", "2026-01-01T00:00:04Z", "last")]);
        assert!(logs.failing().is_empty(), "{:?}", logs.failing());
        assert!(dir.path().join("logs/e1.log.1").is_file());
        let aside = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("e1.log.1.rejected-")
            });
        assert!(aside);
        assert!(logs.tail("e1", 1, None)[0].contains("last"));
    }

    #[test]
    fn tails_rotates_follows_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = EnvLogs::install(dir.path().to_owned(), dir.path().join("logs")).unwrap();
        logs.track("e1");
        logs.track("e2");
        let mut follow = logs.follow("e1");
        logs.write(vec![
            line("e1", "2026-01-01T00:00:00Z", "a"),
            line("e2", "2026-01-01T00:00:01Z", "other"),
            line("e1", "2026-01-01T00:00:02Z", "b"),
        ]);
        assert_eq!(logs.tail("e1", 10, None).len(), 2);
        assert_eq!(
            logs.tail("e1", 1, None)[0],
            "{\"ts\":\"2026-01-01T00:00:02Z\",\"message\":\"b\"}"
        );
        assert_eq!(logs.tail("e1", 10, Some("2026-01-01T00:00:01Z")).len(), 1);
        assert!(follow.0.try_recv().unwrap().contains("\"a\""));
        assert!(follow.0.try_recv().unwrap().contains("\"b\""));

        // Past the bound, the file moves to .1 and the tail still reads both.
        let big = "x".repeat(4096);
        let many: Vec<Line> = (0..300)
            .map(|_| line("e1", "2026-01-01T00:00:03Z", &big))
            .collect();
        logs.write(many);
        logs.write(vec![line("e1", "2026-01-01T00:00:04Z", "last")]);
        assert!(dir.path().join("logs/e1.log.1").exists());
        for file in ["logs/e1.log", "logs/e1.log.1"] {
            let size = std::fs::metadata(dir.path().join(file)).unwrap().len();
            assert!(size <= MAX_FILE_BYTES, "{file}: {size}");
        }
        assert!(logs.tail("e1", 1, None)[0].contains("last"));

        logs.remove("e1");
        assert!(logs.tail("e1", 10, None).is_empty());
        assert_eq!(logs.tail("e2", 10, None).len(), 1);
        // A late line of a deleted environment does not make its file again.
        logs.write(vec![line("e1", "2026-01-01T00:00:05Z", "late")]);
        assert!(!dir.path().join("logs/e1.log").exists());
    }
}
