//! The `tether` binary: a thin shell over [`tether::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    one_malloc_arena_per_core();
    tether::cli::main()
}

/// glibc's malloc gives each thread that meets contention an arena of its own, up
/// to eight per core, and a freed block goes back to its arena only: the host's
/// blocking-pool threads (file I/O) and two runtimes spread each environment's
/// long-lived allocations over many half-empty arenas. One per core costs the host
/// little (each worker still finds its own) and measured 80 KiB of resident memory
/// per running environment instead of 93 (`cargo bench -p tether --bench scale`,
/// 1,000; docs/benchmarks.md, "Scale"). An operator's `MALLOC_ARENA_MAX` or
/// `GLIBC_TUNABLES` is left to rule.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena_per_core() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let cores = i32::try_from(cores).unwrap_or(i32::MAX);
    // SAFETY: `mallopt` sets one of malloc's parameters and nothing else; this runs
    // first in `main`, before the program starts a thread or relies on an arena.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, cores);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena_per_core() {}
