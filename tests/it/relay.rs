//! The relay against a real server: the test itself is the runtime (through the
//! `handoff` provider), so it can cut and restore the runtime connection at will.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tether::relay::peer::{Incoming, PeerState};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{Server, TOKEN, Ws};

/// Connects as the runtime, resuming `peer` if given; returns the socket and the
/// frames to send again.
async fn runtime(url: &str, token: &str, peer: Option<&mut PeerState>) -> (Ws, Vec<String>) {
    let Some(peer) = peer else {
        return (
            Ws::connect(url, Some(token)).await.expect("runtime"),
            Vec::new(),
        );
    };
    let mut ws = Ws::connect(&format!("{url}?{}", peer.query()), Some(token))
        .await
        .expect("runtime");
    let greeting = ws.next_text().await.expect("relayResumed");
    match peer.on_frame(&greeting) {
        Incoming::Resumed(resend) => (ws, resend),
        other => panic!("expected relayResumed, got {other:?}"),
    }
}

#[tokio::test]
async fn relay_routes_by_thread_broadcasts_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, url, token) = server.handoff_env("threads").await;
    let (mut rt, _) = runtime(&url, &token, None).await;
    let mut t1 = server.app(&id, "t1").await;
    let mut t2 = server.app(&id, "t2").await;

    rt.send(json!({"type": "x", "threadId": "t1", "n": 1}))
        .await;
    rt.send(json!({"type": "all", "n": 2})).await;
    assert_eq!(t1.next().await["n"], 1);
    assert_eq!(t1.next().await["n"], 2);
    // t2 never saw t1's message: the broadcast is the first thing it gets.
    assert_eq!(t2.next().await["n"], 2);

    // Each app's messages reach the runtime in order, tagged with its thread.
    for n in 0..200 {
        t1.send(json!({"type": "m", "n": n})).await;
        t2.send(json!({"type": "m", "n": n})).await;
    }
    let mut next = [0, 0];
    for _ in 0..400 {
        let msg = rt.next().await;
        let slot = usize::from(msg["threadId"] == "t2");
        assert_eq!(msg["n"], next[slot], "{msg}");
        next[slot] += 1;
    }
    // Runtime → app order holds too.
    for n in 0..200 {
        rt.send(json!({"type": "r", "threadId": "t2", "n": n}))
            .await;
    }
    for n in 0..200 {
        assert_eq!(t2.next().await["n"], n);
    }
    server.stop();
}

#[tokio::test]
async fn relay_10000_messages_survive_runtime_cuts_exactly_once_in_order() {
    const N: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let config = "[relay]\nwindow_messages = 20000\nwindow_kib = 65536\n";
    let server = Server::start_with_handoff(dir.path(), config);
    let (id, url, token) = server.handoff_env("cuts").await;
    let mut peer = PeerState::new("rt-1");
    let (mut rt, _) = runtime(&url, &token, Some(&mut peer)).await;
    let mut app = server.app(&id, "t").await;

    // App → runtime: the app keeps sending while the runtime connection is cut twice.
    let mut sender = server.app(&id, "t").await;
    let sending = tokio::spawn(async move {
        for n in 1..=N {
            sender.send(json!({"type": "m", "n": n})).await;
        }
        sender
    });
    let mut expected = 1;
    while expected <= N {
        let Some(text) = rt.next_text().await else {
            panic!("runtime connection ended")
        };
        match peer.on_frame(&text) {
            Incoming::Message(msg) if msg["type"] == "m" => {
                assert_eq!(
                    msg["n"], expected,
                    "app → runtime out of order or duplicated"
                );
                expected += 1;
            }
            Incoming::Message(_) | Incoming::Nothing => {}
            other => panic!("unexpected {other:?}"),
        }
        if let Some(ack) = peer.ack(false) {
            rt.send_text(&ack).await;
        }
        if expected == 3_001 || expected == 7_001 {
            drop(rt); // cut: whatever was in flight must come again, once
            (rt, _) = runtime(&url, &token, Some(&mut peer)).await;
        }
    }
    let _sender = sending.await.unwrap();

    // Runtime → app: the runtime sends while its connection is cut twice; it sends
    // again what the host says it did not receive.
    let mut sent = 0;
    while sent < N {
        sent += 1;
        let frame = peer.send(json!({"type": "r", "n": sent}).to_string());
        rt.send_text(&frame).await;
        if sent == 4_000 || sent == 8_000 {
            drop(rt);
            let resend;
            (rt, resend) = runtime(&url, &token, Some(&mut peer)).await;
            for frame in resend {
                rt.send_text(&frame).await;
            }
        }
    }
    let mut expected = 1;
    while expected <= N {
        let msg = app.next().await;
        assert_eq!(
            msg["n"], expected,
            "runtime → app out of order or duplicated"
        );
        expected += 1;
    }
    // Nothing more: a marker sent last is the very next message.
    rt.send_text(&peer.send(json!({"type": "end"}).to_string()))
        .await;
    assert_eq!(app.next().await["type"], "end");
    server.stop();
}

