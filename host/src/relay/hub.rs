//! One environment's hub: the runtime stream and the app streams, each a replay
//! [`Window`] plus the connection currently draining it.
//!
//! Runtime → apps: a message with a `threadId` goes into that thread's app windows,
//! one without into every app window. App → runtime: into the runtime window, which
//! also holds messages while no runtime is connected. Nothing blocks: a full runtime
//! window refuses the app's message (the app is told), a full app window closes that
//! app with [`CLOSE_TOO_SLOW`] (a resumable app keeps its session and learns on resume
//! exactly which messages it lost), so one slow peer never stalls another.
//!
//! A connection that did not ask to resume is acknowledged as it is written, so its
//! window only ever holds what is still unwritten — the old queue, unchanged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::activity::Activity;
use super::error::RelayError;
use super::outbox::{Outbox, Take};
use super::protocol::CloseReason;
use super::protocol::{self, CLOSE_GONE, CLOSE_REPLACED, CLOSE_TOO_SLOW, Resume};
use super::send::SendHalf;
use super::window::Window;
use crate::config::RelayConfig;
use crate::sync::MutexExt;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The host acknowledges a resumable peer's frames at least this often.
const ACK_EVERY: u64 = 64;

/// What a stop does to the apps' sessions ([`Hub::end_runtime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSessions {
    /// They end: what was in the stopped runtime's hands may be lost, and the apps
    /// must be told so.
    End,
    /// They go on: nothing was in flight (an idle stop), so a session may resume.
    Keep,
}

/// Which stream of a hub a connection drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKey {
    /// The environment's runtime.
    Runtime,
    /// An app session.
    App(u64),
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) resumable: bool,
    /// Highest `relaySeq` handed to the writer.
    pub(super) sent: u64,
    /// Relay frames (not numbered) to write before the next messages.
    pub(super) control: VecDeque<String>,
    /// The peer frame count last acknowledged to the peer.
    pub(super) ack_sent: u64,
    /// Its socket's sending half, and its writer's wake-up.
    pub(super) send: Arc<SendHalf>,
    closed: Arc<OnceLock<CloseReason>>,
}

impl Conn {
    fn close(self, code: u16, reason: &str) {
        let _ = self.closed.set(CloseReason {
            code,
            reason: reason.to_owned(),
        });
        self.send.wake();
    }

    fn target(&self, key: StreamKey) -> Target {
        Target {
            send: self.send.clone(),
            key,
            conn: self.id,
            resumable: self.resumable,
        }
    }
}

/// A connection a frame was just queued for, to be written to (or woken) once the
/// hub's lock is let go: a write under the hub's lock would hold up every other
/// connection of the environment.
pub(super) struct Target {
    send: Arc<SendHalf>,
    key: StreamKey,
    conn: u64,
    resumable: bool,
}

/// The connections one frame was queued for: mostly one (the runtime, or the one app
/// of a thread), held without allocating; a broadcast needs the list.
#[derive(Default)]
pub(super) struct Targets {
    first: Option<Target>,
    more: Vec<Target>,
}

