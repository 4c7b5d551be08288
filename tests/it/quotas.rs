//! `[tenancy]` quotas against a real server: a user's environments and running
//! environments are capped, an override raises one user's cap, and a cap holds under
//! a hundred concurrent creates; a user's long-lived connections (app sockets, events
//! streams, followed logs) are capped by `max_connections`, and each gives its place
//! back when it ends.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Server, TOKEN, WAIT, Ws, write_config};

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

/// Close code of a connection whose user holds `[tenancy] max_connections` already.
const CLOSE_USER_LIMIT: u16 = 4016;

/// An app socket of `token`'s user on `id`, upgraded (whether or not then admitted).
async fn app_as(server: &Server, id: &str, token: &str) -> Ws {
    Ws::connect(
        &server.ws_url(&format!("/ws/app/{id}?thread=t")),
        Some(token),
    )
    .await
    .expect("upgraded")
}

/// An events stream of `token`'s user, upgraded (whether or not then admitted).
async fn events_as(server: &Server, token: &str) -> Ws {
    Ws::connect(&server.ws_url("/ws/events"), Some(token))
        .await
        .expect("upgraded")
}

/// The close `ws` ends with, before any other frame: its code and reason.
async fn refusal(ws: &mut Ws) -> (u16, String) {
    match ws.next_message().await {
        Some(Message::Close(Some(frame))) => (frame.code.into(), frame.reason.to_string()),
        other => panic!("expected a close at once, got {other:?}"),
    }
}

/// Asserts `ws` was refused for its user's `max_connections` of `limit`.
async fn assert_at_limit(ws: &mut Ws, limit: usize) {
    let (code, reason) = refusal(ws).await;
    assert_eq!(code, CLOSE_USER_LIMIT, "{reason}");
    assert!(
        reason.contains("max_connections") && reason.contains(&format!("{limit} of {limit}")),
        "{reason}"
    );
}

/// An app socket of `token`'s user on `id`, admitted: connected again while it is
/// refused for the user's limit, as an app whose other connection is still closing
/// on the host would (no time is asserted; `WAIT` bounds it).
async fn admitted_app(server: &Server, id: &str, token: &str) -> Ws {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut ws = app_as(server, id, token).await;
        match ws.next_message().await {
            Some(Message::Text(text)) => {
                assert!(text.contains("environmentStatus"), "{text}");
                return ws;
            }
            Some(Message::Close(Some(frame))) if u16::from(frame.code) == CLOSE_USER_LIMIT => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still refused: {frame:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected the app admitted, got {other:?}"),
        }
    }
}

