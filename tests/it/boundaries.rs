//! What an app or a stranger can make the host do at its edges: provider requests
//! bounded in number and in the size of their answers, a connect's thread bounded,
//! forged runtime tokens counted against their address, and connections that are slow
//! to send their headers or their bodies, or never read the answers, closed.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, Ws, write_config};

#[tokio::test]
async fn provider_requests_are_bounded_in_number_and_in_the_size_of_their_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[relay]\nmax_message_kib = 16\n");
    let server = Server::start(dir.path());
    let env = server
        .running_env("edges", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();
    let workspace = dir.path().join(".codebolt/environments/edges");
    // 12 KiB of control characters: under the limit as a file, about 72 KiB once
    // escaped into a frame (`\u0001` each).
    std::fs::write(workspace.join("control.txt"), "\u{1}".repeat(12 * 1024)).expect("write");
    std::fs::write(workspace.join("big.txt"), "x".repeat(64 * 1024)).expect("write");
    std::fs::write(workspace.join("small.txt"), "fine").expect("write");
    let mut app = server.app(&id, "t").await;

    for (rid, path) in [("big", "big.txt"), ("escaped", "control.txt")] {
        let answer = app
            .request(json!({"type": "providerReadFile", "requestId": rid, "path": path}))
            .await;
        assert_eq!(answer["action"], "providerReadFileResponse", "{answer}");
        assert_eq!(answer["error"]["code"], "too_large", "{answer}");
        assert!(answer.to_string().len() < 1024, "the refusal is small");
    }
    let read = app
        .request(json!({"type": "providerReadFile", "requestId": "small", "path": "small.txt"}))
        .await;
    assert_eq!(read["message"]["content"], "fine", "{read}");

    // A burst: every request is answered once, the ones past those in flight with
    // `busy` at once, and the connection carries on.
    let burst: Vec<Value> = (0..200)
        .map(|n| json!({"type": "providerReadFile", "requestId": format!("b{n}"), "path": "small.txt"}))
        .collect();
    app.send_burst(&burst).await;
    let mut answers: HashMap<String, Value> = HashMap::new();
    while answers.len() < burst.len() {
        let answer = app.next().await;
        let rid = answer["requestId"].as_str().expect("requestId").to_owned();
        assert!(
            answers.insert(rid.clone(), answer).is_none(),
            "{rid} answered twice"
        );
    }
    let busy = answers
        .values()
        .filter(|a| a["error"]["code"] == "busy")
        .count();
    let read = answers
        .values()
        .filter(|a| a["message"]["content"] == "fine")
        .count();
    assert_eq!(busy + read, burst.len(), "every answer is a read or busy");
    assert!(
        busy > 0,
        "200 requests at once were all answered as they came"
    );
    assert!(read >= 8, "at least those in flight were answered: {read}");
    let after = app
        .request(json!({"type": "providerReadFile", "requestId": "after", "path": "small.txt"}))
        .await;
    assert_eq!(after["message"]["content"], "fine", "{after}");
}

#[tokio::test]
async fn a_thread_past_256_bytes_or_with_control_characters_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, _, _) = server.handoff_env("threads").await;
    for thread in ["x".repeat(257), "a%0Ab".to_owned()] {
        let url = server.ws_url(&format!("/ws/app/{id}?thread={thread}"));
        assert_eq!(
            Ws::connect(&url, Some(TOKEN)).await.err(),
            Some(StatusCode::BAD_REQUEST),
            "thread {thread:.20}…"
        );
    }
    let url = server.ws_url(&format!("/ws/app/{id}?thread={}", "x".repeat(256)));
    assert!(Ws::connect(&url, Some(TOKEN)).await.is_ok());
}

