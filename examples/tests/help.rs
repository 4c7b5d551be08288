//! `tether-app` answers `--help` with no server to talk to and no token to read.
//! (Being an integration test, it also has `cargo test --workspace` build the binary the
//! black-box suite runs against a real server, `tests/it/example_app.rs`.)

use std::process::Command;

#[test]
fn help_runs_without_server_or_token() {
    let output = Command::new(env!("CARGO_BIN_EXE_tether-app"))
        .arg("--help")
        .env_remove("TETHER_API_TOKEN")
        .env("TETHER_URL", "http://127.0.0.1:9")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("running tether-app");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("chat") && stdout.contains("demo"),
        "{stdout}"
    );
}
