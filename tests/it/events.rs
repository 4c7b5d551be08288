//! `GET /ws/events` against a real server: a snapshot of what the caller may see, then
//! a frame per change — an environment's whole life, someone else's never, hand edits
//! of `environments.json` included — and the same credentials and 4003 as app sockets.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Server, TOKEN, WAIT, Ws};

/// Close code of a socket whose token was revoked or expired.
const CLOSE_REVOKED: u16 = 4003;
/// Close code of a socket silent past the idle timeout.
const CLOSE_UNRESPONSIVE: u16 = 4011;

async fn events(server: &Server, token: &str) -> Result<Ws, StatusCode> {
    Ws::connect(&server.ws_url("/ws/events"), Some(token)).await
}

/// The first frame, which must be the snapshot; the environments in it.
async fn snapshot(ws: &mut Ws) -> Vec<Value> {
    let first = ws.next_any().await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["resync"], false, "{first}");
    first["environments"]
        .as_array()
        .expect("environments")
        .clone()
}

/// Frames until one matches `pred`, which is returned; the ones before are passed over.
async fn until(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut passed = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let frame = ws.next_any().await;
            if pred(&frame) {
                return frame;
            }
            passed.push(frame);
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no frame was {what}; passed over: {passed:?}"))
}

/// The id an environment frame is about.
fn about(frame: &Value) -> &Value {
    match frame["type"].as_str() {
        Some("environmentCreated" | "environmentChanged") => &frame["environment"]["id"],
        _ => &frame["environmentId"],
    }
}

fn env_id(env: &Value) -> String {
    env["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_snapshot_then_an_environment_from_create_to_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (_, before) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "ev-before", "provider": "local-process"})),
        )
        .await;
    let mut ws = events(&server, TOKEN).await.expect("events socket");
    let seen = snapshot(&mut ws).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["id"], before["id"]);
    assert_eq!(seen[0]["status"], "created");
    assert_eq!(seen[0]["owner"], "admin");

    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "ev-life", "provider": "local-process", "start": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = json!(env_id(&env));
    let created = until(&mut ws, "its creation", |f| about(f) == &id).await;
    assert_eq!(created["type"], "environmentCreated", "{created}");
    assert_eq!(created["environment"]["name"], "ev-life");
    assert_eq!(created["environment"]["provider"], "local-process");

    // Every phase of the start, in order, then the runtime connecting.
    let status_of = |want: &'static str| {
        let id = id.clone();
        move |f: &Value| {
            f["type"] == "environmentStatus" && f["environmentId"] == id && f["status"] == want
        }
    };
    let starting = until(&mut ws, "starting", status_of("starting")).await;
    assert_eq!(starting["name"], "ev-life");
    assert_eq!(starting["provider"], "local-process");
    assert_eq!(starting["owner"], "admin");
    assert_eq!(starting["desiredState"], "running");
    let running = until(&mut ws, "running and connected", |f| {
        status_of("running")(f) && f["runtime"]["connected"] == true
    })
    .await;
    assert!(running["lastError"].is_null(), "{running}");

    server.stop_env(id.as_str().expect("id")).await;
    let stopping = until(&mut ws, "stopping", status_of("stopping")).await;
    assert_eq!(stopping["desiredState"], "stopped");
    until(&mut ws, "stopped", status_of("stopped")).await;

    let path = format!("/api/v1/environments/{}", id.as_str().expect("id"));
    let (status, _) = server.call("DELETE", &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deleted = until(&mut ws, "deleted", |f| {
        f["type"] == "environmentDeleted" && f["environmentId"] == id
    })
    .await;
    assert_eq!(deleted["name"], "ev-life");
    assert_eq!(deleted["reason"], "deleted");
}

