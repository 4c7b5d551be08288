//! Cluster mode: three `tether serve` hosts on loopback share one real `nats-server`
//! with JetStream (installed by `.ci/prepare`). Records made or changed on one host
//! reach the others; each running environment runs on exactly one host; concurrent
//! changes on two hosts both land; a `kill -9`ed owner's environment is taken over
//! with its resource; a host without NATS, or with a running host's id, refuses to
//! start; NATS restarting loses
//! nothing; edits made to a stopped host's records file reach the cluster when it
//! starts (and a missing or broken file deletes nothing); a resource left to a host
//! that never comes back is removed by another, and one whose removal failed is
//! retried by the host whose provider failed; apps on another host reach the
//! runtime through NATS or straight to the running host, its relay unchanged, by id
//! or through a template (first connects for one key on two hosts make one); hosts
//! whose templates or providers (a grant, a component's build) differ are named by
//! the others until they agree again; a user's limits hold when every host admits
//! their changes at once; with NATS gone, requests are answered within their bounds
//! and nothing is made on one host alone; a host whose clock is ahead measures the
//! age of a name's reservation on NATS's clock; a bucket deleted or made again under
//! running hosts is named in their `/healthz`; a lease renewal whose answer was lost
//! does not stop the environment; record and token changes NATS refuses to store are
//! named in `/healthz` until written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::sandbox::{self, Service};
use crate::support::{Server, TOKEN, WAIT, Ws, guests, write_config};

/// A `nats-server -js` on loopback, with its store in a directory of the test's.
pub(super) struct Nats {
    child: Child,
    port: u16,
    store: PathBuf,
    log: PathBuf,
}

/// The `nats-server` to run: `TETHER_NATS_SERVER`, else `.ci/prepare`'s, else the
/// one on `PATH`; `None` (the test skips, saying so) when there is none, unless
/// `TETHER_REQUIRE_NATS` is set.
fn nats_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TETHER_NATS_SERVER").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/nats-venv/bin/nats-server"
        ))),
        Some(PathBuf::from("nats-server")),
    ];
    for candidate in candidates.into_iter().flatten() {
        let ok = Command::new(&candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(candidate);
        }
    }
    assert!(
        std::env::var_os("TETHER_REQUIRE_NATS").is_none(),
        "TETHER_REQUIRE_NATS is set but no nats-server was found (run .ci/prepare)"
    );
    eprintln!("skipping: no nats-server (run .ci/prepare, or set TETHER_NATS_SERVER)");
    None
}

