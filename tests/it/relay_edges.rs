//! The relay's WebSocket surfaces probed as a careless or hostile peer would: limits a
//! client must keep, and what the host says when a peer breaks them.

use std::io::Write;
use std::process::{Command, Stdio};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Server, TOKEN, WAIT, Ws};

/// What a fake host saw of one `tether env attach` session.
struct Seen {
    /// The first frame the CLI sent.
    first: String,
}

/// A fake host for `tether env attach`: greets with a `maxMessageBytes` of 1024, waits
/// for the CLI's first frame, then sends a message of `big` bytes, a small one, and
/// closes with 4010.
async fn fake_host(big: usize) -> (String, tokio::sync::oneshot::Receiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        let greeting = json!({"type": "relayResumed", "session": "s", "received": 0,
            "next": 1, "reset": false, "maxMessageBytes": 1024});
        ws.send(Message::text(greeting.to_string()))
            .await
            .expect("greet");
        let first = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => break text.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("the CLI sent nothing: {other:?}"),
            }
        };
        let _ = tx.send(Seen { first });
        let pad = "x".repeat(big);
        let frames = [
            json!({"relaySeq": 1, "type": "big", "pad": pad}),
            json!({"relaySeq": 2, "type": "after"}),
        ];
        for frame in frames {
            if ws.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
        }
        let close = CloseFrame {
            code: CloseCode::Library(4010),
            reason: "stopped".into(),
        };
        let _ = ws.close(Some(close)).await;
        // Until the CLI hangs up.
        while let Some(Ok(_)) = ws.next().await {}
    });
    (url, rx)
}

/// The host ending an attach session for good (4010: the environment stopped) while
/// the terminal was still open left `tether env attach` running until the user typed a
/// line: exiting waited for the thread reading stdin. It exits at once now, with 5.
#[tokio::test]
async fn attach_exits_when_the_host_ends_the_session_though_input_is_open() {
    let (url, seen) = fake_host(10).await;
    let mut attach = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["env", "attach", "e-1", "--thread", "t", "--url", &url])
        .args(["--token", TOKEN])
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether env attach");
    let mut stdin = attach.stdin.take().expect("stdin");
    writeln!(stdin, "{}", json!({"type": "echo"})).expect("write");
    tokio::time::timeout(WAIT, seen)
        .await
        .expect("the CLI sent a frame in time")
        .expect("the fake host saw it");
    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || attach.wait_with_output()),
    )
    .await
    .expect("attach exited with its input still open")
    .expect("join")
    .expect("attach exits");
    drop(stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("\"after\""), "{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(5), "{stderr}");
}

/// `tether env attach` read with tungstenite's default limits (64 MiB a message), far
/// past anything the host sends, and sent a line larger than the host takes, which the
/// host closes with 1009 (and would again on every resume). It now refuses such a line
/// and is closed by nothing larger than the host's limit allows.
#[tokio::test]
async fn attach_keeps_to_the_hosts_message_limit_both_ways() {
    let (url, seen) = fake_host(7 << 20).await;
    let mut attach = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["env", "attach", "e-1", "--thread", "t", "--url", &url])
        .args(["--token", TOKEN])
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether env attach");
    let mut stdin = attach.stdin.take().expect("stdin");
    let too_big = json!({"type": "echo", "payload": "y".repeat(2000)});
    let small = json!({"type": "echo", "payload": "small"});
    writeln!(stdin, "{too_big}\n{small}").expect("write");
    let seen = tokio::time::timeout(WAIT, seen)
        .await
        .expect("the CLI sent a frame in time")
        .expect("the fake host saw it");
    let first: Value = serde_json::from_str(&seen.first).expect("JSON");
    assert_eq!(first["payload"], "small", "{}", seen.first.len());

    let out = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || attach.wait_with_output()),
    )
    .await
    .expect("attach exited")
    .expect("join")
    .expect("attach exits");
    drop(stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("\"big\""),
        "a 7 MiB message was read: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("over the host's limit of 1024"), "{stderr}");
    assert!(
        stderr.contains("larger than this session takes"),
        "{stderr}"
    );
}

