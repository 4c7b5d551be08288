//! Brokered child processes: checked against the capabilities, started with a
//! cleared environment holding only granted variables, the program resolved on the
//! host's `PATH`, in their own process group under the spawn guard
//! ([`super::guard`]), capped in number, and killed (with everything they started,
//! double-forked or not) when their handle is dropped.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::launch::{self, Guards};
use super::{Capabilities, Denied, PathScope, env};
use tether_guard::Order;

/// The program name that stands for this very binary (`tether runtime` et al.).
pub const SELF_PROGRAM: &str = "tether";

/// What a provider asks to spawn.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program name as granted.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Variables the provider sets; each must be named by the grant's `set_env`.
    pub env: Vec<(String, String)>,
    /// Host working directory; the workspace when absent.
    pub cwd: Option<String>,
}

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The broker refused it.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The operating system refused it.
    #[error("spawning {program}: {source}")]
    Io {
        /// The program, quoted.
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Whether one more line about a provider's children may be logged now: the
/// instance's log budget, so that spawning (and the children's output) cannot pass it.
pub type LogGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// Spawns processes for one environment.
pub struct ProcessBroker {
    env_id: String,
    caps: Capabilities,
    workspace: PathBuf,
    live: Arc<AtomicUsize>,
    max_processes: usize,
    tail_bytes: usize,
    guard: Option<Arc<Guards>>,
    log_gate: Option<LogGate>,
}

impl std::fmt::Debug for ProcessBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessBroker")
            .field("env_id", &self.env_id)
            .field("workspace", &self.workspace)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl ProcessBroker {
    /// A broker for one environment whose children work inside `workspace`.
    pub fn new(
        env_id: String,
        caps: Capabilities,
        workspace: PathBuf,
        max_processes: usize,
        tail_bytes: usize,
    ) -> Self {
        Self {
            env_id,
            caps,
            workspace,
            live: Arc::new(AtomicUsize::new(0)),
            max_processes,
            tail_bytes,
            guard: None,
            log_gate: None,
        }
    }

    /// Logs the "spawned" line and the children's output only while `gate` allows;
    /// without it, every spawn is logged and each child's streams up to their own cap.
    pub fn with_log_gate(mut self, gate: LogGate) -> Self {
        self.log_gate = Some(gate);
        self
    }

    fn may_log(&self) -> bool {
        self.log_gate.as_ref().is_none_or(|gate| gate())
    }

    /// Runs every child under the spawn guard (see [`super::guard`]) that `guards`
    /// start; without it, only the child's process group is killed.
    pub fn with_guard(mut self, guards: Arc<Guards>) -> Self {
        self.guard = Some(guards);
        self
    }

    /// The capabilities this broker enforces.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Children of this environment that have not been reaped yet.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Checks `spec` and starts it.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<Child, SpawnError> {
        let cwd = self.resolve_cwd(spec.cwd.as_deref())?;
        let paths = PathScope::new(cwd.clone(), &self.roots());
        self.caps.check_spawn(&spec.program, &spec.args, &paths)?;
        let live = self.live.load(Ordering::SeqCst);
        if live >= self.max_processes {
            return Err(Denied::ProcessLimit(live).into());
        }
        let vars = env::child_env(self.caps.grant(), &spec.env)?;
        let io = |source| SpawnError::Io {
            program: crate::untrusted::quoted(&spec.program),
            source,
        };
        let program = if spec.program == SELF_PROGRAM {
            std::env::current_exe().map_err(io)?
        } else {
            env::resolve_program(&spec.program).ok_or_else(|| {
                io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found on the host's PATH",
                ))
            })?
        };
        let order = Order {
            program: program.into_os_string(),
            args: spec.args.iter().map(Into::into).collect(),
            env: vars.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            cwd: cwd.into_os_string(),
        };
        let started = match &self.guard {
            Some(guards) => guards.launch(&order).await,
            None => launch::direct(&order),
        };
        let mut child = started.map_err(io)?;
        let pid = child.id().unwrap_or(0);
        let output = Arc::new(Mutex::new(Tail::new(self.tail_bytes)));
        let mut pumps = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            let log = OutputLog::new(&self.env_id, pid, "stdout", self.log_gate.clone());
            pumps.push(tokio::spawn(pump(out, output.clone(), log)));
        }
        if let Some(err) = child.stderr.take() {
            let log = OutputLog::new(&self.env_id, pid, "stderr", self.log_gate.clone());
            pumps.push(tokio::spawn(pump(err, output.clone(), log)));
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        let program = crate::untrusted::quoted(&spec.program);
        if self.may_log() {
            tracing::info!(env = %self.env_id, pid, %program, "spawned");
        }
        Ok(Child {
            pid,
            inner: Some(child),
            stopping: None,
            status: None,
            output,
            pumps,
            live: self.live.clone(),
            guarded: self.guard.is_some(),
        })
    }

    /// The directories this environment's processes may work in and name.
    fn roots(&self) -> Vec<PathBuf> {
        let mut roots = vec![self.workspace.clone()];
        roots.extend(self.caps.directories());
        roots
    }

    fn resolve_cwd(&self, cwd: Option<&str>) -> Result<PathBuf, Denied> {
        let Some(cwd) = cwd else {
            return Ok(self.workspace.clone());
        };
        let canonical = Path::new(cwd)
            .canonicalize()
            .map_err(|_| Denied::OutsidePath(crate::untrusted::quoted(cwd)))?;
        // The workspace and the granted directories, with symlinks resolved on both sides.
        let inside = self
            .roots()
            .iter()
            .filter_map(|r| r.canonicalize().ok())
            .any(|root| canonical.starts_with(&root));
        if inside {
            Ok(canonical)
        } else {
            Err(Denied::OutsidePath(crate::untrusted::quoted(cwd)))
        }
    }
}

