//! Tether's own CLI facing a server that is not what it should be: a fake one on
//! loopback that answers what an attacker (or something wrongly at `--url`) would —
//! terminal escapes in the text it sends, an upgrade it never answers, a proxy's error
//! page in the middle of a session.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{TOKEN, WAIT, guests};

/// What a hostile server puts in its text: clear the screen, write the clipboard
/// (OSC 52), set the title, the one-byte CSI (C1), a bell and a carriage return.
const HOSTILE: &str =
    "ok\u{1b}[2J\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{9b}31m\u{1b}]0;pwned\u{7}\rforged";

/// Whether `text` holds a control character a terminal would act on (a newline aside).
fn raw_control(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

/// `tether ARGS --url URL --token TOKEN`, with nothing taken from the environment.
fn tether(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .args(args)
        .args(["--url", url, "--token", TOKEN])
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL");
    command
}

/// A fake HTTP server answering every request with `answer(method, path)`: a status
/// line, a content type and a body. Each request is read whole first.
fn fake_http(answer: fn(&str, &str) -> (&'static str, &'static str, String)) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                let head_end = loop {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
                let length: usize = (head.lines())
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                while request.len() < head_end + length {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let (status, kind, body) = answer(method, path);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    url
}

/// The fake server's answers: an environment, a log and an upload's result, each
/// carrying [`HOSTILE`] (raw in the log line, as no Tether server sends it).
fn hostile_answers(method: &str, path: &str) -> (&'static str, &'static str, String) {
    let env = json!({"id": "e-1", "name": "n", "provider": "p", "status": "error",
        "lastError": HOSTILE, "runtime": {"connected": false}});
    match (method, path) {
        ("GET", p) if p.contains("/logs") => (
            "200 OK",
            "application/x-ndjson",
            format!(
                "{{\"ts\":\"t\",\"level\":\"INFO\",\"source\":\"host\",\"message\":\"{HOSTILE}\"}}\n"
            ),
        ),
        ("GET", "/api/v1/environments") => ("200 OK", "application/json", json!([env]).to_string()),
        ("GET", _) => ("200 OK", "application/json", env.to_string()),
        ("PUT", _) => (
            "200 OK",
            "application/json",
            json!({"name": "local-process", "version": HOSTILE, "sha256": HOSTILE}).to_string(),
        ),
        _ => ("404 Not Found", "text/plain", String::new()),
    }
}

/// `--json` printed a server's strings with what JSON leaves raw (the C1 controls,
/// DEL) as they were, and `env logs --json` printed a server's line as it came, ESC
/// and all; `provider install --remote` printed the version and digest the server
/// answered as they were. Each is escaped now, and `--json` is still the same JSON.
#[tokio::test]
async fn the_cli_prints_what_a_hostile_server_says_escaped_json_included() {
    let url = fake_http(hostile_answers);
    let run = |args: &[&str]| {
        let out = tether(&url, args).output().expect("tether");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
        assert!(
            !raw_control(&stdout) && !raw_control(&stderr),
            "{args:?} printed a raw control character: {stdout:?} {stderr:?}"
        );
        stdout
    };
    for args in [
        &["env", "get", "e-1", "--json"][..],
        &["env", "list", "--json"],
    ] {
        let data: Value = serde_json::from_str(&run(args)).expect("--json is JSON");
        let env = if data.is_array() { &data[0] } else { &data };
        assert_eq!(env["lastError"], HOSTILE, "{args:?}");
    }
    run(&["env", "get", "e-1"]);
    run(&["env", "logs", "e-1"]);
    let line = run(&["env", "logs", "e-1", "--json"]);
    let line: Value = serde_json::from_str(&line).expect("the log line is JSON");
    assert_eq!(line["message"], HOSTILE);
    let installed = run(&["provider", "install", guests::LOCAL_PROCESS, "--remote"]);
    assert!(installed.contains(r"ok\u{1b}[2J"), "{installed}");
}

/// A fake app WebSocket host: greets with `greeting`, waits for the CLI's first frame,
/// sends `message` as it is and closes with 4010 and `reason`.
async fn fake_ws_host(greeting: String, message: String, reason: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        ws.send(Message::text(greeting)).await.expect("greet");
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_text() {
                break;
            }
        }
        let _ = ws.send(Message::text(message)).await;
        let close = CloseFrame {
            code: CloseCode::Library(4010),
            reason: reason.into(),
        };
        let _ = ws.close(Some(close)).await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    url
}

fn greeting(received: u64) -> String {
    json!({"type": "relayResumed", "session": "s", "received": received, "next": 1,
        "reset": false, "maxMessageBytes": 1 << 20})
    .to_string()
}

/// Runs `tether env attach` against `url` with one line of input, kept open, until it
/// exits.
async fn attach(url: &str) -> Output {
    let mut child = tether(url, &["env", "attach", "e-1", "--thread", "t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether env attach");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{}", json!({"type": "echo", "payload": "hi"})).expect("write");
    // Generous: a host that never answers is given up on after the CLI's 30 s.
    let out = tokio::time::timeout(
        3 * WAIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("attach exited")
    .expect("join")
    .expect("attach");
    drop(stdin);
    out
}

/// `tether env attach` printed a host's close reason as it came (the command's
/// error), and a greeting that was not `relayResumed` whole and raw (up to the 64 MiB
/// a frame may be); a runtime's message printed as JSON kept the C1 controls raw. All
/// three reach the terminal escaped now (and the message is still the same JSON).
#[tokio::test]
async fn attach_prints_a_hostile_hosts_words_escaped() {
    let message = json!({"relaySeq": 1, "type": "execOutput", "data": HOSTILE}).to_string();
    let url = fake_ws_host(greeting(0), message, "bye\u{1b}]0;pwned\u{7}").await;
    let out = attach(&url).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{stderr}");
    assert!(!raw_control(&stdout), "{stdout:?}");
    assert!(!raw_control(&stderr), "{stderr:?}");
    let shown: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(shown["data"], HOSTILE);
    assert!(stderr.contains(r"4010 bye\u{1b}]0;pwned\u{7}"), "{stderr}");

    let huge = format!("{HOSTILE}{}", "x".repeat(1 << 20));
    let url = fake_ws_host(huge, String::new(), "").await;
    let out = attach(&url).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!raw_control(&stderr), "{stderr:?}");
    assert!(
        stderr.contains("did not answer with relayResumed"),
        "{stderr}"
    );
    assert!(
        stderr.len() < 4096,
        "the greeting was quoted whole: {}",
        stderr.len()
    );
}

/// A "host" that takes the connection and never answers the WebSocket upgrade held
/// `tether env attach` for good (its reconnects too, so their 60 s give-up never
/// came). The upgrade now has the 30 s every call has.
#[tokio::test]
async fn attach_gives_up_on_a_host_that_never_answers_the_upgrade() {
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
    let out = attach(&url).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not answer the WebSocket upgrade within 30 s"),
        "{stderr}"
    );
}

/// What a reconnecting `attach` meets while the host restarts, before it is back.
#[derive(Clone, Copy)]
enum Meanwhile {
    /// A proxy in front answers its 502 page.
    ProxyPage,
    /// The host takes the upgrade, then closes with 1001 (going away) before greeting.
    ClosedBeforeGreeting,
}

/// A host that greets, takes the CLI's first line, restarts (1012), is `meanwhile` on
/// the first reconnect, then is back: it had the line, answers it and is stopped (4010).
async fn restarting_host(meanwhile: Meanwhile) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        ws.send(Message::text(greeting(0))).await.expect("greet");
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_text() {
                break;
            }
        }
        let restart = CloseFrame {
            code: CloseCode::Restart,
            reason: "restarting".into(),
        };
        let _ = ws.close(Some(restart)).await;
        drop(ws);
        let (mut stream, _) = listener.accept().await.expect("accept");
        match meanwhile {
            Meanwhile::ProxyPage => {
                let mut buf = vec![0u8; 8192];
                let _ = stream.read(&mut buf).await;
                let page = "<html><body>502 Bad Gateway</body></html>";
                let response = format!(
                    "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
            Meanwhile::ClosedBeforeGreeting => {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
                    let away = CloseFrame {
                        code: CloseCode::Away,
                        reason: "shutting down".into(),
                    };
                    let _ = ws.close(Some(away)).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            }
        }
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        ws.send(Message::text(greeting(1))).await.expect("greet");
        let answer = json!({"relaySeq": 1, "type": "echoResponse", "payload": "after"});
        let _ = ws.send(Message::text(answer.to_string())).await;
        let stopped = CloseFrame {
            code: CloseCode::Library(4010),
            reason: "stopped".into(),
        };
        let _ = ws.close(Some(stopped)).await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    url
}

/// A session cut by a host restart (1012) behind a proxy met the proxy's 502 page on
/// its first reconnect, took it for Tether's refusal and ended (exit 1, "no message").
/// Only Tether's own JSON refusal ends a session now; the next try resumes it.
#[tokio::test]
async fn attach_resumes_past_a_proxys_error_page() {
    let out = attach(&restarting_host(Meanwhile::ProxyPage).await).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("\"after\""), "{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(5), "{stderr}");
}

/// A reconnect the host closed with a code that asks for one more (1001, going away)
/// before its greeting ended the session (exit 1) as if the code were final. Only a
/// close that ends a session (revoked, stopped, ...) does now; this one is retried.
#[tokio::test]
async fn attach_retries_a_reconnect_closed_before_the_greeting_with_a_resumable_code() {
    let out = attach(&restarting_host(Meanwhile::ClosedBeforeGreeting).await).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("\"after\""), "{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(5), "{stderr}");
}