/// Frames of `app` up to and including the first of type `until`.
async fn frames_until(app: &mut Ws, until: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = app.next_any().await;
        let done = frame["type"] == until;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// A resumable app's session was found by its id alone: another app of the
/// environment — on another thread (a ticket pins one), or another user (the admin on
/// a user's environment, or the reverse) — naming the same `session` took it over, got
/// what the runtime had sent its holder, and cut the holder off with 4009. A session is
/// now its holder's (user and thread): the same id from anyone else is a session of
/// their own.
#[tokio::test]
async fn a_session_is_resumed_only_by_its_own_user_and_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_handoff(dir.path(), "");
    let (alice, _) = server.user_token("alice").await;
    let body = json!({"name": "held", "provider": "handoff", "start": true});
    let (status, env) = server
        .call_with("POST", "/api/v1/environments", Some(body), Some(&alice))
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    let (url, token) = server.handoff_runtime("held");
    let mut rt = Ws::connect(&url, Some(&token)).await.expect("runtime");
    let app = |token: &str, thread: &str, resume: u64| {
        let url = server.ws_url(&format!(
            "/ws/app/{id}?thread={thread}&session=s-1&resume={resume}"
        ));
        let token = token.to_owned();
        async move { Ws::connect(&url, Some(&token)).await.expect("app") }
    };

    // Alice's app on thread `a` goes away; the runtime answers it meanwhile (a plain
    // app on `a` shows the answer was routed).
    let mut holder = app(&alice, "a", 0).await;
    let greeting = holder.next_any().await;
    assert_eq!(greeting["type"], "relayResumed", "{greeting}");
    let status = holder.next_any().await;
    let last = status["relaySeq"].as_u64().expect("relaySeq");
    drop(holder);
    let mut witness = Ws::connect(
        &server.ws_url(&format!("/ws/app/{id}?thread=a")),
        Some(&alice),
    )
    .await
    .expect("witness");
    rt.send(json!({"type": "secret", "threadId": "a"})).await;
    frames_until(&mut witness, "secret").await;

    // The same session id on another thread, and from another user on the same thread:
    // sessions of their own, told nothing of alice's.
    for (user, who, thread) in [("alice", alice.as_str(), "b"), ("admin", TOKEN, "a")] {
        let mut other = app(who, thread, 0).await;
        let greeting = other.next_any().await;
        assert_eq!(greeting["type"], "relayResumed", "{greeting}");
        assert_eq!(greeting["next"], 1, "{greeting}");
        assert_eq!(greeting["reset"], false, "{greeting}");
        rt.send(json!({"type": "all"})).await;
        let seen = frames_until(&mut other, "all").await;
        assert!(
            seen.iter().all(|f| f["type"] != "secret"),
            "{user} on {thread} got alice's message: {seen:?}"
        );
        drop(other);
    }

    // Alice's session is still hers: resumed, the answer comes.
    let mut holder = app(&alice, "a", last).await;
    let greeting = holder.next_any().await;
    assert_eq!(greeting["type"], "relayResumed", "{greeting}");
    assert_eq!(greeting["reset"], false, "{greeting}");
    let seen = frames_until(&mut holder, "secret").await;
    assert_eq!(seen.last().map(|f| &f["threadId"]), Some(&json!("a")));
    server.stop();
}

