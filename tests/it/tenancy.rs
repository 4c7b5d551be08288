//! Hosted multi-user (issue 12, items 1, 2, 3 and 8): user tokens with scopes,
//! environment limits and expiry; owners, with someone else's environment answering
//! exactly like a missing one; revocation closing live app sockets; the admin
//! token's rotation; `tether token` against a running server; no secret in the log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, WAIT, Ws};

/// Close code of an app whose token was revoked or expired, or whose environment
/// moved to another owner.
const CLOSE_REVOKED: u16 = 4003;

/// Makes a token as the admin; returns its secret and id.
async fn token_for(server: &Server, admin: &str, body: Value) -> (String, String) {
    let (status, issued) = server
        .call_with("POST", "/api/v1/tokens", Some(body), Some(admin))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let secret = issued["token"].as_str().expect("token").to_owned();
    assert!(
        secret.starts_with("tth_") && secret.len() >= 4 + 32,
        "{secret}"
    );
    (secret, issued["id"].as_str().expect("id").to_owned())
}

/// Creates a stopped environment as `token`'s user; returns its id.
async fn create_env(server: &Server, token: &str, name: &str) -> String {
    let (status, env) = server
        .call_with(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": name, "provider": "local-process"})),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    env["id"].as_str().expect("id").to_owned()
}

fn names(list: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = (list.as_array().expect("a list").iter())
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    names.sort();
    names
}

async fn app(server: &Server, id: &str, token: &str) -> Result<Ws, StatusCode> {
    Ws::connect(
        &server.ws_url(&format!("/ws/app/{id}?thread=t")),
        Some(token),
    )
    .await
}

/// Reads until the server closes `ws`, returning the close code and how long it took.
async fn closed(ws: &mut Ws) -> (Option<u16>, Duration) {
    let start = Instant::now();
    let code = ws.close_code().await;
    (code, start.elapsed())
}

fn assert_no_secret_logged(server: &Server, secrets: &[&str]) {
    let log = server.log();
    assert!(!log.is_empty());
    for secret in secrets {
        assert!(!log.contains(secret), "a secret is in the server log");
    }
}

#[tokio::test]
async fn two_users_each_see_and_touch_only_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, _) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let (bob, _) = token_for(
        &server,
        TOKEN,
        json!({"user": "bob", "note": "bob's laptop"}),
    )
    .await;
    let mine = create_env(&server, &alice, "alice-env").await;
    let theirs = create_env(&server, &bob, "bob-env").await;
    let admins = create_env(&server, TOKEN, "admin-env").await;

    for (token, name) in [(&alice, "alice-env"), (&bob, "bob-env")] {
        let (status, list) = server
            .call_with("GET", "/api/v1/environments", None, Some(token))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(names(&list), vec![name]);
    }
    let (_, all) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(names(&all), vec!["admin-env", "alice-env", "bob-env"]);
    let (_, only) = server
        .call("GET", "/api/v1/environments?owner=alice", None)
        .await;
    assert_eq!(names(&only), vec!["alice-env"]);
    assert_eq!(only[0]["owner"], "alice");
    let (_, own) = server
        .call("GET", &format!("/api/v1/environments/{admins}"), None)
        .await;
    assert_eq!(own["owner"], "admin");
    // Bob filtering for Alice's learns nothing.
    let (_, none) = server
        .call_with("GET", "/api/v1/environments?owner=alice", None, Some(&bob))
        .await;
    assert_eq!(none, json!([]));

    // Everything Bob does to Alice's environment (or the admin's) answers as for
    // one that does not exist.
    let missing = "6f1c7a2e-0000-4000-8000-00000000dead";
    let answer = |id: &str, body: &Value| body.to_string().replace(id, "ID");
    for (method, suffix, body) in [
        ("GET", "", None),
        ("PATCH", "", Some(json!({"config": {"a": 1}}))),
        ("POST", "/start", None),
        ("POST", "/stop", None),
        ("POST", "/restart", None),
        ("GET", "/logs", None),
        ("DELETE", "", None),
    ] {
        let (status, gone) = server
            .call_with(
                method,
                &format!("/api/v1/environments/{missing}{suffix}"),
                body.clone(),
                Some(&bob),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {suffix}: {gone}");
        for id in [&mine, &admins] {
            let (status, other) = server
                .call_with(
                    method,
                    &format!("/api/v1/environments/{id}{suffix}"),
                    body.clone(),
                    Some(&bob),
                )
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {suffix}");
            assert_eq!(
                answer(id, &other),
                answer(missing, &gone),
                "{method} {suffix}"
            );
        }
    }
    // A ticket for it too.
    let ticket = |id: &str| json!({"environment": id, "thread": "t"});
    let (status, gone) = server
        .call_with("POST", "/api/v1/tickets", Some(ticket(missing)), Some(&bob))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    let (status, other) = server
        .call_with("POST", "/api/v1/tickets", Some(ticket(&mine)), Some(&bob))
        .await;
    assert_eq!(
        (status, answer(&mine, &other)),
        (StatusCode::NOT_FOUND, answer(missing, &gone))
    );
    assert_eq!(
        app(&server, &mine, &bob).await.err(),
        Some(StatusCode::NOT_FOUND)
    );
    assert_eq!(
        app(&server, missing, &bob).await.err(),
        Some(StatusCode::NOT_FOUND)
    );
    assert!(app(&server, &theirs, &bob).await.is_ok());
    assert!(app(&server, &mine, &alice).await.is_ok());
    // The admin reaches everyone's.
    assert!(app(&server, &mine, TOKEN).await.is_ok());

    // Alice's own environment is hers to patch, start and delete.
    let (status, patched) = server
        .call_with(
            "PATCH",
            &format!("/api/v1/environments/{mine}"),
            Some(json!({"config": {"a": 1}})),
            Some(&alice),
        )
        .await;
    assert_eq!(
        (status, patched["config"]["a"].clone()),
        (StatusCode::OK, json!(1))
    );
    let (status, _) = server
        .call_with(
            "POST",
            &format!("/api/v1/environments/{mine}/start"),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/environments/{mine}"),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Bob is still there, untouched.
    let (status, _) = server
        .call_with(
            "GET",
            &format!("/api/v1/environments/{theirs}"),
            None,
            Some(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Only an admin makes an environment for someone else.
    let (status, err) = server
        .call_with(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "for-bob", "provider": "local-process", "owner": "bob"})),
            Some(&alice),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("missing_scope"))
    );
    let (status, made) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "for-bob", "provider": "local-process", "owner": "bob"})),
        )
        .await;
    assert_eq!(
        (status, made["owner"].clone()),
        (StatusCode::CREATED, json!("bob"))
    );
    assert_no_secret_logged(&server, &[&alice, &bob]);
    server.stop();
}

