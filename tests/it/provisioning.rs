//! Provisioning on connect (issue 13): `/ws/app?template=NAME&thread=T` finds or makes
//! the caller's environment for the thread, starts it, and holds what the app sends
//! until the runtime is up; the mapping is per user and survives a host crash; a
//! stopped environment is started again on the same resource.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, Ws, write_config};

const TEMPLATES: &str = "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n\
secret_keys = [\"apiKey\"]\nconfig = { apiKey = \"s3cret-value\", note = \"shown\" }\n\n\
[templates.broken]\nprovider = \"local-process\"\nscope = \"thread\"\nconfig = { command = 7 }\n\n\
[templates.desk]\nprovider = \"local-process\"\nscope = \"workspace\"\nidleStopSecs = 60\n";

fn url(server: &Server, query: &str) -> String {
    server.ws_url(&format!("/ws/app?{query}"))
}

/// Connects to template `chat` on `thread`; returns the socket and its `provisioned`.
async fn provision(server: &Server, token: &str, thread: &str) -> (Ws, Value) {
    let mut ws = Ws::connect(
        &url(server, &format!("template=chat&thread={thread}")),
        Some(token),
    )
    .await
    .expect("provisioned connection");
    let first = ws.next_any().await;
    assert_eq!(first["type"], "provisioned", "{first}");
    (ws, first)
}

/// Sends an echo and waits for its answer, skipping status frames.
async fn echo(ws: &mut Ws, id: &str) {
    let reply = ws
        .request(json!({"type": "echo", "requestId": id, "payload": id}))
        .await;
    assert_eq!(reply["type"], "echoResponse", "{reply}");
    assert_eq!(reply["payload"], id);
}

fn id_of(provisioned: &Value) -> String {
    provisioned["environmentId"]
        .as_str()
        .expect("environmentId")
        .to_owned()
}

#[tokio::test]
async fn a_thread_gets_its_environment_on_first_connect_and_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), TEMPLATES);
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;

    // The templates are listed for any token, without secret values.
    let (status, templates) = server
        .call_with("GET", "/api/v1/templates", None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::OK, "{templates}");
    let shown = templates.to_string();
    assert!(!shown.contains("s3cret-value"), "{shown}");
    let named = |name: &str| {
        let list = templates.as_array().expect("list");
        list.iter()
            .find(|t| t["name"] == name)
            .cloned()
            .expect("listed")
    };
    let chat = named("chat");
    assert_eq!(chat["name"], "chat");
    assert_eq!(chat["scope"], "thread");
    assert_eq!(chat["secretKeys"], json!(["apiKey"]));
    assert_eq!(chat["config"], json!({"note": "shown"}));
    assert_eq!(named("desk")["idleStopSecs"], 60);
    // No template makes environments without end: 100 per user unless it says.
    assert_eq!(chat["maxPerUser"], 100);

    // Refused before the upgrade: an unknown template, a missing thread or workspace.
    let long = format!("template=desk&workspace=w&thread={}", "x".repeat(300));
    for (query, expected) in [
        (long.as_str(), StatusCode::BAD_REQUEST),
        ("template=chat&thread=%07", StatusCode::BAD_REQUEST),
        ("template=nope&thread=t", StatusCode::NOT_FOUND),
        ("template=chat", StatusCode::BAD_REQUEST),
        ("template=desk&thread=t", StatusCode::BAD_REQUEST),
        ("thread=t", StatusCode::BAD_REQUEST),
    ] {
        let refused = Ws::connect(&url(&server, query), Some(&alice)).await.err();
        assert_eq!(refused, Some(expected), "{query}");
    }
    let none = Ws::connect(&url(&server, "template=chat&thread=t"), None)
        .await
        .err();
    assert_eq!(none, Some(StatusCode::UNAUTHORIZED));

    // First connect: created, and an echo sent before the runtime is up is answered.
    let mut first = Ws::connect(&url(&server, "template=chat&thread=t1"), Some(&alice))
        .await
        .expect("first connect");
    first
        .send(json!({"type": "echo", "requestId": "early", "payload": "early"}))
        .await;
    let provisioned = first.next_any().await;
    assert_eq!(provisioned["type"], "provisioned", "{provisioned}");
    assert_eq!(provisioned["created"], true);
    let id = id_of(&provisioned);
    let mut statuses = Vec::new();
    let reply = loop {
        let msg = first.next_any().await;
        if msg["type"] == "environmentStatus" {
            assert_eq!(msg["environmentId"], id.as_str());
            statuses.push(msg["status"].as_str().unwrap_or_default().to_owned());
            continue;
        }
        break msg;
    };
    assert_eq!(reply["type"], "echoResponse", "{reply}");
    assert_eq!(reply["requestId"], "early");
    assert!(statuses.iter().any(|s| s == "starting"), "{statuses:?}");

    // The record carries the key, and the environment is alice's.
    let env = server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    assert_eq!(env["owner"], "alice");
    assert_eq!(
        env["provisionKey"],
        json!({"template": "chat", "scope": "thread", "key": "t1"})
    );
    assert!(!server.records().to_string().contains("s3cret-value"));

    // A second app on the thread shares it; another thread gets another.
    let (mut second, p2) = provision(&server, &alice, "t1").await;
    assert_eq!(
        (id_of(&p2), p2["created"].clone()),
        (id.clone(), json!(false))
    );
    echo(&mut second, "second").await;
    let (mut other, p3) = provision(&server, &alice, "t2").await;
    assert_eq!(p3["created"], true);
    let other_id = id_of(&p3);
    assert_ne!(other_id, id);
    echo(&mut other, "other").await;

    // Another user guessing the thread gets an environment of their own, and does
    // not reach alice's.
    let bob = server.user_token("bob").await.0;
    let (mut bobs, p4) = provision(&server, &bob, "t1").await;
    assert_eq!(p4["created"], true);
    let bob_id = id_of(&p4);
    assert!(bob_id != id && bob_id != other_id);
    echo(&mut bobs, "bob").await;
    let (status, _) = server
        .call_with(
            "GET",
            &format!("/api/v1/environments/{id}"),
            None,
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // After a crash and a restart, the thread maps to the same environment.
    drop((first, second, other, bobs));
    server.kill();
    let server = Server::start(dir.path());
    let (mut again, p5) = provision(&server, &alice, "t1").await;
    assert_eq!(
        (id_of(&p5), p5["created"].clone()),
        (id.clone(), json!(false))
    );
    echo(&mut again, "after-crash").await;
    let (_, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    server.stop();
}

#[tokio::test]
async fn fifty_concurrent_first_connects_make_one_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), TEMPLATES);
    let server = Server::start(dir.path());
    let connects = (0..50).map(|_| provision(&server, TOKEN, "burst"));
    let results = futures_util::future::join_all(connects).await;
    let ids: std::collections::HashSet<String> = results.iter().map(|(_, p)| id_of(p)).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let created = results.iter().filter(|(_, p)| p["created"] == true).count();
    assert_eq!(created, 1);
    let (_, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let mut sockets: Vec<Ws> = results.into_iter().map(|(ws, _)| ws).collect();
    echo(&mut sockets[49], "last").await;
    server.stop();
}

