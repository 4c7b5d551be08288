//! How the broker starts a child: on its own (no guard configured), or under the spawn
//! guard ([`super::guard`]), preferably one of a few guards started ahead of time.
//!
//! A guard's own start (an `exec`, the dynamic loader, the runtime's set-up) took
//! about 1.4 ms of every environment start, the largest piece of a start's critical
//! path left after the provider's. So the host keeps [`SPARES`] guards waiting
//! (`--wait-for-program`), each on a socket pair that is its standard input, and hands
//! a start's [`Order`] to one of them; the guard answers whether the program started,
//! so a refused `exec` is still the spawn's error. A new spare is started in the
//! background as one is taken. When none is waiting (a burst of starts) or one fails
//! to answer, the guard is started for the child as before.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guard::{GUARD_ARG, Order, PARENT_FLAG, WAIT_FLAG};
use crate::sync::MutexExt;

/// How many guards wait for a program. One covers starts that come one at a time;
/// the second covers two close together. Each costs an idle process of about a
/// megabyte, mostly pages shared with the others.
const SPARES: usize = 2;

/// How often a refill looks again whether the launches in flight are over.
const QUIET: Duration = Duration::from_millis(5);

/// How long a spare has to answer an order. A healthy one answers within a
/// millisecond or two; one that does not is killed and the guard started afresh.
const ANSWER: Duration = Duration::from_secs(10);

/// Starts `order` directly: the program in a process group of its own, killed when
/// its handle is dropped.
pub(super) fn direct(order: &Order) -> std::io::Result<tokio::process::Child> {
    let mut cmd = child_command(&order.program);
    cmd.args(&order.args)
        .env_clear()
        .envs(order.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&order.cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd.spawn()
}

/// A command with the output piped and a process group of its own, as every child
/// (and every guard) runs.
fn child_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// The spawn guard program and the guards it keeps waiting; one per host.
#[derive(Debug)]
pub struct Guards {
    program: PathBuf,
    spares: Mutex<Vec<Spare>>,
    refilling: AtomicBool,
    /// Launches under way; spares are started between them, not during them.
    launching: AtomicUsize,
}

/// A guard waiting for its order, and the host's end of its socket.
#[derive(Debug)]
struct Spare {
    child: tokio::process::Child,
    socket: tokio::net::UnixStream,
}

/// How handing an order to a spare went, when the program did not start.
enum Handover {
    /// The guard tried and the operating system refused (the program could not be
    /// run): the answer a fresh guard would give too.
    Refused(std::io::Error),
    /// The spare did not take it (it died, or never answered).
    Lost,
}

impl Guards {
    /// The guard program (`tether-guard`, or `tether` itself), with spares started
    /// when a Tokio runtime is at hand.
    pub fn new(program: PathBuf) -> Arc<Self> {
        let guards = Arc::new(Self {
            program,
            spares: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            launching: AtomicUsize::new(0),
        });
        guards.refill();
        guards
    }

    /// The guard program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts `order` under a guard: a spare when one is waiting, else a guard
    /// started for it.
    pub(super) async fn launch(
        self: &Arc<Self>,
        order: &Order,
    ) -> std::io::Result<tokio::process::Child> {
        self.launching.fetch_add(1, Ordering::AcqRel);
        let started = self.take_or_start(order).await;
        self.launching.fetch_sub(1, Ordering::AcqRel);
        started
    }

    async fn take_or_start(
        self: &Arc<Self>,
        order: &Order,
    ) -> std::io::Result<tokio::process::Child> {
        let framed = order.encode()?;
        loop {
            let spare = self.spares.locked().pop();
            let Some(spare) = spare else { break };
            self.refill();
            match spare.hand(&framed).await {
                Ok(child) => return Ok(child),
                Err(Handover::Refused(e)) => return Err(e),
                Err(Handover::Lost) => continue,
            }
        }
        self.refill();
        self.fresh(order)
    }

    /// A guard started for `order`, with the program in its arguments.
    fn fresh(&self, order: &Order) -> std::io::Result<tokio::process::Child> {
        let mut cmd = child_command(&self.program);
        cmd.arg(GUARD_ARG)
            .arg(format!("{PARENT_FLAG}{}", std::process::id()))
            .arg(&order.program)
            .args(&order.args)
            .env_clear()
            .envs(order.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&order.cwd)
            .stdin(Stdio::null())
            // A guard is asked to stop (it then kills its whole tree); SIGKILL would
            // leave what it guards behind.
            .kill_on_drop(false);
        cmd.spawn()
    }

    /// Starts spares in the background until [`SPARES`] wait; one refill runs at a
    /// time, and a failure to start one waits for the next take to try again.
    ///
    /// Each spare is started only while no launch is under way: in a burst of starts
    /// a spare saves nothing (the machine's cores are busy either way), and starting
    /// them one after another on the host's runtime slowed the burst's other work.
    fn refill(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let guards = self.clone();
        runtime.spawn(async move {
            loop {
                while guards.spares.locked().len() < SPARES {
                    while guards.launching.load(Ordering::Acquire) > 0 {
                        tokio::time::sleep(QUIET).await;
                    }
                    match guards.spare() {
                        Ok(spare) => guards.spares.locked().push(spare),
                        Err(e) => {
                            tracing::warn!(program = %guards.program.display(), "cannot start a spare spawn guard: {e}");
                            guards.refilling.store(false, Ordering::Release);
                            return;
                        }
                    }
                }
                guards.refilling.store(false, Ordering::Release);
                // A take between the last check and the line above found a refill
                // running and left it to this one.
                let short = guards.spares.locked().len() < SPARES;
                if !short || guards.refilling.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Starts one guard that waits for its order on a socket pair.
    fn spare(&self) -> std::io::Result<Spare> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let socket = tokio::net::UnixStream::from_std(ours)?;
        let mut cmd = child_command(&self.program);
        cmd.arg(GUARD_ARG)
            .arg(format!("{PARENT_FLAG}{}", std::process::id()))
            .arg(WAIT_FLAG)
            .env_clear()
            // Nothing of any environment's until it is ordered to run something.
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .kill_on_drop(false);
        let child = cmd.spawn()?;
        Ok(Spare { child, socket })
    }
}

impl Spare {
    /// Hands `framed` (an encoded order) to this guard and waits for its answer.
    async fn hand(mut self, framed: &[u8]) -> Result<tokio::process::Child, Handover> {
        let answer = async {
            self.socket.write_all(framed).await?;
            let mut code = [0u8; 4];
            self.socket.read_exact(&mut code).await?;
            Ok::<_, std::io::Error>(i32::from_le_bytes(code))
        };
        match tokio::time::timeout(ANSWER, answer).await {
            Ok(Ok(0)) => Ok(self.child),
            Ok(Ok(errno)) => Err(Handover::Refused(std::io::Error::from_raw_os_error(errno))),
            Ok(Err(e)) => {
                tracing::debug!("a spare spawn guard was gone: {e}");
                self.abandon();
                Err(Handover::Lost)
            }
            Err(_) => {
                tracing::warn!(
                    "a spare spawn guard did not answer within {ANSWER:?}; starting another"
                );
                self.abandon();
                Err(Handover::Lost)
            }
        }
    }

    /// Kills the guard and whatever it may have started (its process group; what it
    /// started also dies with it), leaving the reaping to Tokio.
    fn abandon(self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
