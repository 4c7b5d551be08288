//! Which of a user's tokens may list and revoke the user's other tokens: one with
//! every user scope and no environment limit (and the admin); a narrower one, such as
//! the relay-only token an app hands a browser, sees and revokes only itself.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, Ws};

/// The ids in a token list.
fn ids(list: &Value) -> Vec<&str> {
    (list.as_array().into_iter().flatten())
        .filter_map(|t| t["id"].as_str())
        .collect()
}

#[tokio::test]
async fn a_narrow_token_sees_and_revokes_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (full, full_id) = server.user_token("alice").await;
    let env = server.env_as(&full, "alice-env").await;
    let (relay, relay_id) = server
        .user_token_with("alice", json!({"scopes": ["relay"], "environments": [env]}))
        .await;
    let (reader, reader_id) = server
        .user_token_with(
            "alice",
            json!({"scopes": ["envs:read", "envs:write", "envs:delete"]}),
        )
        .await;
    let (limited, limited_id) = server
        .user_token_with(
            "alice",
            json!({"environments": [env], "note": "the browser's"}),
        )
        .await;

    for (narrow, own) in [
        (&relay, &relay_id),
        (&reader, &reader_id),
        (&limited, &limited_id),
    ] {
        let (status, list) = server
            .call_with("GET", "/api/v1/tokens", None, Some(narrow))
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(ids(&list), [own.as_str()], "{list}");
        // Another token of the user, and one that does not exist, are refused alike.
        for other in [full_id.as_str(), "tok_0000000000000000"] {
            let (status, body) = server
                .call_with(
                    "DELETE",
                    &format!("/api/v1/tokens/{other}"),
                    None,
                    Some(narrow),
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(body["error"]["code"], "forbidden", "{body}");
        }
    }
    // Nothing was revoked: the full token still works and sees all four.
    let (status, list) = server
        .call_with("GET", "/api/v1/tokens", None, Some(&full))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(ids(&list).len(), 4, "{list}");

    // A narrow token may revoke itself.
    let (status, body) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/tokens/{relay_id}"),
            None,
            Some(&relay),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server
        .call_with("GET", "/api/v1/whoami", None, Some(&relay))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The full token revokes a sibling; the admin revokes the full one.
    let (status, body) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/tokens/{reader_id}"),
            None,
            Some(&full),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, list) = server.call("GET", "/api/v1/tokens?user=alice", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(ids(&list).len(), 2, "{list}");
    let (status, body) = server
        .call("DELETE", &format!("/api/v1/tokens/{full_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop();
}

#[tokio::test]
async fn a_token_limited_to_environments_reaches_no_other_through_a_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::write_config(
        dir.path(),
        "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n",
    );
    let server = Server::start(dir.path());
    let full = server.user_token("alice").await.0;
    let url = |thread: &str| server.ws_url(&format!("/ws/app?template=chat&thread={thread}"));
    let mut environments = Vec::new();
    for thread in ["t1", "t2"] {
        let mut ws = Ws::connect(&url(thread), Some(&full))
            .await
            .expect("provisioned");
        let first = ws.next_any().await;
        assert_eq!(first["type"], "provisioned", "{first}");
        let id = first["environmentId"].as_str().expect("id").to_owned();
        server
            .wait_env(&id, "running", |e| e["runtime"]["connected"] == true)
            .await;
        environments.push(id);
    }
    let (limited, _) = server
        .user_token_with(
            "alice",
            json!({"scopes": ["relay"], "environments": [environments[0]]}),
        )
        .await;
    // Its own environment's thread connects; the other thread's environment, running
    // and the user's, is not one the token reaches.
    let mut ws = Ws::connect(&url("t1"), Some(&limited))
        .await
        .expect("the token's own environment");
    let first = ws.next_any().await;
    assert_eq!(first["environmentId"], environments[0].as_str(), "{first}");
    let refused = Ws::connect(&url("t2"), Some(&limited)).await.err();
    assert_eq!(refused, Some(StatusCode::BAD_REQUEST));
    // Nor through a ticket for the template.
    let body = json!({"template": "chat", "thread": "t2"});
    let (status, ticket) = server
        .call_with("POST", "/api/v1/tickets", Some(body), Some(&limited))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let secret = ticket["ticket"].as_str().expect("ticket");
    let by_ticket = server.ws_url(&format!("/ws/app?ticket={secret}"));
    let refused = Ws::connect(&by_ticket, None).await.err();
    assert_eq!(refused, Some(StatusCode::BAD_REQUEST));
    server.stop();
}

#[tokio::test]
async fn a_limited_token_mints_tickets_and_watches_events_only_for_its_environments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let full = server.user_token("alice").await.0;
    let one = server.env_as(&full, "one").await;
    let two = server.env_as(&full, "two").await;
    let (limited, _) = server
        .user_token_with("alice", json!({"environments": [one]}))
        .await;
    let ticket = |environment: &str| {
        let body = json!({"environment": environment, "thread": "t"});
        server.call_with("POST", "/api/v1/tickets", Some(body), Some(&limited))
    };
    assert_eq!(ticket(&one).await.0, StatusCode::CREATED);
    let (status, body) = ticket(&two).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let mut events = Ws::connect(&server.ws_url("/ws/events"), Some(&limited))
        .await
        .expect("events");
    let first = events.next_any().await;
    assert_eq!(first["type"], "snapshot", "{first}");
    let seen: Vec<&str> = (first["environments"].as_array().into_iter().flatten())
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(seen, [one.as_str()], "{first}");
    server.stop();
}

/// Sends `method path` as `token` with headers announcing a 1000-byte JSON body and
/// not a byte of it: what the host answers (within [`crate::support::WAIT`]).
async fn answer_without_body(server: &Server, token: &str, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the headers and the short error body after them.
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&answer).contains("}}") {
                return;
            }
        }
    };
    tokio::time::timeout(crate::support::WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer while the body is awaited"));
    String::from_utf8_lossy(&answer).into_owned()
}

/// A token without the right to a JSON route (create or patch an environment, make a
/// token, get a ticket) had its body read, and waited for, before its 403: a body that
/// never came held the request (and its connection) until the body's timeouts. Now
/// the scope is checked first, and the 403 comes at once, the body unread.
#[tokio::test]
async fn a_token_without_the_scope_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::write_config(dir.path(), "[server]\nheader_timeout_secs = 3600\n");
    let server = Server::start(dir.path());
    let (full, _) = server.user_token("alice").await;
    let env = server.env_as(&full, "alice-env").await;
    let (relay, _) = server
        .user_token_with("alice", json!({"scopes": ["relay"]}))
        .await;
    let (writer, _) = server
        .user_token_with("alice", json!({"scopes": ["envs:write"]}))
        .await;
    for (token, method, path, scope) in [
        (
            &relay,
            "POST",
            "/api/v1/environments".to_owned(),
            "envs:write",
        ),
        (
            &relay,
            "PATCH",
            format!("/api/v1/environments/{env}"),
            "envs:write",
        ),
        (&full, "POST", "/api/v1/tokens".to_owned(), "admin"),
        (&writer, "POST", "/api/v1/tickets".to_owned(), "relay"),
    ] {
        let answer = answer_without_body(&server, token, method, &path).await;
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "{method} {path}: {answer}"
        );
        assert!(
            answer.contains("\"missing_scope\""),
            "{method} {path}: {answer}"
        );
        assert!(answer.contains(scope), "{method} {path}: {answer}");
    }
}
