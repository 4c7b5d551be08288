//! The program the broker runs children under: the spawn guard (`guard/`), which this
//! binary embeds linked statically against musl (`host/build.rs` builds it). A start pays for the
//! guard's `exec` on top of the program's, and a static binary has no dynamic loader
//! to run and no glibc to set up: the guard costs about 0.45 ms of CPU on top of its
//! program where it cost 1.3 linked dynamically against glibc (0.9 statically;
//! `docs/benchmarks.md`, "Start latency").
//!
//! The embedded bytes are run from a sealed in-memory file (`memfd_create`), so the
//! operator installs one binary and nobody can swap the guard on disk under a running
//! host. Where no such file can be made, `tether` itself runs in its guard mode.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl, open};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::stat::Mode;

// `STATIC_GUARD`: the guard's executable, linked statically.
include!(concat!(env!("OUT_DIR"), "/static_guard.rs"));

/// The guard program for a host whose own binary is `tether`.
pub fn spawn_guard_program(tether: &Path) -> PathBuf {
    static SEALED: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    let sealed = SEALED.get_or_init(|| sealed(STATIC_GUARD).map_err(|e| e.to_string()));
    program(sealed.as_ref(), tether)
}

/// The path that runs the sealed copy, or `tether` itself where there is none.
fn program(sealed: Result<&OwnedFd, &String>, tether: &Path) -> PathBuf {
    match sealed {
        // The descriptor stays open for the host's life; a child resolves this path
        // in its own copy of the descriptor table, before `exec` closes it there.
        Ok(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        Err(why) => {
            tracing::warn!(
                %why,
                "cannot hold the embedded spawn guard in memory; children run under \
                 this binary's guard mode, which starts slower"
            );
            tether.to_owned()
        }
    }
}

/// `bytes` as a sealed in-memory file, open read-only: a file still open for
/// writing cannot be run (`ETXTBSY`), so the writable descriptor is closed once the
/// seals forbid any change.
fn sealed(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = memfd_create(
        c"tether-guard",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(open(
        format!("/proc/self/fd/{}", file.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_guard_is_a_static_executable_that_runs_from_memory() {
        assert_eq!(&STATIC_GUARD[..4], b"\x7fELF");
        let program = spawn_guard_program(Path::new("/nonexistent/tether"));
        assert!(
            program.starts_with("/proc/self/fd"),
            "{}",
            program.display()
        );
        // The same file for every caller: one descriptor for the host's life.
        assert_eq!(spawn_guard_program(Path::new("/x")), program);
        // Sealed: not even this process can write it.
        let path = std::fs::read_link(&program).unwrap();
        assert!(
            path.to_string_lossy().contains("memfd:tether-guard"),
            "{path:?}"
        );
        let wrote = (std::fs::OpenOptions::new().write(true).open(&program))
            .and_then(|mut f| f.write_all(b"x"));
        assert!(wrote.is_err(), "the in-memory guard took a write");
        // It runs, needs no dynamic loader, and is the guard: it runs its program.
        let out = std::process::Command::new(&program)
            .args([tether_guard::GUARD_ARG, "/bin/sh", "-c", "exit 7"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        assert!(
            !names_a_loader(STATIC_GUARD),
            "the embedded guard is linked dynamically"
        );
        assert!(names_a_loader(&std::fs::read("/bin/sh").unwrap()));
    }

    #[test]
    fn without_an_in_memory_copy_tether_itself_is_the_guard() {
        let tether = Path::new("/opt/tether/bin/tether");
        assert_eq!(program(Err(&"ENOSYS".to_owned()), tether), tether);
    }

    /// Whether the ELF executable `elf` has a `PT_INTERP` program header (a dynamic
    /// loader to run it).
    fn names_a_loader(elf: &[u8]) -> bool {
        let int = |at: usize, n: usize| {
            (elf[at..at + n].iter().rev()).fold(0usize, |v, b| v << 8 | usize::from(*b))
        };
        let (phoff, phentsize, phnum) = (int(0x20, 8), int(0x36, 2), int(0x38, 2));
        (0..phnum).any(|i| int(phoff + i * phentsize, 4) == 3)
    }
}
