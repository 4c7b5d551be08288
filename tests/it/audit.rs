//! The audit log as an operator reads it (`.codebolt/audit.jsonl`, one JSON object per
//! line): what the host does on its own — a recovery after a host start, a restart
//! after a failure — is there, with the `system` actor; every mutation a client makes
//! is there with its user, token id and address, refusals included, and never a
//! secret; `GET /api/v1/audit` reads it for admins; an address that keeps guessing
//! tokens is throttled without touching anyone else.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, runtime_pid, wait_gone, write_config};

const FAST: &str = "[health]\ninterval_ms = 100\ntimeout_ms = 2000\nfailure_threshold = 1\nruntime_grace_ms = 500\n\n[restart]\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\nmax_retries = 3\nstable_after_ms = 60000\n";

fn audit_lines(dir: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(".codebolt/audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn wait_for_entry(dir: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        if let Some(e) = audit_lines(dir).into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry for {what}: {:?}",
            audit_lines(dir)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_hosts_own_restarts_and_recoveries_are_audited_as_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), FAST);
    let server = Server::start(dir.path());
    let env = server
        .running_env("audited", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();

    // A failure the host handles by itself: the runtime dies, the policy restarts it.
    let pid = runtime_pid(&env);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let restart = wait_for_entry(dir.path(), "the restart", |e| {
        e["action"] == "environment.restart" && e["target"] == id.as_str()
    })
    .await;
    assert_eq!(restart["actor"], "system");
    assert_eq!(restart["outcome"], "ok");
    assert!(
        restart["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{restart}"
    );
    let env = server
        .wait_env(&id, "running again", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;

    // A host restart brings the environment back, and says so.
    let last_runtime = runtime_pid(&env);
    server.stop();
    wait_gone(last_runtime).await;
    let server = Server::start(dir.path());
    let recover = wait_for_entry(dir.path(), "the recovery", |e| {
        e["action"] == "environment.recover" && e["target"] == id.as_str()
    })
    .await;
    assert_eq!(recover["actor"], "system");
    server
        .wait_env(&id, "running after the host restart", |e| {
            e["status"] == "running"
        })
        .await;
    server.stop();
    // Nothing in it is a secret: no token of any kind.
    let text =
        std::fs::read_to_string(dir.path().join(".codebolt/audit.jsonl")).unwrap_or_default();
    assert!(!text.contains(TOKEN));
}

#[tokio::test]
async fn every_mutation_is_in_the_audit_trail_with_its_actor_and_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (alice, alice_id) = server.user_token("alice").await;
    let (reader, reader_id) = server
        .user_token_with("bob", json!({"scopes": ["envs:read"]}))
        .await;

    let (status, env) = server
        .call_with(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "audited-a", "provider": "local-process"})),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    let patched = json!({"config": {"k": "v"}});
    let (status, _) = server
        .call_with(
            "PATCH",
            &format!("/api/v1/environments/{id}"),
            Some(patched),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Refused: a read-only token creating, and a wrong token.
    let (status, _) = server
        .call_with(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "nope", "provider": "local-process"})),
            Some(&reader),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let wrong = "tth_00000000000000000000000000000000000000000000000000000000deadbeef";
    let (status, _) = server
        .call_with("GET", "/api/v1/environments", None, Some(wrong))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/environments/{id}"),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Only an admin reads the trail.
    let (status, body) = server
        .call_with("GET", "/api/v1/audit", None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("admin")),
        "{body}"
    );
    let (status, trail) = server
        .call_with("GET", "/api/v1/audit?owner=alice", None, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let trail = trail.as_array().cloned().expect("a list");
    let find = |action: &str, outcome: &str| {
        trail
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .cloned()
            .unwrap_or_else(|| panic!("no {action} {outcome} in {trail:?}"))
    };
    let created = find("environment.create", "ok");
    assert_eq!(
        created["actor"],
        json!({"user": "alice", "tokenId": alice_id})
    );
    assert_eq!(created["target"], id.as_str());
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["remote"], "127.0.0.1");
    assert_eq!(find("environment.patch", "ok")["target"], id.as_str());
    assert_eq!(find("environment.delete", "ok")["owner"], "alice");
    // Entries come oldest first.
    let order: Vec<&str> = trail.iter().filter_map(|e| e["action"].as_str()).collect();
    let at = |a: &str| order.iter().position(|x| *x == a).unwrap_or(usize::MAX);
    assert!(at("environment.create") < at("environment.patch"));
    assert!(at("environment.patch") < at("environment.delete"));
    // Bob's refusal is not Alice's business, but is in the whole trail.
    assert!(
        !trail
            .iter()
            .any(|e| e["actor"]["tokenId"] == reader_id.as_str())
    );
    let (_, all) = server
        .call_with("GET", "/api/v1/audit?limit=100", None, Some(TOKEN))
        .await;
    let all = all.as_array().cloned().expect("a list");
    let refused = all
        .iter()
        .find(|e| e["action"] == "environment.create" && e["outcome"] == "refused")
        .unwrap_or_else(|| panic!("no refused create in {all:?}"));
    assert_eq!(refused["actor"]["user"], "bob");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("envs:write")),
        "{refused}"
    );
    let anonymous = all
        .iter()
        .find(|e| e["action"] == "auth.refused")
        .unwrap_or_else(|| panic!("no refused authentication in {all:?}"));
    assert_eq!(anonymous["actor"], "anonymous");
    let (status, _) = server
        .call_with("GET", "/api/v1/audit?since=yesterday", None, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    server.stop();
    let file =
        std::fs::read_to_string(dir.path().join(".codebolt/audit.jsonl")).unwrap_or_default();
    for secret in [alice.as_str(), reader.as_str(), wrong, TOKEN] {
        assert!(!file.contains(secret), "a secret in the audit log");
    }
}

