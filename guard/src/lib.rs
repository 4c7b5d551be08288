//! The spawn guard (`tether-guard __spawn-guard PROGRAM ARGS...`, or the host's own
//! `tether __spawn-guard` mode) that the host's broker runs every child under, so that
//! a child which double-forks or calls `setsid()` still stops with its environment.
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
//! A guard may also be started ahead of time, before anyone knows what it will run
//! (`--wait-for-program`, see the host's `broker/launch.rs`): it then reads its [`Order`] (the
//! program, its arguments, variables and working directory) from its standard input,
//! a socket to the host, and answers there whether the program started. A spare whose
//! host closes the socket (the host stopped or died) exits without running anything.
//!
//! It is single-threaded by design apart from one watcher thread: signals are
//! blocked and taken with `sigwait`, which needs no signal handler.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, raise, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};

/// The name the guard's own binary goes by.
pub const SMALL_BINARY: &str = "tether-guard";

/// The first argument that selects the guard mode of the binary.
pub const GUARD_ARG: &str = "__spawn-guard";

/// The guard's optional first argument, `--parent=PID`: the pid of the host that
/// spawned it.
pub const PARENT_FLAG: &str = "--parent=";

/// The flag (after `--parent=PID`) of a guard started ahead of time: it reads its
/// [`Order`] from its standard input instead of taking the program from its arguments.
pub const WAIT_FLAG: &str = "--wait-for-program";

/// The largest order a waiting guard reads, in bytes: twice Linux's usual limit on
/// arguments and environment together, which an `exec` could not take anyway.
const MAX_ORDER: usize = 4 << 20;

/// How often the watcher thread checks that the host is still the parent.
const PARENT_POLL: Duration = Duration::from_millis(200);
/// How long the guard keeps killing before it gives up on a process that will
/// not die (one stuck in the kernel) and exits anyway.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// The guard's entry: `argv` is what follows the program's name, with or without
/// [`GUARD_ARG`] first; returns the exit code.
pub fn main(argv: impl Iterator<Item = OsString>) -> i32 {
    let mut argv = argv.peekable();
    if argv.peek().is_some_and(|a| a == GUARD_ARG) {
        argv.next();
    }
    run(argv)
}

/// Runs the guard over `program args...` and returns the exit code it should end
/// with (after re-raising a fatal signal, when the program died of one).
fn run(mut argv: impl Iterator<Item = OsString>) -> i32 {
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
    let waits = program.as_ref().is_some_and(|p| p == WAIT_FLAG);
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
    let started = if waits {
        match read_order() {
            Ok(Some((order, mut host))) => {
                let started = std::env::set_current_dir(&order.cwd)
                    .and_then(|()| spawn(&order.program, &order.args, Some(&order.env)));
                let code = match &started {
                    Ok(_) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(nix::libc::EIO),
                };
                // The host waits for this answer; a host gone meanwhile reads nothing
                // and the watcher below notices it.
                let _ = host.write_all(&code.to_le_bytes());
                started.map_err(|e| (order.program, e))
            }
            // The host let its spare go (it stopped, or died) before ordering anything.
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("tether {GUARD_ARG}: reading the program: {e}");
                return 126;
            }
        }
    } else {
        let Some(program) = program else {
            eprintln!("tether {GUARD_ARG}: no program");
            return 127;
        };
        let args: Vec<OsString> = argv.collect();
        spawn(&program, &args, None).map_err(|e| (program, e))
    };
    let main = match started {
        Ok(pid) => pid,
        Err((program, e)) => {
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

/// What a guard started ahead of time is asked to run: sent by the host over the
/// guard's standard input as a little-endian `u32` length and that many bytes of
/// NUL-terminated fields (program, working directory, the argument count in decimal,
/// the arguments, the variable count, then each variable's name and value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The program, as `exec` takes it.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// Its working directory.
    pub cwd: OsString,
}

impl Order {
    /// The order framed for the wire. A field holding a NUL (which no `exec` could
    /// pass either) or an order past [`MAX_ORDER`] is refused as `exec` would refuse it.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let count = |n: usize| OsString::from(n.to_string());
        let (argc, envc) = (count(self.args.len()), count(self.env.len()));
        let fields = [&self.program, &self.cwd, &argc]
            .into_iter()
            .chain(&self.args)
            .chain([&envc])
            .chain(self.env.iter().flat_map(|(k, v)| [k, v]));
        let mut body = Vec::new();
        for field in fields {
            let bytes = field.as_bytes();
            if bytes.contains(&0) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "nul byte found in provided data",
                ));
            }
            body.extend_from_slice(bytes);
            body.push(0);
        }
        if body.len() > MAX_ORDER {
            return Err(std::io::Error::from_raw_os_error(nix::libc::E2BIG));
        }
        let mut framed = (body.len() as u32).to_le_bytes().to_vec();
        framed.extend(body);
        Ok(framed)
    }

    /// The order in `body` (the bytes after the length), if it is well formed.
    fn decode(body: &[u8]) -> Option<Order> {
        let mut fields = body.strip_suffix(&[0])?.split(|b| *b == 0);
        let mut next = || fields.next().map(|f| OsString::from_vec(f.to_vec()));
        let count = |f: Option<OsString>| f?.to_str()?.parse::<usize>().ok();
        let program = next()?;
        let cwd = next()?;
        let argc = count(next())?;
        let args = (0..argc).map(|_| next()).collect::<Option<Vec<_>>>()?;
        let envc = count(next())?;
        let env = (0..envc)
            .map(|_| Some((next()?, next()?)))
            .collect::<Option<Vec<_>>>()?;
        if next().is_some() || program.is_empty() {
            return None;
        }
        Some(Order {
            program,
            args,
            env,
            cwd,
        })
    }
}