impl Targets {
    fn push(&mut self, target: Target) {
        match self.first {
            None => self.first = Some(target),
            Some(_) => self.more.push(target),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Target> {
        self.first.iter().chain(&self.more)
    }

    /// Wakes each connection's writer task (for frames off the hot path).
    fn wake(&self) {
        for t in self.iter() {
            t.send.wake();
        }
    }
}

#[derive(Debug)]
pub(super) struct Stream {
    pub(super) window: Window,
    pub(super) conn: Option<Conn>,
    /// The resumable session's key ([`Resume::key`]: its holder's and its id).
    session: Option<String>,
    /// Frames counted from the peer in this session.
    pub(super) received: u64,
    /// The highest `relaySeq` ever handed to a writer of this stream, whichever
    /// connection it was.
    pub(super) written: u64,
    thread: Option<String>,
    detached_at: Option<Instant>,
    /// Set when a stop ended this app's session: its peer is written what is held for
    /// it, then closed with [`CLOSE_GONE`] and this reason; it counts nothing more.
    ended: Option<String>,
}

impl Stream {
    fn new(config: &RelayConfig, thread: Option<String>) -> Self {
        Self {
            window: Window::new(config.window_messages, config.window_bytes),
            conn: None,
            session: None,
            received: 0,
            written: 0,
            thread,
            detached_at: None,
            ended: None,
        }
    }

    /// Counts one frame from connection `conn`; false if that connection is stale.
    fn count(&mut self, conn: u64) -> bool {
        // A frame sent after a stop ended the session is not relayed: the peer treats
        // it, like everything else unanswered, as not done.
        if self.ended.is_some() {
            return false;
        }
        let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) else {
            return false;
        };
        self.received += 1;
        if c.resumable && self.received - c.ack_sent >= ACK_EVERY {
            c.ack_sent = self.received;
            c.control.push_back(protocol::ack_frame(self.received));
            c.send.wake();
        }
        true
    }

    /// Hands a new connection the stream, replacing any current one; a resumable one
    /// is greeted with the largest frame it may send and the window it must ack within.
    fn connect(&mut self, conn: &mut Conn, resume: Option<&Resume>, config: &RelayConfig) {
        if let Some(old) = self.conn.take() {
            old.close(CLOSE_REPLACED, "replaced by a newer connection");
        }
        self.detached_at = None;
        let acked = self.window.acked();
        match resume {
            None => {
                self.session = None;
                self.received = 0;
                conn.sent = acked;
            }
            Some(r) => {
                let key = r.key();
                let same = self.session.as_deref() == Some(key.as_str());
                let reset = (!same && r.last > 0) || r.last > self.window.last();
                if !same {
                    self.session = Some(key);
                    self.received = 0;
                }
                conn.sent = if reset { acked } else { r.last.max(acked) };
                conn.ack_sent = self.received;
                conn.control.push_back(protocol::resumed_frame(
                    &r.session,
                    self.received,
                    conn.sent + 1,
                    reset,
                    config,
                ));
                if let (false, Some((from, to))) = (reset, self.window.lost_after(r.last)) {
                    conn.control.push_back(protocol::lost_frame(from, to));
                }
            }
        }
    }

    /// Adds a message for this stream's peer. A resumable stream evicts its oldest
    /// message when full (and closes a connected peer that let it fill); a plain one
    /// refuses, which ends its connection. False if the stream must go. The peer's
    /// connection, if any, is not told: the caller adds it to the targets it writes
    /// to or wakes once the hub's lock is let go.
    fn offer(&mut self, text: &Utf8Bytes) -> bool {
        if self.session.is_some() {
            let (_, evicted) = self.window.push_evicting(text.clone());
            if evicted && let Some(conn) = self.conn.take() {
                conn.close(
                    CLOSE_TOO_SLOW,
                    "a whole replay window behind; resume to continue",
                );
                self.detached_at = Some(Instant::now());
            }
        } else if self.window.push(text.clone()).is_err() {
            if let Some(conn) = self.conn.take() {
                conn.close(CLOSE_TOO_SLOW, "too far behind");
            }
            return false;
        }
        true
    }
}

#[derive(Debug)]
pub(super) struct HubState {
    pub(super) runtime: Stream,
    pub(super) apps: HashMap<u64, Stream>,
    sessions: HashMap<String, u64>,
    closed: bool,
}

impl HubState {
    pub(super) fn stream(&mut self, key: StreamKey) -> Option<&mut Stream> {
        match key {
            StreamKey::Runtime => Some(&mut self.runtime),
            StreamKey::App(id) => self.apps.get_mut(&id),
        }
    }

    fn live(&self) -> usize {
        usize::from(self.runtime.conn.is_some())
            + self.apps.values().filter(|a| a.conn.is_some()).count()
    }

    fn remove_app(&mut self, id: u64) {
        if let Some(app) = self.apps.remove(&id)
            && let Some(session) = app.session
        {
            self.sessions.remove(&session);
        }
    }
}

/// One environment's hub.
#[derive(Debug)]
pub struct Hub {
    pub(super) env_id: String,
    config: Arc<RelayConfig>,
    state: Mutex<HubState>,
    next_id: AtomicU64,
    /// Last frame, app arrival or departure, and the runtime's busy flag.
    activity: Activity,
}

impl Hub {
    pub(super) fn new(env_id: String, config: Arc<RelayConfig>) -> Self {
        Self {
            state: Mutex::new(HubState {
                runtime: Stream::new(&config, None),
                apps: HashMap::new(),
                sessions: HashMap::new(),
                closed: false,
            }),
            env_id,
            config,
            next_id: AtomicU64::new(1),
            activity: Activity::default(),
        }
    }

    /// The largest message the relay carries, in bytes (`[relay] max_message_kib`).
    pub fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    /// When this hub last saw life, for idle stops.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Whether an app is connected now.
    pub fn apps_connected(&self) -> bool {
        self.lock().apps.values().any(|a| a.conn.is_some())
    }

