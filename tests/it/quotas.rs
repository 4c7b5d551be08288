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

/// Polls `GET /api/v1/config/status` until a reload has been applied; at most `WAIT`.
async fn wait_applied(server: &Server) {
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let (_, status) = server.call("GET", "/api/v1/config/status", None).await;
        if status["lastReload"]["outcome"] == "applied" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload applied: {status}\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Creates `name` with `provider` as `token`'s user (not started).
async fn create_with(
    server: &Server,
    token: &str,
    name: &str,
    provider: &str,
) -> (StatusCode, Value) {
    let body = serde_json::json!({"name": name, "provider": provider});
    server
        .call_with("POST", "/api/v1/environments", Some(body), Some(token))
        .await
}

#[tokio::test]
async fn a_user_creates_only_with_the_providers_tenancy_allows_and_the_admin_with_any() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[tenancy]\nproviders = [\"http-sandbox\"]\n\
         [tenancy.users.bob]\nproviders = [\"http-sandbox\", \"local-process\"]\n",
    );
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let (status, body) = create_with(&server, &alice, "a-local", "local-process").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"local-process\"") && message.contains("allows http-sandbox"),
        "{message}"
    );
    // A provider that is not loaded is refused the same way: a user learns nothing
    // of the providers they may not use.
    let (status, body) = create_with(&server, &alice, "a-none", "no-such-provider").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = create_with(&server, &alice, "a-sandbox", "http-sandbox").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Bob's own list replaces the default.
    let bob = server.user_token("bob").await.0;
    let (status, body) = create_with(&server, &bob, "b-local", "local-process").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The admin is never limited, for itself or for a user.
    let (status, body) = create_with(&server, TOKEN, "admin-local", "local-process").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let for_alice =
        serde_json::json!({"name": "a-by-admin", "provider": "local-process", "owner": "alice"});
    let (status, body) = server
        .call("POST", "/api/v1/environments", Some(for_alice))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let records = server.records();
    assert!(
        !records.to_string().contains("\"a-local\""),
        "a refused create left a record: {records}"
    );

    // A live reload changes the lists for the next create.
    write_config(dir.path(), "[tenancy]\nproviders = [\"local-process\"]\n");
    wait_applied(&server).await;
    let (status, body) = create_with(&server, &alice, "a-local", "local-process").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = create_with(&server, &alice, "a-sandbox-2", "http-sandbox").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = create_with(&server, &bob, "b-sandbox", "http-sandbox").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // And removing the key allows every loaded provider again.
    write_config(dir.path(), "[tenancy]\nmax_running = 5\n");
    wait_until_allowed(&server, &alice).await;
    server.stop();
}

/// Polls until `token`'s user may create with `http-sandbox` again (the reload that
/// drops the list is applied); the environments made on the way are left.
async fn wait_until_allowed(server: &Server, token: &str) {
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    for i in 0.. {
        let (status, body) =
            create_with(server, token, &format!("again-{i}"), "http-sandbox").await;
        if status == StatusCode::CREATED {
            return;
        }
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_user_cannot_start_an_environment_on_a_provider_the_list_no_longer_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[tenancy]\nmax_running = 5\n");
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let id = server.env_as(&alice, "before-the-list").await;
    write_config(dir.path(), "[tenancy]\nproviders = [\"http-sandbox\"]\n");
    wait_applied(&server).await;
    for action in ["start", "restart"] {
        let path = format!("/api/v1/environments/{id}/{action}");
        let (status, body) = server.call_with("POST", &path, None, Some(&alice)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
    let (_, env) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(env["desiredState"], "stopped", "{env}");
    // The admin may; and a stop is never refused.
    let start = format!("/api/v1/environments/{id}/start");
    assert_eq!(
        server.call("POST", &start, None).await.0,
        StatusCode::ACCEPTED
    );
    let stop = format!("/api/v1/environments/{id}/stop");
    let (status, body) = server.call_with("POST", &stop, None, Some(&alice)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server.stop();
}
