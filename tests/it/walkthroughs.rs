//! The README's walk-throughs, run as a reader pastes them: every `sh` block between
//! `<!-- walkthrough:NAME -->` and `<!-- /walkthrough -->`, in order, in one `bash`.
//! Three things differ, so the suite can run them side by side and leave nothing
//! behind: the ports are free ones, the `/tmp/...` directories are fresh temporary
//! ones, and `cargo build` is skipped (the suite has built the binaries; they are put
//! first on `PATH`). A snippet that breaks when pasted fails here.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::example_bin;

/// Longest a walk-through may take.
const LIMIT: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate is in the repository")
        .to_owned()
}

/// The shell lines of walk-through `name` in the README.
fn walkthrough(name: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = format!("<!-- walkthrough:{name} -->");
    let begin = readme
        .find(&start)
        .unwrap_or_else(|| panic!("no {start} in README.md"));
    let rest = &readme[begin..];
    let end = rest
        .find("<!-- /walkthrough -->")
        .expect("walk-through end");
    let mut script = String::new();
    let mut in_sh = false;
    for line in rest[..end].lines() {
        match (in_sh, line.trim_end()) {
            (false, "```sh") => in_sh = true,
            (true, "```") => in_sh = false,
            (true, line) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!script.is_empty(), "walk-through {name} has no sh blocks");
    script
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Runs `script` in bash from the repository root; its output, or a failure with it.
fn run(script: &str, scratch: &Path) -> String {
    let bins = PathBuf::from(env!("CARGO_BIN_EXE_tether"));
    let bins = bins.parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = scratch.join("walkthrough.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(repo_root())
        .env("PATH", path)
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        // Its own process group, so whatever it left running can be stopped at once.
        .process_group(0)
        .spawn()
        .expect("bash");
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if began.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) if s.success() => output,
        Some(s) => panic!("the walk-through failed ({s}):\n{script}\n--- output ---\n{output}"),
        None => panic!("the walk-through took over {LIMIT:?}:\n{script}\n--- output ---\n{output}"),
    }
}

/// `script` with free ports, fresh directories and no `cargo build`.
fn localised(script: &str, ports: &[&str], dirs: &[(&str, &Path)]) -> String {
    let mut script: String = script
        .lines()
        .map(|l| {
            if l.starts_with("cargo build") {
                "# (built by the test suite)"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    for port in ports {
        script = script.replace(port, &free_port().to_string());
    }
    for (from, to) in dirs {
        script = script.replace(from, &to.display().to_string());
    }
    script
}

#[test]
fn the_main_walkthrough_runs_as_written() {
    example_bin("tether-app");
    let scratch = tempfile::tempdir().expect("tempdir");
    let work = scratch.path().join("walk");
    let script = localised(
        &walkthrough("main"),
        &["2719"],
        &[("/tmp/tether-walk", &work)],
    );
    let output = run(&script, scratch.path());
    assert!(output.contains("\"status\":\"stopping\""), "{output}");
    assert!(output.contains("\"status\":\"starting\""), "{output}");
    assert!(output.contains("echo reply:"), "{output}");
    assert!(output.contains("exec exited with code 0"), "{output}");
    assert!(
        output.contains("status: running (runtime connected)"),
        "{output}"
    );
    assert!(output.contains("< \"hello\""), "{output}");
    assert!(work.join("project/.git").exists());
}

#[test]
fn the_sandbox_walkthrough_runs_as_written() {
    example_bin("tether-sandbox-service");
    let scratch = tempfile::tempdir().expect("tempdir");
    let work = scratch.path().join("sandbox");
    let script = localised(
        &walkthrough("sandbox"),
        &["2720", "8790"],
        &[("/tmp/tether-sandbox", &work)],
    );
    let output = run(&script, scratch.path());
    assert!(
        output.contains("\"sandboxes\"") || output.contains("\"id\""),
        "{output}"
    );
    assert!(work.join("tether.toml").is_file());
}
