//! Requests and hand edits shaped to hurt the host at its edges — values legal to one
//! layer and poison to the next — and what the host answers instead.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Server;

/// `levels` arrays nested inside one another.
fn nested(levels: usize) -> Value {
    let mut value = json!([]);
    for _ in 1..levels {
        value = Value::Array(vec![value]);
    }
    value
}

/// A config that parses in a request body but, written into the records file under
/// its document, list and record, is deeper than the host can read back: accepted, it
/// made the whole file unreadable at the next start, every user's environments with it.
#[tokio::test]
async fn a_config_nested_past_the_limit_is_refused_and_the_records_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let body = |name: &str, config: Value| json!({"name": name, "provider": "local-process", "config": config});
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(body("kept", json!({}))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // The config object and 125 arrays: 126 levels, 127 in the body (it parses), 129
    // in the file.
    let (status, answer) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(body("deep", json!({"a": nested(125)}))),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("32 levels"), "{message}");
    // Nor by a patch laid over a config that is within the limit.
    let (status, kept) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    let id = kept[0]["id"].as_str().expect("id").to_owned();
    let (status, _) = server
        .call(
            "PATCH",
            &format!("/api/v1/environments/{id}"),
            Some(json!({"config": {"a": nested(100)}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // At the limit: the config object and 31 arrays.
    let (status, answer) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(body("at-limit", json!({"a": nested(31)}))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    server.stop();

    let server = Server::start(dir.path());
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
    let (_, list) = server.call("GET", "/api/v1/environments", None).await;
    let names: Vec<&str> = (list.as_array().into_iter().flatten())
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["kept", "at-limit"], "{list}");
    server.stop();
}

/// A hand edit may nest a record deeper than a JSON parser reads (serde_json stops at
/// 128 levels). That one record is held back; before, the whole file failed to parse
/// and every other record was gone from the host's state with it.
#[tokio::test]
async fn a_hand_edited_record_nested_too_deep_is_held_back_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("mkdir");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let text = format!(
        r#"{{"version": 1, "environments": [
  {{"id": "deep-1", "name": "deep", "provider": "local-process", "config": {{"a": {deep}}}}},
  {{"id": "kept-1", "name": "kept", "provider": "local-process"}}
]}}"#
    );
    std::fs::write(codebolt.join("environments.json"), text).expect("write");
    let server = Server::start(dir.path());

    let (_, list) = server.call("GET", "/api/v1/environments", None).await;
    let names: Vec<&str> = (list.as_array().into_iter().flatten())
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["kept"], "{list}");
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("deep-1") && reasons.contains("recursion limit"),
        "{health}"
    );
    // Held back by its id: the host will not act on it, and keeps its name taken.
    let (status, _) = server
        .call("DELETE", "/api/v1/environments/deep-1", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "deep", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The host's next write keeps the entry's text as written.
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "later", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let file = codebolt.join("environments.json");
    let mut written = String::new();
    for _ in 0..200 {
        written = std::fs::read_to_string(&file).expect("read");
        if written.contains("\"later\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        written.contains(&deep) && written.contains("\"later\""),
        "{written:.2000}"
    );
    server.stop();
}

/// A runtime's answer goes to the thread its `threadId` names, and one naming no
/// thread is dropped; an app's request with a `threadId` that is not a string was
/// passed on all the same, and its answer never came. It is refused at once now.
#[tokio::test]
async fn an_app_message_whose_thread_id_is_not_a_string_is_refused_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("threads", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let mut app = server.app(id, "t").await;
    for (rid, thread) in [
        ("object", json!({"x": 1})),
        ("number", json!(7)),
        ("list", json!(["t"])),
    ] {
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            app.request(
                json!({"type": "echo", "requestId": rid, "threadId": thread, "payload": 1}),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("no answer to the request with threadId {thread}"));
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_message", "{answer}");
    }
    // A string, or none, still reaches the runtime and is answered.
    for (rid, msg) in [
        (
            "named",
            json!({"type": "echo", "requestId": "named", "threadId": "t", "payload": 2}),
        ),
        (
            "joined",
            json!({"type": "echo", "requestId": "joined", "payload": 3}),
        ),
    ] {
        let answer = app.request(msg).await;
        assert_eq!(answer["type"], "echoResponse", "{rid}: {answer}");
    }
    server.stop();
}

