//! How the broker starts a child: on its own (no guard configured), or under the spawn
//! guard ([`super::guard`]), preferably one of a few guards started ahead of time.
//!
//! A guard's own start (an `exec`, the dynamic loader, the runtime's set-up) took
//! about 1.4 ms of every environment start, the largest piece of a start's critical
//! path left after the provider's. So the host keeps [`SPARES`] guards waiting
//! (`--wait-for-program`), each on a socket pair that is its standard input, and hands
//! a start's [`Order`] to one of them; the guard answers whether the program started,
//! so a refused `exec` is still the spawn's error. A new spare is started in the
//! background once a taken one leaves fewer waiting and no launch is under way. When
//! none is waiting (a burst of starts) or one fails to answer, the guard is started
//! for the child as before.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sync::MutexExt;
use tether_guard::{GUARD_ARG, Order, PARENT_FLAG, SMALL_BINARY, WAIT_FLAG};

/// How many guards wait for a program. One covers starts that come one at a time;
/// the second covers two close together. Each is an idle process with about 150 KiB
/// of memory of its own (2 MiB resident, the rest the binary's and libc's pages).
const SPARES: usize = 2;

/// How often a refill looks again whether the launches in flight are over.
const QUIET: Duration = Duration::from_millis(5);

/// How long a spare has to answer an order. A healthy one answers within a
/// millisecond or two; one that does not is killed and the guard started afresh.
const ANSWER: Duration = Duration::from_secs(10);

/// How long a guard has to stop after `SIGTERM` before its process group is killed
/// outright.
const GUARD_GRACE: Duration = Duration::from_secs(3);

/// Asks the guard `child` to kill its tree, and kills its process group after
/// [`GUARD_GRACE`] in case the guard itself was stopped or killed. The answer is the
/// guard's exit status once it is reaped (`None` without a Tokio runtime).
///
/// The guard is reaped here and nowhere else: until then its process id, which is
/// also its group's, cannot pass to another process, so the late `killpg` reaches
/// this guard's group and no stranger's.
pub(super) fn stop_guard(
    mut child: tokio::process::Child,
) -> Option<tokio::sync::oneshot::Receiver<std::process::ExitStatus>> {
    let pid = Pid::from_raw(i32::try_from(child.id()?).ok()?);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let (tell, status) = tokio::sync::oneshot::channel();
    rt.spawn(async move {
        let ended = match tokio::time::timeout(GUARD_GRACE, child.wait()).await {
            Ok(ended) => ended,
            Err(_) => {
                // Still unreaped: the id is this guard's.
                let _ = killpg(pid, Signal::SIGKILL);
                child.wait().await
            }
        };
        // A guard that ended by itself killed its tree first; one killed from
        // outside left its tree in the group, and the group keeps the id as long as
        // any of them lives.
        let _ = killpg(pid, Signal::SIGKILL);
        if let Ok(ended) = ended {
            let _ = tell.send(ended);
        }
    });
    Some(status)
}

/// Starts `order` directly: the program in a process group of its own, killed when
/// its handle is dropped.
pub(super) fn direct(order: &Order) -> std::io::Result<tokio::process::Child> {
    let mut cmd = child_command(&order.program);
    as_ordered(&mut cmd, order).kill_on_drop(true);
    cmd.spawn()
}