#[tokio::test]
async fn a_connect_starts_a_stopped_environment_on_the_same_workspace_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), TEMPLATES);
    let server = Server::start(dir.path());
    let (mut app, p) = provision(&server, TOKEN, "resume").await;
    let id = id_of(&p);
    echo(&mut app, "before").await;
    let env = server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    let resource = env["resourceId"].clone();
    let name = env["name"].as_str().expect("name").to_owned();
    let workspace = dir.path().join(".codebolt/environments").join(&name);
    std::fs::write(workspace.join("note.txt"), "kept").expect("write note");
    drop(app);

    server.stop_env(&id).await;
    // Stopped on purpose: traffic alone does not start it; the app is told why.
    let mut refused = Ws::connect(&url(&server, "template=chat&thread=resume"), Some(TOKEN))
        .await
        .expect("upgraded, then closed");
    let frame = refused.next_any().await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["error"]["code"], "stopped", "{frame}");
    assert_eq!(refused.close_code().await, Some(4015));
    let env = server
        .wait_env(&id, "stopped", |e| e["status"] == "stopped")
        .await;
    assert_eq!(env["desiredState"], "stopped");
    // Asked to start, it starts on the same resource.
    let mut app = Ws::connect(
        &url(&server, "template=chat&thread=resume&start=true"),
        Some(TOKEN),
    )
    .await
    .expect("provisioned connection");
    let p = app.next_any().await;
    assert_eq!(p["type"], "provisioned", "{p}");
    assert_eq!(
        (id_of(&p), p["created"].clone()),
        (id.clone(), json!(false))
    );
    echo(&mut app, "after").await;
    let (output, code) = app.exec("cat", &["cat", "note.txt"]).await;
    assert_eq!((output.as_str(), code), ("kept", json!(0)));
    let env = server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    assert_eq!(env["resourceId"], resource);
    assert_eq!(env["desiredState"], "running");
    server.stop();
}

