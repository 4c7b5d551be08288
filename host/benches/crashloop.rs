//! Crash loops (issue 18, item 3): `kill -9` of a real `tether serve` at random
//! instants of mutation bursts and start/stop storms, as many rounds as asked, with
//! the checks of the suite's `crashloop` test (the same code, `tests/it/crashloop.rs`).
//!
//! `cargo bench -p tether --bench crashloop [-- ROUNDS]` (default 100).

// The suite's helpers and crash loop, shared rather than copied; their answers are
// not checked against the OpenAPI spec here (the suite does that).
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/it/support.rs"]
mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/it/crashloop.rs"]
mod crashloop;

mod openapi {
    /// The suite validates answers against the spec; the benchmark does not.
    pub(crate) fn check(_: &str, _: &str, _: u16, _: Option<&str>, _: &[u8]) {}
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let report = runtime.block_on(crashloop::run(dir.path(), rounds));
    println!(
        "| rounds | acknowledged | lost | file parse failures | running twice | leftover processes | leftover workspaces | runtimes checked | restart p50 | restart max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} ms | {:.0} ms |",
        report.rounds,
        report.acknowledged,
        report.lost,
        report.parse_failures,
        report.running_twice,
        report.leftover_processes,
        report.leftover_workspaces,
        report.runtimes_seen,
        report.restart_quantile(0.5).as_secs_f64() * 1e3,
        report.restart_quantile(1.0).as_secs_f64() * 1e3,
    );
    for failure in &report.failures {
        println!("{failure}");
    }
    if !report.clean() {
        std::process::exit(1);
    }
}