/// A brokered child process. Dropping it kills its whole process group.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    inner: Option<tokio::process::Child>,
    /// A guard asked to stop: the task that reaps it ([`launch::stop_guard`]) tells
    /// its status here.
    stopping: Option<tokio::sync::oneshot::Receiver<ExitStatus>>,
    status: Option<ExitStatus>,
    output: Arc<Mutex<Tail>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    live: Arc<AtomicUsize>,
    guarded: bool,
}

/// How long `wait` lets output readers drain after the child exits; a grandchild
/// holding the pipe open must not hold the caller.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with a code.
    Code(i32),
    /// Ended by a signal.
    Signal(i32),
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }
}

impl Child {
    /// Operating-system process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if it has ended.
    pub fn try_wait(&mut self) -> Option<Exit> {
        if let Some(status) = self.status {
            return Some(status.into());
        }
        if let Some(stopping) = self.stopping.as_mut() {
            return match stopping.try_recv() {
                Ok(status) => Some(self.stopped(status)),
                Err(_) => None,
            };
        }
        let child = self.inner.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(self.reaped(status)),
            _ => None,
        }
    }

    /// Waits for it to end.
    pub async fn wait(&mut self) -> Exit {
        if let Some(status) = self.status {
            return status.into();
        }
        let exit = if let Some(stopping) = self.stopping.as_mut() {
            match stopping.await {
                Ok(status) => self.stopped(status),
                Err(_) => return Exit::Code(-1),
            }
        } else {
            let Some(child) = self.inner.as_mut() else {
                return Exit::Code(-1);
            };
            match child.wait().await {
                Ok(status) => self.reaped(status),
                Err(_) => return Exit::Code(-1),
            }
        };
        for pump in self.pumps.drain(..) {
            let _ = tokio::time::timeout(DRAIN, pump).await;
        }
        exit
    }

    /// Kills it and everything it started.
    pub fn kill(&mut self) {
        if self.guarded {
            self.stop_guard();
        } else if self.status.is_none() {
            self.kill_group();
            if let Some(child) = self.inner.as_mut() {
                let _ = child.start_kill();
            }
        }
    }

    /// The last output it wrote, lossily decoded.
    pub fn output_tail(&self) -> String {
        match self.output.lock() {
            Ok(tail) => tail.text(),
            Err(_) => String::new(),
        }
    }

    /// Reaped here, just now.
    fn reaped(&mut self, status: ExitStatus) -> Exit {
        if self.status.is_none() {
            // A guard kills its tree before it exits; one killed outright (SIGKILL)
            // could not, nor does an unguarded child: what it ran is still in its
            // process group, orphaned. Now, while they hold the group's id (its
            // leader's, just reaped and free again once they are gone), is the time.
            self.kill_group();
        }
        self.stopped(status)
    }

    /// Ended, and its group seen to by whoever reaped it.
    fn stopped(&mut self, status: ExitStatus) -> Exit {
        if self.status.is_none() {
            self.status = Some(status);
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        status.into()
    }

    /// Asks the guard to kill its tree, handing it to [`launch::stop_guard`], which
    /// reaps it and sees to its group. A guard that is gone already is reaped here,
    /// which kills its group at once.
    fn stop_guard(&mut self) {
        if self.status.is_none() && self.stopping.is_none() {
            let _ = self.try_wait();
        }
        if self.status.is_some() {
            return;
        }
        if let Some(child) = self.inner.take() {
            self.stopping = launch::stop_guard(child);
        }
    }

    fn kill_group(&self) {
        if let Ok(pid) = i32::try_from(self.pid)
            && pid > 0
        {
            // Only while the id is known to be this child's: its leader unreaped, or
            // just reaped with the group's other members holding the id.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.guarded {
            self.stop_guard();
        } else if self.status.is_none() {
            // Unreaped, the leader holds the id; once reaped, its group was killed then.
            self.kill_group();
        }
        if self.status.is_none() {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
        // `kill_on_drop` kills the leader; tokio reaps dropped children in the background.
    }
}

/// The last `cap` bytes written to a stream.
#[derive(Debug)]
struct Tail {
    cap: usize,
    buf: VecDeque<u8>,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: VecDeque::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(self.cap)..];
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }

    fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Lines of one child stream logged at most; the tail keeps the rest's end.