#[tokio::test]
async fn scopes_narrow_what_a_token_may_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (read, _) = token_for(
        &server,
        TOKEN,
        json!({"user": "alice", "scopes": ["envs:read"]}),
    )
    .await;
    let (full, _) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let id = create_env(&server, &full, "dev").await;

    let (status, list) = server
        .call_with("GET", "/api/v1/environments", None, Some(&read))
        .await;
    assert_eq!((status, names(&list)), (StatusCode::OK, vec!["dev"]));
    let (status, err) = server
        .call_with(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "more", "provider": "local-process"})),
            Some(&read),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "missing_scope");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("envs:write"),
        "{err}"
    );
    let (status, err) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/environments/{id}"),
            None,
            Some(&read),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("envs:delete"),
        "{err}"
    );
    assert_eq!(
        app(&server, &id, &read).await.err(),
        Some(StatusCode::FORBIDDEN)
    );
    // Tokens, providers' grants: the admin's.
    for (method, path, body) in [
        ("POST", "/api/v1/tokens", Some(json!({"user": "alice"}))),
        ("GET", "/api/v1/providers", None),
        ("POST", "/api/v1/tokens/admin/rotate", None),
    ] {
        let (status, err) = server.call_with(method, path, body, Some(&full)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`admin`"),
            "{err}"
        );
    }
    // Who am I.
    let (_, me) = server
        .call_with("GET", "/api/v1/whoami", None, Some(&read))
        .await;
    assert_eq!(
        (me["user"].clone(), me["scopes"].clone()),
        (json!("alice"), json!(["envs:read"]))
    );

    // What a token request may say.
    for (body, needle) in [
        (
            json!({"user": "alice", "scopes": ["envs:read", "envs:root"]}),
            "unknown scope \"envs:root\"",
        ),
        (json!({"user": "alice", "scopes": []}), "at least one scope"),
        (json!({"user": "../alice"}), "invalid user name"),
        (
            json!({"user": "alice", "expiresInSecs": 0}),
            "expiresInSecs",
        ),
        (
            json!({"user": "alice", "expiresInSecs": -5}),
            "expiresInSecs",
        ),
        (json!({"user": "alice", "note": "n".repeat(300)}), "note"),
        (
            json!({"user": "alice", "environments": ["nope"]}),
            "is not an environment of user",
        ),
        (json!({"user": "alice", "secret": "x"}), "unknown field"),
    ] {
        let (status, err) = server
            .call("POST", "/api/v1/tokens", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{needle}: {err}"
        );
    }
    assert_no_secret_logged(&server, &[&read, &full]);
    server.stop();
}

