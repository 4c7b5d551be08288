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