#[tokio::test]
async fn a_template_ticket_opens_one_provisioned_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), TEMPLATES);
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let ticket = |body: Value| {
        let (server, alice) = (&server, alice.clone());
        async move {
            server
                .call_with("POST", "/api/v1/tickets", Some(body), Some(&alice))
                .await
        }
    };
    let (status, issued) = ticket(json!({"template": "chat", "thread": "tk"})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(
        (issued["template"].clone(), issued["thread"].clone()),
        (json!("chat"), json!("tk"))
    );
    let secret = issued["ticket"].as_str().expect("ticket").to_owned();
    let at = url(&server, &format!("ticket={secret}"));
    let mut ws = Ws::connect(&at, None).await.expect("ticket connect");
    let first = ws.next_any().await;
    assert_eq!(
        (first["type"].clone(), first["created"].clone()),
        (json!("provisioned"), json!(true))
    );
    echo(&mut ws, "by-ticket").await;
    // The ticket's thread binds the socket's messages, as an environment ticket's does.
    let other = json!({"type": "echo", "requestId": "other", "threadId": "t2", "payload": 1});
    let refused = ws.request(other).await;
    assert_eq!(refused["error"]["code"], "invalid_message", "{refused}");
    let env = server
        .wait_env(&id_of(&first), "alice's", |e| e["owner"] == "alice")
        .await;
    assert_eq!(env["provisionKey"]["key"], "tk");
    // Once only; an unknown template is refused when the ticket is asked for.
    assert_eq!(
        Ws::connect(&at, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let (status, _) = ticket(json!({"template": "nope", "thread": "tk"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = ticket(json!({"template": "chat", "environment": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A ticket for an environment does not open a template connect.
    let (_, by_id) = ticket(json!({"environment": id_of(&first)})).await;
    let secret = by_id["ticket"].as_str().expect("ticket");
    let refused = Ws::connect(&url(&server, &format!("ticket={secret}")), None).await;
    assert_eq!(refused.err(), Some(StatusCode::UNAUTHORIZED));
    server.stop();
}

#[tokio::test]
async fn a_failed_start_closes_the_held_connection_with_4014() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), TEMPLATES);
    let server = Server::start(dir.path());
    let at = url(&server, "template=broken&thread=t");
    let mut ws = Ws::connect(&at, Some(TOKEN)).await.expect("connect");
    let first = ws.next_any().await;
    assert_eq!(first["type"], "provisioned", "{first}");
    // The status saying why comes before the close, every time.
    let (frames, code) = ws.until_close().await;
    assert_eq!(code, Some(4014), "{frames:?}");
    let last = frames.last().expect("a status before the close");
    assert_eq!(last["type"], "environmentStatus", "{frames:?}");
    assert_eq!(last["status"], "error", "{frames:?}");
    assert!(
        last["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{last}"
    );
    let env = server
        .wait_env(&id_of(&first), "in error", |e| e["status"] == "error")
        .await;
    assert!(
        env["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{env}"
    );
    server.stop();
}

#[tokio::test]
async fn a_provisioned_environment_sleeps_when_idle_and_wakes_on_the_next_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[templates.nap]\nprovider = \"local-process\"\nscope = \"thread\"\nidle_stop_secs = 2\n",
    );
    let server = Server::start(dir.path());
    let at = url(&server, "template=nap&thread=t");
    let mut app = Ws::connect(&at, Some(TOKEN)).await.expect("provisioned");
    let p = app.next_any().await;
    let id = id_of(&p);
    echo(&mut app, "awake").await;
    drop(app);
    // No app, no traffic: it goes to sleep, and says why.
    let env = server
        .wait_env(&id, "stopped for idleness", |e| {
            e["status"] == "stopped" && e["stopReason"] == "idle"
        })
        .await;
    assert_eq!(env["idleStopSecs"], 2);
    // The next connect wakes it; no `start=true` needed for a nap.
    let mut app = Ws::connect(&at, Some(TOKEN))
        .await
        .expect("provisioned again");
    let p = app.next_any().await;
    assert_eq!(
        (id_of(&p), p["created"].clone()),
        (id.clone(), json!(false))
    );
    echo(&mut app, "again").await;
    server.stop();
}

#[tokio::test]
async fn a_user_gets_at_most_max_per_user_environments_of_a_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let few =
        "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\nmax_per_user = 2\n";
    write_config(dir.path(), few);
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let bob = server.user_token("bob").await.0;
    let (mut first, _) = provision(&server, &alice, "t1").await;
    let (_second, _) = provision(&server, &alice, "t2").await;
    let third = Ws::connect(&url(&server, "template=chat&thread=t3"), Some(&alice)).await;
    assert_eq!(third.err(), Some(StatusCode::TOO_MANY_REQUESTS));
    // Her own threads still connect, and the cap is hers, not everyone's.
    let (_again, provisioned) = provision(&server, &alice, "t1").await;
    assert_eq!(provisioned["created"], false, "{provisioned}");
    let (_bobs, provisioned) = provision(&server, &bob, "t3").await;
    assert_eq!(provisioned["created"], true, "{provisioned}");
    echo(&mut first, "still-served").await;
    let (_, listed) = server.call("GET", "/api/v1/environments", None).await;
    let count = listed.as_array().map_or(0, Vec::len);
    assert_eq!(count, 3, "{listed}");

    // Forty new threads at once for a user with room for two: two are made.
    let carol = server.user_token("carol").await.0;
    let connects = (0..40).map(|n| {
        let url = url(&server, &format!("template=chat&thread=c{n}"));
        let carol = carol.clone();
        async move { Ws::connect(&url, Some(&carol)).await }
    });
    let results = futures_util::future::join_all(connects).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(StatusCode::TOO_MANY_REQUESTS)))
        .count();
    assert_eq!((admitted, refused), (2, 38));
    let (_, listed) = server.call("GET", "/api/v1/environments", None).await;
    let count = listed.as_array().map_or(0, Vec::len);
    assert_eq!(count, 5, "{listed}");
}

#[tokio::test]
async fn a_user_cannot_patch_what_the_template_set_and_the_admin_can() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), TEMPLATES);
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let (_ws, first) = provision(&server, &alice, "p1").await;
    let id = id_of(&first);
    let path = format!("/api/v1/environments/{id}");
    for body in [
        json!({"config": {"note": "mine"}}),
        json!({"restartPolicy": "always"}),
        json!({"idleStopSecs": 0}),
    ] {
        let (status, answer) = server
            .call_with("PATCH", &path, Some(body.clone()), Some(&alice))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
    }
    let (_, env) = server.call("GET", &path, None).await;
    assert_eq!(env["config"]["note"], "shown", "{env}");
    // An environment the user made is theirs to change; the admin changes either.
    let own = server.env_as(&alice, "alice-own").await;
    let (status, answer) = server
        .call_with(
            "PATCH",
            &format!("/api/v1/environments/{own}"),
            Some(json!({"config": {"note": "mine"}})),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = server
        .call("PATCH", &path, Some(json!({"config": {"note": "ops"}})))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["config"]["note"], "ops", "{answer}");
    server.stop();
}