#[tokio::test]
async fn an_environment_limited_token_reaches_only_its_environments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, _) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let (bob, _) = token_for(&server, TOKEN, json!({"user": "bob"})).await;
    let one = create_env(&server, &alice, "one").await;
    let two = create_env(&server, &alice, "two").await;
    let bobs = create_env(&server, &bob, "bobs").await;
    // Only the user's own environments can be named.
    let (status, err) = server
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"user": "alice", "environments": [one, bobs]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (limited, _) = token_for(
        &server,
        TOKEN,
        json!({"user": "alice", "environments": [one]}),
    )
    .await;

    let (_, list) = server
        .call_with("GET", "/api/v1/environments", None, Some(&limited))
        .await;
    assert_eq!(names(&list), vec!["one"]);
    let (status, _) = server
        .call_with(
            "GET",
            &format!("/api/v1/environments/{one}"),
            None,
            Some(&limited),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .call_with(
            "GET",
            &format!("/api/v1/environments/{two}"),
            None,
            Some(&limited),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/environments/{two}"),
            None,
            Some(&limited),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, err) = server
        .call_with(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "three", "provider": "local-process"})),
            Some(&limited),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("forbidden"))
    );
    assert!(app(&server, &one, &limited).await.is_ok());
    assert_eq!(
        app(&server, &two, &limited).await.err(),
        Some(StatusCode::NOT_FOUND)
    );
    assert_no_secret_logged(&server, &[&alice, &bob, &limited]);
    server.stop();
}

#[tokio::test]
async fn revoking_a_token_closes_its_app_sockets_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, alice_id) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let (other, _) = token_for(&server, TOKEN, json!({"user": "alice", "note": "phone"})).await;
    let (bob, bob_id) = token_for(&server, TOKEN, json!({"user": "bob"})).await;
    let id = create_env(&server, &alice, "dev").await;
    let mut ws = app(&server, &id, &alice).await.expect("app connection");
    let survivor = app(&server, &id, &other).await.expect("app connection");
    ws.next_any().await;

    // Listing shows the user's own tokens, never a secret.
    let (status, mine) = server
        .call_with("GET", "/api/v1/tokens", None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine.as_array().unwrap().len(), 2, "{mine}");
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|t| t["user"] == "alice" && t.get("token").is_none())
    );
    let (_, all) = server.call("GET", "/api/v1/tokens", None).await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert!(!all.to_string().contains(&alice) && !all.to_string().contains("sha256"));
    // Nor can Alice revoke Bob's.
    let (status, _) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/tokens/{bob_id}"),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, revoked) = server
        .call("DELETE", &format!("/api/v1/tokens/{alice_id}"), None)
        .await;
    assert_eq!(
        (status, revoked["id"].clone()),
        (StatusCode::OK, json!(alice_id))
    );
    let (code, took) = closed(&mut ws).await;
    assert_eq!(code, Some(CLOSE_REVOKED));
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    let (status, err) = server
        .call_with("GET", "/api/v1/environments", None, Some(&alice))
        .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    assert_eq!(
        app(&server, &id, &alice).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/tokens/{alice_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Her other token is untouched.
    drop(survivor);
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(&other))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Revocation is durable.
    server.stop();
    let server = Server::start(dir.path());
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(&bob))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_no_secret_logged(&server, &[&alice, &other, &bob]);
    server.stop();
}

