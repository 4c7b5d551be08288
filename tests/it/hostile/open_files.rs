//! Open files a provider holds on the host through WASI (descriptors, listings, file
//! streams, sockets): one instance keeps to `[limits] max_open_files`, all of them to
//! `host_open_files`, so hostile instances cannot take every descriptor the host may
//! open; what an instance held goes back when it ends. A connection counts its socket
//! and its two streams, which keep it open after the socket is dropped.

use serde_json::{Value, json};

use super::rig::{Rig, TETHER_TOML};

/// The value of the metric `name` in `/metrics`.
pub(super) fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// How many files a `hoard-files` attack kept, and what stopped it.
fn kept(env: &Value) -> (u64, String) {
    let outcome = env["metadata"]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let count = outcome
        .strip_prefix("kept ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {env}"));
    (count, outcome)
}

#[tokio::test]
async fn hostile_open_files_are_capped_per_instance_and_per_host() {
    let mut rig = Rig::start(|dir| {
        let toml = TETHER_TOML.replace(
            "[limits]\n",
            "[limits]\nmax_open_files = 64\nhost_open_files = 100\n",
        );
        std::fs::write(dir.join("tether.toml"), toml).expect("tether.toml");
    })
    .await;
    // Each instance has its workspace open besides what it hoards.
    let first = rig
        .attack("first", json!({"attack": "hoard-files", "count": 4096}))
        .await;
    assert_eq!(first["status"], "running", "{first}");
    let (count, outcome) = kept(&first);
    assert!((50..=63).contains(&count), "{outcome}");
    assert!(outcome.contains("insufficient-memory"), "{outcome}");
    let metrics = rig.server.metrics().await;
    assert!(
        metric(&metrics, "tether_guest_open_files") >= 50
            && metric(&metrics, "tether_guest_opens_refused_total") >= 1,
        "{metrics}"
    );
    // The host's cap: 100 in all, 64 of them the first instance's.
    let second = rig
        .attack(
            "second",
            json!({"attack": "hoard-files", "count": 4096, "streams": true}),
        )
        .await;
    let (count, outcome) = kept(&second);
    assert!(
        count <= 34,
        "file streams count too, against the host's cap: {outcome}"
    );
    assert!(outcome.contains("insufficient-memory"), "{outcome}");
    // An instance that ends gives its files back.
    rig.delete(first["id"].as_str().expect("id")).await;
    let third = rig
        .attack("third", json!({"attack": "hoard-files", "count": 4096}))
        .await;
    let (count, outcome) = kept(&third);
    assert!(
        count >= 50,
        "the first instance's files were not given back: {outcome}"
    );
    // Sockets are open files too; made without any address granted.
    rig.delete(third["id"].as_str().expect("id")).await;
    let sockets = rig
        .attack("sockets", json!({"attack": "hoard-sockets", "count": 4096}))
        .await;
    let (count, outcome) = kept(&sockets);
    assert!((50..=64).contains(&count), "{outcome}");
    assert!(outcome.contains("new-socket-limit"), "{outcome}");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_connections_count_their_streams_as_open_files() {
    // Accepts on a granted address and keeps every connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut rig = Rig::start(|dir| {
        let toml = TETHER_TOML
            .replace("[limits]\n", "[limits]\nmax_open_files = 64\n")
            .replace("urls = [\n", "urls = [\n  \"tcp://127.0.0.2:*\",\n");
        std::fs::write(dir.join("tether.toml"), toml).expect("tether.toml");
    })
    .await;
    let addr = format!("127.0.0.2:{port}");
    let env = rig
        .attack(
            "connections",
            json!({"attack": "hoard-connections", "addr": addr, "count": 4096}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let (count, outcome) = kept(&env);
    // A socket and its two streams: three of the 64 a connection.
    assert!((16..=21).contains(&count), "{outcome}");
    rig.finish().await;
}