/// Polls `GET /api/v1/templates` until `pred` holds of the list (a reload of
/// `tether.toml` is applied); at most `WAIT`.
async fn wait_templates(server: &Server, pred: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let (_, templates) = server.call("GET", "/api/v1/templates", None).await;
        if pred(&templates) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "templates not reloaded: {templates}\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A template is the operator's choice of provider, so the environments it makes are
/// not held to the user's `[tenancy] providers`. Once the operator removes the
/// template, or points it at another provider, that choice is gone: the user's start
/// of such an environment is checked against the list like any other. Before, the
/// exemption outlived the template, and a user kept starting a `local-process`
/// environment (a shell on the host) the operator had taken the template away from.
#[tokio::test]
async fn a_template_taken_away_no_longer_starts_its_environments_outside_the_users_providers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limited = "[tenancy]\nproviders = [\"http-sandbox\"]\n";
    let shell = "[templates.shell]\nprovider = \"local-process\"\nscope = \"thread\"\n";
    write_config(dir.path(), &format!("{limited}{shell}"));
    let server = Server::start(dir.path());
    let alice = server.user_token("alice").await.0;
    let mut app = Ws::connect(&url(&server, "template=shell&thread=t1"), Some(&alice))
        .await
        .expect("provisioned connection");
    let first = app.next_any().await;
    assert_eq!(first["type"], "provisioned", "{first}");
    let id = id_of(&first);
    drop(app);
    let call = |action: &'static str| {
        let (server, alice, id) = (&server, alice.clone(), id.clone());
        async move {
            let path = format!("/api/v1/environments/{id}/{action}");
            server.call_with("POST", &path, None, Some(&alice)).await
        }
    };
    // While the template stands, its environment is hers to stop and start.
    for action in ["stop", "start", "stop"] {
        let (status, body) = call(action).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{action}: {body}");
    }

    write_config(dir.path(), limited);
    wait_templates(&server, |t| t.as_array().is_some_and(Vec::is_empty)).await;
    for action in ["start", "restart"] {
        let (status, body) = call(action).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
    let wake = server.ws_url(&format!("/ws/app/{id}?start=true"));
    let refused = Ws::connect(&wake, Some(&alice)).await.err();
    assert_eq!(refused, Some(StatusCode::FORBIDDEN));

    // Back under the same name on another provider: not the choice that made it.
    let moved = shell.replace("local-process", "http-sandbox");
    write_config(dir.path(), &format!("{limited}{moved}"));
    wait_templates(&server, |t| t[0]["provider"] == "http-sandbox").await;
    let (status, body) = call("start").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, env) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(env["desiredState"], "stopped", "{env}");
    // The admin may; a stop is never refused.
    let start = format!("/api/v1/environments/{id}/start");
    assert_eq!(
        server.call("POST", &start, None).await.0,
        StatusCode::ACCEPTED
    );
    let (status, body) = call("stop").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server.stop();
}
