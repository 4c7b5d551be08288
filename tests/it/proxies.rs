//! A host behind a proxy: every connection's peer is the proxy. With `[server]
//! trusted_proxies` naming it, a request's client is the address the proxy appends
//! to `X-Forwarded-For`, so one guesser's failures lock out that guesser alone, and the
//! audit log names the user's address; without it the header means nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, write_config};

/// `GET path` as sent by a proxy that appended `forwarded_for` (`None`: no header).
async fn via_proxy(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    forwarded_for: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(token);
    if let Some(chain) = forwarded_for {
        req = req.header("x-forwarded-for", chain);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

const WRONG: &str = "tth_0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn behind_a_trusted_proxy_one_guesser_locks_out_only_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[auth]\nmax_failures_per_minute = 5\n[server]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
    );
    let server = Server::start(dir.path());
    let get = reqwest::Method::GET;
    let guesser = Some("203.0.113.7");
    for n in 0..4 {
        let (status, _) =
            via_proxy(&server, get.clone(), "/api/v1/whoami", WRONG, guesser, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "try {n}");
    }
    let (status, _) = via_proxy(&server, get.clone(), "/api/v1/whoami", WRONG, guesser, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The guesser stays refused, its right token included, and entries it writes
    // itself to the left of the proxy's do not make it someone else.
    for chain in [
        "203.0.113.7",
        "198.51.100.9, 203.0.113.7",
        "198.51.100.9, 203.0.113.7, 10.2.3.4",
    ] {
        let (status, _) = via_proxy(
            &server,
            get.clone(),
            "/api/v1/whoami",
            TOKEN,
            Some(chain),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{chain}");
    }
    // Everyone else behind the same proxy goes on.
    let other = Some("203.0.113.8");
    let (status, body) =
        via_proxy(&server, get.clone(), "/api/v1/whoami", TOKEN, other, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // And the audit log names the user's address, not the proxy's.
    let (status, env) = via_proxy(
        &server,
        reqwest::Method::POST,
        "/api/v1/environments",
        TOKEN,
        Some("198.51.100.9, 203.0.113.8"),
        Some(json!({"name": "proxied", "provider": "local-process"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let (status, trail) = server.call("GET", "/api/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let created = (trail.as_array().expect("a list").iter())
        .find(|e| e["action"] == "environment.create" && e["outcome"] == "ok")
        .cloned()
        .expect("the create is audited");
    assert_eq!(created["remote"], "203.0.113.8", "{created}");
    server.stop();
}

#[tokio::test]
async fn without_trusted_proxies_the_header_means_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[auth]\nmax_failures_per_minute = 5\n");
    let server = Server::start(dir.path());
    let get = reqwest::Method::GET;
    // A guesser that names a new address each time is still counted as its peer.
    for n in 0..4 {
        let chain = format!("203.0.113.{n}");
        let (status, _) = via_proxy(
            &server,
            get.clone(),
            "/api/v1/whoami",
            WRONG,
            Some(&chain),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "try {n}");
    }
    let (status, _) = via_proxy(
        &server,
        get.clone(),
        "/api/v1/whoami",
        WRONG,
        Some("203.0.113.99"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = via_proxy(&server, get, "/api/v1/whoami", TOKEN, None, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    server.stop();
}

#[test]
fn a_trusted_proxy_that_is_not_an_address_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[server]\ntrusted_proxies = [\"proxy.internal\"]\n",
    );
    let config = dir.path().join("tether.toml");
    let config = config.to_str().expect("a UTF-8 path");
    let args = ["serve", "--listen", "127.0.0.1:0", "--config", config];
    let (code, err) = crate::operator_edges::ends_in_time(dir.path(), &args);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("server.trusted_proxies") && err.contains("proxy.internal"),
        "{err}"
    );
}