/// `order`'s arguments, its whole environment and its directory on `cmd`, with no
/// standard input.
fn as_ordered<'a>(
    cmd: &'a mut tokio::process::Command,
    order: &Order,
) -> &'a mut tokio::process::Command {
    cmd.args(&order.args)
        .env_clear()
        .envs(order.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&order.cwd)
        .stdin(Stdio::null())
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
    /// The guard program (the embedded `tether-guard`, or `tether` itself), with
    /// spares started when a Tokio runtime is at hand.
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

    /// Starts `order` under a guard: a spare when one is waiting, else a guard
    /// started for it.
    pub(super) async fn launch(
        self: &Arc<Self>,
        order: &Order,
    ) -> std::io::Result<tokio::process::Child> {
        // Counted down however the launch ends, a caller giving up on it included.
        let _launching = Launching::new(&self.launching);
        self.take_or_start(order).await
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

    /// The guard program told this host's pid, as every guard is started.
    fn guard_command(&self) -> tokio::process::Command {
        let mut cmd = child_command(&self.program);
        // Named as the guard it is in `ps`, whether it runs from memory or is `tether`.
        cmd.arg0(SMALL_BINARY)
            .arg(GUARD_ARG)
            .arg(format!("{PARENT_FLAG}{}", std::process::id()));
        cmd
    }

    /// A guard started for `order`, with the program in its arguments.
    fn fresh(&self, order: &Order) -> std::io::Result<tokio::process::Child> {
        let mut cmd = self.guard_command();
        cmd.arg(&order.program);
        // A guard is asked to stop (it then kills its whole tree); SIGKILL would leave
        // what it guards behind.
        as_ordered(&mut cmd, order).kill_on_drop(false);
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
        let mut cmd = self.guard_command();
        cmd.arg(WAIT_FLAG)
            .env_clear()
            // Nothing of any environment's until it is ordered to run something.
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .kill_on_drop(false);
        let child = cmd.spawn()?;
        Ok(Spare { child, socket })
    }
}

/// One more launch under way while it lives.
struct Launching<'a>(&'a AtomicUsize);

impl<'a> Launching<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Launching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The guard of a spare being handed its order. Dropped before the answer settles it
/// (the caller gave up, the answer never came, the guard was gone), it stops the guard
/// and whatever it may have started: nothing runs that no handle stands for.
struct Handing(Option<tokio::process::Child>);

impl Handing {
    /// The answer came: the guard runs the program (or exits by itself after a refusal).
    fn settled(mut self) -> Option<tokio::process::Child> {
        self.0.take()
    }
}

impl Drop for Handing {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop_guard(child);
        }
    }
}