/// Reads the order from standard input (the host's socket), byte-exact so nothing
/// past it is consumed; `None` when the host closed the socket first. Returns the
/// socket too, for the answer.
fn read_order() -> std::io::Result<Option<(Order, std::fs::File)>> {
    use std::os::fd::AsFd;
    let mut host = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut len = [0u8; 4];
    match host.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    if len > MAX_ORDER {
        return Err(bad("the order is too long"));
    }
    let mut body = vec![0; len];
    host.read_exact(&mut body)?;
    let order = Order::decode(&body).ok_or_else(|| bad("the order is malformed"))?;
    Ok(Some((order, host)))
}

/// Starts `program args...` with this process's environment (or `env` alone), no
/// standard input and nothing blocked (a child inherits its parent's signal mask: the
/// program would otherwise start deaf to the `SIGTERM` the guard blocks for itself),
/// set to die with the guard.
///
/// The guard kills its tree whenever it can; the one case it cannot is its own
/// `SIGKILL` (the OOM killer, an operator). The host then kills the program's
/// process group when it reaps the guard, but a host killed in the same moment
/// never does, and the program would run on as init's child, its runtime
/// redialling forever. `PR_SET_PDEATHSIG` closes that: the kernel kills the program
/// the moment the guard dies, however it dies.
// One of the workspace's two `unsafe`s (the other is the binary's `mallopt`):
// setting a death signal between fork and exec has no safe interface in std or nix.
#[allow(unsafe_code)]
fn spawn(
    program: &OsString,
    args: &[OsString],
    env: Option<&[(OsString, OsString)]>,
) -> std::io::Result<Pid> {
    use std::os::unix::process::CommandExt;
    let guard = getpid();
    let mut command = std::process::Command::new(program);
    command.args(args).stdin(std::process::Stdio::null());
    if let Some(env) = env {
        command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
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

/// The most processes one look for descendants collects.
const MAX_DESCENDANTS: usize = 1 << 16;

/// Every process whose parent chain leads to `root`, read from `/proc`: from each
/// process's `children` files where the kernel has them (a read per descendant
/// thread), else from a scan of every process on the machine. The scan made each
/// guard's exit cost a read of every process's `stat`: with a hundred environments
/// stopping at once, tens of thousands of reads.
fn descendants(root: Pid) -> Vec<Pid> {
    let probe = format!("/proc/{root}/task/{root}/children");
    if std::path::Path::new(&probe).exists() {
        descendants_by_children(root)
    } else {
        descendants_by_scan(root)
    }
}

/// [`descendants`] from `/proc/PID/task/TID/children`: a child is listed under the
/// thread that forked it (or, re-parented, under the subreaper's), so every thread's.
fn descendants_by_children(root: Pid) -> Vec<Pid> {
    let mut found = vec![root.as_raw()];
    let mut seen = std::collections::HashSet::from([root.as_raw()]);
    let mut i = 0;
    while i < found.len() && found.len() < MAX_DESCENDANTS {
        let parent = found[i];
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            i += 1;
            continue; // Gone meanwhile: its children come back to the guard.
        };
        for task in tasks.filter_map(|t| t.ok()) {
            let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            let children = list
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok());
            found.extend(children.filter(|c| seen.insert(*c)));
        }
        i += 1;
    }
    found.into_iter().skip(1).map(Pid::from_raw).collect()
}