#[tokio::test]
async fn a_user_sees_only_their_own_environments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, _) = server.user_token("alice").await;
    let (bob, _) = server.user_token("bob").await;
    let bobs_first = server.env_as(&bob, "ev-bob-1").await;
    let alices_first = server.env_as(&alice, "ev-alice-1").await;

    let mut ws = events(&server, &alice).await.expect("events socket");
    let seen = snapshot(&mut ws).await;
    let ids: Vec<&Value> = seen.iter().map(|e| &e["id"]).collect();
    assert_eq!(ids, vec![&json!(alices_first)], "{seen:?}");

    // Bob's changes come before Alice's next one, and she hears only hers.
    let bobs_second = server.env_as(&bob, "ev-bob-2").await;
    let path = format!("/api/v1/environments/{bobs_first}");
    let (status, _) = server.call_with("DELETE", &path, None, Some(&bob)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let alices_second = server.env_as(&alice, "ev-alice-2").await;
    let next = ws.next_any().await;
    assert_eq!(next["type"], "environmentCreated", "{next}");
    assert_eq!(next["environment"]["id"], alices_second.as_str());
    assert_ne!(about(&next), &json!(bobs_second));

    // The admin sees everyone's.
    let mut admin = events(&server, TOKEN).await.expect("admin events socket");
    assert_eq!(snapshot(&mut admin).await.len(), 3);
}

#[tokio::test]
async fn credentials_are_those_of_app_sockets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let url = server.ws_url("/ws/events");
    assert_eq!(
        Ws::connect(&url, Some("wrong-token")).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        Ws::connect(&url, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let (relay_only, _) = server
        .user_token_with("carol", json!({"scopes": ["relay"]}))
        .await;
    assert_eq!(
        Ws::connect(&url, Some(&relay_only)).await.err(),
        Some(StatusCode::FORBIDDEN)
    );

    // An events ticket opens it once, with no token; it opens nothing else.
    let (alice, _) = server.user_token("alice").await;
    let mine = server.env_as(&alice, "ev-ticket").await;
    let ticket = |body: Value| {
        let server = &server;
        let alice = alice.clone();
        async move {
            let (status, issued) = server
                .call_with("POST", "/api/v1/tickets", Some(body), Some(&alice))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{issued}");
            assert_eq!(issued["events"], true);
            issued["ticket"].as_str().expect("ticket").to_owned()
        }
    };
    let secret = ticket(json!({"events": true})).await;
    let mut ws = Ws::connect(&format!("{url}?ticket={secret}"), None)
        .await
        .expect("the ticket works");
    assert_eq!(snapshot(&mut ws).await[0]["id"], mine.as_str());
    assert_eq!(
        Ws::connect(&format!("{url}?ticket={secret}"), None)
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED),
        "a ticket works once"
    );
    let secret = ticket(json!({"events": true})).await;
    let app = server.ws_url(&format!("/ws/app/{mine}?ticket={secret}"));
    assert_eq!(
        Ws::connect(&app, None).await.err(),
        Some(StatusCode::UNAUTHORIZED),
        "an events ticket opens no app socket"
    );
    let (status, body) = server
        .call_with(
            "POST",
            "/api/v1/tickets",
            Some(json!({"events": true, "environment": mine})),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_revoked_token_closes_its_stream_with_4003() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, alice_id) = server.user_token("alice").await;
    let mut ws = events(&server, &alice).await.expect("events socket");
    snapshot(&mut ws).await;
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/tokens/{alice_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ws.close_code().await, Some(CLOSE_REVOKED));
}

/// A frame the stream could not read (over 4 KiB, not UTF-8, breaking the protocol)
/// ended it without a close frame, so a client could not tell it from a network cut
/// and would send the same again; a client's own close went unanswered. Each is
/// closed with its code now, as on app sockets.
#[tokio::test]
async fn a_frame_the_stream_cannot_read_is_closed_with_its_code() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());

    let mut ws = events(&server, TOKEN).await.expect("events socket");
    snapshot(&mut ws).await;
    ws.send_text(&"x".repeat(4097)).await;
    assert_eq!(ws.close_code().await, Some(1009));

    let mut ws = events(&server, TOKEN).await.expect("events socket");
    snapshot(&mut ws).await;
    let not_utf8 = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send_message(Message::Frame(not_utf8)).await;
    assert_eq!(ws.close_code().await, Some(1007));

    let mut ws = events(&server, TOKEN).await.expect("events socket");
    snapshot(&mut ws).await;
    let mut reserved = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    reserved.header_mut().rsv2 = true;
    ws.send_message(Message::Frame(reserved)).await;
    assert_eq!(ws.close_code().await, Some(1002));

    // A client's close is answered with its code, as the relay's sockets do.
    let mut ws = events(&server, TOKEN).await.expect("events socket");
    snapshot(&mut ws).await;
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.send_message(Message::Close(Some(bye))).await;
    assert_eq!(ws.close_code().await, Some(1000));

    // What a client may send (up to the bound) is ignored, and the stream goes on.
    let mut ws = events(&server, TOKEN).await.expect("events socket");
    snapshot(&mut ws).await;
    ws.send_text(&"x".repeat(4096)).await;
    let (_, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "ev-after-noise", "provider": "local-process"})),
        )
        .await;
    let created = until(&mut ws, "the create", |f| f["type"] == "environmentCreated").await;
    assert_eq!(about(&created), &env["id"]);
    server.stop();
}

