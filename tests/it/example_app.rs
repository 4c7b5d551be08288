//! The example app (`examples/app`, `tether-app`) run as a user runs it, against a real
//! server: its help needs nothing, and `chat` provisions a thread through a template and
//! shows the start's phases.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::{Server, example_bin, write_config};

const TEMPLATES: &str = "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n\n\
[templates.broken]\nprovider = \"local-process\"\nscope = \"thread\"\nconfig = { command = 7 }\n";

/// Runs `tether-app` with `args`, `stdin` as its input, and no token in its environment.
fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(example_bin("tether-app"))
        .args(args)
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tether-app");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("writing stdin");
    drop(input);
    child.wait_with_output().expect("tether-app output")
}

fn text(output: &Output) -> (String, String) {
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    (out, err)
}

#[test]
fn help_needs_no_server_and_no_token() {
    for args in [
        &["--help"][..],
        &["help"],
        &["chat", "--help"],
        &["demo", "--help"],
    ] {
        let output = run(args, "");
        let (out, err) = text(&output);
        assert!(output.status.success(), "{args:?}: {out}{err}");
        assert!(out.contains("Usage: tether-app"), "{args:?}: {out}");
    }
    // Nothing to do is a usage error, not a request to a server.
    let output = run(&[], "");
    assert_eq!(output.status.code(), Some(2), "{:?}", text(&output));
}

#[tokio::test]
async fn chat_provisions_a_thread_shows_the_phases_and_answers_what_was_typed_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), TEMPLATES);
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let common = [
        "--server",
        server.base.as_str(),
        "--token",
        alice.as_str(),
        "chat",
    ];
    let chat = |template: &str, thread: &str, stdin: &str| {
        let mut args = common.to_vec();
        args.extend(["--template", template, "--thread", thread]);
        let (args, stdin) = (
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            stdin.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, &stdin)
        })
    };

    // Both lines are typed before the runtime exists; both are answered once it is up.
    let typed = "hello\n{\"type\": \"echo\", \"requestId\": \"j\", \"payload\": \"as json\"}\n";
    let output = chat("chat", "t-1", typed).await.expect("join");
    let (out, err) = text(&output);
    assert!(output.status.success(), "{out}{err}");
    let created = out.lines().position(|l| l.contains("(created)"));
    let starting = out.lines().position(|l| l.contains("status: starting"));
    let running = out
        .lines()
        .position(|l| l.contains("status: running (runtime connected)"));
    let hello = out.lines().position(|l| l == "< \"hello\"");
    let json = out.lines().position(|l| l == "< \"as json\"");
    assert!(
        created < starting && starting < running && created.is_some(),
        "provisioned, then the phases in order:\n{out}"
    );
    assert!(
        hello.is_some() && json.is_some() && hello < json,
        "answers in order:\n{out}"
    );

    // The same thread again: the same environment, already running.
    let output = chat("chat", "t-1", "again\n").await.expect("join");
    let (again, err) = text(&output);
    assert!(output.status.success(), "{again}{err}");
    assert!(
        again.contains("(existing)") && again.contains("< \"again\""),
        "{again}"
    );
    let id = |out: &str| {
        let line = out
            .lines()
            .find(|l| l.contains("] environment "))
            .map(str::to_owned);
        line.and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
    };
    assert_eq!(id(&out), id(&again), "{out}\n{again}");

    // A start that fails ends the session with its close code and a non-zero exit.
    let output = chat("broken", "t-1", "lost\n").await.expect("join");
    let (out, err) = text(&output);
    assert!(!output.status.success(), "{out}{err}");
    assert!(out.contains("status: error"), "{out}");
    assert!(err.contains("failed to start (close 4014)"), "{err}");

    // A wrong token is refused before any session.
    let output = run(
        &[
            "--server",
            &server.base,
            "--token",
            "tth_wrong",
            "chat",
            "--template",
            "chat",
            "--thread",
            "t",
        ],
        "",
    );
    let (out, err) = text(&output);
    assert!(!output.status.success(), "{out}{err}");
    assert!(err.contains("HTTP 401"), "{err}");
}