/// [`descendants`] from every process's parent, for kernels without `children` files.
fn descendants_by_scan(root: Pid) -> Vec<Pid> {
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
            let pid = spawn(&"sleep".into(), &["5".into()], None).unwrap();
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
        let pid = std::thread::spawn(|| spawn(&"sleep".into(), &["30".into()], None).unwrap())
            .join()
            .unwrap();
        let status = waitpid(pid, None).unwrap();
        assert_eq!(status, WaitStatus::Signaled(pid, Signal::SIGKILL, false));
    }

    fn order() -> Order {
        Order {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), String::new().into(), "a b".into()],
            env: vec![("A".into(), "1=2".into()), ("EMPTY".into(), "".into())],
            cwd: "/tmp".into(),
        }
    }

    fn body(framed: &[u8]) -> &[u8] {
        let len = u32::from_le_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(framed.len(), 4 + len);
        &framed[4..]
    }

    #[test]
    fn an_order_survives_the_wire_with_empty_fields_and_separators() {
        let framed = order().encode().unwrap();
        assert_eq!(Order::decode(body(&framed)), Some(order()));
        let bare = Order {
            args: vec![],
            env: vec![],
            ..order()
        };
        assert_eq!(Order::decode(body(&bare.encode().unwrap())), Some(bare));
    }

    #[test]
    fn an_order_that_exec_could_not_take_is_refused_before_it_is_sent() {
        let mut nul = order();
        nul.args.push("a\0b".into());
        let err = nul.encode().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let mut huge = order();
        huge.env.push(("BIG".into(), "x".repeat(MAX_ORDER).into()));
        assert_eq!(
            huge.encode().unwrap_err().raw_os_error(),
            Some(nix::libc::E2BIG)
        );
    }

    #[test]
    fn a_malformed_order_is_rejected_whole() {
        let framed = order().encode().unwrap();
        let good = body(&framed);
        // Unterminated, cut short, one field too many, a count that is not one, no program.
        assert_eq!(Order::decode(&good[..good.len() - 1]), None);
        assert_eq!(Order::decode(&good[..good.len() - 3]), None);
        assert_eq!(Order::decode(&[good, b"extra\x00"].concat()), None);
        assert_eq!(Order::decode(b"/bin/true\x00/\x00x\x000\x00"), None);
        assert_eq!(
            Order::decode(b"/bin/true\x00/\x0099999999999999999999\x00"),
            None
        );
        assert_eq!(Order::decode(b"\x00/\x000\x000\x00"), None);
        assert_eq!(
            Order::decode(b"/bin/true\x00/\x000\x000\x00").map(|o| o.program),
            Some("/bin/true".into())
        );
        assert_eq!(Order::decode(b""), None);
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
        // This test runs in a thread of its own, which is the shell's parent.
        assert!(descendants(getpid()).contains(&pid));
        assert!(!below.contains(&pid));
        // Both ways of looking find the same.
        let sorted = |mut v: Vec<Pid>| {
            v.sort();
            v
        };
        assert_eq!(sorted(descendants_by_children(pid)), sorted(below.clone()));
        assert_eq!(sorted(descendants_by_scan(pid)), sorted(below.clone()));
        assert!(descendants_by_scan(getpid()).contains(&pid));
        assert!(descendants_by_children(getpid()).contains(&pid));
        for p in below.iter().chain([&pid]) {
            let _ = kill(*p, Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}