/// A binary frame that is not UTF-8 was ignored without being counted, while the peer
/// counted it as sent: the host's count ran one short, so a resuming app dropped one
/// frame too few from what it keeps and sent a frame the host had taken again. It is
/// counted now, and the app is told it was not relayed.
#[tokio::test]
async fn a_binary_frame_that_is_not_text_is_counted_and_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, url, token) = server.handoff_env("binary").await;
    let mut rt = Ws::connect(&url, Some(&token)).await.expect("runtime");
    let app_url = server.ws_url(&format!("/ws/app/{id}?thread=t&session=bin&resume=0"));
    let mut app = Ws::connect(&app_url, Some(TOKEN)).await.expect("app");
    let greeting = app.next_any().await;
    assert_eq!(greeting["type"], "relayResumed", "{greeting}");

    app.send_message(Message::Binary(vec![0xff, 0xfe, 0x00].into()))
        .await;
    app.send(json!({"type": "m", "n": 1})).await;
    assert_eq!(rt.next().await["n"], 1);
    let (mut answered, mut counted) = (false, None);
    while !answered || counted.is_none() {
        let frame = app.next_any().await;
        if frame["type"] == "error" {
            assert_eq!(frame["error"]["code"], "invalid_message", "{frame}");
            answered = true;
        }
        // An ack may come between the two; the one covering both says 2, not 1.
        if frame["type"] == "relayAck" && frame["received"].as_u64() >= Some(2) {
            counted = Some(frame);
        }
    }
    assert_eq!(counted.map(|a| a["received"].clone()), Some(json!(2)));
    server.stop();
}

/// A client offering compression (`permessage-deflate`) is answered without it, and a
/// compressed frame (RSV1 set) is closed with 1002, on the relay's sockets and the
/// events stream alike.
#[tokio::test]
async fn compression_is_never_negotiated_and_a_compressed_frame_is_closed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, _, _) = server.handoff_env("deflate").await;
    for path in [format!("/ws/app/{id}?thread=t"), "/ws/events".to_owned()] {
        let mut request = server.ws_url(&path).into_client_request().expect("request");
        let headers = request.headers_mut();
        let bearer = format!("Bearer {TOKEN}").parse().expect("header");
        headers.insert("authorization", bearer);
        let offer = "permessage-deflate; client_max_window_bits"
            .parse()
            .expect("header");
        headers.insert("sec-websocket-extensions", offer);
        let (mut ws, answer) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgrade");
        assert!(
            answer.headers().get("sec-websocket-extensions").is_none(),
            "{path}: {answer:?}"
        );
        let mut compressed = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
        compressed.header_mut().rsv1 = true;
        ws.send(Message::Frame(compressed)).await.expect("send");
        let code = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    _ => break None,
                }
            }
        })
        .await
        .expect("closed in time");
        assert_eq!(code, Some(1002), "{path}");
    }
    server.stop();
}

/// Runtimes that should not be there, as the contract says: a second connection of
/// the same start replaces the first (4009), a runtime of an earlier start is refused
/// (401) and one whose environment is stopped is told to exit (410).
#[tokio::test]
async fn runtimes_of_another_start_or_a_stopped_environment_are_turned_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, url, token) = server.handoff_env("runtimes").await;
    let mut first = Ws::connect(&url, Some(&token)).await.expect("runtime");
    let mut second = Ws::connect(&url, Some(&token)).await.expect("runtime");
    assert_eq!(first.close_code().await, Some(4009));
    let mut app = server.app(&id, "t").await;
    app.send(json!({"type": "m", "n": 1})).await;
    assert_eq!(second.next().await["n"], 1);
    drop(second);

    server.stop_env(&id).await;
    let (status, body) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    let (url, fresh) = server.handoff_runtime("runtimes");
    assert_ne!(fresh, token);
    assert_eq!(
        Ws::connect(&url, Some(&token)).await.err(),
        Some(reqwest::StatusCode::UNAUTHORIZED)
    );
    server.stop_env(&id).await;
    assert_eq!(
        Ws::connect(&url, Some(&fresh)).await.err(),
        Some(reqwest::StatusCode::GONE)
    );
    server.stop();
}