const MAX_LOGGED_LINES: usize = 1000;
/// Longest logged line, in bytes.
const MAX_LOGGED_LINE: usize = 1024;

/// Forwards a child's output lines into the environment's log, bounded.
struct OutputLog {
    env_id: String,
    pid: u32,
    stream: &'static str,
    partial: Vec<u8>,
    lines: usize,
    gate: Option<LogGate>,
}

impl OutputLog {
    fn new(env_id: &str, pid: u32, stream: &'static str, gate: Option<LogGate>) -> Self {
        Self {
            env_id: env_id.to_owned(),
            pid,
            stream,
            partial: Vec::new(),
            lines: 0,
            gate,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.flush();
            } else if self.partial.len() < MAX_LOGGED_LINE {
                self.partial.push(b);
            }
        }
    }

    fn flush(&mut self) {
        let line = std::mem::take(&mut self.partial);
        self.lines += 1;
        let allowed = || self.gate.as_ref().is_none_or(|gate| gate());
        if self.lines <= MAX_LOGGED_LINES && allowed() {
            let text = crate::untrusted::logged(&String::from_utf8_lossy(&line));
            tracing::info!(env = %self.env_id, pid = self.pid, stream = self.stream, "{text}");
        } else if self.lines == MAX_LOGGED_LINES + 1 {
            tracing::warn!(env = %self.env_id, pid = self.pid, stream = self.stream,
                "child output exceeds {MAX_LOGGED_LINES} lines; the rest is not logged");
        }
    }
}