impl Spare {
    /// Hands `framed` (an encoded order) to this guard and waits for its answer.
    async fn hand(self, framed: &[u8]) -> Result<tokio::process::Child, Handover> {
        let Spare { child, mut socket } = self;
        let handing = Handing(Some(child));
        let answer = async {
            socket.write_all(framed).await?;
            let mut code = [0u8; 4];
            socket.read_exact(&mut code).await?;
            Ok::<_, std::io::Error>(i32::from_le_bytes(code))
        };
        match tokio::time::timeout(ANSWER, answer).await {
            Ok(Ok(code)) => {
                let child = handing.settled().ok_or(Handover::Lost)?;
                match code {
                    0 => Ok(child),
                    errno => Err(Handover::Refused(std::io::Error::from_raw_os_error(errno))),
                }
            }
            Ok(Err(e)) => {
                tracing::debug!("a spare spawn guard was gone: {e}");
                Err(Handover::Lost)
            }
            Err(_) => {
                tracing::warn!(
                    "a spare spawn guard did not answer within {ANSWER:?}; starting another"
                );
                Err(Handover::Lost)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;

    /// Guards running `script` (a shell script standing in for the guard program),
    /// once both spares wait.
    async fn guards(dir: &Path, script: &str) -> Arc<Guards> {
        let program = dir.join("guard");
        std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let guards = Guards::new(program);
        until("waiting, both spares", || {
            guards.spares.locked().len() == SPARES
        })
        .await;
        guards
    }

    fn order(dir: &Path) -> Order {
        Order {
            program: "/bin/true".into(),
            args: vec![],
            env: vec![],
            cwd: dir.as_os_str().to_owned(),
        }
    }

    /// The pid of the spare the next launch takes.
    fn next_spare(guards: &Guards) -> u32 {
        let spares = guards.spares.locked();
        spares.last().and_then(|s| s.child.id()).unwrap()
    }

    fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    /// Waits up to five seconds for `done`.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never {what}");
    }

    async fn until_gone(pid: u32) {
        until(&format!("gone: {pid}"), || gone(pid)).await;
    }

    #[tokio::test]
    async fn a_launch_given_up_on_stops_the_guard_it_was_handing_to() {
        let dir = tempfile::tempdir().unwrap();
        // Takes the order and never answers.
        let guards = guards(dir.path(), "exec sleep 30").await;
        let taken = next_spare(&guards);
        let order = order(dir.path());
        let launch = guards.launch(&order);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), launch)
                .await
                .is_err()
        );
        until_gone(taken).await;
        // The launch is no longer counted, so the spare taken is replaced.
        assert_eq!(guards.launching.load(Ordering::Acquire), 0);
        until("replaced, the spare taken", || {
            let spares = guards.spares.locked();
            spares.len() == SPARES && spares.iter().all(|s| s.child.id() != Some(taken))
        })
        .await;
    }

    /// A process leading a group of its own that got `pid` (the kernel hands out the
    /// next id after `ns_last_pid`; another fork on the machine may take it first, so
    /// this tries again), or `None` where this user may not set `ns_last_pid`.
    fn claim(pid: u32) -> Option<tokio::process::Child> {
        for _ in 0..200 {
            if let Err(e) = std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()) {
                assert!(!nix::unistd::geteuid().is_root(), "ns_last_pid: {e}");
                return None;
            }
            let mut cmd = child_command("sleep");
            let mut child = cmd.arg("30").kill_on_drop(true).spawn().unwrap();
            if child.id() == Some(pid) {
                return Some(child);
            }
            let _ = child.start_kill();
        }
        panic!("pid {pid} was never handed out again");
    }

    #[tokio::test]
    async fn a_stopped_guard_s_late_group_kill_never_reaches_the_next_holder_of_its_id() {
        // A guard that ends on SIGTERM, as a healthy one does.
        let guard = child_command("sleep").arg("30").spawn().unwrap();
        let pid = guard.id().unwrap();
        let status = stop_guard(guard).unwrap().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Its id, free again, names another process group within the grace.
        let Some(mut stranger) = claim(pid) else {
            eprintln!("skipped: this user cannot set ns_last_pid");
            return;
        };
        tokio::time::sleep(GUARD_GRACE + Duration::from_secs(1)).await;
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "the guard's late kill reached the process that got its id"
        );
    }

    #[tokio::test]
    async fn a_guard_deaf_to_sigterm_is_killed_with_its_group_after_the_grace() {
        let mut cmd = child_command("sh");
        let script = "trap '' TERM; sleep 30 & echo deaf; wait";
        let mut guard = cmd.args(["-c", script]).spawn().unwrap();
        let pid = guard.id().unwrap();
        // SIGTERM before the trap is set would end it at once.
        let mut said = [0u8; 5];
        let mut out = guard.stdout.take().unwrap();
        out.read_exact(&mut said).await.unwrap();
        assert_eq!(&said, b"deaf\n");
        let status = stop_guard(guard).unwrap().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let group = Pid::from_raw(i32::try_from(pid).unwrap());
        until("the group gone", || killpg(group, None).is_err()).await;
    }

    #[tokio::test]
    async fn a_refused_exec_is_the_launch_error() {
        let dir = tempfile::tempdir().unwrap();
        // Answers ENOENT (2) on its socket, as a guard whose `exec` failed.
        let guards = guards(dir.path(), r"printf '\002\000\000\000' >&0; sleep 2").await;
        let err = guards.launch(&order(dir.path())).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }

    #[tokio::test]
    async fn spares_that_died_are_passed_over_for_a_fresh_guard() {
        let dir = tempfile::tempdir().unwrap();
        // A spare waits; a guard started for an order notes its arguments.
        let script =
            r#"[ "$3" = --wait-for-program ] || echo "$@" > "$(dirname "$0")/args"; exec sleep 30"#;
        let guards = guards(dir.path(), script).await;
        let dead: Vec<u32> = (guards.spares.locked().iter())
            .filter_map(|s| s.child.id())
            .collect();
        for pid in &dead {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        for pid in &dead {
            until_gone(*pid).await;
        }
        let mut fresh = guards.launch(&order(dir.path())).await.unwrap();
        assert!(!dead.contains(&fresh.id().unwrap()));
        let args = dir.path().join("args");
        until("written, the fresh guard's arguments", || args.exists()).await;
        let args = std::fs::read_to_string(args).unwrap();
        let host = std::process::id();
        assert_eq!(
            args.trim(),
            format!("{GUARD_ARG} {PARENT_FLAG}{host} /bin/true")
        );
        let _ = fresh.start_kill();
        let _ = fresh.wait().await;
    }
}
