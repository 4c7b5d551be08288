//! The writer thread: it takes lines from a channel and, for everything queued while
//! it was busy, makes one write and one fsync — group commit, as the store does — then
//! tells each `record` caller its line is durable. A thread of its own rather than a
//! task: it blocks on the disk, and then never holds up the runtime serving the API.
//! Once a second it also writes the sampler's due summaries.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::entry::Entry;
use super::file::LogFile;
use super::sample::Sampler;
use crate::sync::MutexExt;

/// Bytes gathered into one write at most, so a rotated file overshoots its size by
/// little and waiters are answered steadily under a flood.
const MAX_BATCH_BYTES: usize = 256 << 10;
/// How often due summaries are written when nothing else arrives.
const TICK: Duration = Duration::from_secs(1);

/// Whether a line was made durable; the error as text (shared by a whole batch).
pub(super) type Durable = Result<(), String>;

/// What the handle sends the thread.
pub(super) enum Msg {
    /// A line; with a waiter for `record`, without for `note`.
    Line(Vec<u8>, Option<oneshot::Sender<Durable>>),
    /// Write what is queued and every pending summary, then stop.
    Close(oneshot::Sender<()>),
}

/// What the thread shares with the handles.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) sampler: Mutex<Sampler>,
    /// Notes in the channel; `note` drops beyond a bound so a flood cannot grow memory.
    pub(super) queued_notes: AtomicUsize,
    /// Writes made durable (one per batch), for the benchmark and tests.
    pub(super) syncs: AtomicU64,
    /// Lines written.
    pub(super) lines: AtomicU64,
    /// Lines that could not be written.
    pub(super) failed: AtomicU64,
}

/// Runs until [`Msg::Close`] or until every handle is gone.
pub(super) fn run(mut file: LogFile, rx: Receiver<Msg>, shared: Arc<Shared>) {
    let mut last_sweep = Instant::now();
    loop {
        let first = match rx.recv_timeout(TICK) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                flush_summaries(&mut file, &shared);
                return;
            }
        };
        let mut buf = Vec::new();
        let mut waiters = Vec::new();
        let mut closing = None;
        let mut next = first;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line, waiter) => {
                    buf.extend_from_slice(&line);
                    match waiter {
                        Some(w) => waiters.push(w),
                        None => {
                            shared.queued_notes.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                Msg::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if buf.len() < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= TICK || closing.is_some() {
            last_sweep = now;
            let summaries = shared.sampler.locked().due(now, closing.is_some());
            push_lines(&mut buf, &summaries);
        }
        if !buf.is_empty() {
            let result = write(&mut file, &buf, &shared);
            for w in waiters {
                // A caller that stopped waiting is no error: its line is written anyway.
                let _ = w.send(result.clone());
            }
        }
        if let Some(done) = closing {
            let _ = done.send(());
            return;
        }
    }
}

fn flush_summaries(file: &mut LogFile, shared: &Shared) {
    let summaries = shared.sampler.locked().due(Instant::now(), true);
    let mut buf = Vec::new();
    push_lines(&mut buf, &summaries);
    if !buf.is_empty() {
        let _ = write(file, &buf, shared);
    }
}

fn push_lines(buf: &mut Vec<u8>, entries: &[Entry]) {
    for e in entries {
        match e.line() {
            Ok(line) => buf.extend_from_slice(&line),
            Err(error) => tracing::error!(%error, "an audit summary could not be encoded"),
        }
    }
}

fn write(file: &mut LogFile, buf: &[u8], shared: &Shared) -> Durable {
    match file.append(buf) {
        Ok(()) => {
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            let lines = memchr::memchr_iter(b'\n', buf).count() as u64;
            shared.lines.fetch_add(lines, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            let lines = memchr::memchr_iter(b'\n', buf).count() as u64;
            shared.failed.fetch_add(lines, Ordering::Relaxed);
            tracing::error!(%error, lines, "writing the audit log failed");
            Err(error.to_string())
        }
    }
}
