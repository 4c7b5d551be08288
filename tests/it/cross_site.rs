//! What a page of another web site can do to the host through its visitor's browser.
//! The browser holds no credential the host honours (no cookie, no basic auth), but it
//! opens any WebSocket the page asks for, with the page's `Origin`: made-up tickets
//! from a page the operator visits must not lock the operator's own address out. And
//! what a browser keeps of the host's answers: nothing a token read, in its cache.

use reqwest::StatusCode;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, http};

use crate::support::{Server, TOKEN, write_config};

/// A WebSocket upgrade of `path` as a browser sends it: with `origin`, and the token
/// as a bearer header when given; the status it is answered with (101 when upgraded).
async fn upgrade(server: &Server, path: &str, origin: Option<&str>, token: Option<&str>) -> u16 {
    upgrade_to(server, path, None, origin, token).await
}

/// [`upgrade`] with `host` as the request's `Host` (the name a browser called, when it
/// is not the address connected to).
async fn upgrade_to(
    server: &Server,
    path: &str,
    host: Option<&str>,
    origin: Option<&str>,
    token: Option<&str>,
) -> u16 {
    let mut req = server.ws_url(path).into_client_request().expect("request");
    let headers = req.headers_mut();
    if let Some(host) = host {
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(host).expect("host"),
        );
    }
    if let Some(origin) = origin {
        headers.insert(
            http::header::ORIGIN,
            http::HeaderValue::from_str(origin).expect("origin"),
        );
    }
    if let Some(token) = token {
        let value = http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        headers.insert(http::header::AUTHORIZATION, value);
    }
    match connect_async(req).await {
        Ok(_) => 101,
        Err(Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrading {path}: {e}"),
    }
}

#[tokio::test]
async fn made_up_tickets_from_another_sites_page_do_not_lock_out_the_hosts_own_callers() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[auth]\nmax_failures_per_minute = 5\n");
    let server = Server::start(dir.path());
    let evil = Some("http://evil.example");
    // The page opens sockets with made-up tickets until it is refused for good.
    for n in 0..4 {
        let path = format!("/ws/events?ticket=tkt_{n:064x}");
        assert_eq!(upgrade(&server, &path, evil, None).await, 401, "try {n}");
    }
    let last = format!("/ws/events?ticket=tkt_{:064x}", 4);
    assert_eq!(upgrade(&server, &last, evil, None).await, 429);
    // Pages of other origins at this address stay refused for the minute, the right
    // token included: the throttle still holds for them.
    let other = Some("https://other.example");
    assert_eq!(
        upgrade(&server, "/ws/events", other, Some(TOKEN)).await,
        429
    );

    // The host's own callers at the same address are not: the CLI and runtimes (no
    // `Origin`) and the dashboard (its `Origin` is the host itself).
    let (status, body) = server.call("GET", "/api/v1/whoami", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let own = Some(server.base.as_str());
    assert_eq!(upgrade(&server, "/ws/events", own, Some(TOKEN)).await, 101);
    assert_eq!(upgrade(&server, "/ws/events", None, Some(TOKEN)).await, 101);
    server.stop();
}

/// A page whose own name was made to resolve to the host (DNS rebinding) calls it with
/// its own name as `Host` and `Origin`: to the host, a page of its own origin. It can
/// lock out such pages at the address, never the CLI or runtimes (no `Origin`), which
/// it used to, counted with them.
#[tokio::test]
async fn a_page_rebinding_its_name_to_the_host_does_not_lock_out_its_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[auth]\nmax_failures_per_minute = 5\n");
    let server = Server::start(dir.path());
    let port = server.base.rsplit(':').next().expect("port");
    let rebound = format!("rebound.example:{port}");
    let origin = format!("http://{rebound}");
    let page = |path: String| {
        let (rebound, origin) = (rebound.clone(), origin.clone());
        let server = &server;
        async move { upgrade_to(server, &path, Some(&rebound), Some(&origin), None).await }
    };
    for n in 0..4 {
        let path = format!("/ws/events?ticket=tkt_{n:064x}");
        assert_eq!(page(path).await, 401, "try {n}");
    }
    assert_eq!(page(format!("/ws/events?ticket=tkt_{:064x}", 4)).await, 429);
    // The CLI and runtimes at the same address go on.
    let (status, body) = server.call("GET", "/api/v1/whoami", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(upgrade(&server, "/ws/events", None, Some(TOKEN)).await, 101);
    server.stop();
}

#[tokio::test]
async fn what_a_token_reads_is_never_kept_in_a_browsers_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(
                serde_json::json!({"name": "cached", "provider": "local-process",
                                    "config": {"apiKey": "kept-out-of-caches"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut req = client.get(format!("{}{path}", server.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    let id = env["id"].as_str().expect("id");
    // What a browser's disk cache would otherwise hold after the tab is closed:
    // records with their config, the tokens, the audit log, answers and refusals.
    for (path, token) in [
        ("/api/v1/environments".to_owned(), Some(TOKEN)),
        (format!("/api/v1/environments/{id}"), Some(TOKEN)),
        ("/api/v1/tokens".to_owned(), Some(TOKEN)),
        ("/api/v1/audit".to_owned(), Some(TOKEN)),
        ("/api/v1/whoami".to_owned(), Some(TOKEN)),
        ("/healthz".to_owned(), Some(TOKEN)),
        ("/api/v1/environments".to_owned(), None),
        ("/no/such/route".to_owned(), None),
    ] {
        let r = get(&path, token).await.expect("request");
        let cache = r
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        assert_eq!(
            cache.as_deref(),
            Some("no-store"),
            "{path} ({})",
            r.status()
        );
    }
    let r = client
        .post(format!("{}/api/v1/tickets", server.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"environment": id}))
        .send()
        .await
        .expect("ticket");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    // The dashboard's assets, which hold nothing of anyone's, keep their revalidation.
    let r = get("/ui/app.css", None).await.expect("asset");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    server.stop();
}

#[tokio::test]
async fn no_other_site_may_frame_the_hosts_pages_or_have_their_types_sniffed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    // The dashboard and the API docs (Swagger UI, whose Authorize dialog takes a
    // token) both run on the host's origin.
    for path in [
        "/",
        "/ui/js/main.js",
        "/api/docs/",
        "/api/docs/swagger-initializer.js",
    ] {
        let r = client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            (r.headers().get(name))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert!(
            header("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}: {}",
            header("content-security-policy")
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    }
    server.stop();
}