#[tokio::test]
async fn relay_app_reconnects_and_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, url, token) = server.handoff_env("resume").await;
    let (mut rt, _) = runtime(&url, &token, None).await;
    let mut peer = PeerState::new("app-1");
    let app_url = server.ws_url(&format!("/ws/app/{id}?thread=t&{}", peer.query()));
    let mut app = Ws::connect(&app_url, Some(TOKEN)).await.unwrap();
    assert!(matches!(
        peer.on_frame(&app.next_text().await.unwrap()),
        Incoming::Resumed(_)
    ));
    for n in 1..=100 {
        rt.send(json!({"type": "r", "threadId": "t", "n": n})).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 40 {
        if let Incoming::Message(m) = peer.on_frame(&app.next_text().await.unwrap())
            && m["type"] == "r"
        {
            seen.push(m["n"].as_u64().unwrap());
        }
    }
    drop(app);
    for n in 101..=200 {
        rt.send(json!({"type": "r", "threadId": "t", "n": n})).await;
    }
    let app_url = server.ws_url(&format!("/ws/app/{id}?thread=t&{}", peer.query()));
    let mut app = Ws::connect(&app_url, Some(TOKEN)).await.unwrap();
    let greeting: Value = serde_json::from_str(&app.next_text().await.unwrap()).unwrap();
    assert_eq!(greeting["type"], "relayResumed");
    assert_eq!(greeting["reset"], false);
    peer.on_frame(&greeting.to_string());
    while seen.len() < 200 {
        match peer.on_frame(&app.next_text().await.unwrap()) {
            Incoming::Message(m) if m["type"] == "r" => seen.push(m["n"].as_u64().unwrap()),
            Incoming::Lost(from, to) => panic!("lost {from}..={to} inside the window"),
            _ => {}
        }
    }
    assert_eq!(seen, (1..=200).collect::<Vec<_>>());
    server.stop();
}

#[tokio::test]
async fn relay_slow_consumer_is_closed_told_its_loss_and_others_keep_pace() {
    const N: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_handoff(dir.path(), "[relay]\nwindow_messages = 256\n");
    let (id, url, token) = server.handoff_env("slow").await;
    let (mut rt, _) = runtime(&url, &token, None).await;
    let mut fast = server.app(&id, "t").await;
    let mut peer = PeerState::new("slow-1");
    let slow_url = server.ws_url(&format!("/ws/app/{id}?thread=t&{}", peer.query()));
    let mut slow = Ws::connect(&slow_url, Some(TOKEN)).await.unwrap();
    let plain_slow = server.app(&id, "t").await;

    // 8 KiB each: far more than socket buffers hold, so the window must overflow.
    // The runtime stays at most 64 messages ahead of the fast app, so the fast app is
    // keeping pace however loaded the machine is; the slow ones never read.
    let pad = "x".repeat(8 << 10);
    let pace = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let permits = pace.clone();
    let sending = tokio::spawn(async move {
        for n in 1..=N {
            permits.acquire().await.unwrap().forget();
            rt.send(json!({"type": "r", "n": n, "pad": pad})).await;
        }
        rt
    });
    for n in 1..=N {
        assert_eq!(fast.next().await["n"], n);
        pace.add_permits(1);
    }
    let _rt = sending.await.unwrap();

    // The slow readers were closed with 4008 (after whatever the sockets held).
    assert_eq!(slow.close_code().await, Some(4008));
    let mut plain_slow = plain_slow;
    assert_eq!(plain_slow.close_code().await, Some(4008));
    // The resumable one resumes and learns exactly what it lost; nothing else is missing.
    let slow_url = server.ws_url(&format!("/ws/app/{id}?thread=t&{}", peer.query()));
    let mut slow = Ws::connect(&slow_url, Some(TOKEN)).await.unwrap();
    let (mut lost, mut got, mut last_n) = (0, 0, 0);
    while peer.last_seq() < N + 2 {
        let Some(text) = slow.next_text().await else {
            panic!(
                "resumed connection ended at {last_n}; log:\n{}",
                server.log()
            )
        };
        match peer.on_frame(&text) {
            Incoming::Lost(from, to) => lost += to - from + 1,
            Incoming::Message(m) if m["type"] == "r" => {
                let n = m["n"].as_u64().unwrap();
                assert!(n > last_n, "out of order");
                last_n = n;
                got += 1;
            }
            _ => {}
        }
    }
    assert!(lost > 0, "the window overflowed, so something was lost");
    // Every message is accounted for: received (before or after) or reported lost;
    // the two status events (on connecting and on resuming) are numbered too.
    assert_eq!(peer.last_seq(), N + 2);
    assert!(got + lost <= N + 2);
    server.stop();
}

