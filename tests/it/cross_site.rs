//! What a page of another web site can do to the host through its visitor's browser.
//! The browser holds no credential the host honours (no cookie, no basic auth), but it
//! opens any WebSocket the page asks for, with the page's `Origin`: made-up tickets
//! from a page the operator visits must not lock the operator's own address out.

use reqwest::StatusCode;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, http};

use crate::support::{Server, TOKEN, write_config};

/// A WebSocket upgrade of `path` as a browser sends it: with `origin`, and the token
/// as a bearer header when given; the status it is answered with (101 when upgraded).
async fn upgrade(server: &Server, path: &str, origin: Option<&str>, token: Option<&str>) -> u16 {
    let mut req = server.ws_url(path).into_client_request().expect("request");
    let headers = req.headers_mut();
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