/// A whole number past `u64::MAX`, or one written `1e3`, was refused as "a negative or
/// fractional number": a message that sends the client looking for the wrong mistake.
#[tokio::test]
async fn an_integer_field_out_of_range_is_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    for (number, said) in [
        ("18446744073709551616", "larger than 18446744073709551615"),
        ("1e3", "digits only"),
        ("-5", "a negative number"),
        ("0.5", "a fractional number"),
    ] {
        let body =
            format!(r#"{{"name": "n", "provider": "local-process", "idleStopSecs": {number}}}"#);
        let resp = client
            .post(format!("{}/api/v1/environments", server.base))
            .bearer_auth(crate::support::TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let (status, text) = crate::support::checked("POST", "/api/v1/environments", resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let answer: Value = serde_json::from_str(&text).expect("json");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("idleStopSecs") && message.contains(said),
            "{number}: {message}"
        );
    }
    server.stop();
}

/// `start` was true only when it read `true`; anything else was taken for false, so an
/// app asking `start=1` met its stopped environment closed (4015). Like `follow` and
/// `force`, it is `true` or `false` now, and anything else is a bad query.
#[tokio::test]
async fn an_app_connect_with_a_start_that_is_not_true_or_false_is_a_bad_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("starts", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    for start in ["1", "yes", "TRUE"] {
        let url = server.ws_url(&format!("/ws/app/{id}?thread=t&start={start}"));
        assert_eq!(
            crate::support::Ws::connect(&url, Some(crate::support::TOKEN))
                .await
                .err(),
            Some(StatusCode::BAD_REQUEST),
            "start={start}"
        );
    }
    for start in ["true", "false", ""] {
        let url = server.ws_url(&format!("/ws/app/{id}?thread=t&start={start}"));
        assert!(
            crate::support::Ws::connect(&url, Some(crate::support::TOKEN))
                .await
                .is_ok(),
            "start={start}"
        );
    }
    server.stop();
}

/// A provider's error (or a hand edit) may hold terminal escapes; `tether env get`
/// printed `lastError` as it was, so it could clear the operator's screen or set the
/// terminal's title. The human form escapes control characters; `--json` is the same
/// data with them written as `\u` escapes.
#[tokio::test]
async fn the_cli_prints_server_text_with_control_characters_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("mkdir");
    let hostile = "boom\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m red";
    let doc = json!({"version": 1, "environments": [
        {"id": "e-1", "name": "esc", "provider": "local-process", "lastError": hostile}
    ]});
    std::fs::write(codebolt.join("environments.json"), doc.to_string()).expect("write");
    let server = Server::start(dir.path());
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["env", "get", "e-1"])
            .args(extra)
            .args(["--url", &server.base, "--token", crate::support::TOKEN])
            .env_remove("TETHER_API_TOKEN")
            .env_remove("TETHER_URL")
            .output()
            .expect("tether env get");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let human = run(&[]);
    assert!(
        !human.contains(['\u{1b}', '\u{7}', '\u{9b}']),
        "a raw control character was printed: {human:?}"
    );
    assert!(human.contains(r"boom\u{1b}[2J"), "{human}");
    // JSON keeps the C1 controls (`\u{9b}`, a one-byte CSI) raw: `--json` escapes them.
    let json = run(&["--json"]);
    assert!(
        !json.contains(|c: char| c.is_control() && c != '\n'),
        "a raw control character was printed: {json:?}"
    );
    let data: Value = serde_json::from_str(&json).expect("--json");
    assert_eq!(data["lastError"], hostile);
    server.stop();
}