    /// The relay settings this hub was made with.
    pub(super) fn config(&self) -> &Arc<RelayConfig> {
        &self.config
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.state.locked()
    }

    fn new_conn(&self, resumable: bool) -> (Conn, Arc<OnceLock<CloseReason>>) {
        let closed = Arc::new(OnceLock::new());
        let conn = Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            resumable,
            sent: 0,
            control: VecDeque::new(),
            ack_sent: 0,
            send: Arc::new(SendHalf::default()),
            closed: closed.clone(),
        };
        (conn, closed)
    }

    /// Accepts a runtime connection, replacing (and closing) any earlier one; it gets
    /// everything waiting for it, from where `resume` says it stopped.
    pub fn attach_runtime(self: &Arc<Self>, resume: Option<Resume>) -> Result<Outbox, RelayError> {
        let (mut conn, closed) = self.new_conn(resume.is_some());
        let mut s = self.lock();
        if s.closed {
            return Err(RelayError::Closed);
        }
        if s.runtime.conn.is_none() && s.live() >= self.config.max_connections {
            return Err(RelayError::TooManyConnections(self.config.max_connections));
        }
        s.runtime.connect(&mut conn, resume.as_ref(), &self.config);
        let outbox = Outbox::new(self.clone(), StreamKey::Runtime, &conn, closed);
        tracing::info!(env = %self.env_id, conn = conn.id, resumable = conn.resumable,
            waiting = s.runtime.window.len(), "runtime connected");
        s.runtime.conn = Some(conn);
        Ok(outbox)
    }

    /// Forgets runtime connection `conn`; false if a newer one had replaced it.
    pub fn detach_runtime(&self, conn: u64) -> bool {
        let mut s = self.lock();
        if s.runtime.conn.as_ref().is_some_and(|c| c.id == conn) {
            s.runtime.conn = None;
            // A runtime that is gone works on nothing.
            self.activity.set_busy(false);
            tracing::info!(env = %self.env_id, conn, "runtime disconnected");
            true
        } else {
            false
        }
    }

    /// Closes the runtime connection, if any; what was written to it and not
    /// acknowledged goes to the next runtime (a failed or superseded one may not have
    /// run it).
    pub fn close_runtime(&self, code: u16, reason: &str) {
        if let Some(conn) = self.lock().runtime.conn.take() {
            conn.close(code, reason);
        }
    }

    /// Ends the runtime of an environment that was stopped or deleted on purpose:
    /// closes its connection, if any, and forgets every message held for it, written
    /// or not. The process those went to is gone, and no later runtime may run them:
    /// their apps are told, by their sessions' end, to treat them as not done (a
    /// crashed runtime's successor does get them; see `docs/protocol.md`). With
    /// [`AppSessions::End`], every app connected is written what is held for it and
    /// then closed with `code`, and every session waiting to be resumed is ended the
    /// same way when it resumes.
    pub fn end_runtime(&self, code: u16, reason: &str, apps: AppSessions) {
        let mut wake = Vec::new();
        {
            let mut s = self.lock();
            let last = s.runtime.window.last();
            s.runtime.window.ack(last);
            if let Some(conn) = s.runtime.conn.take() {
                conn.close(code, reason);
            }
            if apps == AppSessions::End {
                for app in s.apps.values_mut() {
                    app.ended = Some(reason.to_owned());
                    wake.extend(app.conn.as_ref().map(|c| c.send.clone()));
                }
            }
        }
        // Each writer closes its connection once it finds nothing more to write.
        for send in wake {
            send.wake();
        }
    }

    /// Whether a runtime is connected.
    pub fn runtime_connected(&self) -> bool {
        self.lock().runtime.conn.is_some()
    }