/// A `relayAck` whose `received` was not a count (a string, negative, past 2^64) was
/// taken for an ordinary message: relayed to the other side, and counted, though the
/// peer counts no acknowledgement it sends — the host ran a frame ahead of the peer,
/// which on resuming would not send a frame again that the host never had. Such an ack
/// is now neither relayed nor counted, and an app is told.
#[tokio::test]
async fn an_ack_without_a_count_is_neither_relayed_nor_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, url, token) = server.handoff_env("acks").await;
    let mut rt = Ws::connect(&format!("{url}?session=rt&resume=0"), Some(&token))
        .await
        .expect("runtime");
    assert_eq!(rt.next_any().await["type"], "relayResumed");
    let app_url = server.ws_url(&format!("/ws/app/{id}?thread=t&session=app&resume=0"));
    let mut app = Ws::connect(&app_url, Some(TOKEN)).await.expect("app");
    assert_eq!(app.next_any().await["type"], "relayResumed");

    let bad = [
        r#"{"type":"relayAck","received":"3"}"#,
        r#"{"type":"relayAck","received":-1}"#,
        r#"{"type":"relayAck","received":18446744073709551616}"#,
        r#"{"type":"relayAck"}"#,
    ];
    for text in bad {
        app.send_text(text).await;
        rt.send_text(text).await;
    }
    app.send(json!({"type": "m", "n": 1})).await;
    rt.send(json!({"type": "r", "threadId": "t", "n": 2})).await;

    // Neither side was handed the other's bad acks (a relayed frame carries `relaySeq`,
    // the host's own acks do not): the first message each gets is the real one.
    let got = loop {
        let frame = rt.next_any().await;
        if frame["type"] != "relayAck" || frame.get("relaySeq").is_some() {
            break frame;
        }
    };
    assert_eq!(got["type"], "m", "{got}");
    let (mut refused, mut counted, mut relayed) = (0, None, false);
    while !relayed || refused < bad.len() || counted.is_none() {
        let frame = app.next_any().await;
        match frame["type"].as_str() {
            Some("error") => {
                assert_eq!(frame["error"]["code"], "invalid_message", "{frame}");
                refused += 1;
            }
            Some("relayAck") => {
                assert!(frame.get("relaySeq").is_none(), "relayed: {frame}");
                counted = Some(frame["received"].clone());
            }
            Some("environmentStatus") => {}
            _ => {
                assert_eq!(frame["type"], "r", "{frame}");
                relayed = true;
            }
        }
    }
    // Each of the app's bad acks was answered, and only its message counted.
    assert_eq!(refused, bad.len());
    assert_eq!(counted, Some(json!(1)));
    server.stop();
}

/// A second reference runtime with the same start's URL and token (run by hand, or
/// left over) takes over the environment's runtime connection: the first is closed
/// with 4009 and must stop there, as the close-code table says. It used to connect
/// again, closing the newer one with 4009 in turn, for ever: two runtimes each
/// replacing the other every few hundred milliseconds.
#[tokio::test]
async fn a_reference_runtime_replaced_by_a_newer_one_exits_instead_of_taking_over_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("twice", "local-process", json!({}))
        .await;
    // The pid reported is the guard's; the runtime is its child.
    let guard = crate::support::runtime_pid(&env);
    let children = std::fs::read_to_string(format!("/proc/{guard}/task/{guard}/children"))
        .expect("the guard's children");
    let first: u32 = (children.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no runtime under the guard: {children:?}"));
    let environ = std::fs::read(format!("/proc/{first}/environ")).expect("runtime environment");
    let var = |name: &str| {
        environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("{name} in the runtime's environment"))
    };
    // Killed when dropped, so a failing run leaves no runtime retrying behind it.
    let mut second = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .kill_on_drop(true)
        .arg("runtime")
        .env_clear()
        .env("TETHER_RUNTIME_URL", var("TETHER_RUNTIME_URL"))
        .env("TETHER_RUNTIME_TOKEN", var("TETHER_RUNTIME_TOKEN"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a second runtime");
    crate::support::wait_gone(first).await;
    let _ = second.kill().await;
    server.stop();
}