/// A "server" on loopback that answers every request with endless bytes and no line
/// end: a wrong `--url`, or something in the way.
fn endless_server() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let n = stream.read(&mut request).unwrap_or(0);
                // A log is answered as one (the CLI takes nothing else for a log).
                let log = String::from_utf8_lossy(&request[..n]).contains("/logs");
                let kind = if log {
                    "application/x-ndjson"
                } else {
                    "application/json"
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\nconnection: close\r\n\r\n["
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b'x'; 1 << 16];
                // Until the CLI hangs up (or 2 GiB, so a broken CLI cannot keep it forever).
                for _ in 0..(2usize << 30) / chunk.len() {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// The CLI read a server's answer whole, however large, and a followed log's line
/// however long: a URL that streams without end had it allocate until the 30 s
/// timeout. Both are bounded now, and the CLI says so.
#[tokio::test]
async fn the_cli_stops_reading_an_answer_or_a_line_without_end() {
    let url = endless_server();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("env")
            .args(args)
            .args(["--url", &url, "--token", crate::support::TOKEN])
            .env_remove("TETHER_API_TOKEN")
            .env_remove("TETHER_URL")
            .output()
            .expect("tether env");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["list"]);
    assert!(!ok, "{err}");
    assert!(err.contains("larger than 268435456 bytes"), "{err}");
    let (ok, err) = run(&["logs", "e-1", "--follow"]);
    assert!(!ok, "{err}");
    assert!(err.contains("a line longer than 1048576 bytes"), "{err}");
}

/// A text frame that is not UTF-8, or a frame that breaks the protocol, ended the
/// connection without a close frame: a client saw a network cut, and a resuming one
/// sent the same frame again. The host now closes with 1007 or 1002 and a reason.
#[tokio::test]
async fn a_frame_that_is_not_utf8_or_breaks_the_protocol_is_closed_with_its_code() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("frames", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");

    let mut app = server.app(id, "t").await;
    let not_utf8 = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    app.send_message(Message::Frame(not_utf8)).await;
    assert_eq!(app.close_code().await, Some(1007));

    let mut app = server.app(id, "t").await;
    let mut reserved = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    reserved.header_mut().rsv2 = true;
    app.send_message(Message::Frame(reserved)).await;
    assert_eq!(app.close_code().await, Some(1002));

    // Others are unaffected.
    let mut app = server.app(id, "t").await;
    let answer = app
        .request(json!({"type": "echo", "requestId": "fine", "payload": 1}))
        .await;
    assert_eq!(answer["type"], "echoResponse", "{answer}");
    server.stop();
}

/// The name `derived_name` gives `owner`'s environment of `template` on `thread`
/// (docs/protocol.md, "Provisioning from a template"): public inputs only.
fn derived_name(owner: &str, template: &str, thread: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [owner, template, "thread", thread] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hex::encode(hash.finalize());
    format!("{template}-{}", &digest[..24])
}

/// A provisioned environment's name is derived from public things (the owner, the
/// template, a guessable thread such as `main`), and names are one namespace across
/// users: mallory could create bob's name first, and every connect of bob's through the
/// template was refused 409 from then on. Such names are kept for provisioning.
#[tokio::test]
async fn a_user_cannot_take_the_name_another_users_template_connect_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::write_config(
        dir.path(),
        "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n",
    );
    let server = Server::start(dir.path());
    let mallory = server.user_token("mallory").await.0;
    let bob = server.user_token("bob").await.0;

    let squatted = derived_name("bob", "chat", "main");
    let (status, answer) = server.create_as(&mallory, &squatted, false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("provisioned from a template")),
        "{answer}"
    );
    // Any template's, even one the operator adds later, and the admin's too.
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(
                json!({"name": format!("later-{}", "0a".repeat(12)), "provider": "local-process"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Names that only look alike are fine.
    for name in [
        format!("chat-{}", "A".repeat(24)),
        format!("chat-{}", "a".repeat(23)),
        format!("chat{}", "a".repeat(25)),
    ] {
        let (status, answer) = server.create_as(&mallory, &name, false).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {answer}");
    }

    let url = server.ws_url("/ws/app?template=chat&thread=main");
    let mut app = crate::support::Ws::connect(&url, Some(&bob))
        .await
        .expect("bob's template connect");
    let provisioned = app.next().await;
    assert_eq!(provisioned["type"], "provisioned", "{provisioned}");
    let (_, env) = server
        .call(
            "GET",
            &format!(
                "/api/v1/environments/{}",
                provisioned["environmentId"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(env["name"], squatted.as_str(), "{env}");
    assert_eq!(env["owner"], "bob", "{env}");
    server.stop();
}

/// A provider name is quoted back when it is not loaded; from a create's body (up to
/// 2 MiB) or a path it came back whole, a megabyte of error for a megabyte sent.
#[tokio::test]
async fn an_unknown_provider_is_quoted_cut_in_the_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let long = "p".repeat(100_000);
    let (status, answer) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "n", "provider": long})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.len() < 1024 && message.contains("(cut)"),
        "{} bytes: {message:.300}",
        message.len()
    );
    let (status, answer) = server
        .call(
            "GET",
            &format!("/api/v1/providers/{}", &long[..10_000]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.len() < 1024 && message.contains("(cut)"),
        "{} bytes: {message:.300}",
        message.len()
    );
    // A plain unknown name reads as before.
    let (_, answer) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "n", "provider": "nope"})),
        )
        .await;
    assert_eq!(
        answer["error"]["message"], "no provider named \"nope\" is loaded",
        "{answer}"
    );
    server.stop();
}