#[tokio::test]
async fn a_subscriber_that_never_answers_a_ping_is_closed_with_4011() {
    // As app and runtime sockets: a peer gone without a FIN (a dead laptop, a cut
    // network) must not hold its stream forever.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("tether.toml"),
        "[relay]\nping_interval_secs = 1\nidle_timeout_secs = 2\n",
    )
    .expect("tether.toml");
    let server = Server::start(dir.path());
    let (pinged, code) = crate::support::silent_client_close(&server.base, "/ws/events").await;
    assert!(pinged, "the host pinged before giving up");
    assert_eq!(code, CLOSE_UNRESPONSIVE);

    // One that answers its pings (as its client library does while it reads) stays
    // past twice the idle timeout.
    let mut ws = events(&server, TOKEN).await.expect("events socket");
    snapshot(&mut ws).await;
    let reading = async {
        loop {
            match ws.next_message().await {
                Some(Message::Ping(_)) => {}
                other => panic!("a quiet stream sent {other:?}"),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(4), reading).await;
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "ev-alive", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    until(&mut ws, "the creation", |f| {
        f["type"] == "environmentCreated"
    })
    .await;
    server.stop();
}

#[tokio::test]
async fn hand_edits_of_the_records_file_are_streamed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, _) = server.user_token("alice").await;
    let id = server.env_as(&alice, "ev-hand").await;
    let mut admin = events(&server, TOKEN).await.expect("events socket");
    snapshot(&mut admin).await;
    let mut ws = events(&server, &alice).await.expect("events socket");
    snapshot(&mut ws).await;

    // A changed config, as an editor saves it (once the create is in the file: it
    // reaches it through the journal's compaction).
    server.records();
    let path = dir.path().join(".codebolt/environments.json");
    let edit = |change: &dyn Fn(&mut Value)| {
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("records")).expect("JSON");
        let records = doc["environments"].as_array_mut().expect("environments");
        let record = records.iter_mut().find(|r| r["id"] == id.as_str());
        change(record.expect("the record"));
        let tmp = dir.path().join(".codebolt/edit.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("JSON")).expect("write");
        std::fs::rename(tmp, &path).expect("rename");
    };
    edit(&|r| r["config"] = json!({"edited": "by hand"}));
    let changed = until(&mut ws, "changed by hand", |f| {
        f["type"] == "environmentChanged" && f["environment"]["id"] == id.as_str()
    })
    .await;
    assert_eq!(
        changed["environment"]["config"],
        json!({"edited": "by hand"})
    );

    // Moved to Bob by hand: gone, to Alice; changed, to the admin.
    edit(&|r| r["owner"] = json!("bob"));
    let gone = until(&mut ws, "moved away", |f| f["environmentId"] == id.as_str()).await;
    assert_eq!(gone["type"], "environmentDeleted", "{gone}");
    assert_eq!(gone["reason"], "moved");
    let moved = until(&mut admin, "moved", |f| {
        f["type"] == "environmentChanged" && f["environment"]["owner"] == "bob"
    })
    .await;
    assert_eq!(moved["environment"]["id"], id.as_str());

    // Removed by hand: deleted.
    let text = std::fs::read_to_string(&path).expect("records");
    let mut doc: Value = serde_json::from_str(&text).expect("JSON");
    doc["environments"] = json!([]);
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("JSON")).expect("write");
    let deleted = until(&mut admin, "removed", |f| f["type"] == "environmentDeleted").await;
    assert_eq!(deleted["environmentId"], id.as_str());
}
