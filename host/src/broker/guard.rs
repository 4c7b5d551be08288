//! The spawn guard: a small mode of this binary (`tether __spawn-guard PROGRAM
//! ARGS...`) that the broker runs every child under, so that a child which
//! double-forks or calls `setsid()` still stops with its environment.
//!
//! The guard makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): every
//! orphan below it is re-parented to it, not to init, so its process tree holds
//! everything the program ever started, whatever process group or session they
//! moved to. It runs the program, reaps whatever dies below it, and when the
//! program exits, when it is asked to stop (`SIGTERM`, `SIGINT`, `SIGHUP`), or
//! when the host that started it goes away, it kills its whole tree with
//! `SIGKILL` until nothing is left, then exits as the program did.
//!
//! The host passes its pid (`--parent=PID`): a guard whose parent is already
//! someone else when it starts (the host was killed between the fork and the
//! guard's first look) exits without starting the program, so a `kill -9` at any
//! instant leaves no runtime behind.
//!
//! The program is set to die with the guard (`PR_SET_PDEATHSIG`), so that even a
//! guard killed outright, with its host, leaves nothing running.
//!
//! It is single-threaded by design apart from one watcher thread: signals are
//! blocked and taken with `sigwait`, which needs no signal handler.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, raise, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};

/// The small binary of the guard alone, installed beside `tether`.
pub(crate) const SMALL_BINARY: &str = "tether-guard";

/// The first argument that selects the guard mode of the binary.
pub(crate) const GUARD_ARG: &str = "__spawn-guard";

/// The guard's optional first argument, `--parent=PID`: the pid of the host that
/// spawned it.
pub(crate) const PARENT_FLAG: &str = "--parent=";

/// How often the watcher thread checks that the host is still the parent.
const PARENT_POLL: Duration = Duration::from_millis(200);
/// How long the guard keeps killing before it gives up on a process that will
/// not die (one stuck in the kernel) and exits anyway.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// Runs the guard over `program args...` and returns the exit code it should end
/// with (after re-raising a fatal signal, when the program died of one).
pub(crate) fn run(mut argv: impl Iterator<Item = OsString>) -> i32 {
    let mut program = argv.next();
    // `--parent=PID`: the host that spawned the guard. If the host was killed before
    // the guard got here, the guard is already an orphan and watching its parent
    // change would never fire: it must not start the program at all.
    let expected = match program
        .as_ref()
        .and_then(|p| p.to_str()?.strip_prefix(PARENT_FLAG))
    {
        Some(pid) => {
            let pid = pid.parse::<i32>().ok().map(Pid::from_raw);
            program = argv.next();
            pid
        }
        None => None,
    };
    let Some(program) = program else {
        eprintln!("tether {GUARD_ARG}: no program");
        return 127;
    };
    let args: Vec<OsString> = argv.collect();
    let parent = getppid();
    if expected.is_some_and(|p| p != parent) {
        eprintln!("tether {GUARD_ARG}: the host that spawned this guard is gone; not starting");
        return 128 + Signal::SIGKILL as i32;
    }
    if let Err(e) = prctl::set_child_subreaper(true) {
        eprintln!("tether {GUARD_ARG}: cannot become a subreaper: {e}");
        return 126;
    }
    let mut stops = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        stops.add(s);
    }
    // Blocked before anything starts, so no stop request is lost.
    if let Err(e) = stops.thread_block() {
        eprintln!("tether {GUARD_ARG}: cannot block signals: {e}");
        return 126;
    }
    let main = match spawn(&program, &args) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("tether {GUARD_ARG}: {}: {e}", program.to_string_lossy());
            return 127;
        }
    };
    // The host may die without a word (SIGKILL); then the parent changes.
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(PARENT_POLL);
            if getppid() != parent {
                let _ = kill(getpid(), Signal::SIGTERM);
                return;
            }
        }
    });
    let mut status = None;
    loop {
        reap(main, &mut status);
        if status.is_some() {
            break;
        }
        match stops.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(_) => break,
        }
    }
    kill_tree(main, &mut status);
    exit_code(status)
}

