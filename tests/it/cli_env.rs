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

/// `tether env attach`: JSON lines in, JSON lines out, through a connection that is cut
/// mid-session and resumed with every answer exactly once; a wrong id or token ends it
/// with the exit code that says so.
#[tokio::test]
async fn attach_relays_json_lines_and_resumes_across_a_cut_connection() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("attached", "local-process", serde_json::json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();
    let proxy = crate::support::CutProxy::start(&server.base);

    let mut attach = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "env",
            "attach",
            &id,
            "--thread",
            "t 1/ü",
            "--url",
            &proxy.base,
            "--token",
            TOKEN,
        ])
        .env_remove("TETHER_API_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether env attach");
    let mut stdin = attach.stdin.take().expect("stdin");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = attach.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let mut answer_to = |request: &str| loop {
        let line = rx.recv_timeout(WAIT).expect("an answer on stdout");
        let message: Value = serde_json::from_str(&line).expect("a JSON line");
        assert!(message.get("relaySeq").is_none(), "{line}");
        seen.push(message.clone());
        if message["requestId"] == request {
            return message;
        }
    };
    let echo = |n: u32| format!("{{\"type\":\"echo\",\"requestId\":\"e{n}\",\"payload\":{n}}}\n");

    stdin.write_all(echo(1).as_bytes()).expect("write");
    let first = answer_to("e1");
    assert_eq!(first["type"], "echoResponse", "{first}");
    assert_eq!(first["threadId"], "t 1/ü", "{first}");
    // Not JSON: refused on stderr, the session goes on.
    stdin.write_all(b"hello there\n").expect("write");

    // The network drops; what is typed meanwhile and what was in flight arrives once.
    proxy.cut();
    for n in 2..=20 {
        stdin.write_all(echo(n).as_bytes()).expect("write");
    }
    answer_to("e20");
    drop(stdin);
    let status = attach.wait().expect("attach exits");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut attach.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("not sent, not JSON"), "{stderr}");
    assert!(
        stderr.contains("resumed"),
        "the cut was noticed and mended: {stderr}"
    );
    seen.extend(rx.try_iter().filter_map(|l| serde_json::from_str(&l).ok()));
    for n in 1..=20 {
        let answers = seen
            .iter()
            .filter(|m| m["type"] == "echoResponse" && m["requestId"] == format!("e{n}"))
            .count();
        assert_eq!(answers, 1, "e{n} answered {answers} times: {seen:?}");
    }

    // A wrong id is 3, a wrong token 4, as for the other verbs.
    let missing = "00000000-0000-0000-0000-000000000000";
    let run = |id: &str, token: &str| {
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args([
                "env",
                "attach",
                id,
                "--thread",
                "t",
                "--url",
                &server.base,
                "--token",
                token,
            ])
            .env_remove("TETHER_API_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("attach")
            .status
            .code()
    };
    assert_eq!(run(missing, TOKEN), Some(3));
    assert_eq!(run(&id, "tth_wrong"), Some(4));
    server.stop();
}
