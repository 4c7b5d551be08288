//! WebSocket tickets against a real server: a browser trades its token for a
//! single-use, short-lived ticket and connects with `?ticket=`; a ticket works once,
//! only for its environment, only within its time and only while its token does.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, Ws, write_config};

async fn ticket(server: &Server, token: &str, body: Value) -> (StatusCode, Value) {
    server
        .call_with("POST", "/api/v1/tickets", Some(body), Some(token))
        .await
}

async fn with_ticket(server: &Server, id: &str, ticket: &str) -> Result<Ws, StatusCode> {
    Ws::connect(
        &server.ws_url(&format!("/ws/app/{id}?ticket={ticket}")),
        None,
    )
    .await
}

#[tokio::test]
async fn a_ticket_opens_one_socket_once_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[tenancy]\nticket_ttl_secs = 2\n");
    let server = Server::start(dir.path());
    let (alice, alice_token_id) = server.user_token("alice").await;
    let (bob, _) = server.user_token("bob").await;
    let mine = server.env_as(&alice, "t-alice").await;
    let other = server.env_as(&alice, "t-alice-2").await;
    let bobs = server.env_as(&bob, "t-bob").await;

    let (status, issued) = ticket(
        &server,
        &alice,
        json!({"environment": mine, "thread": "t1"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["expiresInSecs"], 2);
    assert_eq!(issued["thread"], "t1");
    let secret = issued["ticket"].as_str().expect("ticket").to_owned();
    assert!(
        secret.starts_with("tkt_") && secret.len() >= 4 + 64,
        "{secret}"
    );

    // It opens the socket with no token at all, on its thread; the first frame is the
    // environment's status.
    let mut ws = with_ticket(&server, &mine, &secret)
        .await
        .expect("the ticket works");
    let first = ws.next_any().await;
    assert_eq!(first["type"], "environmentStatus", "{first}");
    // Once only.
    assert_eq!(
        with_ticket(&server, &mine, &secret).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    // Only for its environment (and it is spent by the try).
    let (_, issued) = ticket(&server, &alice, json!({"environment": mine})).await;
    let for_mine = issued["ticket"].as_str().expect("ticket").to_owned();
    assert_eq!(
        with_ticket(&server, &other, &for_mine).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        with_ticket(&server, &mine, &for_mine).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    // Not for someone else's environment: that one does not exist, to Alice.
    let (status, body) = ticket(&server, &alice, json!({"environment": bobs})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // A malformed request names the field.
    let (status, body) = ticket(&server, &alice, json!({"environment": mine, "thread": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Not after its time.
    let (_, issued) = ticket(&server, &alice, json!({"environment": mine})).await;
    let late = issued["ticket"].as_str().expect("ticket").to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        with_ticket(&server, &mine, &late).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    // Not once its token is revoked.
    let (_, issued) = ticket(&server, &alice, json!({"environment": mine})).await;
    let orphan = issued["ticket"].as_str().expect("ticket").to_owned();
    let (status, _) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/tokens/{alice_token_id}"),
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        with_ticket(&server, &mine, &orphan).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    server.stop();
    // No ticket or token in the server's log or the audit log.
    let audit =
        std::fs::read_to_string(dir.path().join(".codebolt/audit.jsonl")).unwrap_or_default();
    for secret in [&secret, &for_mine, &late, &orphan, &alice, &bob] {
        assert!(
            !server_log_contains(&dir, secret),
            "a secret in the server log"
        );
        assert!(
            !audit.contains(secret.as_str()),
            "a secret in the audit log"
        );
    }
}

fn server_log_contains(dir: &tempfile::TempDir, secret: &str) -> bool {
    std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .any(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(secret)
        })
}

/// `?ticket=` given twice is refused (400) before either is looked at, on the events
/// stream too (whose upgrade reads no other parameter), and neither ticket is used up.
#[tokio::test]
async fn a_ticket_given_twice_is_refused_and_neither_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, issued) = ticket(&server, TOKEN, json!({"events": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let good = issued["ticket"].as_str().expect("ticket").to_owned();
    let twice = server.ws_url(&format!("/ws/events?ticket=tkt_other&ticket={good}"));
    assert_eq!(
        Ws::connect(&twice, None).await.err(),
        Some(StatusCode::BAD_REQUEST)
    );
    // Still unused: it opens the stream once.
    let once = server.ws_url(&format!("/ws/events?ticket={good}"));
    let mut events = Ws::connect(&once, None)
        .await
        .expect("the ticket still works");
    assert_eq!(events.next().await["type"], "snapshot");
    server.stop();
}

/// A ticket that names a thread binds its socket's messages to that thread: one
/// naming another thread, or every thread (`null`), is refused, not relayed. The
/// ticket's holder (a browser, say) speaks on the thread it was given and no other.
#[tokio::test]
async fn a_ticket_s_thread_binds_the_messages_of_its_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("pinned", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let (status, issued) = ticket(&server, TOKEN, json!({"environment": id, "thread": "t1"})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let secret = issued["ticket"].as_str().expect("ticket");
    let mut ws = with_ticket(&server, id, secret)
        .await
        .expect("the ticket works");
    // Its own thread, named or left out, is answered there.
    for (request, thread) in [("a", None), ("b", Some("t1"))] {
        let mut msg = json!({"type": "echo", "requestId": request, "payload": "hi"});
        if let Some(thread) = thread {
            msg["threadId"] = json!(thread);
        }
        let answer = ws.request(msg).await;
        assert_eq!(answer["type"], "echoResponse", "{answer}");
        assert_eq!(answer["threadId"], "t1", "{answer}");
    }
    // Another thread, or none (every app), is refused on the socket.
    for (request, thread) in [("c", json!("t2")), ("d", Value::Null)] {
        let msg = json!({"type": "echo", "requestId": request, "threadId": thread, "payload": "x"});
        let answer = ws.request(msg).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_message", "{answer}");
        let why = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(why.contains("pins thread t1"), "{answer}");
    }
    // A token's socket names threads as before: its holder could join any of them.
    let mut app = server.app(id, "t1").await;
    let mut on_t2 = server.app(id, "t2").await;
    app.send(json!({"type": "echo", "requestId": "e", "threadId": "t2", "payload": "to t2"}))
        .await;
    let answer = loop {
        let reply = on_t2.next().await;
        if reply["requestId"] == "e" {
            break reply;
        }
    };
    assert_eq!(answer["payload"], "to t2", "{answer}");
}
