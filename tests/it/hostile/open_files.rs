//! Open files a provider holds on the host through WASI (descriptors, listings, file
//! streams, sockets): one instance keeps to `[limits] max_open_files`, all of them to
//! `host_open_files`, so hostile instances cannot take every descriptor the host may
//! open; what an instance held goes back when it ends. A connection counts once (its
//! streams cannot outlive its socket). A listing of a huge directory holds a batch of
//! its entries in host memory, not all of them.

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

/// The files the process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
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
async fn hostile_connections_count_one_open_file_each_and_the_host_holds_no_more() {
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
    let before = open_fds(rig.server.pid());
    let env = rig
        .attack(
            "connections",
            json!({"attack": "hoard-connections", "addr": addr, "count": 4096}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let (count, outcome) = kept(&env);
    // A connection is one socket, its streams with it (the guest opened no directory).
    assert!((60..=64).contains(&count), "{outcome}");
    assert!(outcome.contains("os error 33"), "{outcome}");
    // What the host holds for them: the cap, besides a few files of the environment's
    // own (its log, its workspace) opened in the meantime.
    let grown = open_fds(rig.server.pid()).saturating_sub(before);
    assert!(
        grown <= 64 + 8,
        "the host opened {grown} files for {count} connections"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_listings_of_a_huge_directory_hold_little_host_memory() {
    // wasmtime-wasi's own `read-directory` read the whole directory into host memory for
    // each listing: 20,000 names of 200 bytes are about 5 MiB a listing, 500 MiB for the
    // 100 kept here (and the default cap allows 256 an instance, of directories as large
    // as the disk quota lets a guest make). The host's listings read 128 entries at a time.
    let mut rig = Rig::start(|dir| {
        let toml = TETHER_TOML.replace("start_timeout_secs = 3", "start_timeout_secs = 120");
        std::fs::write(dir.join("tether.toml"), toml).expect("tether.toml");
    })
    .await;
    let pid = rig.server.pid();
    let peak_before = super::bounds::status_kib(pid, "VmHWM:");
    let env = rig
        .attack(
            "listings",
            json!({"attack": "hoard-listings", "files": 20_000, "nameBytes": 200, "count": 100}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let outcome = env["metadata"]["outcome"].as_str().unwrap_or_default();
    assert!(
        outcome.starts_with("listed 20000 entries; kept 100 listings"),
        "{outcome}"
    );
    let grown_mib = super::bounds::status_kib(pid, "VmHWM:").saturating_sub(peak_before) >> 10;
    // Generous: the guest's own memory is part of the peak.
    assert!(grown_mib < 64, "peak RSS grew {grown_mib} MiB: {outcome}");
    rig.assert_host_fine().await;
    rig.finish().await;
}