#[tokio::test]
async fn an_address_that_keeps_guessing_is_throttled_and_others_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[auth]\nmax_failures_per_minute = 5\n");
    let server = Server::start(dir.path());
    let guess = |n: usize| format!("tth_{n:064x}");
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .expect("client")
    };
    let get = |client: reqwest::Client, token: String| {
        let url = format!("{}/api/v1/environments", server.base);
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("request")
        }
    };
    let guesser = from([127, 0, 0, 1]);
    for n in 0..4 {
        let r = get(guesser.clone(), guess(n)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {n}");
    }
    // The fifth failure closes the window; from then on even the right token waits.
    let r = get(guesser.clone(), guess(4)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = get(guesser.clone(), TOKEN.to_owned()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_failures");

    // Another address is not affected: its wrong token is a plain 401, its right one works.
    let other = from([127, 0, 0, 2]);
    let r = get(other.clone(), guess(99)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = get(other, TOKEN.to_owned()).await;
    assert_eq!(r.status(), StatusCode::OK);
    server.stop();
}

/// An app's connect that asks a stopped environment to run again (`start=true`, by id
/// or through a template) is a start by the app's token, and is audited as one before
/// the app is admitted, as `POST …/start` is before it is answered. Before, such a
/// start left no line: the log showed the user's stop and then nothing, while the
/// environment ran again.
#[tokio::test]
async fn a_start_asked_by_an_apps_connect_is_audited_before_it_is_admitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n",
    );
    let server = Server::start(dir.path());
    let (alice, alice_id) = server.user_token("alice").await;
    let starts = || {
        let lines = audit_lines(dir.path());
        let starts: Vec<Value> = (lines.into_iter())
            .filter(|e| e["action"] == "environment.start")
            .collect();
        starts
    };
    let template = server.ws_url("/ws/app?template=chat&thread=t1&start=true");
    let mut app = crate::support::Ws::connect(&template, Some(&alice))
        .await
        .expect("provisioned");
    let first = app.next_any().await;
    assert_eq!(first["created"], true, "{first}");
    let id = first["environmentId"].as_str().expect("id").to_owned();
    drop(app);
    // Made running, not started again: a create, no start.
    assert!(starts().is_empty(), "{:?}", starts());

    for (n, url) in [
        (1, server.ws_url(&format!("/ws/app/{id}?start=true"))),
        (2, template.clone()),
    ] {
        let stop = format!("/api/v1/environments/{id}/stop");
        let (status, body) = server.call_with("POST", &stop, None, Some(&alice)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let _app = crate::support::Ws::connect(&url, Some(&alice))
            .await
            .expect("admitted");
        // Durable before the upgrade was answered: no waiting.
        let starts = starts();
        assert_eq!(starts.len(), n, "{url}: {starts:?}");
        let entry = &starts[n - 1];
        assert_eq!(entry["target"], id.as_str(), "{entry}");
        assert_eq!(entry["owner"], "alice", "{entry}");
        assert_eq!(entry["outcome"], "ok", "{entry}");
        assert_eq!(
            entry["actor"],
            json!({"user": "alice", "tokenId": alice_id}),
            "{entry}"
        );
    }
    // Joining one that runs starts nothing.
    let _again = crate::support::Ws::connect(&template, Some(&alice))
        .await
        .expect("admitted");
    assert_eq!(starts().len(), 2, "{:?}", starts());
    server.stop();
}