#[tokio::test]
async fn an_expired_token_is_refused_and_its_sockets_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (brief, _) = token_for(&server, TOKEN, json!({"user": "alice", "expiresInSecs": 1})).await;
    let id = create_env(&server, &brief, "dev").await;
    let mut ws = app(&server, &id, &brief).await.expect("app connection");
    let (_, listed) = server.call("GET", "/api/v1/tokens?user=alice", None).await;
    assert!(
        listed[0]["expiresAt"].is_string() && listed[0]["expired"] == false,
        "{listed}"
    );
    let (code, _) = closed(&mut ws).await;
    assert_eq!(code, Some(CLOSE_REVOKED));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, err) = server
        .call_with("GET", "/api/v1/environments", None, Some(&brief))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{err}"
    );
    let (_, listed) = server.call("GET", "/api/v1/tokens?user=alice", None).await;
    assert_eq!(listed[0]["expired"], true);
    assert_no_secret_logged(&server, &[&brief]);
    server.stop();
}

/// Reads `follow` to its end (within `WAIT`); what came, or `None` if it stayed open.
async fn follow_end(follow: &mut reqwest::Response) -> Option<String> {
    let mut seen = String::new();
    let read = async {
        while let Ok(Some(chunk)) = follow.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(WAIT, read).await.ok()?;
    Some(seen)
}

#[tokio::test]
async fn a_followed_log_ends_when_its_token_is_revoked_or_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, alice_id) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let (brief, _) = token_for(&server, TOKEN, json!({"user": "alice", "expiresInSecs": 2})).await;
    let id = create_env(&server, &alice, "dev").await;
    let mut revoked = server.follow_logs(&id, &alice).await;
    let mut expiring = server.follow_logs(&id, &brief).await;
    let (phone, phone_id) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let mut others = server.follow_logs(&id, &phone).await;

    let (status, _) = server
        .call("DELETE", &format!("/api/v1/tokens/{alice_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let said = follow_end(&mut revoked)
        .await
        .expect("the follow of a revoked token stayed open");
    assert!(said.contains("the token was revoked"), "{said}");
    let said = follow_end(&mut expiring)
        .await
        .expect("the follow of an expired token stayed open");
    assert!(said.contains("the token expired"), "{said}");
    // The follow of another token goes on, until that one is revoked too.
    let still = tokio::time::timeout(Duration::from_millis(300), others.chunk()).await;
    assert!(still.is_err(), "another token's follow ended: {still:?}");
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/tokens/{phone_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(follow_end(&mut others).await.is_some());
    server.stop();
}

fn edit_records(data_dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = data_dir.join(".codebolt/environments.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut doc);
    let tmp = path.with_extension("json.edit");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

async fn wait_status(server: &Server, path: &str, token: &str, want: StatusCode) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = server.call_with("GET", path, None, Some(token)).await;
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hand_edit_of_owner_moves_an_environment_between_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, _) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let (bob, _) = token_for(&server, TOKEN, json!({"user": "bob"})).await;
    let id = create_env(&server, &alice, "moving").await;
    assert_eq!(server.records()["environments"][0]["owner"], "alice");
    let mut ws = app(&server, &id, &alice).await.expect("app connection");
    let path = format!("/api/v1/environments/{id}");

    edit_records(dir.path(), |doc| {
        doc["environments"][0]["owner"] = json!("bob")
    });
    wait_status(&server, &path, &bob, StatusCode::OK).await;
    let (status, _) = server.call_with("GET", &path, None, Some(&alice)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(closed(&mut ws).await.0, Some(CLOSE_REVOKED));

    // Without an owner it is the admin's; a bad owner is held back like any bad field.
    edit_records(dir.path(), |doc| {
        doc["environments"][0]
            .as_object_mut()
            .unwrap()
            .remove("owner");
    });
    wait_status(&server, &path, &bob, StatusCode::NOT_FOUND).await;
    let (_, env) = server.call("GET", &path, None).await;
    assert_eq!(env["owner"], "admin");
    edit_records(dir.path(), |doc| {
        doc["environments"][0]["owner"] = json!("../bob")
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, health) = server.call("GET", "/healthz", None).await;
        if health.to_string().contains("owner") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bad owner was never reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last good owner stays in force.
    let (status, _) = server.call_with("GET", &path, None, Some(&bob)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.call("GET", &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_secret_logged(&server, &[&alice, &bob]);
    server.stop();
}

/// A follow of an environment's log was admitted as its owner's: when a hand edit moves
/// the environment to another user, the old owner reads no more of it (as its apps are
/// closed), and the new owner may follow it.
#[tokio::test]
async fn a_followed_log_ends_when_its_environment_moves_to_another_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, _) = token_for(&server, TOKEN, json!({"user": "alice"})).await;
    let (bob, _) = token_for(&server, TOKEN, json!({"user": "bob"})).await;
    let id = create_env(&server, &alice, "handed-over").await;
    let mut follow = server.follow_logs(&id, &alice).await;

    assert_eq!(server.records()["environments"][0]["owner"], "alice");
    edit_records(dir.path(), |doc| {
        doc["environments"][0]["owner"] = json!("bob")
    });
    let path = format!("/api/v1/environments/{id}");
    wait_status(&server, &path, &bob, StatusCode::OK).await;
    let said = follow_end(&mut follow)
        .await
        .expect("the old owner's follow stayed open after the environment moved");
    assert!(said.contains("moved to another owner"), "{said}");
    let (status, _) = server
        .call_with("GET", &format!("{path}/logs"), None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut theirs = server.follow_logs(&id, &bob).await;
    let still = tokio::time::timeout(Duration::from_millis(300), theirs.chunk()).await;
    assert!(still.is_err(), "the new owner's follow ended: {still:?}");
    server.stop();
}

fn tether_token(args: &[&str], data_dir: &Path) -> Result<Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .output()
        .expect("running tether token");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("JSON out"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_token_cli_and_admin_rotation_work_against_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_as(dir.path(), None);
    let admin_file = dir.path().join(".codebolt/api-token");
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_owned();
    let url = server.base.clone();

    // The admin token from the data directory.
    let made = tether_token(
        &[
            "create",
            "--url",
            &url,
            "--user",
            "carol",
            "--scope",
            "envs:read",
            "--scope",
            "relay",
            "--note",
            "cli",
        ],
        dir.path(),
    )
    .expect("token create");
    let secret = made["token"].as_str().unwrap().to_owned();
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(made["scopes"], json!(["envs:read", "relay"]));
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(&secret))
        .await;
    assert_eq!(status, StatusCode::OK);
    let listed = tether_token(&["list", "--url", &url, "--user", "carol"], dir.path()).unwrap();
    assert_eq!(listed[0]["id"], json!(id));
    assert!(!listed.to_string().contains(&secret));
    let err = tether_token(
        &[
            "create", "--url", &url, "--user", "carol", "--scope", "root",
        ],
        dir.path(),
    )
    .unwrap_err();
    assert!(
        err.contains("400") && err.contains("unknown scope"),
        "{err}"
    );
    // And from a flag.
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["token", "revoke", &id, "--url", &url, "--token", &admin])
        .env_remove("TETHER_API_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(&secret))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        tether_token(&["list", "--url", &url], dir.path()).unwrap(),
        json!([])
    );

    // Rotation: the old admin token stops working at once (its sockets closed), the
    // new one is in the file for the CLI and the next start.
    let env = create_env(&server, &admin, "ops").await;
    let mut ws = app(&server, &env, &admin).await.expect("app connection");
    let (status, rotated) = server
        .call_with("POST", "/api/v1/tokens/admin/rotate", None, Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_admin = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(closed(&mut ws).await.0, Some(CLOSE_REVOKED));
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(&admin))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(&new_admin))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read_to_string(&admin_file).unwrap(), new_admin);
    assert!(tether_token(&["list", "--url", &url], dir.path()).is_ok());
    assert_no_secret_logged(&server, &[&secret, &new_admin]);
    server.stop();

    // With TETHER_API_TOKEN the variable is the admin token: rotation is refused.
    let server = Server::start(dir.path());
    let (status, err) = server
        .call("POST", "/api/v1/tokens/admin/rotate", None)
        .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("conflict"))
    );
    server.stop();
}