/// Starts `program args...` with this process's environment and nothing blocked
/// (a child inherits its parent's signal mask: the program would otherwise start
/// deaf to the `SIGTERM` the guard blocks for itself), set to die with the guard.
///
/// The guard kills its tree whenever it can; the one case it cannot is its own
/// `SIGKILL` (the OOM killer, an operator). The host then kills the program's
/// process group when it reaps the guard, but a host killed in the same moment
/// never does, and the program would run on as init's child, its runtime
/// redialling forever. `PR_SET_PDEATHSIG` closes that: the kernel kills the program
/// the moment the guard dies, however it dies.
// The one `unsafe` of the workspace: setting a death signal between fork and exec
// has no safe interface in std or nix.
#[allow(unsafe_code)]
fn spawn(program: &OsString, args: &[OsString]) -> std::io::Result<Pid> {
    use std::os::unix::process::CommandExt;
    let guard = getpid();
    let mut command = std::process::Command::new(program);
    command.args(args);
    // SAFETY: the closure runs in the forked child before `exec`, while the guard
    // has a single thread (its watcher starts after this spawn), and makes only
    // async-signal-safe system calls; it allocates nothing (an `Errno` converts to an
    // `io::Error` without allocating).
    unsafe {
        command.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The guard may have died between the fork and the line above: then no
            // death signal will come, and the program must not start.
            if getppid() != guard {
                return Err(Errno::ESRCH.into());
            }
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The guard reaps with `waitpid`; dropping `Child` neither waits nor kills.
    Ok(Pid::from_raw(child.id() as i32))
}

/// Reaps every child that has ended, noting the program's status.
fn reap(main: Pid, status: &mut Option<WaitStatus>) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(s) => {
                if s.pid() == Some(main) {
                    *status = Some(s);
                }
            }
            Err(Errno::EINTR) => {}
            // ECHILD: nothing is left below the guard.
            Err(_) => return false,
        }
    }
}

/// Kills everything below the guard until nothing is left: the subreaper
/// guarantee means every descendant is in this tree, and a process killed while
/// forking leaves orphans that come back to the guard for the next round.
fn kill_tree(main: Pid, status: &mut Option<WaitStatus>) {
    let me = getpid();
    let deadline = Instant::now() + KILL_PATIENCE;
    loop {
        for pid in descendants(me) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if !reap(main, status) || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every process whose parent chain leads to `root`, read from `/proc`.
pub(crate) fn descendants(root: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pairs: Vec<(i32, i32)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root.as_raw()];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            pairs
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

/// The parent pid in `/proc/PID/stat` (after the command name, which may hold
/// spaces and parentheses, so split at the last `)`).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Ends like the program: its exit code, or its fatal signal raised again.
fn exit_code(status: Option<WaitStatus>) -> i32 {
    match status {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, signal, _)) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let _ = raise(signal);
            128 + signal as i32
        }
        _ => 128 + Signal::SIGKILL as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_starts_with_nothing_blocked_though_the_guard_blocks_its_stops() {
        let mut stops = SigSet::empty();
        stops.add(Signal::SIGTERM);
        stops.add(Signal::SIGHUP);
        // Blocked in a thread of its own, as the guard's main thread blocks them.
        // `sleep` leaves its mask as it found it (a shell would not).
        let seen = std::thread::spawn(move || {
            stops.thread_block().unwrap();
            let pid = spawn(&"sleep".into(), &["5".into()]).unwrap();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            status
                .lines()
                .find(|l| l.starts_with("SigBlk:"))
                .unwrap_or_default()
                .to_owned()
        })
        .join()
        .unwrap();
        assert_eq!(seen.trim(), "SigBlk:\t0000000000000000", "{seen}");
    }

    #[test]
    fn the_program_dies_with_what_started_it() {
        // The death signal comes when the spawning thread ends: here a thread of the
        // test's, in the guard its main thread, which ends only with the guard.
        let pid = std::thread::spawn(|| spawn(&"sleep".into(), &["30".into()]).unwrap())
            .join()
            .unwrap();
        let status = waitpid(pid, None).unwrap();
        assert_eq!(status, WaitStatus::Signaled(pid, Signal::SIGKILL, false));
    }

    #[test]
    fn descendants_follow_parent_chains_and_exclude_the_root() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5; wait"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(5);
        // The shell and its two sleepers, once they run.
        while descendants(pid).len() < 2 {
            assert!(Instant::now() < deadline, "children never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let below = descendants(pid);
        assert_eq!(below.len(), 2, "{below:?}");
        assert!(descendants(getpid()).contains(&pid));
        assert!(!below.contains(&pid));
        for p in below.iter().chain([&pid]) {
            let _ = kill(*p, Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}