    /// Accepts an app connection on `thread`, resuming its session if it names one;
    /// `greetings` are queued for it first (before the connection counts as reading,
    /// so a resumed session whose window is full is not closed for them).
    pub fn attach_app(
        self: &Arc<Self>,
        thread: Option<String>,
        resume: Option<Resume>,
        greetings: impl IntoIterator<Item = String>,
    ) -> Result<Outbox, RelayError> {
        let (mut conn, closed) = self.new_conn(resume.is_some());
        let mut s = self.lock();
        if s.closed {
            return Err(RelayError::Closed);
        }
        self.expire_sessions(&mut s);
        let existing = resume
            .as_ref()
            .and_then(|r| s.sessions.get(&r.key()).copied());
        let replacing =
            existing.is_some_and(|id| s.apps.get(&id).is_some_and(|a| a.conn.is_some()));
        if !replacing && s.live() >= self.config.max_connections {
            return Err(RelayError::TooManyConnections(self.config.max_connections));
        }
        let id = existing.unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let stream = s
            .apps
            .entry(id)
            .or_insert_with(|| Stream::new(&self.config, None));
        stream.thread = thread;
        // An ended session's greeting would be of a later run.
        if stream.ended.is_none() {
            for greeting in greetings {
                stream.offer(&greeting.into());
            }
        }
        stream.connect(&mut conn, resume.as_ref(), &self.config);
        let outbox = Outbox::new(self.clone(), StreamKey::App(id), &conn, closed);
        stream.conn = Some(conn);
        if let Some(r) = resume {
            s.sessions.insert(r.key(), id);
        }
        self.activity.touch();
        Ok(outbox)
    }

    /// Drops app sessions left unresumed past their time, and the oldest ones beyond
    /// the connection limit, so detached windows stay bounded too.
    fn expire_sessions(&self, s: &mut HubState) {
        let ttl = self.config.session_ttl;
        let mut detached: Vec<(Instant, u64)> = s
            .apps
            .iter()
            .filter_map(|(id, a)| a.detached_at.map(|t| (t, *id)))
            .collect();
        detached.sort_unstable();
        let excess = detached.len().saturating_sub(self.config.max_connections);
        for (i, (at, id)) in detached.into_iter().enumerate() {
            if i < excess || at.elapsed() >= ttl {
                tracing::debug!(env = %self.env_id, session = id, "app session expired");
                s.remove_app(id);
            }
        }
    }

    /// Ends app connection `conn`: a resumable session waits to be resumed, a plain
    /// one is forgotten.
    pub fn detach_app(&self, key: StreamKey, conn: u64) {
        let StreamKey::App(id) = key else { return };
        let mut s = self.lock();
        let Some(app) = s.apps.get_mut(&id) else {
            return;
        };
        if app.conn.as_ref().is_none_or(|c| c.id != conn) {
            return;
        }
        app.conn = None;
        self.activity.touch();
        if app.session.is_some() {
            app.detached_at = Some(Instant::now());
        } else {
            s.remove_app(id);
        }
    }

    /// Counts one frame from connection `conn` of `key`; false if that connection was
    /// replaced or closed, in which case the frame must be ignored (a resuming peer
    /// sends it again, since it was never acknowledged).
    pub fn received(&self, key: StreamKey, conn: u64) -> bool {
        self.lock().stream(key).is_some_and(|st| st.count(conn))
    }

    /// The peer on `conn` has every message up to `seq`.
    pub fn acknowledge(&self, key: StreamKey, conn: u64, seq: u64) {
        let mut s = self.lock();
        if let Some(st) = s.stream(key)
            && st
                .conn
                .as_ref()
                .is_some_and(|c| c.id == conn && c.resumable)
        {
            st.window.ack(seq);
        }
    }

    /// Sends one message to app `key` only (replies to its own requests).
    pub fn send_to_app(&self, key: StreamKey, text: String) {
        let StreamKey::App(id) = key else { return };
        let text = Utf8Bytes::from(text);
        let mut s = self.lock();
        let Some(app) = s.apps.get_mut(&id) else {
            return;
        };
        if app.offer(&text) {
            if let Some(conn) = &app.conn {
                conn.send.wake();
            }
        } else {
            s.remove_app(id);
        }
    }

    /// Sends a message to the runtime (held while the runtime is away), writing it to
    /// the runtime's socket at once when its writer is idle. The text is kept as it
    /// is, shared rather than copied.
    pub fn to_runtime(&self, text: impl Into<Utf8Bytes>) -> Result<(), RelayError> {
        let text = text.into();
        let target = {
            let mut s = self.lock();
            if s.closed {
                return Err(RelayError::Closed);
            }
            let rt = &mut s.runtime;
            match rt.window.push(text) {
                Ok(_) => rt.conn.as_ref().map(|c| c.target(StreamKey::Runtime)),
                Err(_) if rt.conn.is_none() => {
                    return Err(RelayError::PendingFull(rt.window.len()));
                }
                Err(_) => return Err(RelayError::RuntimeBusy),
            }
        };
        if let Some(target) = target {
            self.write_through(&target);
        }
        Ok(())
    }