#[tokio::test]
async fn a_broken_token_file_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).unwrap();
    std::fs::write(
        codebolt.join("tokens.json"),
        r#"{"version": 1, "tokens": [{"id": "x"}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TETHER_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokens.json") && err.contains("invalid"),
        "{err}"
    );
    // The file is left as it was.
    assert!(
        std::fs::read_to_string(codebolt.join("tokens.json"))
            .unwrap()
            .contains(r#""id": "x""#)
    );
}

/// Runs `tether serve` on `data_dir`, expecting it to refuse to start; its stderr.
fn refused_start(data_dir: &Path, token: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    match token {
        Some(token) => command.env("TETHER_API_TOKEN", token),
        None => command.env_remove("TETHER_API_TOKEN"),
    };
    let stderr = data_dir.join("refused.log");
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the host started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the host exited cleanly");
    std::fs::read_to_string(stderr).unwrap()
}

#[tokio::test]
async fn token_files_open_to_other_users_stop_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).unwrap();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };

    // An admin token written by hand, readable by every local user.
    let admin_file = codebolt.join("api-token");
    let admin = "hand-made-admin-token-0123456789";
    std::fs::write(&admin_file, format!("{admin}\n")).unwrap();
    mode(&admin_file, 0o644);
    let err = refused_start(dir.path(), None);
    assert!(
        err.contains("api-token") && err.contains("open to other users") && err.contains("0644"),
        "{err}"
    );
    mode(&admin_file, 0o620);
    assert!(refused_start(dir.path(), None).contains("chmod 600"));
    assert_eq!(std::fs::read_to_string(&admin_file).unwrap().trim(), admin);

    // A token file anyone may write: anyone could add an admin token to it.
    let tokens = codebolt.join("tokens.json");
    std::fs::write(&tokens, r#"{"version": 1, "tokens": []}"#).unwrap();
    mode(&tokens, 0o666);
    let err = refused_start(dir.path(), Some(TOKEN));
    assert!(
        err.contains("tokens.json") && err.contains("other users may write it"),
        "{err}"
    );

    // Private, both are taken.
    mode(&admin_file, 0o600);
    mode(&tokens, 0o644);
    let server = Server::start_as(dir.path(), None);
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(admin))
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop();
}

