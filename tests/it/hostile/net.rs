//! Network attacks of the hostile provider. Traffic only ever goes to 127.0.0.0/8:
//! `metadata.test` is an operator override to 169.254.169.254 that the broker
//! refuses before connecting, which the counting server on loopback cannot see, so
//! the refusal's wording (an address check, not a connect error) is what proves it.

use std::sync::atomic::Ordering;

use serde_json::json;

use super::rig::{Rig, counting_http_server};

#[tokio::test]
async fn hostile_http_to_a_host_not_granted_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    let url = format!("http://localhost:{}/", rig.http_port);
    let (id, error) = rig
        .refused("http-other", json!({"attack": "http", "url": url}))
        .await;
    assert!(error.contains("HttpRequestDenied"), "{error}");
    assert_eq!(rig.http_hits.load(Ordering::SeqCst), 0);
    assert!(
        rig.logged(&id, "is not granted to this provider"),
        "denial not logged"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_http_to_a_granted_name_resolving_to_loopback_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    let url = format!("http://loopback.test:{}/", rig.http_port);
    let (id, error) = rig
        .refused("http-loop", json!({"attack": "http", "url": url}))
        .await;
    assert!(error.contains("DestinationIpProhibited"), "{error}");
    assert_eq!(rig.http_hits.load(Ordering::SeqCst), 0);
    assert!(
        rig.logged(&id, "address 127.0.0.1 is loopback"),
        "denial not logged"
    );
    // A loopback address the operator names literally (`http://127.0.0.2:*`) is
    // reachable: the broker is not a blanket "no".
    let (port, hits) = counting_http_server([127, 0, 0, 2]).await;
    let literal = format!("http://127.0.0.2:{port}/");
    let env = rig
        .attack("http-literal", json!({"attack": "http", "url": literal}))
        .await;
    assert_eq!(env["metadata"]["outcome"], "HTTP status 200", "{env}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(rig.http_hits.load(Ordering::SeqCst), 0);
    rig.finish().await;
}

#[tokio::test]
async fn hostile_http_to_a_granted_name_resolving_to_the_metadata_address_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    let (id, error) = rig
        .refused(
            "http-meta",
            json!({"attack": "http", "url": "http://metadata.test/latest/meta-data/"}),
        )
        .await;
    assert!(error.contains("DestinationIpProhibited"), "{error}");
    assert!(
        rig.logged(
            &id,
            "address 169.254.169.254 is loopback, link-local, metadata"
        ),
        "refusal must come from the address check, before any connect"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_http_to_a_granted_name_resolving_to_6to4_or_teredo_carrying_loopback_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    // Both carry 127.0.0.1: 6to4 in bits 16-48, Teredo as its server. A relay (or the
    // host's own 6to4 or Teredo interface) would deliver them to the host itself.
    for (name, address) in [
        ("sixtofour", "2002:7f00:1::"),
        ("teredo", "2001:0:7f00:1::"),
    ] {
        let url = format!("http://{name}.test:{}/", rig.http_port);
        let (id, error) = rig
            .refused(name, json!({"attack": "http", "url": url}))
            .await;
        assert!(error.contains("DestinationIpProhibited"), "{error}");
        assert!(
            rig.logged(&id, &format!("address {address} is loopback")),
            "{name}: the refusal must come from the address check, before any connect"
        );
    }
    assert_eq!(rig.http_hits.load(Ordering::SeqCst), 0);
    rig.finish().await;
}

#[tokio::test]
async fn hostile_raw_tcp_connect_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    let addr = format!("127.0.0.1:{}", rig.http_port);
    let (id, error) = rig
        .refused("tcp", json!({"attack": "tcp", "addr": addr}))
        .await;
    assert!(error.contains("TCP connect refused"), "{error}");
    assert_eq!(rig.http_hits.load(Ordering::SeqCst), 0);
    assert!(rig.logged(&id, "socket use denied"), "denial not logged");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_http_to_a_server_that_never_answers_hits_the_first_byte_timeout() {
    let mut rig = Rig::start(|_| {}).await;
    // Accepts on a granted literal loopback address and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = std::time::Instant::now();
    let url = format!("http://127.0.0.2:{port}/");
    let (_, error) = rig
        .refused("silent", json!({"attack": "http", "url": url}))
        .await;
    // `first_byte_timeout_ms = 2000` fires before the 3 s start deadline.
    assert!(error.contains("ConnectionReadTimeout"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    rig.finish().await;
}