    /// Writes what `target`'s stream holds to its socket now if its writer is idle,
    /// else wakes the writer (see `relay/send.rs`).
    fn write_through(&self, target: &Target) {
        target
            .send
            .write_through(|out| self.take(target.key, target.conn, target.resumable, out));
    }

    /// Appends the next frames connection `conn` of `key` is to write to `out`: relay
    /// frames first, then messages in order (numbered on a resumable connection,
    /// acknowledged as written otherwise). A plain connection's messages are the very
    /// texts the hub was given, not copies. [`Take::Closed`] carries no reason: the
    /// connection's [`Outbox`] knows it.
    pub(super) fn take(
        &self,
        key: StreamKey,
        conn: u64,
        resumable: bool,
        out: &mut Vec<Utf8Bytes>,
    ) -> Take {
        /// Messages handed to a writer per turn, so one busy stream cannot hold the
        /// hub long.
        const BATCH: usize = 64;
        let before = out.len();
        let (first, messages) = {
            let mut s = self.lock();
            let Some(stream) = s.stream(key) else {
                return Take::Closed(None);
            };
            let Some(c) = stream.conn.as_mut().filter(|c| c.id == conn) else {
                return Take::Closed(None);
            };
            out.extend(c.control.drain(..).map(Utf8Bytes::from));
            let messages = out.len();
            let first = stream.window.after(c.sent, BATCH, out);
            if out.len() > messages {
                c.sent = first + (out.len() - messages) as u64 - 1;
                stream.written = stream.written.max(c.sent);
            }
            if !resumable {
                stream.window.ack(c.sent);
            }
            if out.len() == before
                && let Some(reason) = stream.ended.clone()
            {
                // Everything held was written: now the close.
                if let Some(conn) = stream.conn.take() {
                    conn.close(CLOSE_GONE, &reason);
                }
                match (key, stream.session.is_some()) {
                    (StreamKey::App(id), false) => s.remove_app(id),
                    _ => stream.detached_at = Some(Instant::now()),
                }
                return Take::Closed(None);
            }
            (first, messages)
        };
        if out.len() == before {
            return Take::Idle;
        }
        // Numbering happens outside the lock: it is the only per-message text work.
        if resumable {
            for (seq, text) in (first..).zip(&mut out[messages..]) {
                *text = protocol::with_seq(seq, text).into();
            }
        }
        Take::Frames
    }

    /// Counts and routes a message from runtime connection `conn` to its apps by
    /// `thread`; ignored if that connection was replaced.
    pub fn from_runtime(&self, conn: u64, text: impl Into<Utf8Bytes>, thread: Option<&str>) {
        let text = text.into();
        let targets = {
            let mut s = self.lock();
            if !s.runtime.count(conn) {
                return;
            }
            self.fan_out(&mut s, &text, thread)
        };
        // Written by the runtime's reader, to every idle app at once.
        for target in targets.iter() {
            self.write_through(target);
        }
    }

    /// Sends a host event to every app.
    pub fn broadcast(&self, text: String) {
        let targets = self.fan_out(&mut self.lock(), &text.into(), None);
        targets.wake();
    }

    /// Offers `text` to the apps of `thread` (every app without one); returns the
    /// connections to write to.
    fn fan_out(&self, s: &mut HubState, text: &Utf8Bytes, thread: Option<&str>) -> Targets {
        let mut gone = Vec::new();
        let mut targets = Targets::default();
        for (id, app) in &mut s.apps {
            // An ended session gets nothing of a later run.
            if app.ended.is_some() {
                continue;
            }
            if thread.is_none() || app.thread.as_deref() == thread {
                if !app.offer(text) {
                    gone.push(*id);
                } else if let Some(conn) = &app.conn {
                    targets.push(conn.target(StreamKey::App(*id)));
                }
            }
        }
        for id in gone {
            tracing::info!(env = %self.env_id, app = id, "app too far behind: closed");
            s.remove_app(id);
        }
        targets
    }

    /// Closes every connection and refuses new ones.
    pub fn close(&self, reason: &str) {
        let mut s = self.lock();
        s.closed = true;
        if let Some(conn) = s.runtime.conn.take() {
            conn.close(CLOSE_GONE, reason);
        }
        for (_, app) in s.apps.drain() {
            if let Some(conn) = app.conn {
                conn.close(CLOSE_GONE, reason);
            }
        }
        s.sessions.clear();
        s.runtime.window = Window::new(1, 1);
    }
}