#[test]
fn a_token_file_holding_no_token_is_named_in_the_refusal() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).unwrap();
    let admin_file = codebolt.join("api-token");
    let write = |text: &str| {
        std::fs::write(&admin_file, text).unwrap();
        std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let named = admin_file.display().to_string();
    // Too short to be a secret, empty, and longer than any token.
    for (text, why) in [
        ("short\n", "at least 16"),
        ("", "at least 16"),
        (&"x".repeat(8192), "at most 4096"),
    ] {
        write(text);
        let err = refused_start(dir.path(), None);
        assert!(err.contains(&named) && err.contains(why), "{err}");
        assert!(err.contains("remove"), "the way out is said: {err}");
    }
    // A token given in the environment is named as such.
    let err = refused_start(dir.path(), Some("short"));
    assert!(
        err.contains("TETHER_API_TOKEN") && err.contains("at least 16"),
        "{err}"
    );
    assert!(!err.contains(&named), "{err}");
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/environments", server.base);
    let cases = [
        (format!("bearer {TOKEN}"), StatusCode::OK),
        (format!("BEARER  {TOKEN}"), StatusCode::OK),
        (format!("Bearer\t{TOKEN}"), StatusCode::OK),
        (format!("Basic {TOKEN}"), StatusCode::UNAUTHORIZED),
        (format!("Bearer{TOKEN}"), StatusCode::UNAUTHORIZED),
    ];
    for (header, expected) in cases {
        let response = client
            .get(&url)
            .header("authorization", &header)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), expected, "{header:?}");
    }
    server.stop();
}

