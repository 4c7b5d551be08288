//! The REST and WebSocket edges under bad input and wrong credentials: clear errors
//! in the contract's shape, and every good record left intact.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Server, TOKEN, Ws};

#[tokio::test]
async fn rest_and_app_sockets_need_the_api_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, body) = server
            .call_with("GET", "/api/v1/environments", None, token)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = server
            .call_with(
                "POST",
                "/api/v1/environments",
                Some(json!({"name": "x", "provider": "local-process"})),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (_, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "guarded", "provider": "local-process"})),
        )
        .await;
    let id = env["id"].as_str().expect("id");
    let url = server.ws_url(&format!("/ws/app/{id}?thread=t"));
    assert_eq!(
        Ws::connect(&url, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        Ws::connect(&url, Some("wrong-token-wrong-token"))
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert!(Ws::connect(&url, Some(TOKEN)).await.is_ok());
    // Liveness needs no token.
    let (status, body) = server.call_with("GET", "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    server.stop();
}

#[tokio::test]
async fn runtime_sockets_need_the_current_runtime_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("tokens", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let url = server.ws_url(&format!("/ws/runtime/{id}"));
    // Neither no token, nor the API token, nor a forged one of the right shape.
    assert_eq!(
        Ws::connect(&url, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        Ws::connect(&url, Some(TOKEN)).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let forged = format!("1.{}", "0".repeat(64));
    assert_eq!(
        Ws::connect(&url, Some(&forged)).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // An unknown environment is answered like a wrong token: the route tells no one
    // which ids exist.
    let other = server.ws_url("/ws/runtime/no-such-env");
    assert_eq!(
        Ws::connect(&other, Some(&forged)).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // The refused attempts did not disturb the real runtime.
    let env = server
        .wait_env(id, "still connected", |e| e["runtime"]["connected"] == true)
        .await;
    assert_eq!(env["status"], "running");
    server.stop();
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, good) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "keeper", "provider": "local-process", "config": {"a": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = server.records();

    let cases = [
        (
            json!({"name": "dup"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "keeper", "provider": "local-process"}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            json!({"name": "../escape", "provider": "local-process"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "nope", "provider": "no-such-provider"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "x", "provider": "local-process", "config": "not-an-object"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "x", "provider": "local-process", "surprise": true}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, want, code) in cases {
        let (status, err) = server
            .call("POST", "/api/v1/environments", Some(body.clone()))
            .await;
        assert_eq!(status, want, "{body} -> {err}");
        assert_eq!(err["error"]["code"], code, "{body} -> {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Malformed JSON text.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/environments", server.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: serde_json::Value = resp.json().await.expect("json error");
    assert_eq!(err["error"]["code"], "invalid_json");

    for (method, path) in [
        ("GET", "/api/v1/environments/missing"),
        ("DELETE", "/api/v1/environments/missing"),
        ("POST", "/api/v1/environments/missing/start"),
        ("GET", "/api/v1/providers/missing"),
        ("GET", "/api/v1/nothing-here"),
    ] {
        let (status, err) = server.call(method, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(err["error"]["code"], "not_found");
    }
    assert_eq!(server.records(), before, "bad requests changed the records");

    // PATCH merges config; the record keeps everything else.
    let id = good["id"].as_str().expect("id");
    let (status, patched) = server
        .call(
            "PATCH",
            &format!("/api/v1/environments/{id}"),
            Some(json!({"config": {"b": 2, "a": null}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["config"], json!({"b": 2}));
    assert_eq!(patched["name"], "keeper");
    server.stop();
}

#[tokio::test]
async fn app_messages_that_are_not_json_objects_get_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("strict", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let mut app = server.app(id, "t").await;
    app.send_text("{not json").await;
    let err = app.next().await;
    assert_eq!(
        (err["type"].clone(), err["error"]["code"].clone()),
        (json!("error"), json!("invalid_message"))
    );
    app.send(json!([1, 2])).await;
    assert_eq!(app.next().await["error"]["code"], "invalid_message");
    app.send(json!({"requestId": "q"})).await;
    let err = app.next().await;
    assert_eq!(
        (err["requestId"].clone(), err["error"]["code"].clone()),
        (json!("q"), json!("invalid_message"))
    );
    let missing = app
        .request(json!({"type": "providerWriteFile", "requestId": "w"}))
        .await;
    assert_eq!(missing["error"]["code"], "invalid_input");
    // The connection still works.
    let echo = app
        .request(json!({"type": "echo", "requestId": "ok", "payload": 1}))
        .await;
    assert_eq!(echo["type"], "echoResponse");
    server.stop();
}

#[tokio::test]
async fn providers_show_what_they_ask_and_are_granted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, p) = server
        .call("GET", "/api/v1/providers/local-process", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["name"], "local-process");
    assert_eq!(p["source"]["kind"], "builtIn");
    assert_eq!(
        p["granted"]["commands"],
        json!([{"program": "tether", "args": ["runtime"]}])
    );
    assert!(p["commands"].as_array().is_some_and(|c| !c.is_empty()));
    assert_eq!(p["sha256"].as_str().map(str::len), Some(64));
    let (_, list) = server.call("GET", "/api/v1/providers", None).await;
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|p| p["name"] == "local-process"))
    );
    let resp = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics");
    let (_, text) = crate::support::checked("GET", "/metrics", resp).await;
    let loaded = list.as_array().map_or(0, Vec::len);
    assert!(
        text.contains(&format!("tether_providers_loaded {loaded}")),
        "{text}"
    );
    server.stop();
}

/// Sends `body` as raw text with `content_type`; returns status and JSON answer.
async fn send_raw(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, serde_json::Value) {
    let resp = reqwest::Client::new()
        .request(method.clone(), format!("{}{path}", server.base))
        .bearer_auth(TOKEN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let (status, text) = crate::support::checked(method.as_str(), path, resp).await;
    (status, serde_json::from_str(&text).unwrap_or_default())
}

#[tokio::test]
async fn bodies_must_be_json_objects_read_by_field_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, good) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "keeper", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = good["id"].as_str().expect("id").to_owned();
    let one = format!("/api/v1/environments/{id}");
    let before = server.records();

    // Never matched by position, and no Rust type names in the message.
    let not_objects = [
        json!(["positional", "local-process"]),
        json!([{"a": 2}, "always"]),
        json!("keeper"),
        json!(42),
        json!(null),
        json!(true),
    ];
    for (method, path) in [("POST", "/api/v1/environments"), ("PATCH", one.as_str())] {
        for body in &not_objects {
            let (status, err) = server.call(method, path, Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {body} -> {err}");
            assert_eq!(err["error"]["code"], "invalid_request", "{err}");
            let message = err["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("the request body must be a JSON object with fields"),
                "{message}"
            );
            for internal in ["struct", "CreateBody", "PatchBody", "Map<", "::"] {
                assert!(!message.contains(internal), "{message}");
            }
        }
    }

    // A wrong type for each field names the field.
    let create_cases = [
        (
            json!({"name": 1, "provider": "local-process"}),
            "field `name` must be a string",
        ),
        (
            json!({"name": "n", "provider": ["x"]}),
            "field `provider` must be a string",
        ),
        (
            json!({"name": "n", "provider": "local-process", "config": [1]}),
            "field `config` must be an object",
        ),
        (
            json!({"name": "n", "provider": "local-process", "start": "yes"}),
            "field `start` must be true or false",
        ),
        (
            json!({"name": "n", "provider": "local-process", "restartPolicy": 3}),
            "field `restartPolicy` must be one of",
        ),
        (
            json!({"name": "n", "provider": "local-process", "restartPolicy": "sometimes"}),
            "field `restartPolicy` must be one of",
        ),
        (
            json!({"provider": "local-process"}),
            "field `name` is required",
        ),
        (
            json!({"name": "n", "provider": "local-process", "nmae": "x"}),
            "unknown field \"nmae\"",
        ),
    ];
    for (body, needle) in create_cases {
        let (status, err) = server
            .call("POST", "/api/v1/environments", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {err}");
        assert_eq!(err["error"]["code"], "invalid_request");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let patch_cases = [
        (json!({"config": "x"}), "field `config` must be an object"),
        (
            json!({"restartPolicy": true}),
            "field `restartPolicy` must be one of",
        ),
        (json!({"name": "renamed"}), "unknown field \"name\""),
    ];
    for (body, needle) in patch_cases {
        let (status, err) = server.call("PATCH", &one, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }

    // Over the limit (2 MiB): 413 with its own code. Just over it, so the host has read
    // the whole body when it answers: with much more, it closes while the client still
    // writes, and the client sees a broken pipe instead of the answer.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024 + 1024));
    let (status, err) = send_raw(
        &server,
        reqwest::Method::POST,
        "/api/v1/environments",
        "application/json",
        big,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(err["error"]["code"], "body_too_large");
    // Not sent as JSON: 415 with its own code.
    let (status, err) = send_raw(
        &server,
        reqwest::Method::POST,
        "/api/v1/environments",
        "text/plain",
        r#"{"name": "plain", "provider": "local-process"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
    assert_eq!(err["error"]["code"], "unsupported_media_type");
    // A config over its limit is refused like a hand-edited one would be held.
    let huge = json!({"name": "huge", "provider": "local-process",
        "config": {"blob": "y".repeat(300 * 1024)}});
    let (status, err) = server
        .call("POST", "/api/v1/environments", Some(huge))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("config"))
    );
    assert_eq!(server.records(), before, "bad bodies changed the records");

    // Good requests still work, with a parameterised JSON content type.
    let (status, made) = send_raw(
        &server,
        reqwest::Method::POST,
        "/api/v1/environments",
        "application/json; charset=utf-8",
        r#"{"name": "fine", "provider": "local-process", "config": {"k": 1}, "start": false, "restartPolicy": "always"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["restartPolicy"], "always");
    let (status, patched) = server
        .call(
            "PATCH",
            &one,
            Some(json!({"config": {"k": 2}, "restartPolicy": "never"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["config"], json!({"k": 2}));
    assert_eq!(patched["restartPolicy"], "never");
    server.stop();
}
