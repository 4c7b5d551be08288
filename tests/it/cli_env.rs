//! `tether env ...` against a real server, as an operator or a script runs it: create
//! with `--start --wait`, list as a table and as JSON, logs with `--follow` seeing a
//! line written after it started, and exit codes that say what went wrong.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Server, TOKEN, WAIT};

fn tether(server: &Server, token: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .arg("env")
        .args(args)
        .args(["--url", &server.base, "--token", token])
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL");
    command
}

fn output(mut command: Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("tether env");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (status.code(), text(stdout), text(stderr))
}

#[tokio::test]
async fn env_verbs_create_wait_list_follow_logs_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());

    // Created and started; --wait shows the phases and ends with the runtime connected.
    let create = tether(
        &server,
        TOKEN,
        &[
            "create",
            "cli-made",
            "--provider",
            "local-process",
            "--start",
            "--wait",
            "--json",
        ],
    );
    let (code, out, err) = output(create);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(err.contains("running, runtime connected"), "{err}");
    let env: Value = serde_json::from_str(&out).expect("--json");
    assert_eq!(env["status"], "running");
    assert_eq!(env["runtime"]["connected"], true);
    let id = env["id"].as_str().expect("id").to_owned();

    // A table for people, JSON for scripts.
    let (code, table, _) = output(tether(&server, TOKEN, &["list"]));
    assert_eq!(code, Some(0));
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATUS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("cli-made") && l.contains("connected")),
        "{table}"
    );
    let (_, json, _) = output(tether(&server, TOKEN, &["list", "--json"]));
    let list: Value = serde_json::from_str(&json).expect("list --json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    // Logs: a tail, then --follow sees a restart's lines as they are written.
    let (code, logs, _) = output(tether(&server, TOKEN, &["logs", &id, "--tail", "5"]));
    assert_eq!(code, Some(0));
    assert!(!logs.is_empty() && logs.lines().count() <= 5, "{logs}");
    let mut follow = tether(&server, TOKEN, &["logs", &id, "--tail", "0", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs --follow");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _, err) = output(tether(&server, TOKEN, &["restart", &id, "--wait"]));
    assert_eq!(code, Some(0), "{err}");
    let seen = loop {
        let line = rx.recv_timeout(WAIT).expect("a followed line");
        if line.contains("host: environment running") {
            break line;
        }
    };
    assert!(seen.contains("INFO"), "{seen}");
    let _ = follow.kill();
    let _ = follow.wait();

    // Exit codes: 3 not found, 4 a wrong token, 5 a conflict; 2 is clap's usage error.
    let missing = "00000000-0000-0000-0000-000000000000";
    assert_eq!(output(tether(&server, TOKEN, &["get", missing])).0, Some(3));
    assert_eq!(output(tether(&server, "tth_wrong", &["list"])).0, Some(4));
    let taken = tether(
        &server,
        TOKEN,
        &["create", "cli-made", "--provider", "local-process"],
    );
    assert_eq!(output(taken).0, Some(5));
    assert_eq!(output(tether(&server, TOKEN, &["get"])).0, Some(2));

    // Stop and delete.
    let (code, out, _) = output(tether(&server, TOKEN, &["stop", &id, "--wait"]));
    assert_eq!(code, Some(0));
    assert!(out.contains("stopped"), "{out}");
    assert_eq!(output(tether(&server, TOKEN, &["delete", &id])).0, Some(0));
    assert_eq!(output(tether(&server, TOKEN, &["get", &id])).0, Some(3));
    server.stop();
}