async fn pump(mut stream: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>, mut log: OutputLog) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.push(&buf[..n]);
                if let Ok(mut t) = tail.lock() {
                    t.push(&buf[..n]);
                }
            }
        }
    }
    if !log.partial.is_empty() {
        log.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ANY_REST, CommandPattern, Grant};

    fn broker(dir: &Path, max: usize) -> ProcessBroker {
        broker_with_tail(dir, max, 4096)
    }

    fn broker_with_tail(dir: &Path, max: usize, tail: usize) -> ProcessBroker {
        let any = CommandPattern::new("*".into(), vec![ANY_REST.into()]).unwrap();
        let caps = Capabilities::new(
            crate::broker::Request {
                commands: vec![any.clone()].into(),
                ..Default::default()
            },
            Grant {
                commands: vec![
                    CommandPattern::new("sh".into(), vec!["-c".into(), "*".into()]).unwrap(),
                ],
                env: vec!["PATH".into()],
                set_env: vec!["GREETING".into()],
                ..Grant::default()
            },
        );
        ProcessBroker::new("test".into(), caps, dir.to_owned(), max, tail)
    }

    fn sh(script: &str) -> SpawnSpec {
        SpawnSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hi".into())],
            cwd: None,
        }
    }

    #[test]
    fn logged_output_lines_are_cut_and_counted() {
        let mut log = OutputLog::new("env", 1, "stdout", None);
        log.push(&[b'x'; 5000]);
        assert_eq!(log.partial.len(), MAX_LOGGED_LINE);
        log.push(b"\nshort\n");
        assert_eq!(log.lines, 2);
        assert!(log.partial.is_empty());
        for _ in 0..(MAX_LOGGED_LINES * 2) {
            log.push(b"again\n");
        }
        assert_eq!(log.lines, 2 + MAX_LOGGED_LINES * 2);
    }

    #[test]
    fn tail_keeps_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"abc");
        t.push(b"defgh");
        assert_eq!(t.text(), "efgh");
        t.push(b"i");
        assert_eq!(t.text(), "fghi");
    }

    #[tokio::test]
    async fn spawns_with_cleared_env_in_workspace_and_counts_live() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path(), 1);
        let mut child = b.spawn(sh("echo $GREETING $HOME; pwd")).await.unwrap();
        assert_eq!(b.live(), 1);
        let refused = b.spawn(sh("true")).await;
        assert!(matches!(
            refused,
            Err(SpawnError::Denied(Denied::ProcessLimit(1)))
        ));
        assert_eq!(child.wait().await, Exit::Code(0));
        assert_eq!(b.live(), 0);
        // HOME is not granted, so it is empty in the child.
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(child.output_tail(), format!("hi\n{}\n", cwd.display()));
    }

    #[tokio::test]
    async fn output_tail_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker_with_tail(dir.path(), 1, 8);
        let mut child = b.spawn(sh("seq 1 1000")).await.unwrap();
        assert_eq!(child.wait().await, Exit::Code(0));
        assert_eq!(child.output_tail(), "99\n1000\n");
    }

    #[tokio::test]
    async fn refuses_ungranted_and_outside_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path(), 4);
        let mut bad = sh("true");
        bad.program = "/bin/sh".into();
        assert!(matches!(
            b.spawn(bad).await,
            Err(SpawnError::Denied(Denied::NotGranted(_)))
        ));
        let mut outside = sh("true");
        outside.cwd = Some("/".into());
        assert!(matches!(
            b.spawn(outside).await,
            Err(SpawnError::Denied(Denied::OutsidePath(_)))
        ));
    }

    /// Members of process group `pgid` that still run (zombies do not count: they
    /// are dead and only wait for their parent, possibly a slow init, to reap them).
    fn running_in_group(pgid: i32) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let Some((_, rest)) = stat.rsplit_once(')') else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                // state is field 3, pgrp field 5 (1-based, counting pid and comm).
                fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z"
            })
            .count()
    }

    #[tokio::test]
    async fn dropping_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(dir.path(), 4);
        let child = b.spawn(sh("sleep 30 & sleep 30")).await.unwrap();
        let pid = child.pid() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running_in_group(pid) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the group never started"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running_in_group(pid) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the group outlived its handle"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
