//! `tether-guard __spawn-guard --parent=PID PROGRAM ARGS...`: the spawn guard as a
//! binary of its own. It does what `tether __spawn-guard` does, but without the host
//! linked in (and, as the host embeds it, linked statically) it starts in a fraction
//! of the time, and every environment start runs one.

fn main() {
    // The host runs this binary from a sealed in-memory file (`/proc/self/fd/N`), which
    // would leave its name in `ps` and `top` a bare number.
    let _ = nix::sys::prctl::set_name(c"tether-guard");
    std::process::exit(tether_guard::main(std::env::args_os().skip(1)));
}