#[tokio::test]
async fn relay_limits_message_size_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[relay]\nmax_message_kib = 64\nmax_connections = 3\n";
    let server = Server::start_with_handoff(dir.path(), config);
    let (id, url, token) = server.handoff_env("limits").await;
    let (mut rt, _) = runtime(&url, &token, None).await;
    let mut big = server.app(&id, "t").await;
    big.send_text(&format!(
        "{{\"type\":\"m\",\"pad\":\"{}\"}}",
        "x".repeat(100 << 10)
    ))
    .await;
    assert_eq!(big.close_code().await, Some(1009));
    // The runtime and two apps fill the environment; a third app is refused.
    let _a = server.app(&id, "t").await;
    let mut b = server.app(&id, "t").await;
    let mut over = server.app(&id, "t").await;
    assert_eq!(over.close_code().await, Some(4013));
    // Those admitted still work.
    b.send(json!({"type": "m", "n": 1})).await;
    assert_eq!(rt.next().await["n"], 1);
    server.stop();
}

#[tokio::test]
async fn relay_auth_wrong_tokens_browser_subprotocol_and_foreign_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_handoff(dir.path(), "");
    let (a, url_a, token_a) = server.handoff_env("env-a").await;
    let (b, _, token_b) = server.handoff_env("env-b").await;
    let app_url = server.ws_url(&format!("/ws/app/{a}"));
    assert_eq!(
        Ws::connect(&app_url, Some("wrong")).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // Runtime A's token does not admit it to B, nor B's to A; the API token admits no runtime.
    let url_b = server.ws_url(&format!("/ws/runtime/{b}"));
    for (url, token) in [
        (&url_b, &token_a),
        (&url_a, &token_b),
        (&url_a, &TOKEN.to_owned()),
    ] {
        assert_eq!(
            Ws::connect(url, Some(token)).await.err(),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
    let (_rt, _) = runtime(&url_a, &token_a, None).await;

    // A browser offers the token as a subprotocol and gets `tether.v1` back.
    for (token, ok) in [(TOKEN, true), ("wrong", false)] {
        let mut req = app_url.as_str().into_client_request().unwrap();
        let offer = HeaderValue::from_str(&format!("tether.v1, tether.bearer.{token}")).unwrap();
        req.headers_mut().insert("sec-websocket-protocol", offer);
        match tokio_tungstenite::connect_async(req).await {
            Ok((_, resp)) => {
                assert!(ok, "a wrong token was accepted");
                assert_eq!(resp.headers()["sec-websocket-protocol"], "tether.v1");
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(!ok, "refused: {}", resp.status());
                assert_eq!(resp.status().as_u16(), 401);
            }
            Err(e) => panic!("{e}"),
        }
    }
    server.stop();
}

#[tokio::test]
async fn relay_pings_and_closes_a_peer_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[relay]\nping_interval_secs = 1\nidle_timeout_secs = 2\n";
    let server = Server::start_with_handoff(dir.path(), config);
    let (id, _, _) = server.handoff_env("silent").await;
    // A raw client: it completes the upgrade, then reads bytes and never answers a ping.
    let (pinged, close_code) =
        crate::support::silent_client_close(&server.base, &format!("/ws/app/{id}")).await;
    assert!(pinged, "the host pinged before giving up");
    assert_eq!(close_code, 4011);
    server.stop();
}

/// A stop takes what was in its runtime's hands down with it, and every app is told:
/// one connected is written what was held for it and closed with 4010; one cut at that
/// instant gets the same when it resumes. The next run's runtime gets nothing from
/// before the stop (the apps send again what they still want), so nothing runs twice.
#[tokio::test]
async fn a_stop_tells_connected_and_cut_apps_and_the_next_run_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, url, token) = server.handoff_env("stopped").await;
    let (mut rt, _) = runtime(&url, &token, None).await;
    let mut peers = [PeerState::new("stays"), PeerState::new("is-cut")];
    let app_url =
        |peer: &PeerState| server.ws_url(&format!("/ws/app/{id}?thread=t&{}", peer.query()));
    let mut apps = Vec::new();
    for peer in &mut peers {
        let mut app = Ws::connect(&app_url(peer), Some(TOKEN)).await.unwrap();
        let greeting = app.next_text().await.unwrap();
        assert!(matches!(peer.on_frame(&greeting), Incoming::Resumed(_)));
        apps.push(app);
    }
    // Both apps' requests reach the runtime; it answers the first, to the thread.
    for (n, (peer, app)) in peers.iter_mut().zip(&mut apps).enumerate() {
        let frame = peer.send(json!({"type": "work", "requestId": n}).to_string());
        app.send_text(&frame).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = rt.next().await;
        if m["type"] == "work" {
            got.push(m["requestId"].clone());
        }
    }
    rt.send(json!({"type": "done", "threadId": "t", "requestId": 0}))
        .await;
    let [stays, cut] = &mut peers;
    loop {
        if let Incoming::Message(m) = stays.on_frame(&apps[0].next_text().await.unwrap())
            && m["type"] == "done"
        {
            break;
        }
    }
    // One app's connection is cut (the answer still unread), then the stop.
    apps.pop();
    let stop = format!("/api/v1/environments/{id}/stop");
    let (status, body) = server.call("POST", &stop, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(rt.close_code().await, Some(4010));
    assert_eq!(apps[0].close_code().await, Some(4010));
    // The cut app resuming while its environment is stopped is told so (as any app
    // connecting then); once it runs again, the resume gets the answer held for it,
    // then the same close as the connected app.
    let mut app = Ws::connect(&app_url(cut), Some(TOKEN)).await.unwrap();
    let (frames, code) = app.until_close().await;
    assert_eq!(frames[0]["error"]["code"], "stopped", "{frames:?}");
    assert_eq!(code, Some(4015));
    server
        .wait_env(&id, "stopped", |e| e["status"] == "stopped")
        .await;
    let start = format!("/api/v1/environments/{id}/start");
    let (status, body) = server.call("POST", &start, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    let mut app = Ws::connect(&app_url(cut), Some(TOKEN)).await.unwrap();
    let (frames, code) = app.until_close().await;
    let kinds: Vec<_> = (frames.iter())
        .map(|f| f["type"].clone())
        .filter(|k| k != "environmentStatus")
        .collect();
    assert_eq!(kinds, ["relayResumed", "done"], "{frames:?}");
    assert_eq!(frames[0]["reset"], false);
    assert_eq!(code, Some(4010));
    // The next run: its runtime gets only what is sent after the stop.
    let (url, token) = server.handoff_runtime("stopped");
    let (mut rt, _) = runtime(&url, &token, None).await;
    let mut again = PeerState::new("after-the-stop");
    let mut app = Ws::connect(&app_url(&again), Some(TOKEN)).await.unwrap();
    again.on_frame(&app.next_text().await.unwrap());
    app.send_text(&again.send(json!({"type": "work", "requestId": 1}).to_string()))
        .await;
    let first = loop {
        let m = rt.next().await;
        if m["type"] == "work" {
            break m;
        }
    };
    assert_eq!(first["requestId"], 1, "{first}");
    server.stop();
}

/// Apps that stop reading altogether (their sockets full, never drained) do not keep
/// their connections on the host: each is closed when it falls a window behind, and its
/// socket is let go within the idle timeout even though the close frame cannot reach it.
#[tokio::test]
async fn apps_that_never_read_are_let_go_of() {
    const SLOW: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let config = "[relay]\nwindow_messages = 64\nwindow_kib = 256\nping_interval_secs = 1\nidle_timeout_secs = 2\nmax_connections = 32\n";
    let server = Server::start_with_handoff(dir.path(), config);
    let (id, url, token) = server.handoff_env("stalled").await;
    let (mut rt, _) = runtime(&url, &token, None).await;
    // Sockets only: the host opens and closes files of its own (the journal, logs)
    // at times a loaded machine moves, and those are not what is measured here.
    let fds = || {
        (std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap())
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .count()
    };
    let before = fds();
    // Apps on raw TCP whose receive buffers are never read: they stay connected,
    // answering nothing, and the host's writes to them block.
    let mut stalled = Vec::new();
    for _ in 0..SLOW {
        stalled.push(server.app(&id, "t").await);
    }
    assert!(fds() >= before + SLOW);
    // 64 KiB frames: far more than the socket buffers and the window hold.
    let pad = "x".repeat(64 << 10);
    for n in 0..400 {
        rt.send(json!({"type": "r", "n": n, "pad": pad})).await;
    }
    // Every stalled app's socket is closed by the host, though none ever reads.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    while fds() > before + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} sockets still held for apps that stopped reading",
            fds() - before
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(stalled);
    server.stop();
}

#[tokio::test]
async fn the_relay_speaks_websocket_answers_pings_joins_fragments_and_drops_unmasked_peers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let dir = tempfile::tempdir().unwrap();
    let config = "[relay]\nmax_message_kib = 64\n";
    let server = Server::start_with_handoff(dir.path(), config);
    let (id, url, token) = server.handoff_env("frames").await;
    let (mut rt, _) = runtime(&url, &token, None).await;
    let mut app = server.app(&id, "t").await;

    // A ping is answered with its own payload (after the environment's status,
    // which may come first).
    app.send_message(Message::Ping(b"are you there".to_vec().into()))
        .await;
    loop {
        match app.next_message().await {
            Some(Message::Pong(data)) => break assert_eq!(&data[..], b"are you there"),
            Some(Message::Text(status)) => assert!(status.contains("environmentStatus")),
            other => panic!("expected a pong, got {other:?}"),
        }
    }

    // A message sent in fragments reaches the runtime as one.
    let text = json!({"type": "m", "pad": "y".repeat(3000)}).to_string();
    let (a, rest) = text.split_at(1000);
    let (b, c) = rest.split_at(1000);
    let fragments = [
        Frame::message(a.as_bytes().to_vec(), OpCode::Data(Data::Text), false),
        Frame::message(b.as_bytes().to_vec(), OpCode::Data(Data::Continue), false),
        Frame::message(c.as_bytes().to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for fragment in fragments {
        app.send_message(Message::Frame(fragment)).await;
    }
    let got = rt.next().await;
    assert_eq!(got["pad"].as_str().map(str::len), Some(3000), "{got}");
    assert_eq!(got["threadId"], "t");

    // Fragments adding up to more than the limit close the app with 1009, though
    // each is small.
    let mut big = server.app(&id, "t").await;
    let piece = vec![b'x'; 16 << 10];
    big.send_message(Message::Frame(Frame::message(
        piece.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    for _ in 0..5 {
        big.send_message(Message::Frame(Frame::message(
            piece.clone(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    }
    assert_eq!(big.close_code().await, Some(1009));

    // A raw client: the upgrade is answered as RFC 6455 says (the accept key of its
    // key, and the subprotocol it offered) …
    let ws = server.ws_url("");
    let addr = ws.trim_start_matches("ws://");
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws/app/{id}?thread=t HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tether.v1\r\n\
         Authorization: Bearer {}\r\n\r\n",
        crate::support::TOKEN
    );
    raw.write_all(request.as_bytes()).await.expect("upgrade");
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            raw.read(&mut byte).await.expect("answer"),
            1,
            "answer ended early"
        );
        answer.push(byte[0]);
    }
    let answer = String::from_utf8(answer)
        .expect("text")
        .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
    assert!(
        answer.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("sec-websocket-protocol: tether.v1\r\n"),
        "{answer}"
    );
    // … and a frame without a mask, which a client must never send, ends it.
    let mut unmasked = vec![0x81, 2];
    unmasked.extend_from_slice(b"{}");
    raw.write_all(&unmasked).await.expect("frame");
    // (What came before it, the environment's status, is read past; the connection
    // would otherwise stay open far longer than this wait.)
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        raw.read_to_end(&mut rest),
    )
    .await;
    assert!(
        ended.is_ok(),
        "the host kept a peer that sent an unmasked frame"
    );

    // Everyone else carries on.
    app.send(json!({"type": "m", "n": 7})).await;
    assert_eq!(rt.next().await["n"], 7);
    rt.send(json!({"type": "r", "threadId": "t", "n": 8})).await;
    assert_eq!(app.next().await["n"], 8);

    // A peer's close is answered with a close of the same code: a clean close.
    let mut leaving = server.app(&id, "t").await;
    let going = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1001.into(),
        reason: "bye".into(),
    };
    leaving.send_message(Message::Close(Some(going))).await;
    let answered = loop {
        match leaving.next_message().await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("the host closed without answering the close"),
        }
    };
    assert_eq!(answered.map(|f| u16::from(f.code)), Some(1001));
    server.stop();
}