/// Two `Authorization` headers are refused (400) wherever a token is read, whichever
/// one is good: a proxy in front may check one while the host acts on the other.
#[tokio::test]
async fn several_authorization_headers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    let good = format!("Bearer {TOKEN}");
    let upgrade = [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let none: &[(&str, &str)] = &[];
    let cases = [
        ("GET", "/api/v1/environments", none),
        ("GET", "/api/v1/whoami", none),
        ("DELETE", "/api/v1/tokens/tok_nope", none),
        ("GET", "/ws/runtime/nope", &upgrade[..]),
        ("GET", "/ws/app/nope?ticket=tkt_nope", &upgrade[..]),
        ("GET", "/ws/events", &upgrade[..]),
    ];
    for (method, path, extra) in cases {
        for (first, second) in [
            (good.as_str(), "Bearer wrong"),
            ("Bearer wrong", good.as_str()),
        ] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut req = (client.request(method.clone(), format!("{}{path}", server.base)))
                .header("authorization", first)
                .header("authorization", second);
            for (name, value) in extra {
                req = req.header(*name, *value);
            }
            let resp = req.send().await.expect("request");
            let (status, text) = crate::support::checked(method.as_str(), path, resp).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {text}");
            let body: Value = serde_json::from_str(&text).expect("json");
            assert_eq!(body["error"]["code"], "invalid_request", "{body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("several `Authorization` headers"),
                "{body}"
            );
        }
    }
    // One header still works, and the refusals counted as no failed authentication.
    let (status, _) = server.call("GET", "/api/v1/whoami", None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop();
}

/// The runtime route takes no API token, so anyone may knock on it: a token that is
/// no runtime's is answered alike for an environment that exists (started or not)
/// and for one that does not, so it tells neither which ids are environments nor how
/// many starts one had (a token of an earlier generation reads like a forgery).
#[tokio::test]
async fn the_runtime_route_answers_a_wrong_token_alike_for_every_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (bob, _) = server.user_token("bob").await;
    let (status, made) = server.create_as(&bob, "bob-run", true).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let started = made["id"].as_str().expect("id").to_owned();
    server
        .wait_env(&started, "running and connected", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
    let never = create_env(&server, &bob, "bob-idle").await;
    let missing = "6f1c7a2e-0000-4000-8000-00000000dead";
    let client = reqwest::Client::new();
    let knock = |id: String, token: String| {
        let client = client.clone();
        let url = format!("{}/ws/runtime/{id}", server.base);
        async move {
            let resp = (client.get(url))
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .expect("request");
            let path = format!("/ws/runtime/{id}");
            let (status, text) = crate::support::checked("GET", &path, resp).await;
            (status, text.replace(&id, "ID"))
        }
    };
    // Generation 0 is earlier than the started one's, 1 is its own (a wrong secret),
    // and the API tokens are no runtime's at all.
    let zeros = "0".repeat(64);
    for token in [format!("0.{zeros}"), format!("1.{zeros}"), bob.clone()] {
        let gone = knock(missing.to_owned(), token.clone()).await;
        assert_eq!(gone.0, StatusCode::UNAUTHORIZED, "{token}: {}", gone.1);
        for id in [&started, &never] {
            let answer = knock(id.clone(), token.clone()).await;
            assert_eq!(answer, gone, "{token} at {id}");
        }
    }
    // The knocking did not disturb the real runtime.
    let env = server
        .wait_env(&started, "still connected", |e| {
            e["runtime"]["connected"] == true
        })
        .await;
    assert_eq!(env["status"], "running");
    server.stop();
}