#[tokio::test]
async fn forged_runtime_tokens_are_throttled_and_stale_ones_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with_handoff(dir.path(), "[auth]\nmax_failures_per_minute = 3\n");
    let (id, url, token) = server.handoff_env("guessed").await;
    // A runtime of an earlier start (generation 0) is refused, and counts for nothing.
    for _ in 0..5 {
        assert_eq!(
            Ws::connect(&url, Some("0.left-over")).await.err(),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
    // Without saying how many starts there were: it reads as a forgery does.
    match Ws::try_connect(&url, Some("0.left-over"), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            let body =
                String::from_utf8_lossy(answer.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("invalid runtime token"), "{body}");
            assert!(!body.contains("generation"), "{body}");
        }
        other => panic!("a stale token was not refused: {:?}", other.is_ok()),
    }
    let generation = token.split('.').next().expect("generation");
    for n in 0..2 {
        assert_eq!(
            Ws::connect(&url, Some(&format!("{generation}.guess{n}")))
                .await
                .err(),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
    // The third forgery closes the window: then even the right token waits.
    assert_eq!(
        Ws::connect(&url, Some(&format!("{generation}.guess2")))
            .await
            .err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(
        Ws::connect(&url, Some(&token)).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    let (status, _) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the address is throttled"
    );
}

/// Reads `stream` until the server closes it; how long that took, or `None` if it
/// was still open after `within`.
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let began = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(began.elapsed())
}

#[tokio::test]
async fn connections_slow_with_their_headers_are_closed_and_websockets_are_not() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[server]\nheader_timeout_secs = 1\n");
    let server = Server::start(dir.path());
    let addr = server.base.trim_start_matches("http://").to_owned();
    let patience = std::time::Duration::from_secs(10);

    // Nothing sent; half a request line; headers a byte at a time, slower than allowed.
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    let mut half = TcpStream::connect(&addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow:")
        .await
        .expect("write");
    let mut dribble = TcpStream::connect(&addr).await.expect("connect");
    let dribbling = async {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaa" {
            if dribble.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let (silent_closed, half_closed, ()) = tokio::join!(
        closed_within(&mut silent, patience),
        closed_within(&mut half, patience),
        dribbling
    );
    assert!(silent_closed.is_some(), "a silent connection stayed open");
    assert!(half_closed.is_some(), "half a request held its connection");
    assert!(
        closed_within(&mut dribble, patience).await.is_some(),
        "a dribbled request held its connection"
    );

    // A kept-alive connection may wait that long for its next request, no longer.
    let mut kept = TcpStream::connect(&addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(closed_within(&mut kept, patience).await.is_some());

    // A WebSocket is the relay's once upgraded: quiet for longer, it still works.
    let body = json!({"name": "quiet", "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    let mut events = Ws::connect(&server.ws_url("/ws/events"), Some(TOKEN))
        .await
        .expect("events");
    let snapshot = events.next_any().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let next = events.next_any().await;
    assert_eq!(next["type"], "environmentDeleted", "{next}");
    assert_eq!(next["environmentId"], id, "{next}");

    // And plain requests are served as ever.
    let (status, _) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn connections_that_never_read_their_answers_are_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[server]\nheader_timeout_secs = 1\nmax_connections = 4\n",
    );
    let server = Server::start(dir.path());
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Without a token: requests for the spec, pipelined, far more answer than the
    // sockets' buffers hold, and not a byte of it read. Every slot is taken by them.
    let pipelined = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let mut unread = Vec::new();
    for _ in 0..6 {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        stream.write_all(&pipelined).await.expect("write");
        unread.push(stream);
    }
    // They are closed like connections slow with their headers, and the host serves
    // others again while they are still held open by the client.
    served(&server, "/healthz").await;
    drop(unread);
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_given_up_on_and_its_connection_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[server]\nheader_timeout_secs = 1\n");
    let server = Server::start(dir.path());
    let addr = server.base.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /api/v1/environments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\n"
    );
    // A length announced and not sent; a chunked body without its last chunk.
    for rest in [
        "Content-Length: 1000\r\n\r\n{\"name\": \"sl",
        "Transfer-Encoding: chunked\r\n\r\n4\r\n{\"na\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        stream
            .write_all(format!("{head}{rest}").as_bytes())
            .await
            .expect("write");
        let answer = answer_until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{rest}: {answer}");
        assert!(answer.contains("\"invalid_request\""), "{answer}");
        assert!(answer.contains("nothing of it arrived for 1 s"), "{answer}");
    }
    let (status, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

/// A body trickled a byte at a time, each inside the pause allowed, kept its
/// connection (and a `max_connections` slot) for as long as its sender liked. Now it
/// must arrive whole within `[server] body_timeout_secs`: past that it is answered 400
/// and the connection closed, however it goes on trickling.
#[tokio::test]
async fn a_body_trickled_forever_is_given_up_on_at_its_whole_deadline() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[server]\nheader_timeout_secs = 2\nbody_timeout_secs = 3\n",
    );
    let server = Server::start(dir.path());
    let addr = server.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /api/v1/environments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"name\": \""
    );
    writer.write_all(head.as_bytes()).await.expect("write");
    // A byte every half second, well inside the 2 s pause, for far longer than 3 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..100_000 {
            if writer.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    let answer = {
        use tokio::io::AsyncReadExt;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(crate::support::WAIT, reader.read_to_end(&mut answer));
        let read = read
            .await
            .expect("the host answered and closed the connection");
        if let Err(e) = read {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    trickle.abort();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"invalid_request\""), "{answer}");
    assert!(
        answer.contains("did not arrive whole within 3 s"),
        "{answer}"
    );
}

/// Everything the host sends on `stream` until it closes it (panics if it is still
/// open after `WAIT`).
async fn answer_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::support::WAIT, stream.read_to_end(&mut answer));
    let read = read
        .await
        .expect("the host answered and closed the connection");
    // A reset after the answer (the client's unread bytes) ends the read as well.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn connections_past_max_connections_are_answered_busy_and_their_slots_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[server]\nmax_connections = 4\n");
    let server = Server::start(dir.path());
    // The test's own client may hold a slot or two of the four.
    let (mut held, mut refused, answer) = hold_until_refused(&server, 4).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"code\":\"server_busy\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let patience = std::time::Duration::from_secs(10);
    assert!(
        closed_within(&mut refused, patience).await.is_some(),
        "a refused connection is closed"
    );
    // The held ones are still served.
    let again = exchange(&mut held[0], "/healthz").await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    // Their slots come back once they close; WebSockets hold theirs after the upgrade.
    drop(held);
    let metrics = served(&server, "/metrics").await;
    assert!(metrics.contains("tether_connections_max 4"), "{metrics}");
    let refused_count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tether_connections_refused_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("tether_connections_refused_total");
    assert!(refused_count >= 1, "{metrics}");
    let mut sockets = Vec::new();
    let refusal = loop {
        // Not `Ws::connect`: this refusal comes before any route, which the spec says
        // in its error table, not route by route.
        match Ws::try_connect(&server.ws_url("/ws/events"), Some(TOKEN), None).await {
            Ok(ws) => sockets.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => break answer,
            Err(e) => panic!("connecting: {e}"),
        }
        assert!(sockets.len() <= 4, "more than max_connections WebSockets");
    };
    assert!(!sockets.is_empty(), "no WebSocket was let in");
    assert_eq!(refusal.status().as_u16(), 503, "{refusal:?}");
    drop(sockets);
    served(&server, "/healthz").await;
}

/// Opens kept-alive connections, each with a request answered, until one is turned
/// away; at most `most` are let in. The ones held, the refused one and its answer.
async fn hold_until_refused(
    server: &Server,
    most: usize,
) -> (Vec<tokio::net::TcpStream>, tokio::net::TcpStream, String) {
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    loop {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let answer = exchange(&mut stream, "/healthz").await;
        if !answer.starts_with("HTTP/1.1 200") {
            return (held, stream, answer);
        }
        held.push(stream);
        assert!(held.len() <= most, "more than {most} were served");
    }
}

/// Sends a GET for `path` on `stream` and reads one answer: its head and body, as
/// text (the answer has a length, or its connection closes after it).
async fn exchange(stream: &mut tokio::net::TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let Ok(n @ 1..) = stream.read(&mut buf).await else {
                return;
            };
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok());
            if length.is_some_and(|n| answer.len() >= end + 4 + n) {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

/// `path`'s body, once the host serves it (slots freed by closed connections come
/// back as the host notices the close).
async fn served(server: &Server, path: &str) -> String {
    use tokio::net::TcpStream;
    let addr = server.base.trim_start_matches("http://").to_owned();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let answer = exchange(&mut stream, path).await;
        if answer.starts_with("HTTP/1.1 200") {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} was not served again within 10 s");
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[server]\nmax_connections_per_address = 3\n");
    let server = Server::start(dir.path());
    let (held, _, answer) = hold_until_refused(&server, 3).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("\"code\":\"too_many_connections\""),
        "{answer}"
    );
    drop(held);
    served(&server, "/healthz").await;
}
