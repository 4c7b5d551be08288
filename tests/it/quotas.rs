//! `[tenancy]` quotas against a real server: a user's environments and running
//! environments are capped, an override raises one user's cap, and a cap holds under
//! a hundred concurrent creates.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Server, TOKEN, write_config};

#[tokio::test]
async fn a_quota_holds_under_a_hundred_parallel_creates() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[tenancy]\nmax_environments = 10\n[tenancy.users.bob]\nmax_environments = 3\n",
    );
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let creates = (0..100).map(|i| {
        let (server, alice) = (&server, alice.clone());
        async move { server.create_as(&alice, &format!("q-{i}"), false).await }
    });
    let results = futures_util::future::join_all(creates).await;
    let made = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(made, 10, "{results:?}");
    let refused: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(refused.len(), 90, "{results:?}");
    let message = refused[0]["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(refused[0]["error"]["code"], "quota_exceeded");
    assert!(
        message.contains("max_environments") && message.contains("10 of 10"),
        "{message}"
    );
    let (_, list) = server
        .call_with("GET", "/api/v1/environments", None, Some(&alice))
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(10));

    // Bob's override is lower; the admin is not touched by Alice's use.
    let bob = server.user_token("bob").await.0;
    for i in 0..3 {
        assert_eq!(
            server.create_as(&bob, &format!("b-{i}"), false).await.0,
            StatusCode::CREATED
        );
    }
    let (status, body) = server.create_as(&bob, "b-3", false).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        server.create_as(TOKEN, "admin-own", false).await.0,
        StatusCode::CREATED
    );
    server.stop();
}

#[tokio::test]
async fn running_environments_are_capped_and_a_stop_makes_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[tenancy]\nmax_running = 1\n");
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let (status, first) = server.create_as(&alice, "run-1", true).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first = first["id"].as_str().expect("id").to_owned();
    // A second running one is refused at create and at start.
    let (status, body) = server.create_as(&alice, "run-2", true).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_running")),
        "{body}"
    );
    let (status, second) = server.create_as(&alice, "run-2", false).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second = second["id"].as_str().expect("id").to_owned();
    let start = |id: &str| format!("/api/v1/environments/{id}/start");
    let (status, _) = server
        .call_with("POST", &start(&second), None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Starting the one already running, or restarting it, is no change.
    let (status, _) = server
        .call_with("POST", &start(&first), None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Stopping it makes room.
    let stop = format!("/api/v1/environments/{first}/stop");
    let (status, _) = server.call_with("POST", &stop, None, Some(&alice)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = server
        .call_with("POST", &start(&second), None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.stop();
}
