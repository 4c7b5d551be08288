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

/// What a hostile host puts in its text: clear the screen, write the clipboard (OSC
/// 52), set the title, the one-byte CSI (C1) and a carriage return.
const HOSTILE: &str =
    "ok\u{1b}[2J\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{9b}31m\u{1b}]0;pwned\u{7}\rforged";

/// `tether-app chat --template chat --thread t` against `url`, with no input, on a
/// blocking thread (a fake host may be on this test's runtime).
async fn chat_with(url: String) -> Output {
    // Built (if need be) before the wait below starts.
    tokio::task::spawn_blocking(|| example_bin("tether-app"))
        .await
        .expect("building tether-app");
    let run = tokio::task::spawn_blocking(move || {
        let args = [
            "--server",
            &url,
            "--token",
            "t",
            "chat",
            "--template",
            "chat",
        ];
        run(&[&args[..], &["--thread", "t"]].concat(), "")
    });
    // Generous: a host that never answers is given up on after the app's 10 s.
    tokio::time::timeout(crate::support::WAIT * 3, run)
        .await
        .expect("tether-app exited")
        .expect("join")
}

/// `tether-app chat` printed a status's `lastError` (a provider's words), an error's
/// message and any other frame as they came, C1 controls and all (the `lastError` and
/// the message with ESC too): a provider could clear the user's screen or write their
/// clipboard. They are printed escaped now.
#[tokio::test]
async fn chat_prints_a_hostile_hosts_text_escaped() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        let frames = [
            serde_json::json!({"type": "provisioned", "environmentId": HOSTILE}),
            serde_json::json!({"type": "environmentStatus", "status": HOSTILE, "lastError": HOSTILE}),
            serde_json::json!({"type": "error", "error": {"code": HOSTILE, "message": HOSTILE}}),
            serde_json::json!({"type": "echoResponse", "payload": HOSTILE}),
            serde_json::json!({"type": "other", "data": HOSTILE}),
        ];
        for frame in frames {
            let _ = ws.send(Message::text(frame.to_string())).await;
        }
        let failed = CloseFrame {
            code: CloseCode::Library(4014),
            reason: "failed".into(),
        };
        let _ = ws.close(Some(failed)).await;
    });
    let output = chat_with(url).await;
    let (out, err) = text(&output);
    assert!(!output.status.success(), "{out}{err}");
    let raw = |t: &str| t.chars().any(|c| c.is_control() && c != '\n');
    assert!(
        !raw(&out) && !raw(&err),
        "a raw control character: {out:?} {err:?}"
    );
    assert!(out.contains(r"status: ok\u{1b}[2J"), "{out}");
    assert!(err.contains("failed to start (close 4014)"), "{err}");
}

/// A host that took the connection and never answered the WebSocket upgrade held
/// `tether-app chat` for good; it gives up after its 10 s wait now.
#[tokio::test]
async fn chat_gives_up_on_a_host_that_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let output = chat_with(url).await;
    let (out, err) = text(&output);
    assert!(!output.status.success(), "{out}{err}");
    assert!(
        err.contains("did not answer the app WebSocket in 10 s"),
        "{err}"
    );
}