/// `GET …/logs?follow=true` as `token`; the response, whatever its status.
async fn follow(server: &Server, id: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!(
            "{}/api/v1/environments/{id}/logs?tail=0&follow=true",
            server.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("follow")
}

async fn closed_by_client(mut ws: Ws) {
    ws.send_message(Message::Close(None)).await;
    while ws.next_message().await.is_some() {}
}

#[tokio::test]
async fn a_user_at_max_connections_is_refused_sockets_streams_and_follows_until_one_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[tenancy]\nmax_connections = 2\n\
         [templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n",
    );
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let bob = server.user_token("bob").await.0;
    let mine = server.env_as(&alice, "alice-env").await;
    let bobs = server.env_as(&bob, "bob-env").await;

    // Alice holds two: an app socket and an events stream.
    let first = admitted_app(&server, &mine, &alice).await;
    let mut events = events_as(&server, &alice).await;
    assert_eq!(events.next_any().await["type"], "snapshot");
    // Her next of each kind is upgraded and closed with 4016, saying the limit.
    assert_at_limit(&mut app_as(&server, &mine, &alice).await, 2).await;
    assert_at_limit(&mut events_as(&server, &alice).await, 2).await;
    // A template connect too, before anything is made for it.
    let url = server.ws_url("/ws/app?template=chat&thread=x");
    let mut provisioned = Ws::connect(&url, Some(&alice)).await.expect("upgraded");
    assert_at_limit(&mut provisioned, 2).await;
    let (_, list) = server
        .call_with("GET", "/api/v1/environments", None, Some(&alice))
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // A followed log is 429 quota_exceeded, naming the limit, its value and the use.
    let refused = follow(&server, &mine, &alice).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(
        body["error"]["message"],
        "alice is at the max_connections quota: 2 of 2 in use"
    );
    // A plain log read is no connection held.
    let (status, _) = server
        .call_with(
            "GET",
            &format!("/api/v1/environments/{mine}/logs"),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Bob is not touched by Alice's use.
    let bobs_app = admitted_app(&server, &bobs, &bob).await;
    let mut bobs_events = events_as(&server, &bob).await;
    assert_eq!(bobs_events.next_any().await["type"], "snapshot");

    // Alice closing her app socket makes room for the next one.
    closed_by_client(first).await;
    let second = admitted_app(&server, &mine, &alice).await;
    assert_at_limit(&mut app_as(&server, &mine, &alice).await, 2).await;
    // Her events stream closing makes room for a follow, which then counts.
    closed_by_client(events).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let followed = loop {
        let response = follow(&server, &mine, &alice).await;
        if response.status() == StatusCode::OK {
            break response;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follow stayed refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_at_limit(&mut events_as(&server, &alice).await, 2).await;
    // The follow's client leaving gives its place back.
    drop(followed);
    let third = admitted_app(&server, &mine, &alice).await;
    assert!(server.metric("tether_user_connections_refused_total").await >= 6);
    drop((second, third, bobs_app, bobs_events));
    server.stop();
}

#[tokio::test]
async fn a_revoked_tokens_connections_stop_counting_and_the_admin_is_held_to_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[tenancy]\nmax_connections = 2\n[tenancy.users.carol]\nmax_connections = 1\n",
    );
    let server = Server::start(dir.path());
    let (laptop, laptop_id) = server.user_token("alice").await;
    let phone = server.user_token("alice").await.0;
    let id = server.env_as(&laptop, "alice-env").await;

    // Two tokens of one user share the user's limit.
    let mut held = admitted_app(&server, &id, &laptop).await;
    let mut events = events_as(&server, &laptop).await;
    assert_eq!(events.next_any().await["type"], "snapshot");
    assert_at_limit(&mut app_as(&server, &id, &phone).await, 2).await;

    // Revoking the laptop's token closes its connections (4003), and they stop counting.
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/tokens/{laptop_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(held.close_code().await, Some(4003));
    assert_eq!(events.close_code().await, Some(4003));
    let first = admitted_app(&server, &id, &phone).await;
    let second = admitted_app(&server, &id, &phone).await;
    assert_at_limit(&mut app_as(&server, &id, &phone).await, 2).await;

    // An override is the user's own; the default holds the admin too.
    let carol = server.user_token("carol").await.0;
    let carols = server.env_as(&carol, "carol-env").await;
    let one = admitted_app(&server, &carols, &carol).await;
    assert_at_limit(&mut app_as(&server, &carols, &carol).await, 1).await;
    let admins = server.env_as(TOKEN, "admin-env").await;
    let a = admitted_app(&server, &admins, TOKEN).await;
    let b = admitted_app(&server, &admins, TOKEN).await;
    let (code, reason) = refusal(&mut app_as(&server, &admins, TOKEN).await).await;
    assert_eq!(code, CLOSE_USER_LIMIT);
    assert!(
        reason.starts_with("admin is at the max_connections quota"),
        "{reason}"
    );
    drop((first, second, one, a, b));
    server.stop();
}

/// Cluster mode: each host counts the connections it holds. An app bridged from the
/// host it reached to the one running its environment holds a place on both; the
/// runtime holds none; closing the app gives both back.
#[tokio::test]
async fn cluster_each_host_counts_the_connections_it_holds_and_a_bridged_app_on_both() {
    use crate::cluster::{Nats, host, until_env};

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let limit = "[tenancy]\nmax_connections = 1\n";
    let a = host(dir.path(), &nats, "a", limit);
    let c = host(dir.path(), &nats, "c", limit);
    // The admin is held to the default too; the runtime on `a` is not counted.
    let (id, url, token) = a.handoff_env("counted").await;
    let _runtime = Ws::connect(&url, Some(&token)).await.expect("runtime on a");
    until_env(&c, &id, "running on a", |e| {
        e["host"] == "a" && e["runtime"]["connected"] == true
    })
    .await;

    // Through `c`, bridged to `a`: `c` holds its place, and `a` the bridged one.
    let bridged = admitted_app(&c, &id, TOKEN).await;
    assert_at_limit(&mut events_as(&c, TOKEN).await, 1).await;
    assert_at_limit(&mut app_as(&c, &id, TOKEN).await, 1).await;
    assert_at_limit(&mut app_as(&a, &id, TOKEN).await, 1).await;
    // Closing it gives both back.
    closed_by_client(bridged).await;
    let here = admitted_app(&a, &id, TOKEN).await;
    // `a`'s own app does not count on `c`: an events stream there is admitted.
    let mut events = events_as(&c, TOKEN).await;
    assert_eq!(events.next_any().await["type"], "snapshot");
    drop((here, events));
    a.stop();
    c.stop();
}
