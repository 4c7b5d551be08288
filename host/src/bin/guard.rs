//! `tether-guard __spawn-guard --parent=PID PROGRAM ARGS...`: the spawn guard
//! (`broker/guard.rs`) as a binary of its own. It does what `tether __spawn-guard`
//! does, but without the host linked in it starts in about a third of the time, and
//! every environment start runs one.

fn main() {
    std::process::exit(tether::broker::spawn_guard_main(
        std::env::args_os().skip(1),
    ));
}