impl Nats {
    /// Starts one with JetStream (`jetstream`) on `port` (0: a free one).
    pub(super) fn start(dir: &Path, port: u16, jetstream: bool) -> Option<Nats> {
        let binary = nats_binary()?;
        let port = if port == 0 { free_port() } else { port };
        let store = dir.join("nats-store");
        let log = dir.join("nats.log");
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("nats log"),
            );
        if jetstream {
            command.arg("-js");
        }
        let child = command.spawn().expect("starting nats-server");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Nats {
            child,
            port,
            store,
            log,
        })
    }

    pub(super) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it and starts it again on the same port and store.
    fn restart(mut self, dir: &Path) -> Nats {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        assert!(
            self.store.exists(),
            "{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        Nats::start(dir, port, true).expect("nats-server again")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Host `id` of the cluster at `nats`, in `dir/id`, with the `handoff` test provider
/// and `config` as its `tether.toml`.
pub(super) fn host(dir: &Path, nats: &Nats, id: &str, config: &str) -> Server {
    let data = dir.join(id);
    let providers = data.join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::copy(
        crate::support::guests::HANDOFF,
        providers.join("handoff.wasm"),
    )
    .expect("copying handoff.wasm");
    write_config(&data, config);
    Server::start_args(
        &data,
        Some(TOKEN),
        &["--cluster", &nats.url(), "--host-id", id],
    )
}

/// Polls `server` until environment `id` satisfies `pred` there (404 counts as not yet).
pub(super) async fn until_env(
    server: &Server,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    server.wait_env(id, what, pred).await
}

/// Polls `server`'s list until it holds an environment named `name`.
pub(super) async fn listed(server: &Server, name: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, list) = server.call("GET", "/api/v1/environments", None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if let Some(env) = list
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == name))
        {
            return env.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{name} never listed; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `server` answers 404 for environment `id`.
async fn gone(server: &Server, id: &str) {
    let deadline = Instant::now() + WAIT;
    let path = format!("/api/v1/environments/{id}");
    while server.call("GET", &path, None).await.0 != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "{id} is still there; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) fn id_of(env: &Value) -> String {
    env["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn records_are_shared_and_each_environment_runs_on_one_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // A lease long enough that a host paused or killed below stays alive in the
    // others' eyes until it is back: which host removes a resource then depends on
    // what the test does, not on how slowly a loaded machine does it. It also shows
    // a stop gives the lease up at once (the others see it run nowhere well within
    // `WAIT`), not by letting it lapse, even when the stop's status changes are
    // being written to the lease as it is given up.
    let config = "[cluster]\nlease_ttl_secs = 60\n";
    let a = host(dir.path(), &nats, "a", config);
    let b = host(dir.path(), &nats, "b", config);
    let c = host(dir.path(), &nats, "c", config);

    let (id, url, token) = a.handoff_env("shared").await;
    for other in [&b, &c] {
        let env = listed(other, "shared").await;
        assert_eq!(env["id"], id.as_str(), "{env}");
        let env = until_env(other, &id, "shown running on a", |e| {
            e["status"] == "running" && e["host"] == "a"
        })
        .await;
        assert_eq!(env["desiredState"], "running", "{env}");
        // Every host's file holds the record.
        assert!(other.records().to_string().contains(&id));
    }
    // Only a has a workspace for it: b and c ran nothing.
    assert!(a.data_dir.join(".codebolt/environments/shared").exists());
    for other in [&b, &c] {
        assert!(
            !other
                .data_dir
                .join(".codebolt/environments/shared")
                .exists()
        );
    }
    // Its runtime is let in on a only.
    let on_b = url.replace(
        a.base.trim_start_matches("http://"),
        b.base.trim_start_matches("http://"),
    );
    assert!(Ws::connect(&on_b, Some(&token)).await.is_err());
    let mut runtime = Ws::connect(&url, Some(&token)).await.expect("runtime on a");
    until_env(&c, &id, "shown connected", |e| {
        e["runtime"]["connected"] == true
    })
    .await;
    // Apps on any host reach the runtime on a, each thread its own, in order.
    let mut on_a = a.app(&id, "t1").await;
    let mut on_b = b.app(&id, "t2").await;
    for n in 0..20 {
        on_a.send(json!({"type": "hello", "n": n})).await;
        on_b.send(json!({"type": "hello", "n": n})).await;
    }
    let mut seen: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for _ in 0..40 {
        let relayed = runtime.next().await;
        let thread = relayed["threadId"].as_str().expect("threadId").to_owned();
        seen.entry(thread)
            .or_default()
            .push(relayed["n"].as_u64().expect("n"));
    }
    let in_order: Vec<u64> = (0..20).collect();
    assert_eq!(seen.get("t1"), Some(&in_order), "{seen:?}");
    assert_eq!(seen.get("t2"), Some(&in_order), "{seen:?}");
    // The runtime's answers go to their thread's app only, on whichever host.
    runtime
        .send(json!({"type": "answer", "threadId": "t2", "n": 1}))
        .await;
    runtime
        .send(json!({"type": "answer", "threadId": "t1", "n": 2}))
        .await;
    assert_eq!(on_b.next().await["n"], 1);
    assert_eq!(on_a.next().await["n"], 2);
    // A wrong token on b is refused there, as a's relay refuses it.
    let app_url = format!(
        "{}/ws/app/{id}?thread=t3",
        b.base.replace("http://", "ws://")
    );
    assert_eq!(
        Ws::connect(&app_url, Some("wrong-token")).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    // The cluster view: three hosts, a runs the one environment.
    let (status, view) = c.call("GET", "/api/v1/cluster", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["hostId"], "c");
    let hosts = view["hosts"].as_array().expect("hosts");
    let ids: Vec<&str> = hosts.iter().filter_map(|h| h["id"].as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"], "{view}");
    assert_eq!(hosts[0]["environments"], json!([id]), "{view}");
    assert_eq!(hosts[0]["load"], 1);
    assert_eq!(hosts[2]["self"], true);
    let (_, health) = b.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
    let metrics = reqwest::get(format!("{}/metrics", a.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("tether_cluster_environments_here 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tether_cluster_connected 1"), "{metrics}");

    // Stopped through b: a stops it and gives the lease up; deleted through c: gone
    // everywhere, its workspace on a too.
    let (status, stopping) = b
        .call("POST", &format!("/api/v1/environments/{id}/stop"), None)
        .await;
    assert!(status.is_success(), "{stopping}");
    until_env(&a, &id, "stopped on a", |e| e["status"] == "stopped").await;
    // The stop ended the bridged app's session as it ended a's own (4010).
    assert_eq!(on_b.until_close().await.1, Some(4010));
    assert_eq!(on_a.until_close().await.1, Some(4010));
    let (status, _) = c
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for server in [&a, &b, &c] {
        gone(server, &id).await;
    }
    let deadline = Instant::now() + WAIT;
    while a.data_dir.join(".codebolt/environments/shared").exists() {
        assert!(
            Instant::now() < deadline,
            "workspace kept; log:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The resource of a stopped environment is removed by the host that ran it last
    // (it may live on that host's disk), not by the host the delete was made on.
    until_log(&a, &id, REMOVES).await;
    assert!(!logged(&c, &id, REMOVES), "c removed it too:\n{}", c.log());

    // When that host is gone, the host the delete was made on removes it.
    let (later, _, _) = a.handoff_env("later").await;
    stopped_through(&b, &c, &later).await;
    a.stop();
    let (status, _) = c
        .call("DELETE", &format!("/api/v1/environments/{later}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    until_log(&c, &later, REMOVES).await;

    // The host left the removal, paused before the delete reaches it and then killed,
    // removes the resource when it comes back: its own file still has the record, and
    // the cluster says the record was deleted.
    let (missed, _, _) = b.handoff_env("missed").await;
    stopped_through(&c, &c, &missed).await;
    until_env(&b, &missed, "stopped on b", |e| e["status"] == "stopped").await;
    let paused = nix::unistd::Pid::from_raw(b.pid() as i32);
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let (status, _) = c
        .call("DELETE", &format!("/api/v1/environments/{missed}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    until_log(
        &c,
        &missed,
        "the host that ran it last removes its resource",
    )
    .await;
    b.kill();
    let b = host(dir.path(), &nats, "b", config);
    until_log(&b, &missed, REMOVES).await;
    // And the record it still had does not come back into the cluster.
    gone(&b, &missed).await;
    assert_eq!(
        (c.call("GET", &format!("/api/v1/environments/{missed}"), None)
            .await)
            .0,
        StatusCode::NOT_FOUND
    );
    assert!(
        !logged(&c, &missed, REMOVES),
        "c removed it too:\n{}",
        c.log()
    );
    for server in [b, c] {
        server.stop();
    }
}

#[tokio::test]
async fn environments_started_on_a_host_run_there_while_the_others_sweep() {
    const N: usize = 60;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // A short lease: the other hosts look for environments nobody runs twice a second.
    let config = "[cluster]\nlease_ttl_secs = 2\n";
    let a = host(dir.path(), &nats, "a", config);
    let b = host(dir.path(), &nats, "b", config);
    let c = host(dir.path(), &nats, "c", config);
    // Started all at once, so a's starts queue behind each other while b and c see
    // the records: each must still run on a, the host asked to start it.
    let created = futures_util::future::join_all((0..N).map(|i| {
        let body = json!({"name": format!("burst{i}"), "provider": "handoff", "start": true});
        a.call("POST", "/api/v1/environments", Some(body))
    }))
    .await;
    let mut ids = Vec::new();
    for (status, env) in created {
        assert_eq!(status, StatusCode::CREATED, "{env}");
        ids.push(id_of(&env));
    }
    for id in &ids {
        let env = until_env(&b, id, "held by a host", |e| e["host"].is_string()).await;
        assert_eq!(env["host"], "a", "{env}");
    }
    let ran_elsewhere = |server: &Server| {
        (0..N).any(|i| {
            (server.data_dir)
                .join(format!(".codebolt/environments/burst{i}"))
                .exists()
        })
    };
    assert!(!ran_elsewhere(&b) && !ran_elsewhere(&c));
    a.stop();
    b.stop();
    c.stop();
}

/// Stops environment `id` through host `through` and waits until `seen_on` shows it
/// stopped and run by no host. `through` is first given time to hear of a record
/// made on another host (until then it answers 404, see docs/cluster.md).
async fn stopped_through(through: &Server, seen_on: &Server, id: &str) {
    until_env(through, id, "known", |_| true).await;
    let (status, body) = through
        .call("POST", &format!("/api/v1/environments/{id}/stop"), None)
        .await;
    assert!(status.is_success(), "{body}");
    until_env(seen_on, id, "stopped", |e| {
        e["desiredState"] == "stopped" && e["host"].is_null()
    })
    .await;
}

/// What a host logs as its provider removes an environment's resource.
const REMOVES: &str = "the provider removes the resource";

/// Whether `server`'s log has a line about environment `id` saying `what`.
pub(super) fn logged(server: &Server, id: &str, what: &str) -> bool {
    server
        .log()
        .lines()
        .any(|l| l.contains(id) && l.contains(what))
}

/// Waits until `server`'s log has a line about environment `id` saying `what`.
pub(super) async fn until_log(server: &Server, id: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !logged(server, id, what) {
        assert!(
            Instant::now() < deadline,
            "never logged {what:?} for {id}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrent_changes_and_hand_edits_on_different_hosts_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let b = host(dir.path(), &nats, "b", "");
    let body = json!({"name": "edited", "provider": "handoff", "config": {"base": 0}});
    let (status, env) = a.call("POST", "/api/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = id_of(&env);
    listed(&b, "edited").await;

    // Many rounds of two hosts changing one record at the same moment, each a field
    // of its own: every change lands on both hosts.
    let path = format!("/api/v1/environments/{id}");
    for round in 0..10u64 {
        let from_a = a.call("PATCH", &path, Some(json!({"config": {"a": round}})));
        let from_b = b.call("PATCH", &path, Some(json!({"idleStopSecs": round + 60})));
        let ((sa, va), (sb, vb)) = tokio::join!(from_a, from_b);
        assert_eq!(sa, StatusCode::OK, "{va}");
        assert_eq!(sb, StatusCode::OK, "{vb}");
    }
    for server in [&a, &b] {
        until_env(server, &id, "holding both hosts' last changes", |e| {
            e["config"]["a"] == 9 && e["idleStopSecs"] == 69 && e["config"]["base"] == 0
        })
        .await;
    }

    // Two hosts creating one name at the same moment: exactly one gets it.
    for round in 0..5 {
        let body = json!({"name": format!("same-{round}"), "provider": "handoff"});
        let (on_a, on_b) = tokio::join!(
            a.call("POST", "/api/v1/environments", Some(body.clone())),
            b.call("POST", "/api/v1/environments", Some(body))
        );
        let mut statuses = [on_a.0, on_b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "{on_a:?} {on_b:?}"
        );
    }
    // A deleted environment's name is free again, on any host.
    let same0 = id_of(&listed(&a, "same-0").await);
    let (status, _) = b
        .call("DELETE", &format!("/api/v1/environments/{same0}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    gone(&a, &same0).await;
    let body = json!({"name": "same-0", "provider": "handoff"});
    let (status, again) = a.call("POST", "/api/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");

    // A hand edit of b's file reaches a. Made once b's file holds everything (its
    // journal compacted), as a person editing a quiet file would.
    let file = b.data_dir.join(".codebolt/environments.json");
    let deadline = Instant::now() + WAIT;
    let mut records = loop {
        let records = b.records();
        if records.to_string().contains("\"a\":9") {
            break records;
        }
        assert!(Instant::now() < deadline, "b's file never got the patches");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let edited = records["environments"]
        .as_array_mut()
        .and_then(|a| a.iter_mut().find(|r| r["id"] == id.as_str()))
        .map(|r| r["config"]["byHand"] = json!(true));
    assert!(edited.is_some(), "{records}");
    std::fs::write(&file, serde_json::to_vec_pretty(&records).expect("json")).expect("write");
    for (name, server) in [("a", &a), ("b", &b)] {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, env) = server.call("GET", &path, None).await;
            if env["config"]["byHand"] == true && env["config"]["a"] == 9 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never held b's hand edit: {env}\nb's log:\n{}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The file on a says the same.
    let deadline = Instant::now() + WAIT;
    while !a.records().to_string().contains("byHand") {
        assert!(Instant::now() < deadline, "a's file never got the edit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for server in [a, b] {
        server.stop();
    }
}

/// Edits the records file in `data_dir` by hand: `edit` gets its records.
fn edit_records(data_dir: &Path, edit: impl FnOnce(&mut Vec<Value>)) {
    let file = data_dir.join(".codebolt/environments.json");
    let mut records: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("records json");
    let list = records["environments"]
        .as_array_mut()
        .expect("environments");
    edit(list);
    std::fs::write(&file, serde_json::to_vec_pretty(&records).expect("json")).expect("write");
}

/// Asserts that the host of `data_dir`, stopped, saved the revisions of records `ids`
/// as last synced (a host saves them at shutdown).
fn synced_saved(data_dir: &Path, ids: &[&str]) {
    let file = data_dir.join(".codebolt/cluster/records-synced.json");
    let saved = std::fs::read_to_string(&file).unwrap_or_default();
    for id in ids {
        assert!(
            saved.contains(&format!("\"{id}\"")),
            "{id} not saved: {saved}"
        );
    }
}

#[tokio::test]
async fn edits_made_to_a_stopped_hosts_file_reach_the_cluster_when_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let b = host(dir.path(), &nats, "b", "");
    let mut ids = Vec::new();
    for name in ["kept", "dropped", "contested"] {
        let body = json!({"name": name, "provider": "handoff", "config": {"base": 0}});
        let (status, env) = a.call("POST", "/api/v1/environments", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        ids.push(id_of(&env));
        listed(&b, name).await;
    }
    let [kept, dropped, contested] = [&ids[0], &ids[1], &ids[2]].map(String::as_str);
    let b_dir = b.data_dir.clone();
    // The file holds everything (its journal compacted), as a person editing a quiet
    // file would find it.
    let _ = b.records();
    b.stop();
    synced_saved(&b_dir, &[kept, dropped, contested]);

    // While b is stopped: a changes one record, and b's file is edited by hand: one
    // record removed, one changed, and the one a changed changed too.
    let path = format!("/api/v1/environments/{contested}");
    let (status, env) = a
        .call("PATCH", &path, Some(json!({"config": {"fromA": 1}})))
        .await;
    assert_eq!(status, StatusCode::OK, "{env}");
    edit_records(&b_dir, |list| {
        list.retain(|r| r["id"] != dropped);
        for record in list.iter_mut() {
            if record["id"] == kept {
                record["config"]["byHand"] = json!(true);
            }
            if record["id"] == contested {
                record["config"]["byHandToo"] = json!(true);
            }
        }
    });
    let b = host(dir.path(), &nats, "b", "");

    // The removal and the change reach a; the record a changed meanwhile is the
    // cluster's on both (the hand change made to b's older copy loses).
    gone(&a, dropped).await;
    until_env(&a, kept, "b's hand edit", |e| e["config"]["byHand"] == true).await;
    for server in [&a, &b] {
        until_env(server, contested, "a's change", |e| {
            e["config"]["fromA"] == 1 && e["config"].get("byHandToo").is_none()
        })
        .await;
    }
    let (status, _) = b
        .call("GET", &format!("/api/v1/environments/{dropped}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    until_env(&b, kept, "its hand edit", |e| e["config"]["byHand"] == true).await;

    // A records file that is gone while the host is stopped says nothing about which
    // records went: the cluster's come back.
    let b_dir = b.data_dir.clone();
    b.stop();
    synced_saved(&b_dir, &[kept, contested]);
    let codebolt = b_dir.join(".codebolt");
    for file in ["environments.json", "environments.journal"] {
        let _ = std::fs::remove_file(codebolt.join(file));
    }
    let b = host(dir.path(), &nats, "b", "");
    for id in [kept, contested] {
        until_env(&b, id, "back from the cluster", |_| true).await;
        until_env(&a, id, "still there", |_| true).await;
    }

    // Nor does a broken one. A host is serving only once its first sync with the
    // cluster is done, so by then any delete it would make is made.
    let b_dir = b.data_dir.clone();
    b.stop();
    synced_saved(&b_dir, &[kept, contested]);
    std::fs::write(codebolt.join("environments.json"), b"{\"environments\": [").expect("write");
    let b = host(dir.path(), &nats, "b", "");
    for id in [kept, contested] {
        let path = format!("/api/v1/environments/{id}");
        let (status, env) = a.call("GET", &path, None).await;
        assert_eq!(status, StatusCode::OK, "{env}\nb's log:\n{}", b.log());
        until_env(&b, id, "from the cluster", |_| true).await;
    }
    for server in [a, b] {
        server.stop();
    }
}

/// NATS, a sandbox service, and a `tether.toml` granting it with a 3 s lease (the
/// cluster settings from the file: only the URL and the id from flags); `None`
/// where there is no `nats-server`.
fn sandbox_cluster(dir: &Path) -> Option<(Nats, Service, String)> {
    let nats = Nats::start(dir, 0, true)?;
    let service = Service::start(dir, 0);
    let config = format!(
        "{}[cluster]\nlease_ttl_secs = 3\n",
        sandbox::grant(&service, sandbox::KEY)
    );
    Some((nats, service, config))
}

/// How many sandboxes `service` holds.
async fn sandbox_count(service: &Service) -> Option<usize> {
    service.list().await["sandboxes"].as_array().map(Vec::len)
}

/// Record `id` as the cluster's records bucket has it.
async fn bucket_record(records: &async_nats::jetstream::kv::Store, id: &str) -> Value {
    let entry = records.get(id).await.expect("read").expect("the record");
    serde_json::from_slice(&entry).expect("record json")
}

/// Waits until `service` holds `n` sandboxes.
async fn until_sandboxes(service: &Service, n: usize) {
    let deadline = Instant::now() + WAIT;
    while sandbox_count(service).await != Some(n) {
        assert!(Instant::now() < deadline, "{}", service.list().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_owners_environment_is_taken_over_with_its_resource_and_not_run_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((nats, service, config)) = sandbox_cluster(dir.path()) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", &config);
    let b = host(dir.path(), &nats, "b", &config);
    let env = a.running_env("remote", "http-sandbox", json!({})).await;
    let id = id_of(&env);
    let resource = env["resourceId"].clone();
    assert!(resource.is_string(), "{env}");
    let mut events = Ws::connect(
        &format!("{}/ws/events", b.base.replace("http://", "ws://")),
        Some(TOKEN),
    )
    .await
    .expect("events on b");

    // An app on b, bridged to a, echoes through the runtime a runs.
    let mut app = b.app(&id, "t1").await;
    let echoed = app
        .request(json!({"type": "echo", "requestId": "r1", "payload": "before"}))
        .await;
    assert_eq!(echoed["payload"], "before", "{echoed}");
    // Quiet for longer than the 3 s a tunnel waits for a word from the other host:
    // its heartbeats keep it open.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let echoed = app
        .request(json!({"type": "echo", "requestId": "r1b", "payload": "quiet"}))
        .await;
    assert_eq!(echoed["payload"], "quiet", "{echoed}");

    let killed = Instant::now();
    let a_dir = a.data_dir.clone();
    a.kill();
    // Its bridge says the host went away (1012); it connects again to b.
    assert_eq!(app.until_close().await.1, Some(1012));
    let env = until_env(&b, &id, "taken over by b", |e| {
        e["host"] == "b" && e["status"] == "running" && e["runtime"]["connected"] == true
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(3 + 5) + WAIT / 3,
        "took {took:?}"
    );
    assert_eq!(env["resourceId"], resource, "{env}");
    assert_eq!(env["metadata"]["sandbox"], "reused", "{env}");
    let list = service.list().await;
    assert_eq!(list["created"], 1, "{list}");
    let mut app = b.app(&id, "t1").await;
    let echoed = app
        .request(json!({"type": "echo", "requestId": "r2", "payload": "after"}))
        .await;
    assert_eq!(echoed["payload"], "after", "{echoed}");
    // b's apps heard of it.
    let deadline = Instant::now() + WAIT;
    loop {
        let frame = events.next_any().await;
        if frame["type"] == "environmentStatus"
            && frame["environmentId"] == id.as_str()
            && frame["status"] == "running"
        {
            break;
        }
        assert!(Instant::now() < deadline, "no status frame on b");
    }

    // a comes back: it finds b holds the lease and runs nothing.
    let a = Server::start_args(
        &a_dir,
        Some(TOKEN),
        &["--cluster", &nats.url(), "--host-id", "a"],
    );
    let seen = until_env(&a, &id, "shown on b", |e| e["host"] == "b").await;
    assert_eq!(seen["status"], "running", "{seen}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, view) = a.call("GET", "/api/v1/cluster", None).await;
    let hosts = view["hosts"].as_array().expect("hosts");
    let a_view = hosts.iter().find(|h| h["id"] == "a").expect("a listed");
    assert_eq!(a_view["load"], 0, "{view}");
    let list = service.list().await;
    assert_eq!(list["created"], 1, "{list}");
    assert_eq!(
        list["sandboxes"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    until_env(&b, &id, "still connected on b", |e| {
        e["runtime"]["connected"] == true
    })
    .await;
    a.stop();
    b.stop();
    drop(service);
}

#[tokio::test]
async fn a_resource_left_to_a_host_that_never_comes_back_is_removed_by_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((nats, service, config)) = sandbox_cluster(dir.path()) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", &config);
    let b = host(dir.path(), &nats, "b", &config);
    let env = a.running_env("left", "http-sandbox", json!({})).await;
    let id = id_of(&env);
    stopped_through(&a, &b, &id).await;
    assert_eq!(sandbox_count(&service).await, Some(1));

    // a ran it last, so the delete made on b leaves the removal to a; a is paused
    // before the delete reaches it, then killed, and never comes back.
    let paused = nix::unistd::Pid::from_raw(a.pid() as i32);
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let (status, _) = b
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    until_log(&b, &id, "the host that ran it last removes its resource").await;
    assert!(
        !logged(&b, &id, REMOVES),
        "b removed it at once:\n{}",
        b.log()
    );
    a.kill();
    // Once a's entry lapsed, b's sweep finds the removal a was left and does it.
    until_log(&b, &id, "left to a host that is gone").await;
    until_log(&b, &id, REMOVES).await;
    until_sandboxes(&service, 0).await;
    assert_eq!(service.list().await["deleted"], 1);

    // What anyone with access to the NATS account writes there is checked: a removal
    // naming a dead host for a record the cluster still has is never acted on, and
    // malformed ones are dropped.
    let kept = b.running_env("kept", "http-sandbox", json!({})).await;
    let kept = id_of(&kept);
    stopped_through(&b, &b, &kept).await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let records = js.get_key_value("tether-records").await.expect("records");
    let removals = js.get_key_value("tether-removals").await.expect("removals");
    let record = bucket_record(&records, &kept).await;
    let mut outside = record.clone();
    outside["name"] = json!("../outside");
    outside["id"] = json!("outside");
    let hostile = [
        (kept.clone(), json!({"host": "ghost", "record": record})),
        (
            "outside".to_owned(),
            json!({"host": "ghost", "record": outside}),
        ),
        (
            "other".to_owned(),
            json!({"host": "ghost", "record": record}),
        ),
        ("garbage".to_owned(), json!("not a removal")),
    ];
    for (key, value) in &hostile {
        removals
            .put(key, serde_json::to_vec(value).expect("json").into())
            .await
            .expect("put");
    }
    // Two sweeps (one a lease, 3 s) later the malformed ones are gone, and the one
    // whose record exists is left alone (dropped only once a minute old).
    tokio::time::sleep(Duration::from_secs(7)).await;
    for key in ["outside", "other", "garbage"] {
        let entry = removals.get(key).await.expect("read");
        assert!(entry.is_none(), "{key} kept");
    }
    assert!(removals.get(&kept).await.expect("read").is_some());
    assert!(!logged(&b, &kept, REMOVES), "{}", b.log());
    assert_eq!(sandbox_count(&service).await, Some(1));
    let (_, shown) = b
        .call("GET", &format!("/api/v1/environments/{kept}"), None)
        .await;
    assert_eq!(shown["status"], "stopped", "{shown}");

    // A host that died after its delete was durable and before its provider was done
    // finds the removal its last run left when it starts again (here: the record gone
    // from its file and the cluster, the removal noted for b, as such a death leaves
    // them).
    let undone = b.running_env("undone", "http-sandbox", json!({})).await;
    let undone = id_of(&undone);
    stopped_through(&b, &b, &undone).await;
    assert_eq!(sandbox_count(&service).await, Some(2));
    let record = bucket_record(&records, &undone).await;
    let b_dir = b.data_dir.clone();
    b.stop();
    records.delete(&undone).await.expect("delete the record");
    edit_records(&b_dir, |list| list.retain(|r| r["id"] != undone.as_str()));
    let left = json!({"host": "b", "record": record});
    removals
        .put(&undone, serde_json::to_vec(&left).expect("json").into())
        .await
        .expect("put");
    let b = host(dir.path(), &nats, "b", &config);
    until_log(&b, &undone, REMOVES).await;
    until_sandboxes(&service, 1).await;
    let deadline = Instant::now() + WAIT;
    while removals.get(&undone).await.expect("read").is_some() {
        assert!(Instant::now() < deadline, "the removal was never cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gone(&b, &undone).await;
    b.stop();
    drop(service);
}

#[tokio::test]
async fn a_removal_that_fails_on_the_running_host_is_kept_and_retried_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let service = Service::start_failing_deletes(dir.path(), 2);
    let config = format!(
        "[lifecycle]\nremoval_retry_secs = 2\n{}[cluster]\nlease_ttl_secs = 3\n",
        sandbox::grant(&service, sandbox::KEY)
    );
    let a = host(dir.path(), &nats, "a", &config);
    let b = host(dir.path(), &nats, "b", &config);
    let env = a.running_env("remote", "http-sandbox", json!({})).await;
    let id = id_of(&env);
    listed(&b, "remote").await;

    // Deleted through b; a runs it, its provider's destroy fails, and a keeps it.
    let (status, body) = b
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{body}");
    gone(&a, &id).await;
    until_log(&a, &id, "tried again later").await;
    // Every host sees which host has it pending (a's entry says so at its renewals).
    until_pending_removals(&b, &[("a", 1), ("b", 0)]).await;
    until_log(
        &a,
        &id,
        "the provider removed the resource of a deleted environment",
    )
    .await;
    until_sandboxes(&service, 0).await;
    until_pending_removals(&b, &[("a", 0), ("b", 0)]).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, health) = a.call("GET", "/healthz", None).await;
        if health["pendingRemovals"] == 0 && health["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, health) = b.call("GET", "/healthz", None).await;
    assert_eq!(health["pendingRemovals"], 0, "{health}");
    assert!(
        !logged(&b, &id, "tried again later"),
        "only the host whose provider failed retries"
    );
    a.stop();
    b.stop();
    service.stop();
}

/// Polls `server`'s `GET /api/v1/cluster` until each host named shows its pending
/// removals as given.
async fn until_pending_removals(server: &Server, want: &[(&str, u64)]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, view) = server.call("GET", "/api/v1/cluster", None).await;
        let shown = |id: &str| {
            (view["hosts"].as_array().into_iter().flatten())
                .find(|h| h["id"] == id)
                .and_then(|h| h["pendingRemovals"].as_u64())
        };
        if want.iter().all(|(id, n)| shown(id) == Some(*n)) {
            return;
        }
        assert!(Instant::now() < deadline, "{want:?}: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cluster_mode_refuses_to_start_without_nats_or_jetstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(plain) = Nats::start(dir.path(), 0, false) else {
        return;
    };
    let run = |url: String, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("host"))
            .args(["--cluster", &url])
            .args(extra)
            .env("TETHER_API_TOKEN", TOKEN)
            .output()
            .expect("running tether serve");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(plain.url(), &["--host-id", "a"]);
    assert!(err.contains("no JetStream"), "{err}");
    let err = run(
        format!("nats://127.0.0.1:{}", free_port()),
        &["--host-id", "a"],
    );
    assert!(err.contains("cannot connect to NATS"), "{err}");
    let err = run(plain.url(), &[]);
    assert!(err.contains("--host-id"), "{err}");
    let err = run(plain.url(), &["--host-id", "../x"]);
    assert!(err.contains("host id"), "{err}");
}

/// Regression: a record from the bucket whose unknown fields nested deep (deeper than
/// the records file can hold it, not than the files that wrap it) was taken in. Once
/// deleted and its removal failed, it went into the pending removals' journal, which
/// could no longer be read at the next start: every pending removal in it was set
/// aside, another environment's resource with them. Unknown fields are now bounded
/// like `config`, and such a record is ignored, logged, as any invalid one.
#[tokio::test]
async fn a_record_from_the_bucket_nested_too_deep_is_refused_and_spoils_no_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let records = js.get_key_value("tether-records").await.expect("records");
    // No provider of that name here: deleted, each removal fails and is kept.
    let record = |id: &str| json!({"id": id, "name": id, "provider": "absent", "resourceId": id});
    let mut deep = record("deep");
    deep["nested"] = (0..124).fold(json!(1), |inner, _| json!([inner]));
    for (id, value) in [("plain", record("plain")), ("deep", deep)] {
        records
            .put(id, value.to_string().into())
            .await
            .expect("writing a record");
    }
    listed(&a, "plain").await;
    // Until the deep one is taken in, or refused.
    let deadline = Instant::now() + WAIT;
    let ids = loop {
        let (_, list) = a.call("GET", "/api/v1/environments", None).await;
        let ids: Vec<String> = (list.as_array().expect("list").iter()).map(id_of).collect();
        if ids.len() == 2 || logged(&a, "deep", "ignoring an invalid record") {
            break ids;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every record this host took in is deleted; each removal fails and waits.
    for id in &ids {
        let (status, body) = a
            .call("DELETE", &format!("/api/v1/environments/{id}"), None)
            .await;
        assert!(status.is_success(), "{body}");
        until_log(&a, id, "tried again later").await;
    }
    // Restarted, the host still has the pending removal.
    a.stop();
    let a = host(dir.path(), &nats, "a", "");
    let (status, pending) = a.call("GET", "/api/v1/removals", None).await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    assert_eq!(pending[0]["environmentId"], "plain", "{pending}");
    // The deep one never came in: it is refused, saying why.
    assert_eq!(ids, ["plain"]);
    assert!(a.log().contains("unknown fields nest"), "{}", a.log());
    a.stop();
}

/// Regression: a bucket whose keys must lapse (`PREFIX-leases`, `PREFIX-hosts`,
/// `PREFIX-admissions`) made by hand without an age limit was used as it was, so a
/// dead host's leases would never lapse and its environments never be taken over;
/// nor did a hosts bucket's age have to be the leases'. A host now refuses to start
/// on such a bucket, saying which and what to do.
#[tokio::test]
async fn a_bucket_made_by_hand_whose_keys_would_not_lapse_as_they_must_is_refused_at_start() {
    use async_nats::jetstream::kv;

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    for bucket in ["tether-leases", "tether-hosts", "tether-admissions"] {
        let made = js
            .create_key_value(kv::Config {
                bucket: bucket.into(),
                history: 1,
                ..Default::default()
            })
            .await;
        made.expect("making the bucket by hand");
        let err = refused_start(dir.path(), &nats);
        assert!(
            err.contains(&format!("bucket {bucket}: it has no age limit")),
            "{err}"
        );
        js.delete_key_value(bucket).await.expect("deleting it");
    }
    // Made by the hosts, they have one: a host starts.
    let a = host(dir.path(), &nats, "a", "");
    assert_eq!(a.call("GET", "/healthz", None).await.0, StatusCode::OK);
    a.stop();
    // Host entries must lapse with the leases: a hosts bucket made by hand with
    // another age is refused too...
    js.delete_key_value("tether-hosts")
        .await
        .expect("deleting it");
    js.create_key_value(kv::Config {
        bucket: "tether-hosts".into(),
        history: 1,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .expect("making the bucket by hand");
    let err = refused_start(dir.path(), &nats);
    assert!(
        err.contains("bucket tether-hosts: its age limit (3600 s) is not the leases bucket's"),
        "{err}"
    );
    // ...and one the hosts make again takes the leases' age, whatever the host's
    // own `lease_ttl_secs` (the leases bucket's is in force).
    js.delete_key_value("tether-hosts")
        .await
        .expect("deleting it");
    let a = host(dir.path(), &nats, "a", "[cluster]\nlease_ttl_secs = 7\n");
    assert_eq!(a.call("GET", "/healthz", None).await.0, StatusCode::OK);
    let hosts = hosts_bucket(&nats).await;
    let leases = js.get_key_value("tether-leases").await.expect("leases");
    assert_eq!(
        hosts.status().await.expect("status").max_age(),
        leases.status().await.expect("status").max_age()
    );
    a.stop();
}

/// Runs `tether serve` in cluster mode at `nats`, expecting it to refuse to start;
/// what it said.
pub(super) fn refused_start(dir: &Path, nats: &Nats) -> String {
    let mut serve = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("host"))
        .args(["--cluster", &nats.url(), "--host-id", "a"])
        .env("TETHER_API_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tether serve");
    let deadline = Instant::now() + WAIT;
    while serve.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = serve.kill();
            let _ = serve.wait();
            panic!("tether serve started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = serve.wait_with_output().expect("its output");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every host id names one running process: a second `tether serve` started with a
/// live host's id refuses to start, saying so, and leaves the first one's entry
/// alone; a host restarted after a crash on its data directory takes its last run's
/// entry over at once.
#[tokio::test]
async fn a_host_id_in_use_by_a_live_host_is_refused_and_a_crashed_hosts_is_taken_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // A long lease: the twin is refused within a renewal (10 s), and the restart
    // after the crash does not wait for the entry to lapse or for two renewals.
    let config = "[cluster]\nlease_ttl_secs = 30\n";
    let a = host(dir.path(), &nats, "a", config);
    let twin = dir.path().join("twin");
    std::fs::create_dir_all(&twin).expect("twin dir");
    write_config(&twin, config);
    let log = dir.path().join("twin.log");
    let mut twin = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&twin)
        .args(["--cluster", &nats.url(), "--host-id", "a"])
        .env("TETHER_API_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("twin log"))
        .spawn()
        .expect("running tether serve");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = twin.try_wait().expect("waiting for the twin") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = twin.kill();
            let _ = twin.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the twin ran: {status:?}; {err}"
    );
    assert!(err.contains("host id a is in use"), "{err}");
    let (status, health) = a.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    let (_, view) = a.call("GET", "/api/v1/cluster", None).await;
    assert_eq!(view["hosts"][0]["publicUrl"], a.base.as_str(), "{view}");

    a.kill();
    let restarted = Instant::now();
    let a = host(dir.path(), &nats, "a", config);
    assert!(
        restarted.elapsed() < Duration::from_secs(8),
        "the restart waited {:?}",
        restarted.elapsed()
    );
    let (status, view) = a.call("GET", "/api/v1/cluster", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["hosts"].as_array().map(Vec::len), Some(1), "{view}");
    assert_eq!(view["hosts"][0]["self"], true, "{view}");
    a.stop();
}

/// libfaketime (Debian's `faketime`, which `.ci/prepare` installs), to run a host
/// whose clock is off; `None` (the test skips, saying so) when it is not installed,
/// unless `TETHER_REQUIRE_FAKETIME` is set.
fn faketime() -> Option<String> {
    let arch = std::env::consts::ARCH;
    let lib = format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1");
    if Path::new(&lib).exists() {
        return Some(lib);
    }
    assert!(
        std::env::var_os("TETHER_REQUIRE_FAKETIME").is_none(),
        "TETHER_REQUIRE_FAKETIME is set but {lib} is missing (run .ci/prepare)"
    );
    eprintln!("skipping: no libfaketime (apt-get install faketime)");
    None
}

/// The ages of what NATS stamps are measured on NATS's clock: a host whose clock is
/// two minutes ahead does not take a name another host reserved a moment ago (its
/// record not stored yet) for a stale hold, and answers its create 409.
#[tokio::test]
async fn a_host_whose_clock_is_ahead_does_not_take_a_fresh_name_hold_for_stale() {
    let Some(lib) = faketime() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let data = dir.path().join("a");
    std::fs::create_dir_all(&data).expect("data dir");
    write_config(&data, "[cluster]\nlease_ttl_secs = 3\n");
    let a = Server::start_args_envs(
        &data,
        Some(TOKEN),
        &["--cluster", &nats.url(), "--host-id", "a"],
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", "+2m"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_DONT_RESET", "1"),
        ],
    );
    // Another host reserved the name this moment and is storing its record.
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let names = js.get_key_value("tether-names").await.expect("names");
    names
        .put(hex::encode("held"), "env-elsewhere".into())
        .await
        .expect("put");
    let (token, _) = a.user_token("alice").await;
    let (status, refused) = a.create_as(&token, "held", false).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let holder = names.get(hex::encode("held")).await.expect("get");
    assert_eq!(holder.as_deref(), Some(&b"env-elsewhere"[..]));
    // A name nobody holds is made as ever.
    let (status, made) = a.create_as(&token, "free", false).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    a.stop();
}

/// Regression: a name's hold was kept for as long as its record lived, even once the
/// record had been renamed by hand (the names bucket still said the old name was
/// its): a create of the old name answered `409 conflict` for good, though no
/// environment had it. A hold whose record has another name now is stale once a
/// minute old, as one whose record is gone; so is one that names no record id.
#[tokio::test]
async fn a_name_held_by_a_record_renamed_by_hand_is_free_after_a_minute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let (status, old) = a
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "before", "provider": "handoff"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{old}");
    let id = id_of(&old);
    // A hold written by hand, naming no record at all.
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let names = js.get_key_value("tether-names").await.expect("names");
    names
        .put(hex::encode("scribbled"), "".into())
        .await
        .expect("put");
    let held_since = Instant::now();
    // Compacted into the file, which is edited by hand below.
    assert!(a.records().to_string().contains(&id));
    edit_records(&a.data_dir, |list| {
        let record = list.iter_mut().find(|r| r["id"] == id.as_str());
        record.expect("the record")["name"] = json!("after");
    });
    listed(&a, "after").await;
    let records = js.get_key_value("tether-records").await.expect("records");
    let deadline = Instant::now() + WAIT;
    while bucket_record(&records, &id).await["name"] != "after" {
        assert!(
            Instant::now() < deadline,
            "the rename never reached the bucket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fresh, both holds stand.
    for name in ["before", "scribbled"] {
        let body = json!({"name": name, "provider": "handoff"});
        let (status, refused) = a.call("POST", "/api/v1/environments", Some(body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{name}: {refused}");
    }
    tokio::time::sleep(Duration::from_secs(61).saturating_sub(held_since.elapsed())).await;
    for name in ["before", "scribbled"] {
        let body = json!({"name": name, "provider": "handoff"});
        let (status, made) = a.call("POST", "/api/v1/environments", Some(body)).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{name}: {made}; log:\n{}",
            a.log()
        );
    }
    // The renamed record keeps its new name, unreserved as ever.
    let env = listed(&a, "after").await;
    assert_eq!(env["id"], id.as_str(), "{env}");
    a.stop();
}

/// A renewal of a lease that NATS stored but whose answer never came (a NATS restart
/// or a timeout at that moment) moves the key's revision on under the host: the
/// host's next renewal finds the lease still says it, at its epoch, and keeps it,
/// instead of taking it for lost and stopping the environment.
#[tokio::test]
async fn a_lease_renewal_whose_answer_was_lost_does_not_stop_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "[cluster]\nlease_ttl_secs = 3\n");
    let (id, _, _) = a.handoff_env("kept").await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let leases = js.get_key_value("tether-leases").await.expect("leases");
    // What a's renewal would have written, written as if by it, unseen by it.
    let entry = leases.entry(&id).await.expect("entry").expect("a lease");
    leases
        .update(&id, entry.value.clone(), entry.revision)
        .await
        .expect("renewed under a");
    // Three renewals later it still runs there, its lease its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, env) = a
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(env["status"], "running", "{env}");
    assert!(!a.log().contains("lease lost"), "{}", a.log());
    let now = leases.entry(&id).await.expect("entry").expect("a lease");
    assert!(now.revision > entry.revision + 1, "not renewed since");
    a.stop();
}

/// JetStream's storage limit reached (here the records stream's own, as an operator
/// or a full disk would set it): a change made on a host is kept there and its
/// `/healthz` says it is not shared, instead of only a warning in its log; once NATS
/// takes writes again the change is written and reaches the other hosts.
#[tokio::test]
async fn changes_that_nats_refuses_to_store_are_named_in_healthz_until_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let config = "[cluster]\nlease_ttl_secs = 3\n";
    let a = host(dir.path(), &nats, "a", config);
    let b = host(dir.path(), &nats, "b", config);
    let (token, _) = a.user_token("alice").await;
    let (status, made) = a.create_as(&token, "before", false).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    listed(&b, "before").await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("KV_tether-records").await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    let full = async_nats::jetstream::stream::Config {
        max_bytes: i64::try_from(info.state.bytes).expect("bytes"),
        ..info.config.clone()
    };
    js.update_stream(full).await.expect("limited");
    let (status, made) = a.create_as(&token, "after", false).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    until_health(&a, &["have not been written to NATS"]).await;
    js.update_stream(info.config.clone())
        .await
        .expect("unlimited");
    listed(&b, "after").await;
    until_health(&a, &[]).await;

    // A revoke the tokens bucket will not take: the token stays good on b, and a
    // says so, until the revoke is shared.
    let (bob, bob_id) = a.user_token("bob").await;
    until_status(&b, "/api/v1/environments", &bob, StatusCode::OK).await;
    let mut stream = js.get_stream("KV_tether-tokens").await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    // (A delete's marker is smaller than the token it replaces: it takes a limit on
    // the size of one message to refuse it.)
    let full = async_nats::jetstream::stream::Config {
        max_message_size: 1,
        ..info.config.clone()
    };
    js.update_stream(full).await.expect("limited");
    let (status, body) = a
        .call("DELETE", &format!("/api/v1/tokens/{bob_id}"), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    until_health(&a, &["1 token change(s)", "have not been written to NATS"]).await;
    js.update_stream(info.config.clone())
        .await
        .expect("unlimited");
    until_status(&b, "/api/v1/environments", &bob, StatusCode::UNAUTHORIZED).await;
    until_health(&a, &[]).await;
    a.stop();
    b.stop();
}

#[tokio::test]
async fn the_cluster_keeps_serving_through_a_nats_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let b = host(dir.path(), &nats, "b", "");
    let body = json!({"name": "before", "provider": "handoff"});
    let (status, before) = a.call("POST", "/api/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{before}");
    listed(&b, "before").await;
    // An app on b reaches a runtime on a through NATS.
    let (id, url, token) = a.handoff_env("live").await;
    let mut runtime = Ws::connect(&url, Some(&token)).await.expect("runtime");
    until_env(&b, &id, "shown running on a", |e| e["host"] == "a").await;
    let mut app = b.app(&id, "t").await;
    app.send(json!({"type": "hello", "n": 1})).await;
    assert_eq!(runtime.next().await["n"], 1);

    let nats = nats.restart(dir.path());
    // Changes made while the hosts reconnect still reach the other host.
    let body = json!({"name": "after", "provider": "handoff"});
    let (status, after) = b.call("POST", "/api/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{after}");
    listed(&a, "after").await;
    listed(&a, "before").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, health) = a.call("GET", "/healthz", None).await;
        if health["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "a never healthy again: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Apps tunnel through the restarted NATS; the runtime on a never noticed.
    let mut app = b.app(&id, "t").await;
    app.send(json!({"type": "hello", "n": 2})).await;
    loop {
        // Past anything else the host tells the runtime meanwhile.
        if runtime.next().await["n"] == 2 {
            break;
        }
    }
    drop(nats);
    for server in [a, b] {
        server.stop();
    }
}

/// One tunnel message as a host sends it (`cluster/tunnel.rs`): kind, sequence
/// number, acknowledgement, bytes.
fn tunnel_message(kind: u8, seq: u64, data: &[u8]) -> bytes::Bytes {
    let mut message = vec![kind];
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&0u64.to_be_bytes());
    message.extend_from_slice(data);
    message.into()
}

#[tokio::test]
async fn apps_on_another_host_go_through_nats_with_the_relays_guarantees() {
    use futures_util::StreamExt;
    use tether::relay::peer::{Incoming, PeerState};

    const N: u64 = 1_500;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let config = "[relay]\nwindow_messages = 256\nmax_message_kib = 4096\n";
    let a = host(dir.path(), &nats, "a", config);
    let b = host(dir.path(), &nats, "b", config);
    let (id, url, token) = a.handoff_env("tunnelled").await;
    let mut rt = Ws::connect(&url, Some(&token)).await.expect("runtime on a");
    // Whatever crosses between the hosts for this environment, seen on NATS.
    let watcher = async_nats::connect(nats.url()).await.expect("nats client");
    let mut crossing = watcher
        .subscribe(format!("tether.relay.{id}.>"))
        .await
        .expect("subscribe");

    // Resume across hosts: a resumable app on b, cut and resumed, misses nothing.
    let mut peer = PeerState::new("app-on-b");
    let app_url = b.ws_url(&format!("/ws/app/{id}?thread=t&{}", peer.query()));
    let mut app = Ws::connect(&app_url, Some(TOKEN)).await.expect("app on b");
    assert!(matches!(
        peer.on_frame(&app.next_text().await.expect("greeting")),
        Incoming::Resumed(_)
    ));
    let frame = tokio::time::timeout(WAIT, crossing.next())
        .await
        .expect("frames on NATS")
        .expect("a message");
    assert!(
        frame.subject.starts_with(&format!("tether.relay.{id}.")),
        "{}",
        frame.subject
    );
    for n in 1..=100 {
        rt.send(json!({"type": "r", "threadId": "t", "n": n})).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 40 {
        if let Incoming::Message(m) = peer.on_frame(&app.next_text().await.expect("frame"))
            && m["type"] == "r"
        {
            seen.push(m["n"].as_u64().expect("n"));
        }
    }
    drop(app);
    for n in 101..=200 {
        rt.send(json!({"type": "r", "threadId": "t", "n": n})).await;
    }
    let app_url = b.ws_url(&format!("/ws/app/{id}?thread=t&{}", peer.query()));
    let mut app = Ws::connect(&app_url, Some(TOKEN)).await.expect("app on b");
    let greeting = app.next_text().await.expect("greeting");
    assert!(greeting.contains("\"reset\":false"), "{greeting}");
    peer.on_frame(&greeting);
    // The running host counts the tunnel apart from its own connections.
    assert!(a.metric("tether_cluster_tunnels_open").await >= 1);
    assert_eq!(a.metric("tether_cluster_tunnels_refused_total").await, 0);
    assert_eq!(b.metric("tether_cluster_tunnels_open").await, 0);
    while seen.len() < 200 {
        match peer.on_frame(&app.next_text().await.expect("frame")) {
            Incoming::Message(m) if m["type"] == "r" => seen.push(m["n"].as_u64().expect("n")),
            Incoming::Lost(from, to) => panic!("lost {from}..={to} inside the window"),
            _ => {}
        }
    }
    assert_eq!(seen, (1..=200).collect::<Vec<_>>());

    // Frames past NATS's payload limit (1 MiB) cross both ways whole.
    let big = "y".repeat(3 << 20);
    rt.send(json!({"type": "big", "threadId": "t", "pad": big}))
        .await;
    loop {
        if let Incoming::Message(m) = peer.on_frame(&app.next_text().await.expect("big frame"))
            && m["type"] == "big"
        {
            assert_eq!(m["pad"].as_str().map(str::len), Some(3 << 20));
            break;
        }
    }
    app.send(json!({"type": "big-up", "pad": big})).await;
    let up = rt.next().await;
    assert_eq!(up["pad"].as_str().map(str::len), Some(3 << 20));
    drop(app);

    // Backpressure across hosts: apps on b that never read are closed with 4008
    // while an app on a keeps pace, and the resumable one learns exactly its loss.
    let mut fast = a.app(&id, "s").await;
    let mut slow_peer = PeerState::new("slow-on-b");
    let slow_url = b.ws_url(&format!("/ws/app/{id}?thread=s&{}", slow_peer.query()));
    let mut slow = Ws::connect(&slow_url, Some(TOKEN)).await.expect("slow app");
    let mut plain_slow = b.app(&id, "s").await;
    let pad = "x".repeat(8 << 10);
    let pace = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let permits = pace.clone();
    let sending = tokio::spawn(async move {
        for n in 1..=N {
            permits.acquire().await.expect("permit").forget();
            rt.send(json!({"type": "s", "threadId": "s", "n": n, "pad": pad}))
                .await;
        }
        rt
    });
    for n in 1..=N {
        assert_eq!(fast.next().await["n"], n);
        pace.add_permits(1);
    }
    let _rt = sending.await.expect("sender");
    assert_eq!(slow.close_code().await, Some(4008));
    assert_eq!(plain_slow.close_code().await, Some(4008));
    let slow_url = b.ws_url(&format!("/ws/app/{id}?thread=s&{}", slow_peer.query()));
    let mut slow = Ws::connect(&slow_url, Some(TOKEN)).await.expect("slow app");
    let (mut lost, mut last_n) = (0, 0);
    while slow_peer.last_seq() < N + 1 {
        let text = slow.next_text().await.expect("resumed frames");
        match slow_peer.on_frame(&text) {
            Incoming::Lost(from, to) => lost += to - from + 1,
            Incoming::Message(m) if m["type"] == "s" => {
                let n = m["n"].as_u64().expect("n");
                assert!(n > last_n, "out of order");
                last_n = n;
            }
            _ => {}
        }
    }
    assert!(lost > 0, "the window overflowed, so something was lost");

    // A tunnel carries app sockets only: an API request through one is refused, and
    // a malformed request to open one is answered, not obeyed.
    let refused = watcher
        .request("tether.tunnel.a", "{\"tunnel\":\"../x\"}".into())
        .await
        .expect("an answer");
    assert!(
        String::from_utf8_lossy(&refused.payload).contains("bad tunnel request"),
        "{refused:?}"
    );
    let mut down = watcher
        .subscribe(format!("tether.relay.{id}.probe1.down"))
        .await
        .expect("subscribe");
    let open = json!({"tunnel": "probe1", "environment": id, "app": "127.0.0.1"});
    let answer = watcher
        .request("tether.tunnel.a", open.to_string().into())
        .await
        .expect("an answer");
    assert_eq!(answer.payload.as_ref(), b"ok");
    let request = format!(
        "GET /api/v1/environments HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    );
    watcher
        .publish(
            format!("tether.relay.{id}.probe1.up"),
            tunnel_message(0, 1, request.as_bytes()),
        )
        .await
        .expect("publish");
    let mut answered = Vec::new();
    while !String::from_utf8_lossy(&answered).contains("\r\n\r\n") {
        let message = tokio::time::timeout(WAIT, down.next())
            .await
            .expect("an answer through the tunnel")
            .expect("a message");
        if message.payload.first() == Some(&0) {
            answered.extend_from_slice(&message.payload[17..]);
        }
    }
    let answered = String::from_utf8_lossy(&answered);
    assert!(answered.starts_with("HTTP/1.1 404"), "{answered}");
    assert!(!answered.contains("tunnelled"), "{answered}");
    // An open tunnel's id is not served twice (the second would read its bytes).
    let again = watcher
        .request("tether.tunnel.a", open.to_string().into())
        .await
        .expect("an answer");
    assert!(
        String::from_utf8_lossy(&again.payload).contains("is open"),
        "{again:?}"
    );
    // A message out of turn (one was lost, or someone else publishes on the subject)
    // resets the tunnel rather than pass on a stream with a hole in it.
    let mut down = watcher
        .subscribe(format!("tether.relay.{id}.probe2.down"))
        .await
        .expect("subscribe");
    let open = json!({"tunnel": "probe2", "environment": id, "app": "127.0.0.1"});
    let answer = watcher
        .request("tether.tunnel.a", open.to_string().into())
        .await
        .expect("an answer");
    assert_eq!(answer.payload.as_ref(), b"ok");
    watcher
        .publish(
            format!("tether.relay.{id}.probe2.up"),
            tunnel_message(0, 2, b"GET / HTTP/1.1\r\n"),
        )
        .await
        .expect("publish");
    loop {
        let message = tokio::time::timeout(WAIT, down.next())
            .await
            .expect("the tunnel's answer")
            .expect("a message");
        match message.payload.first() {
            Some(3) => break,
            Some(1) => continue,
            other => panic!("expected a reset, got kind {other:?}"),
        }
    }
    a.stop();
    b.stop();
}

/// Regression: an acknowledgement of tunnel messages never sent (injected on the
/// subject by another NATS client) was taken as it came, opening the writer's window
/// past what the other side holds; it now resets the tunnel, as a message out of turn
/// does.
#[tokio::test]
async fn a_tunnel_message_acknowledging_what_was_never_sent_resets_the_tunnel() {
    use futures_util::StreamExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // A long lease: the tunnel is not reset for silence while the test looks.
    let a = host(dir.path(), &nats, "a", "[cluster]\nlease_ttl_secs = 60\n");
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let mut down = client
        .subscribe("tether.relay.probe-env.acked1.down")
        .await
        .expect("subscribe");
    let open = json!({"tunnel": "acked1", "environment": "probe-env", "app": "127.0.0.1"});
    let answer = client
        .request("tether.tunnel.a", open.to_string().into())
        .await
        .expect("an answer");
    assert_eq!(answer.payload.as_ref(), b"ok");
    // A heartbeat acknowledging nothing is what a host sends: the tunnel stays open.
    let up = "tether.relay.probe-env.acked1.up";
    let acking = |ack: u64| {
        let mut message = tunnel_message(1, 0, &[]).to_vec();
        message[9..17].copy_from_slice(&ack.to_be_bytes());
        bytes::Bytes::from(message)
    };
    client.publish(up, acking(0)).await.expect("publish");
    // The running host has sent nothing yet: an acknowledgement of its message 5
    // is not the other host's.
    client.publish(up, acking(5)).await.expect("publish");
    let reset = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = down.next().await {
            if message.payload.first() == Some(&3) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(reset, Ok(true), "no reset; log:\n{}", a.log());
    assert!(
        a.log().contains("acknowledged what was never sent"),
        "{}",
        a.log()
    );
    a.stop();
}

#[tokio::test]
async fn apps_bridged_straight_to_the_running_host_get_its_relay_unchanged() {
    use futures_util::{SinkExt, StreamExt};
    use tether::relay::peer::{Incoming, PeerState};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let relay = "[relay]\nmax_message_kib = 4096\n";
    let a = host(dir.path(), &nats, "a", relay);
    let c = host(
        dir.path(),
        &nats,
        "c",
        &format!("{relay}[cluster]\nrelay = \"direct\"\n"),
    );
    let (id, url, token) = a.handoff_env("straight").await;
    let mut rt = Ws::connect(&url, Some(&token)).await.expect("runtime on a");
    until_env(&c, &id, "running on a", |e| {
        e["host"] == "a" && e["runtime"]["connected"] == true
    })
    .await;

    // A browser's way in, the token as a subprotocol: the answer names `tether.v1`,
    // and frames cross both ways in order, the first the running host's greeting.
    let mut request = c
        .ws_url(&format!("/ws/app/{id}?thread=t"))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        format!("tether.v1, tether.bearer.{TOKEN}")
            .parse()
            .expect("header"),
    );
    let (mut browser, answer) = tokio_tungstenite::connect_async(request)
        .await
        .expect("app on c");
    assert_eq!(
        answer.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL),
        Some(&http::HeaderValue::from_static("tether.v1"))
    );
    for n in 1..=100 {
        let frame = json!({"type": "up", "n": n}).to_string();
        browser.send(Message::text(frame)).await.expect("send");
    }
    for n in 1..=100 {
        let up = rt.next().await;
        assert_eq!(
            (up["type"].as_str(), up["n"].as_u64()),
            (Some("up"), Some(n))
        );
    }
    for n in 1..=100 {
        rt.send(json!({"type": "down", "threadId": "t", "n": n}))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let frame = tokio::time::timeout(WAIT, browser.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("a good frame");
        if let Message::Text(text) = frame {
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["type"] == "down" {
                seen.push(v["n"].as_u64().expect("n"));
            }
        }
    }
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    drop(browser);

    // A resumable app cut off (its connection dropped, no close) resumes through the
    // bridge and misses nothing; frames past a few socket buffers cross whole.
    let mut peer = PeerState::new("app-on-c");
    let app_url = c.ws_url(&format!("/ws/app/{id}?thread=r&{}", peer.query()));
    let mut app = Ws::connect(&app_url, Some(TOKEN)).await.expect("app on c");
    assert!(matches!(
        peer.on_frame(&app.next_text().await.expect("greeting")),
        Incoming::Resumed(_)
    ));
    drop(app);
    let big = "z".repeat(3 << 20);
    for n in 1..=20 {
        rt.send(json!({"type": "r", "threadId": "r", "n": n, "pad": if n == 10 { big.as_str() } else { "" }}))
            .await;
    }
    let mut app = Ws::connect(&app_url, Some(TOKEN))
        .await
        .expect("app on c again");
    let mut seen = Vec::new();
    while seen.len() < 20 {
        match peer.on_frame(&app.next_text().await.expect("frame")) {
            Incoming::Message(m) if m["type"] == "r" => {
                let n = m["n"].as_u64().expect("n");
                let pad = m["pad"].as_str().map(str::len);
                assert_eq!(pad, Some(if n == 10 { 3 << 20 } else { 0 }));
                seen.push(n);
            }
            Incoming::Lost(from, to) => panic!("lost {from}..={to} inside the window"),
            _ => {}
        }
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    app.send(json!({"type": "big-up", "pad": big})).await;
    let up = rt.next().await;
    assert_eq!(up["pad"].as_str().map(str::len), Some(3 << 20));

    // The running host gone without a close: the bridged app is closed with 1012.
    a.kill();
    assert_eq!(app.close_code().await, Some(1012));
    c.stop();
}

/// Polls until `server` answers `GET path` with `token` by `status`.
pub(super) async fn until_status(server: &Server, path: &str, token: &str, status: StatusCode) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, body) = server.call_with("GET", path, None, Some(token)).await;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {got} {body}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression: a token changed in the tokens bucket (by hand: no host changes one in
/// place) was ignored by every host that had it already, while a host joining later
/// took the bucket's: the hosts disagreed on what the token may do for as long as
/// they ran. A host now takes the bucket's, closing what the old one opened.
#[tokio::test]
async fn a_token_changed_in_the_bucket_is_in_force_on_hosts_that_had_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let (secret, id) = a.user_token("alice").await;
    until_status(&a, "/api/v1/environments", &secret, StatusCode::OK).await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let tokens = js.get_key_value("tether-tokens").await.expect("tokens");
    let deadline = Instant::now() + WAIT;
    let mut record: Value = loop {
        if let Some(bytes) = tokens.get(&id).await.expect("read") {
            break serde_json::from_slice(&bytes).expect("token json");
        }
        assert!(
            Instant::now() < deadline,
            "the token never reached the bucket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Expired, by hand.
    record["expiresAt"] = json!("2001-01-01T00:00:00Z");
    tokens
        .put(&id, record.to_string().into())
        .await
        .expect("writing the token");
    until_status(
        &a,
        "/api/v1/environments",
        &secret,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // A host joining now agrees.
    let b = host(dir.path(), &nats, "b", "");
    until_status(
        &b,
        "/api/v1/environments",
        &secret,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    a.stop();
    b.stop();
}

#[tokio::test]
async fn tokens_made_or_revoked_on_one_host_hold_on_every_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let b = host(dir.path(), &nats, "b", "");
    // Alice's token, made on a, is good on b too.
    let (status, issued) = a
        .call("POST", "/api/v1/tokens", Some(json!({"user": "alice"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let alice = issued["token"].as_str().expect("token").to_owned();
    let token_id = issued["id"].as_str().expect("id").to_owned();
    until_status(&b, "/api/v1/environments", &alice, StatusCode::OK).await;
    // Her environment runs on a; her app on b reaches it with her token (bridged).
    let (status, env) = b
        .call_with(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "hers", "provider": "handoff", "start": true})),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = id_of(&env);
    let env = until_env(&a, &id, "running", |e| e["status"] == "running").await;
    let host_of = env["host"].as_str().expect("host").to_owned();
    let (owner, other) = if host_of == "a" { (&a, &b) } else { (&b, &a) };
    let handoff = std::fs::read_to_string(
        owner
            .data_dir
            .join(".codebolt/environments/hers/runtime.json"),
    )
    .expect("runtime.json");
    let handoff: Value = serde_json::from_str(&handoff).expect("handoff");
    let mut runtime = Ws::connect(
        handoff["url"].as_str().expect("url"),
        handoff["token"].as_str(),
    )
    .await
    .expect("runtime");
    let app_url = other.ws_url(&format!("/ws/app/{id}?thread=t"));
    let mut app = Ws::connect(&app_url, Some(&alice)).await.expect("app");
    app.send(json!({"type": "hello"})).await;
    assert_eq!(runtime.next().await["type"], "hello");
    // Every host sees how many runtimes each host has connected.
    for server in [owner, other] {
        until_host(server, &host_of, "its runtime counted", |h| {
            h["runtimesConnected"] == 1 && h["load"] == 1
        })
        .await;
    }
    let direct_url = owner.ws_url(&format!("/ws/app/{id}?thread=u"));
    let mut direct = Ws::connect(&direct_url, Some(&alice)).await.expect("app");

    // A host that joins later takes the token in, into its file too.
    let c = host(dir.path(), &nats, "c", "");
    until_status(&c, "/api/v1/environments", &alice, StatusCode::OK).await;
    let file = std::fs::read_to_string(c.data_dir.join(".codebolt/tokens.json")).expect("file");
    assert!(file.contains(&token_id) && !file.contains(&alice), "{file}");

    // Revoked on c: refused everywhere, and her connections on any host are closed.
    let (status, _) = c
        .call("DELETE", &format!("/api/v1/tokens/{token_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for server in [&a, &b, &c] {
        until_status(
            server,
            "/api/v1/environments",
            &alice,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    assert_eq!(direct.close_code().await, Some(4003));
    assert_eq!(app.close_code().await, Some(4003));
    drop(runtime);
    until_host(&c, &host_of, "its runtime gone", |h| {
        h["runtimesConnected"] == 0 && h["load"] == 1
    })
    .await;
    let file = std::fs::read_to_string(a.data_dir.join(".codebolt/tokens.json")).expect("file");
    assert!(!file.contains(&token_id), "{file}");
    for server in [a, b, c] {
        server.stop();
    }
}

/// `n` results of `ask`, all at once, and how many answered each status.
async fn at_once<F, Fut>(n: usize, ask: F) -> Vec<StatusCode>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    futures_util::future::join_all((0..n).map(ask)).await
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// The environments of `owner` that `server` lists, and how many of them should run.
async fn owned(server: &Server, owner: &str) -> (usize, usize) {
    let (status, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let theirs: Vec<&Value> = (list.as_array().into_iter().flatten())
        .filter(|e| e["owner"] == owner)
        .collect();
    let running = (theirs.iter())
        .filter(|e| e["desiredState"] == "running")
        .count();
    (theirs.len(), running)
}

/// Waits until every one of `servers` lists `want` (all, running) of `owner`'s.
async fn until_owned(servers: &[&Server], owner: &str, want: (usize, usize)) {
    let deadline = Instant::now() + WAIT;
    for server in servers {
        loop {
            let seen = owned(server, owner).await;
            if seen == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{owner}: {seen:?}, not {want:?}; log:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_users_limits_hold_when_every_host_admits_their_changes_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let config = "[tenancy.users.alice]\nmax_environments = 4\n\
        [tenancy.users.bob]\nmax_running = 2\n\
        [templates.chat]\nprovider = \"handoff\"\nscope = \"thread\"\nmax_per_user = 3\n";
    let hosts = [
        host(dir.path(), &nats, "a", config),
        host(dir.path(), &nats, "b", config),
        host(dir.path(), &nats, "c", config),
    ];
    let [a, b, c] = &hosts;
    let hosts = &hosts;
    let mut tokens = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let token = a.user_token(user).await.0;
        for server in [b, c] {
            until_status(server, "/api/v1/environments", &token, StatusCode::OK).await;
        }
        tokens.push(token);
    }
    let [alice, bob, carol] = &tokens[..] else {
        unreachable!("three users")
    };

    // Alice may own 4: 24 creates, 8 on each host at once, make exactly 4.
    let made = at_once(24, |i| async move {
        let server = &hosts[i % 3];
        server.create_as(alice, &format!("al-{i}"), false).await.0
    })
    .await;
    assert_eq!(count(&made, StatusCode::CREATED), 4, "{made:?}");
    assert_eq!(count(&made, StatusCode::TOO_MANY_REQUESTS), 20, "{made:?}");
    until_owned(&[a, b, c], "alice", (4, 0)).await;

    // Bob may run 2: six of his, each started through a host at once, two run.
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = json!({"name": format!("bo-{i}"), "provider": "handoff"});
        let (status, env) =
            (a.call_with("POST", "/api/v1/environments", Some(body), Some(bob))).await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        ids.push(id_of(&env));
    }
    until_owned(&[a, b, c], "bob", (6, 0)).await;
    let ids = &ids;
    let started = at_once(6, |i| async move {
        let path = format!("/api/v1/environments/{}/start", ids[i]);
        hosts[i % 3]
            .call_with("POST", &path, None, Some(bob))
            .await
            .0
    })
    .await;
    assert_eq!(count(&started, StatusCode::ACCEPTED), 2, "{started:?}");
    assert_eq!(
        count(&started, StatusCode::TOO_MANY_REQUESTS),
        4,
        "{started:?}"
    );
    until_owned(&[a, b, c], "bob", (6, 2)).await;

    // Carol may have 3 of template chat: nine new threads, three on each host at
    // once, make exactly 3.
    let connects = (0..9).map(|i| {
        let url = hosts[i % 3].ws_url(&format!("/ws/app?template=chat&thread=t{i}"));
        async move { Ws::connect(&url, Some(carol)).await }
    });
    let results = futures_util::future::join_all(connects).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let refused = (results.iter())
        .filter(|r| matches!(r, Err(StatusCode::TOO_MANY_REQUESTS)))
        .count();
    assert_eq!(
        (admitted, refused),
        (3, 6),
        "{:?}",
        results.iter().map(|r| r.as_ref().err()).collect::<Vec<_>>()
    );
    until_owned(&[a, b, c], "carol", (3, 3)).await;
    drop(results);

    // A host that died holding Alice's admission key (written here as one would):
    // with room again, her counted changes are refused with 503 while the key
    // lasts, and admitted once the bucket drops it, 10 s after it was made.
    let (_, list) = a
        .call_with("GET", "/api/v1/environments", None, Some(alice))
        .await;
    let hers = list
        .as_array()
        .and_then(|l| l.first())
        .map(id_of)
        .expect("one of hers");
    let path = format!("/api/v1/environments/{hers}");
    assert_eq!(
        a.call_with("DELETE", &path, None, Some(alice)).await.0,
        StatusCode::NO_CONTENT
    );
    until_owned(&[a, b, c], "alice", (3, 0)).await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let admissions = js.get_key_value("tether-admissions").await.expect("bucket");
    admissions
        .put(hex::encode("alice"), "z".into())
        .await
        .expect("put");
    let planted = Instant::now();
    let (status, refused) = b.create_as(alice, "al-late", false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "cluster_unavailable", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("another host"), "{message}");
    loop {
        let (status, made) = b.create_as(alice, "al-late", false).await;
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{made}");
        assert!(
            planted.elapsed() < Duration::from_secs(30),
            "the key never lapsed"
        );
    }
    assert!(
        planted.elapsed() >= Duration::from_secs(9),
        "{:?}",
        planted.elapsed()
    );
    until_owned(&[a, b, c], "alice", (4, 0)).await;

    // NATS gone: a create, counted or not, is refused with 503 within its bound, not
    // made on one host alone.
    let (status, admins) = b.create_as(TOKEN, "admins-own", false).await;
    assert_eq!(status, StatusCode::CREATED, "{admins}");
    until_env(a, &id_of(&admins), "listed", |_| true).await;
    let port = nats.port;
    drop(nats);
    let before = names(b).await;
    let asked = Instant::now();
    for (token, name) in [(bob.as_str(), "bo-late"), (TOKEN, "admins")] {
        let (status, refused) = b.create_as(token, name, false).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert_eq!(refused["error"]["code"], "cluster_unavailable", "{refused}");
    }
    assert!(
        asked.elapsed() < Duration::from_secs(14),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(names(b).await, before);
    // What needs no answer from NATS is not held up waiting for one: a delete goes on
    // (the cluster hears of it once NATS is back), and the cluster view says at once
    // that it cannot be had.
    let (_, hers) = b
        .call_with("GET", "/api/v1/environments", None, Some(alice))
        .await;
    let hers = hers.as_array().and_then(|l| l.first()).map(id_of);
    let path = format!("/api/v1/environments/{}", hers.expect("one of hers"));
    let asked = Instant::now();
    let (status, body) = b.call_with("DELETE", &path, None, Some(alice)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, view) = b.call("GET", "/api/v1/cluster", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{view}");
    assert_eq!(view["error"]["code"], "cluster_unavailable", "{view}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // A start is answered within its lease claim's bound (the environment runs once
    // NATS is back and a lease can be had).
    let path = format!("/api/v1/environments/{}/start", id_of(&admins));
    let asked = Instant::now();
    let (status, body) = b.call("POST", &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(9),
        "{:?}",
        asked.elapsed()
    );
    let _nats = Nats::start(dir.path(), port, true).expect("nats-server again");
    until_env(b, &id_of(&admins), "running once NATS is back", |e| {
        e["status"] == "running"
    })
    .await;
}

/// The names of the environments `server` lists, sorted.
async fn names(server: &Server) -> Vec<String> {
    let (status, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let mut names: Vec<String> = (list.as_array().into_iter().flatten())
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Reads `app`'s frames until the `provisioned` one (status frames may come first on
/// a connection bridged while the environment starts) and returns it.
async fn provisioned_frame(app: &mut Ws) -> Value {
    loop {
        let frame = app.next_any().await;
        if frame["type"] == "provisioned" {
            return frame;
        }
        assert_eq!(frame["type"], "environmentStatus", "{frame}");
    }
}

/// The environment id of a `provisioned` frame.
fn provisioned_id(frame: &Value) -> String {
    frame["environmentId"]
        .as_str()
        .expect("environmentId")
        .to_owned()
}

/// The `environment.create` entries `server`'s audit log has for `id`.
async fn creates_audited(server: &Server, id: &str) -> usize {
    let (status, trail) = server
        .call("GET", "/api/v1/audit?owner=alice&limit=1000", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let trail = trail.as_array().cloned().expect("a list");
    trail
        .iter()
        .filter(|e| e["action"] == "environment.create" && e["target"] == id)
        .count()
}

#[tokio::test]
async fn a_template_connect_on_another_host_is_bridged_to_the_running_one() {
    use tether::relay::peer::{Incoming, PeerState};

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let chat = "[templates.chat]\nprovider = \"handoff\"\nscope = \"thread\"\n";
    let a = host(dir.path(), &nats, "a", chat);
    let b = host(dir.path(), &nats, "b", chat);
    let c = host(
        dir.path(),
        &nats,
        "c",
        &format!("{chat}[cluster]\nrelay = \"direct\"\n"),
    );
    let (alice, _) = a.user_token("alice").await;
    for server in [&b, &c] {
        until_status(server, "/api/v1/templates", &alice, StatusCode::OK).await;
    }
    let at = |server: &Server, query: &str| server.ws_url(&format!("/ws/app?{query}"));

    // Alice's first connect, on a, makes the thread's environment there.
    let mut on_a = Ws::connect(&at(&a, "template=chat&thread=t1"), Some(&alice))
        .await
        .expect("app on a");
    let first = provisioned_frame(&mut on_a).await;
    assert_eq!(first["created"], true, "{first}");
    let id = provisioned_id(&first);
    let env = until_env(&a, &id, "running", |e| e["status"] == "running").await;
    let (url, token) = a.handoff_runtime(env["name"].as_str().expect("name"));
    let mut rt = Ws::connect(&url, Some(&token)).await.expect("runtime on a");
    for server in [&b, &c] {
        until_env(server, &id, "running on a", |e| {
            e["host"] == "a" && e["runtime"]["connected"] == true
        })
        .await;
    }

    // Her connect on b (through NATS) and on c (straight to a): the same environment,
    // not made again, its frames both ways in order and on the app's thread.
    for (server, name) in [(&b, "b"), (&c, "c")] {
        let mut app = Ws::connect(&at(server, "template=chat&thread=t1"), Some(&alice))
            .await
            .unwrap_or_else(|e| panic!("app on {name}: {e}; log:\n{}", server.log()));
        let first = app.next_any().await;
        assert_eq!(first["type"], "provisioned", "{name}: {first}");
        assert_eq!(first["created"], false, "{name}: {first}");
        assert_eq!(provisioned_id(&first), id, "{name}");
        for n in 1..=50 {
            app.send(json!({"type": "up", "from": name, "n": n})).await;
        }
        for n in 1..=50 {
            // Bounded as a whole: a runtime that hears nothing still gets pings.
            let up = tokio::time::timeout(WAIT, rt.next())
                .await
                .unwrap_or_else(|_| panic!("the app's frames on {name} never reached a"));
            assert_eq!(
                (
                    up["from"].as_str(),
                    up["n"].as_u64(),
                    up["threadId"].as_str()
                ),
                (Some(name), Some(n), Some("t1")),
                "{up}"
            );
        }
        // Another thread's frame is not this app's.
        rt.send(json!({"type": "down", "threadId": "other", "n": 0}))
            .await;
        for n in 1..=50 {
            rt.send(json!({"type": "down", "threadId": "t1", "n": n}))
                .await;
        }
        for n in 1..=50 {
            let down = app.next().await;
            assert_eq!(
                (down["type"].as_str(), down["n"].as_u64()),
                (Some("down"), Some(n))
            );
        }
        let echo = json!({"type": "echo", "requestId": name, "payload": name});
        app.send(echo).await;
        let asked = rt.next().await;
        assert_eq!(asked["requestId"], name);
        rt.send(
            json!({"type": "echoResponse", "threadId": "t1", "requestId": name, "payload": name}),
        )
        .await;
        let answered = app.next().await;
        assert_eq!(
            (answered["type"].as_str(), answered["payload"].as_str()),
            (Some("echoResponse"), Some(name)),
            "{answered}"
        );
    }
    // Made once, and audited where it was made only.
    assert_eq!(creates_audited(&a, &id).await, 1);
    assert_eq!(creates_audited(&b, &id).await, 0);
    assert_eq!(creates_audited(&c, &id).await, 0);

    // A resumable app on b keeps its session there: cut off, it resumes through the
    // bridge and misses nothing.
    let mut peer = PeerState::new("resumed-on-b");
    let resumable = at(&b, &format!("template=chat&thread=t1&{}", peer.query()));
    let mut app = Ws::connect(&resumable, Some(&alice))
        .await
        .expect("app on b");
    let mut greeted = false;
    let mut provisioned = false;
    while !(greeted && provisioned) {
        let text = app.next_text().await.expect("greeting");
        match peer.on_frame(&text) {
            Incoming::Resumed(_) => greeted = true,
            Incoming::Message(m) if m["type"] == "provisioned" => {
                assert_eq!(provisioned_id(&m), id);
                provisioned = true;
            }
            _ => {}
        }
    }
    drop(app);
    for n in 1..=10 {
        rt.send(json!({"type": "r", "threadId": "t1", "n": n}))
            .await;
    }
    let resumable = at(&b, &format!("template=chat&thread=t1&{}", peer.query()));
    let mut app = Ws::connect(&resumable, Some(&alice))
        .await
        .expect("app on b again");
    let mut seen = Vec::new();
    while seen.len() < 10 {
        match peer.on_frame(&app.next_text().await.expect("frame")) {
            Incoming::Message(m) if m["type"] == "r" => seen.push(m["n"].as_u64().expect("n")),
            Incoming::Lost(from, to) => panic!("lost {from}..={to} inside the window"),
            _ => {}
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    drop(app);

    // A template ticket was spent on b: it is not presented to a again; 409 names a.
    let (status, issued) = b
        .call_with(
            "POST",
            "/api/v1/tickets",
            Some(json!({"template": "chat", "thread": "t1"})),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let secret = issued["ticket"].as_str().expect("ticket");
    match Ws::try_connect(&at(&b, &format!("ticket={secret}")), None, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            assert_eq!(answer.status(), StatusCode::CONFLICT.as_u16());
            let body = String::from_utf8_lossy(answer.body().as_deref().unwrap_or_default());
            assert!(body.contains("host a"), "{body}");
        }
        other => panic!("expected 409, got {:?}", other.map(|_| "an upgrade")),
    }

    // First connects for a new key on b and c at once make one environment: one host
    // makes it, the other finds it and bridges its app there.
    let (url_b, url_c) = (
        at(&b, "template=chat&thread=t2"),
        at(&c, "template=chat&thread=t2"),
    );
    let (on_b, on_c) = tokio::join!(
        Ws::connect(&url_b, Some(&alice)),
        Ws::connect(&url_c, Some(&alice)),
    );
    let (mut on_b, mut on_c) = (
        on_b.unwrap_or_else(|e| panic!("app on b: {e}; log:\n{}", b.log())),
        on_c.unwrap_or_else(|e| panic!("app on c: {e}; log:\n{}", c.log())),
    );
    let (first_b, first_c) = (
        provisioned_frame(&mut on_b).await,
        provisioned_frame(&mut on_c).await,
    );
    let id2 = provisioned_id(&first_b);
    assert_eq!(provisioned_id(&first_c), id2);
    let made = [&first_b, &first_c]
        .iter()
        .filter(|f| f["created"] == true)
        .count();
    assert_eq!(made, 1, "{first_b} {first_c}");
    let env = until_env(&b, &id2, "running", |e| e["status"] == "running").await;
    let maker = if env["host"] == "b" { &b } else { &c };
    assert_eq!(creates_audited(maker, &id2).await, 1);
    let (url, token) = maker.handoff_runtime(env["name"].as_str().expect("name"));
    let mut rt2 = Ws::connect(&url, Some(&token)).await.expect("runtime");
    for (app, name) in [(&mut on_b, "b"), (&mut on_c, "c")] {
        app.send(json!({"type": "hello", "from": name})).await;
        let hello = rt2.next().await;
        assert_eq!(
            (hello["from"].as_str(), hello["threadId"].as_str()),
            (Some(name), Some("t2"))
        );
    }
    drop((on_a, on_b, on_c, rt, rt2));
    for server in [a, b, c] {
        server.stop();
    }
}

/// Host `id` as `server`'s `GET /api/v1/cluster` shows it, once `pred` holds for it.
pub(super) async fn until_host(
    server: &Server,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, view) = server.call("GET", "/api/v1/cluster", None).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        let hosts = view["hosts"].as_array().expect("hosts");
        if let Some(host) = hosts.iter().find(|h| h["id"] == id)
            && pred(host)
        {
            return host.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never so; the view: {view}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `server`'s `/healthz` once one of its reasons contains every one of `words`
/// (none: once it is `ok`).
pub(super) async fn until_health(server: &Server, words: &[&str]) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, health) = server.call("GET", "/healthz", None).await;
        assert_eq!(status, StatusCode::OK, "{health}");
        let reasons = health["reasons"].as_array().cloned().unwrap_or_default();
        let found = match words {
            [] => health["status"] == "ok",
            _ => reasons
                .iter()
                .filter_map(Value::as_str)
                .any(|r| health["status"] == "degraded" && words.iter().all(|w| r.contains(w))),
        };
        if found {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never said {words:?}: {health}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times `server` logged `what`.
pub(super) fn times_logged(server: &Server, what: &str) -> usize {
    server.log().matches(what).count()
}

/// One section of the settings the hosts compare, as the cluster view, `/metrics`
/// and the log show it.
struct Compared {
    /// The key of a host's entry in the hosts bucket.
    entry: &'static str,
    /// The host fields of `GET /api/v1/cluster`: digest, match, count, names.
    fields: [&'static str; 4],
    /// How `/healthz` and the log name it.
    label: &'static str,
    /// The gauge of hosts whose section differs.
    metric: &'static str,
}

const TEMPLATES: Compared = Compared {
    entry: "templates",
    fields: [
        "templatesDigest",
        "templatesMatch",
        "templateCount",
        "templateNames",
    ],
    label: "[templates]",
    metric: "tether_cluster_templates_differ",
};

const PROVIDERS: Compared = Compared {
    entry: "providers",
    fields: [
        "providersDigest",
        "providersMatch",
        "providerCount",
        "providerNames",
    ],
    label: "providers",
    metric: "tether_cluster_providers_differ",
};

const TENANCY: Compared = Compared {
    entry: "tenancy",
    fields: [
        "tenancyDigest",
        "tenancyMatch",
        "tenancyUserCount",
        "tenancyUsers",
    ],
    label: "[tenancy] limits",
    metric: "tether_cluster_tenancy_differ",
};

impl Compared {
    /// Hosts a, b and c of one `config`, once each shows every one of them with the
    /// same digest of the section and `names`; with that digest.
    async fn three_agreeing(
        &self,
        dir: &Path,
        nats: &Nats,
        config: &str,
        names: &Value,
    ) -> ([Server; 3], Value) {
        let a = host(dir, nats, "a", config);
        let b = host(dir, nats, "b", config);
        let c = host(dir, nats, "c", config);
        let digest = self.own_digest(&a, "a").await;
        self.all_agree(&[(&a, "a"), (&b, "b"), (&c, "c")], &digest, names)
            .await;
        ([a, b, c], digest)
    }

    /// The answering host's digest of the section, once `server` shows it.
    async fn own_digest(&self, server: &Server, id: &str) -> Value {
        let [digest, ..] = self.fields;
        let own = until_host(server, id, "its own digest", |h| h[digest].is_string()).await;
        let hex = own[digest].as_str().expect("digest").to_owned();
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{hex}"
        );
        own[digest].clone()
    }

    /// Every one of `servers` shows every one of them with `digest` and `names`,
    /// matching, and is healthy.
    async fn all_agree(&self, servers: &[(&Server, &str)], digest: &Value, names: &Value) {
        let [digest_field, matches, count, names_field] = self.fields;
        for (server, _) in servers {
            for (_, id) in servers {
                let host = until_host(server, id, "the same section", |h| h[matches] == true).await;
                assert_eq!(&host[digest_field], digest, "{host}");
                assert_eq!(&host[names_field], names, "{host}");
                assert_eq!(host[count], names.as_array().map_or(0, Vec::len), "{host}");
            }
            until_health(server, &[]).await;
            assert_eq!(server.metric(self.metric).await, 0);
        }
    }

    /// `a` and `c` name `b`, whose section is no longer `digest` but still has
    /// `names`; `b` names them both.
    async fn b_is_named(&self, [a, b, c]: [&Server; 3], digest: &Value, names: &Value) {
        let [digest_field, matches, _, names_field] = self.fields;
        let differ = format!("{} differ", self.label);
        for (server, other) in [(a, "c"), (c, "a")] {
            let seen = until_host(server, "b", "b's change", |h| h[matches] == false).await;
            assert!(
                seen[digest_field].is_string() && &seen[digest_field] != digest,
                "{seen}"
            );
            assert_eq!(&seen[names_field], names, "{seen}");
            let health = until_health(server, &[&differ, "this host and host b:"]).await;
            let reasons = health["reasons"].to_string();
            assert!(!reasons.contains(&format!("host {other}:")), "{reasons}");
            let agreeing = until_host(server, other, "still the same", |_| true).await;
            assert_eq!(agreeing[matches], true, "{agreeing}");
        }
        until_health(b, &[&differ, "this host and hosts a, c:"]).await;
        let itself = until_host(b, "b", "b itself", |_| true).await;
        assert_eq!(itself[matches], true, "{itself}");
        assert_ne!(&itself[digest_field], digest, "{itself}");
    }

    /// Two entries no host of this version writes to `hosts` (an older host's,
    /// without the section, and one saying `forged` of it) are unknown to `a`, not
    /// different; two rounds of comparisons later `a` still names `b` alone, and has
    /// warned of that once and logged the forged entry once.
    async fn unknown_is_not_different(
        &self,
        hosts: &async_nats::jetstream::kv::Store,
        [a, b]: [&Server; 2],
        forged: Value,
    ) {
        let entry = |id: &str| json!({"id": id, "publicUrl": "http://127.0.0.1:9", "load": 0, "seenAt": "2025-01-01T00:00:00Z"});
        let mut forged_entry = entry("forged");
        forged_entry[self.entry] = forged;
        for (id, value) in [("older", entry("older")), ("forged", forged_entry)] {
            hosts
                .put(id, value.to_string().into())
                .await
                .expect("writing an entry");
        }
        for id in ["older", "forged"] {
            let shown = until_host(a, id, "the written entry", |_| true).await;
            for field in self.fields {
                assert_eq!(shown[field], Value::Null, "{field}: {shown}");
            }
        }
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let differ = format!("{} differ", self.label);
        let health = until_health(a, &[&differ, "this host and host b:"]).await;
        assert_eq!(
            health["reasons"].as_array().map(Vec::len),
            Some(1),
            "{health}"
        );
        let warned = format!(
            "cluster: {} differ between this host and other hosts",
            self.label
        );
        let malformed = format!("ignoring what a host's entry says of its {}", self.label);
        assert_eq!(times_logged(a, &warned), 1, "{}", a.log());
        assert_eq!(times_logged(a, &malformed), 1, "{}", a.log());
        assert_eq!(a.metric(self.metric).await, 1);
        assert_eq!(b.metric(self.metric).await, 2);
    }

    /// Every one of `servers` sees `b` with `digest` again and is healthy, and `a`
    /// logged that they agree again.
    async fn agree_again(&self, [a, b, c]: [&Server; 3], digest: &Value) {
        let [digest_field, ..] = self.fields;
        for server in [a, c] {
            until_host(server, "b", "b fixed", |h| &h[digest_field] == digest).await;
        }
        for server in [a, b, c] {
            until_health(server, &[]).await;
            assert_eq!(server.metric(self.metric).await, 0);
        }
        let again = format!("every live host's {} are this host's again", self.label);
        assert!(a.log().contains(&again), "{}", a.log());
    }
}

/// The hosts bucket of the cluster at `nats`.
pub(super) async fn hosts_bucket(nats: &Nats) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    js.get_key_value("tether-hosts").await.expect("hosts")
}

/// Regression: an entry of the hosts bucket was shown by `GET /api/v1/cluster` as it
/// came, so a hand-written one (anyone with access to the NATS account) listed a host
/// "reached" at any text, a `javascript:` or a credentialled URL among them, and
/// "last seen" at any text. Such an entry is now left out, and logged once.
#[tokio::test]
async fn a_hosts_entry_that_is_not_a_hosts_is_left_out_of_the_cluster_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // A long lease: the entries written below do not lapse while the test looks.
    let a = host(dir.path(), &nats, "a", "[cluster]\nlease_ttl_secs = 60\n");
    let hosts = hosts_bucket(&nats).await;
    let entry = |id: &str, url: &str, seen: &str| {
        json!({"id": id, "publicUrl": url, "load": 0, "seenAt": seen}).to_string()
    };
    let at = "2025-01-01T00:00:00Z";
    for (id, value) in [
        ("fine", entry("fine", "http://127.0.0.1:9", at)),
        ("script", entry("script", "javascript:alert(1)", at)),
        (
            "creds",
            entry("creds", "https://user:secret@127.0.0.1:9", at),
        ),
        (
            "pathy",
            entry("pathy", "http://127.0.0.1:9/elsewhere?x=1", at),
        ),
        (
            "stamp",
            entry("stamp", "http://127.0.0.1:9", "\u{1b}[2J yesterday"),
        ),
        ("other", entry("fine", "http://127.0.0.1:9", at)),
    ] {
        hosts.put(id, value.into()).await.expect("writing an entry");
    }
    until_host(&a, "fine", "the well-formed entry", |_| true).await;
    // Listed once more: each malformed entry is logged once while it stays so.
    let (status, view) = a.call("GET", "/api/v1/cluster", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let listed: Vec<&str> = (view["hosts"].as_array().expect("hosts").iter())
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(listed, ["a", "fine"], "{view}");
    for key in ["script", "creds", "pathy", "stamp", "other"] {
        assert_eq!(
            times_logged(&a, &format!("key={key} ")),
            1,
            "{key}: {}",
            a.log()
        );
    }
    assert!(
        a.log()
            .contains("cluster: ignoring a malformed entry in the hosts bucket"),
        "{}",
        a.log()
    );
    a.stop();
}

#[tokio::test]
async fn hosts_whose_templates_differ_are_named_by_the_others_until_they_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // A short lease: the hosts renew their entries, and compare, every 2 s.
    let same = "[cluster]\nlease_ttl_secs = 6\n\
        [templates.chat]\nprovider = \"handoff\"\nscope = \"thread\"\nmax_per_user = 5\n\
        config = { model = \"m\" }\n\
        [templates.notes]\nprovider = \"handoff\"\nscope = \"user\"\n";
    // The same templates everywhere: each host shows every host's digest, its own.
    let names = json!(["chat", "notes"]);
    let ([a, b, c], digest) = TEMPLATES
        .three_agreeing(dir.path(), &nats, same, &names)
        .await;

    // b's chat lets a user have more: a and c name b, and b names them.
    write_config(
        &b.data_dir,
        &same.replace("max_per_user = 5", "max_per_user = 7"),
    );
    TEMPLATES.b_is_named([&a, &b, &c], &digest, &names).await;

    // b lacks a template now; and two entries no host of this version writes (an
    // older host's, without templates, and a forged one) are unknown, not different.
    let without_notes = same.split("[templates.notes]").next().expect("chat");
    write_config(&b.data_dir, without_notes);
    let seen = until_host(&a, "b", "b without notes", |h| h["templateCount"] == 1).await;
    assert_eq!(seen["templateNames"], json!(["chat"]), "{seen}");
    assert_eq!(seen["templatesMatch"], false, "{seen}");
    let forged = json!({"digest": "not a digest\n", "count": 0, "names": []});
    (TEMPLATES.unknown_is_not_different(&hosts_bucket(&nats).await, [&a, &b], forged)).await;

    // b's tether.toml fixed and reloaded: every host agrees and is healthy again.
    write_config(&b.data_dir, same);
    TEMPLATES.agree_again([&a, &b, &c], &digest).await;
    for server in [a, b, c] {
        server.stop();
    }
}

#[tokio::test]
async fn hosts_whose_tenancy_differs_are_named_by_the_others_until_they_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let same = "[cluster]\nlease_ttl_secs = 6\n\
        [tenancy]\nmax_environments = 10\nmax_running = 2\n\
        [tenancy.users.bob]\nmax_running = 5\n[tenancy.users.alice]\nmax_environments = 3\n";
    // The same limits everywhere: every host shows every host's digest, its own.
    let users = json!(["alice", "bob"]);
    let ([a, b, c], digest) = TENANCY
        .three_agreeing(dir.path(), &nats, same, &users)
        .await;

    // b lets every user have more environments (a live reload): a and c name b, and
    // b names them; everything else still agrees.
    let more = same.replace("max_environments = 10", "max_environments = 12");
    write_config(&b.data_dir, &more);
    TENANCY.b_is_named([&a, &b, &c], &digest, &users).await;
    let seen = until_host(&a, "b", "b's other sections", |_| true).await;
    assert_eq!(seen["templatesMatch"], true, "{seen}");
    assert_eq!(seen["providersMatch"], true, "{seen}");
    let health = until_health(&a, &["a user's limits", "the host their request reaches"]).await;
    assert_eq!(
        health["reasons"].as_array().map(Vec::len),
        Some(1),
        "{health}"
    );
    assert_eq!(a.metric(TENANCY.metric).await, 1);
    assert_eq!(b.metric(TENANCY.metric).await, 2);

    // b's tether.toml fixed and reloaded: every host agrees and is healthy again.
    write_config(&b.data_dir, same);
    TENANCY.agree_again([&a, &b, &c], &digest).await;
    for server in [a, b, c] {
        server.stop();
    }
}

/// Puts `bytes` in place as `server`'s drop-in `handoff.wasm` (renamed into place,
/// as an operator's copy should be), or removes it (`None`).
fn drop_in_handoff(server: &Server, bytes: Option<&[u8]>) {
    let providers = server.data_dir.join(".codebolt/providers");
    let file = providers.join("handoff.wasm");
    match bytes {
        Some(bytes) => {
            let part = providers.join("handoff.part");
            std::fs::write(&part, bytes).expect("writing the component");
            std::fs::rename(&part, &file).expect("renaming it into place");
        }
        None => std::fs::remove_file(&file).expect("removing handoff.wasm"),
    }
}

/// The SHA-256 of the `handoff` component `server` has loaded.
async fn handoff_sha256(server: &Server) -> Value {
    let (status, provider) = server.call("GET", "/api/v1/providers/handoff", None).await;
    assert_eq!(status, StatusCode::OK, "{provider}");
    provider["sha256"].clone()
}

#[tokio::test]
async fn hosts_whose_providers_differ_are_named_by_the_others_until_they_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // Each host grants `handoff` the same, and gives it an API key of its own: a
    // secret's value is not compared (nor published), its key is.
    let config = |secret: &str| {
        format!(
            "[cluster]\nlease_ttl_secs = 6\n\
            [providers.handoff]\nurls = [\"http://127.0.0.1:9\"]\n\
            config = {{ apiKey = \"{secret}\", model = \"m\" }}\n"
        )
    };
    let a = host(dir.path(), &nats, "a", &config("secret-of-a"));
    let b = host(dir.path(), &nats, "b", &config("secret-of-b"));
    let c = host(dir.path(), &nats, "c", &config("secret-of-c"));

    // The same providers everywhere: every host shows every host's digest, its own.
    let digest = PROVIDERS.own_digest(&a, "a").await;
    let (status, loaded) = a.call("GET", "/api/v1/providers", None).await;
    assert_eq!(status, StatusCode::OK, "{loaded}");
    let mut names: Vec<String> = (loaded.as_array().expect("providers").iter())
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.contains(&"handoff".to_owned()), "{names:?}");
    let servers = [(&a, "a"), (&b, "b"), (&c, "c")];
    PROVIDERS.all_agree(&servers, &digest, &json!(names)).await;
    // What the hosts bucket holds names the providers, never a secret's value.
    let hosts = hosts_bucket(&nats).await;
    let entry = hosts
        .get("a")
        .await
        .expect("a's entry")
        .expect("a is there");
    let entry = String::from_utf8_lossy(&entry).into_owned();
    assert!(
        entry.contains("handoff") && !entry.contains("secret-of-a"),
        "{entry}"
    );

    // b grants handoff one destination more: a and c name b, and b names them; their
    // templates still agree.
    let wider = config("secret-of-b").replace(
        "\"http://127.0.0.1:9\"",
        "\"http://127.0.0.1:9\", \"http://127.0.0.1:10\"",
    );
    write_config(&b.data_dir, &wider);
    PROVIDERS
        .b_is_named([&a, &b, &c], &digest, &json!(names))
        .await;
    let seen = until_host(&a, "b", "b's templates", |_| true).await;
    assert_eq!(seen["templatesMatch"], true, "{seen}");
    let forged = json!({"digest": digest, "count": 1, "names": ["../etc"]});
    (PROVIDERS.unknown_is_not_different(&hosts, [&a, &b], forged)).await;
    assert_eq!(a.metric(TEMPLATES.metric).await, 0);

    // b's grant put back (its secret still its own): they agree again.
    write_config(&b.data_dir, &config("secret-of-b"));
    PROVIDERS.agree_again([&a, &b, &c], &digest).await;

    // Another build of handoff on b (other bytes, same name and grant): named again.
    let original = std::fs::read(guests::HANDOFF).expect("handoff.wasm");
    drop_in_handoff(&b, Some(&guests::rebuilt(&original, "another build")));
    let seen = until_host(&a, "b", "b's other build", |h| h["providersMatch"] == false).await;
    assert_eq!(seen["providerNames"], json!(names), "{seen}");
    until_health(&a, &["providers differ", "this host and host b:"]).await;
    assert_ne!(handoff_sha256(&a).await, handoff_sha256(&b).await);

    // b without handoff at all: one provider fewer, and still named.
    drop_in_handoff(&b, None);
    let seen = until_host(&a, "b", "b without handoff", |h| {
        h["providerCount"] == names.len() - 1
    })
    .await;
    let fewer: Vec<&String> = names.iter().filter(|n| *n != "handoff").collect();
    assert_eq!(seen["providerNames"], json!(fewer), "{seen}");
    assert_eq!(seen["providersMatch"], false, "{seen}");

    // The same build back on b: every host agrees and is healthy again.
    drop_in_handoff(&b, Some(&original));
    PROVIDERS.agree_again([&a, &b, &c], &digest).await;
    for server in [a, b, c] {
        server.stop();
    }
}

/// A bucket deleted by hand under running hosts (or every bucket, when NATS restarts
/// without its storage) is named in every host's `/healthz`, not left to freeze
/// their view of the cluster silently; one made again by hand is named as made
/// again; a host restarted makes a missing bucket again and writes its records there.
#[tokio::test]
async fn a_bucket_deleted_or_made_again_under_running_hosts_is_named_in_healthz() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let config = "[cluster]\nlease_ttl_secs = 3\n";
    let a = host(dir.path(), &nats, "a", config);
    let b = host(dir.path(), &nats, "b", config);
    let (token, _) = a.user_token("alice").await;
    let (status, made) = a.create_as(&token, "one", false).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    listed(&b, "one").await;
    until_health(&a, &[]).await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    js.delete_key_value("tether-records").await.expect("delete");
    for host in [&a, &b] {
        until_health(host, &["bucket tether-records is gone"]).await;
    }
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "tether-records".into(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("made again");
    for host in [&a, &b] {
        until_health(host, &["bucket tether-records was deleted and made again"]).await;
    }
    // Restarted, a host follows the bucket again and writes its records there.
    b.stop();
    let b = host(dir.path(), &nats, "b", config);
    until_health(&b, &[]).await;
    let records = js.get_key_value("tether-records").await.expect("records");
    let deadline = Instant::now() + WAIT;
    while records.keys().await.expect("keys").count().await == 0 {
        assert!(Instant::now() < deadline, "no record written again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop();
    b.stop();
}

/// A name reservation NATS made but whose answer never came (here NATS paused past
/// the create's wait, then let go on): the create was answered 503, and its retry
/// met the reservation of the record that never was, 409 for a minute. The host now
/// lets go of such a reservation in the background once NATS answers, so the retry
/// is made.
#[tokio::test]
async fn a_name_reserved_without_an_answer_is_let_go_for_the_creates_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "[cluster]\nlease_ttl_secs = 3\n");
    let body = json!({"name": "unanswered", "provider": "local-process"});
    let paused = nix::unistd::Pid::from_raw(nats.child.id() as i32);
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let (status, refused) = a
        .call("POST", "/api/v1/environments", Some(body.clone()))
        .await;
    nix::sys::signal::kill(paused, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "cluster_unavailable", "{refused}");
    // The paused server takes the reservation once it runs again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let made = loop {
        let (status, made) = a
            .call("POST", "/api/v1/environments", Some(body.clone()))
            .await;
        if status == StatusCode::CREATED {
            break made;
        }
        assert_eq!(status, StatusCode::CONFLICT, "{made}");
        assert!(
            Instant::now() < deadline,
            "the name is still held by the create that failed: {made}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let names = async_nats::jetstream::new(client)
        .get_key_value("tether-names")
        .await
        .expect("names");
    let holder = names.get(hex::encode("unanswered")).await.expect("get");
    assert_eq!(
        holder.as_deref(),
        made["id"].as_str().map(str::as_bytes),
        "{made}"
    );
    a.stop();
}