/// "No environment with id …" quoted the whole id it was asked about: 20 KB of path
/// came back whole, and a ticket request's `environment` of a megabyte as much.
#[tokio::test]
async fn an_unknown_environment_id_is_quoted_cut_in_the_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let long = "e".repeat(1_000_000);
    let small = |answer: &Value| {
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.len() < 1024 && message.contains("(cut)"),
            "{} bytes: {message:.300}",
            message.len()
        );
    };
    let (status, answer) = server
        .call(
            "GET",
            &format!("/api/v1/environments/{}", &long[..20_000]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    small(&answer);
    let (status, answer) = server
        .call(
            "POST",
            "/api/v1/tickets",
            Some(json!({"environment": long})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    small(&answer);
    let (_, answer) = server.call("GET", "/api/v1/environments/nope", None).await;
    assert_eq!(
        answer["error"]["message"], "no environment with id \"nope\"",
        "{answer}"
    );
    server.stop();
}

/// A query parameter given twice kept its last value (`owner=alice&owner=bob` listed
/// bob's), where a proxy or log in front may go by the first. Refused now, on the
/// API's routes and the WebSocket upgrades alike, naming it; a malformed query is a
/// JSON `invalid_request` too, not a plain-text rejection.
#[tokio::test]
async fn a_query_parameter_given_twice_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("queried", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let client = reqwest::Client::new();
    for path in [
        "/api/v1/environments?owner=alice&owner=admin".to_owned(),
        format!("/api/v1/environments/{id}/logs?tail=1&tail=2"),
        "/api/v1/audit?limit=1&limit=2".to_owned(),
        format!("/ws/app/{id}?thread=a&thread=b"),
        format!("/ws/app/{id}?thread=a&th%72ead=b"),
    ] {
        let resp = client
            .get(format!("{}{path}", server.base))
            .bearer_auth(crate::support::TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let answer: Value = resp.json().await.expect("a JSON error");
        assert_eq!(
            answer["error"]["code"], "invalid_request",
            "{path}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("given twice"), "{path}: {message}");
    }
    let (status, listed) = server
        .call("GET", "/api/v1/environments?owner=admin", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    server.stop();
}

/// `{"name": "a", "name": "b"}` created `b`: the last of two equal keys counted, where
/// a proxy or another parser may take the first. A field given twice is refused.
#[tokio::test]
async fn a_body_field_given_twice_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    for body in [
        r#"{"name": "team-a-1", "provider": "local-process", "name": "team-b-1"}"#,
        r#"{"name": "team-a-2", "provider": "local-process", "na\u006de": "team-b-2"}"#,
    ] {
        let resp = client
            .post(format!("{}/api/v1/environments", server.base))
            .bearer_auth(crate::support::TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let (status, text) = crate::support::checked("POST", "/api/v1/environments", resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains("given twice"), "{text}");
    }
    let (_, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(list, json!([]), "nothing was created");
    // Equal keys inside `config` are the provider's business; the body is fine.
    let resp = client
        .post(format!("{}/api/v1/environments", server.base))
        .bearer_auth(crate::support::TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"name": "ok", "provider": "local-process", "config": {"k": 1, "k": 2}}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::CREATED);
    server.stop();
}

/// A frame the host takes but the reference runtime cannot parse (nested past 128
/// levels) was answered with the whole frame escaped into an error: up to twice the
/// frame, past the host's limit, so the host closed the runtime (1009), the runtime
/// resumed and sent the same reply again, for ever, and nothing else was answered.
#[tokio::test]
async fn an_unparsable_frame_does_not_stop_the_reference_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut app) = app_of_a_runtime(dir.path(), 64).await;
    // 40 KB of `\"` (each escaped again in an error), then 200 levels of nesting.
    let poison = format!(
        r#"{{"type": "echo", "requestId": "poison", "payload": ["{}", {}{}]}}"#,
        r#"\""#.repeat(20_000),
        "[".repeat(200),
        "]".repeat(200)
    );
    app.send_text(&poison).await;
    let answer = app.next().await;
    assert_eq!(answer["type"], "error", "{answer:.300}");
    assert!(
        answer.to_string().len() < 1024,
        "{} bytes",
        answer.to_string().len()
    );
    still_answers(&mut app).await;
    server.stop();
}

/// A server whose relay takes frames of up to `max_message_kib`, running one
/// environment of the reference runtime, and an app of no thread connected to it
/// (its frames go to the runtime as they are).
async fn app_of_a_runtime(
    dir: &std::path::Path,
    max_message_kib: u32,
) -> (Server, crate::support::Ws) {
    let config = format!("[relay]\nmax_message_kib = {max_message_kib}\n");
    crate::support::write_config(dir, &config);
    let server = Server::start(dir);
    let env = server
        .running_env("runtime", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let url = server.ws_url(&format!("/ws/app/{id}"));
    let app = crate::support::Ws::connect(&url, Some(crate::support::TOKEN))
        .await
        .expect("app");
    (server, app)
}

/// The runtime answers a plain echo: it is not stuck on an earlier frame.
async fn still_answers(app: &mut crate::support::Ws) {
    let after = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.request(json!({"type": "echo", "requestId": "after", "payload": 1})),
    )
    .await
    .expect("the runtime answers after the frame before");
    assert_eq!(after["type"], "echoResponse", "{after}");
}

/// A reply that grows past the host's limit on its way back (an echo of numbers
/// written short, `1e9`, comes back as `1000000000.0`): the host closed the runtime
/// with 1009 and, the session resumed, the runtime sent the same reply again, for
/// ever. Now the host says its limit in `relayResumed` and the runtime answers with
/// an error in place of what does not fit.
#[tokio::test]
async fn a_reply_larger_than_the_host_takes_is_answered_with_an_error_not_a_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut app) = app_of_a_runtime(dir.path(), 1).await;
    let request = format!(
        r#"{{"type": "echo", "requestId": "grows", "payload": [{}]}}"#,
        vec!["1e9"; 200].join(",")
    );
    assert!(request.len() < 1024, "the request itself fits");
    app.send_text(&request).await;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), app.next())
        .await
        .expect("the request is answered");
    assert_eq!(answer["type"], "error", "{answer:.300}");
    assert_eq!(answer["requestId"], "grows", "{answer:.300}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("at most 1024"), "{error}");
    still_answers(&mut app).await;
    server.stop();
}
