//! Issue 3: a hostile provider gets nowhere, and the host stays up. Each test starts
//! a real server with the `hostile` provider dropped in, runs one attack while a
//! well-behaved `local-process` environment keeps relaying echoes, and checks that
//! the attack is refused or contained with a clear error, that `/healthz` answers,
//! and that no process outlives its environment. Network attacks are in [`net`];
//! issue 10's provider identity (names, built-ins) in [`identity`], bounds on
//! what a provider sends the host in [`bounds`], host memory it could make the
//! host hold outside its own in [`hoards`], what it leaves in its workspace for
//! the host to remove in [`leftovers`], the disk it fills in [`disk`] and the files it
//! keeps open on the host in [`open_files`].

pub(crate) mod bounds;
mod disk;
mod git;
mod hoards;
mod identity;
mod leftovers;
mod net;
mod open_files;
mod process;
pub mod rig;
mod spin;

use std::time::Duration;

use serde_json::json;

use crate::support::{process_gone, wait_gone};
use rig::{Rig, TETHER_TOML};

#[tokio::test]
async fn hostile_reading_etc_passwd_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    let (id, error) = rig
        .refused("passwd", json!({"attack": "read-passwd"}))
        .await;
    assert!(error.contains("reading /etc/passwd"), "{error}");
    assert!(!error.contains("root:"), "{error}");
    rig.delete(&id).await;
    rig.finish().await;
}

#[tokio::test]
async fn hostile_writing_outside_the_workspace_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    let target = rig.dir.path().join("outside.txt");
    let (_, error) = rig
        .refused(
            "writer",
            json!({"attack": "write-outside", "path": target.display().to_string()}),
        )
        .await;
    assert!(error.contains("writing"), "{error}");
    assert!(!target.exists(), "a file appeared outside the workspace");
    assert!(!rig.workspace("escaped.txt").exists());
    assert!(
        !rig.dir
            .path()
            .join(".codebolt/environments/escaped.txt")
            .exists()
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_symlink_escape_is_refused_in_wasi_and_the_relay() {
    let mut rig = Rig::start(|data| {
        let secret = data.join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("secret.txt"), "TOPSECRET").unwrap();
        for env in ["links", "good"] {
            let ws = data.join(".codebolt/environments").join(env);
            std::fs::create_dir_all(&ws).unwrap();
            std::os::unix::fs::symlink(&secret, ws.join("escape")).unwrap();
        }
    })
    .await;
    let (_, error) = rig
        .refused(
            "links",
            json!({"attack": "read", "path": "/workspace/escape/secret.txt"}),
        )
        .await;
    assert!(error.contains("/workspace/escape/secret.txt"), "{error}");
    assert!(!error.contains("TOPSECRET"));
    // The same link through the relay's file handler of the good environment.
    let reply = rig
        .good_request(
            json!({"type": "providerReadFile", "requestId": "r1", "path": "escape/secret.txt"}),
        )
        .await;
    assert!(reply.get("error").is_some(), "{reply}");
    assert!(!reply.to_string().contains("TOPSECRET"), "{reply}");
    let wrote = rig
        .good_request(json!({"type": "providerWriteFile", "requestId": "w1", "path": "escape/planted.txt", "content": "x"}))
        .await;
    assert!(wrote.get("error").is_some(), "{wrote}");
    assert!(!rig.dir.path().join("secret/planted.txt").exists());
    rig.finish().await;
}

#[tokio::test]
async fn hostile_dotdot_escape_is_refused_in_wasi_and_the_relay() {
    let mut rig = Rig::start(|_| {}).await;
    let (_, error) = rig.refused("dots", json!({"attack": "dotdot"})).await;
    assert!(error.contains("/workspace/../"), "{error}");
    assert!(error.contains("/state/../"), "{error}");
    for (n, path) in ["../../../../etc/passwd", "/etc/passwd"].iter().enumerate() {
        let reply = rig
            .good_request(
                json!({"type": "providerReadFile", "requestId": format!("d{n}"), "path": path}),
            )
            .await;
        assert!(reply.get("error").is_some(), "{reply}");
        assert!(!reply.to_string().contains("root:"), "{reply}");
    }
    rig.finish().await;
}

#[tokio::test]
async fn hostile_spawning_bin_sh_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    let (id, error) = rig
        .refused(
            "shell",
            // An API caller's config naming grants has no effect on the broker.
            json!({"attack": "spawn", "program": "/bin/sh", "args": ["-c", "id"],
                   "providers": {"hostile": {"commands": [{"program": "/bin/sh", "args": ["**"]}]}},
                   "commands": [{"program": "/bin/sh", "args": ["**"]}]}),
        )
        .await;
    assert!(
        error.contains("`/bin/sh` with these arguments is not granted"),
        "{error}"
    );
    assert!(
        rig.logged(&id, "spawn denied"),
        "denial not logged with {id}"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_spawning_a_granted_command_with_other_arguments_is_refused() {
    let mut rig = Rig::start(|_| {}).await;
    // Granted: `/bin/echo hello *`.
    let (_, error) = rig
        .refused(
            "args",
            json!({"attack": "spawn", "program": "/bin/echo", "args": ["hello", "a", "b"]}),
        )
        .await;
    assert!(
        error.contains("`/bin/echo` with these arguments is not granted"),
        "{error}"
    );
    let allowed = rig
        .attack(
            "args-ok",
            json!({"attack": "spawn", "program": "/bin/echo", "args": ["hello", "world"]}),
        )
        .await;
    assert_eq!(allowed["status"], "running", "{allowed}");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_spawning_1000_processes_hits_the_cap_and_none_outlive_the_environment() {
    let mut rig = Rig::start(|_| {}).await;
    let env = rig
        .attack(
            "many",
            json!({"attack": "spawn-many", "program": "/bin/sleep", "args": ["60"], "count": 1000}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let outcome = env["metadata"]["outcome"].as_str().expect("outcome");
    // `limits.max_processes = 8` counts per environment.
    assert!(outcome.starts_with("spawned 8;"), "{outcome}");
    assert!(outcome.contains("process limit reached"), "{outcome}");
    let pids: Vec<u32> = outcome
        .rsplit("pids: ")
        .next()
        .unwrap()
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 8);
    assert!(
        pids.iter().all(|p| !process_gone(*p)),
        "children should live while the env runs"
    );
    rig.delete(env["id"].as_str().unwrap()).await;
    for pid in pids {
        wait_gone(pid).await;
    }
    rig.finish().await;
}

#[tokio::test]
async fn hostile_endless_loop_in_start_is_trapped_by_the_deadline() {
    let mut rig = Rig::start(|_| {}).await;
    let started = std::time::Instant::now();
    let (_, error) = rig.refused("spin", json!({"attack": "spin"})).await;
    assert!(error.contains("timed out after 3s"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    rig.finish().await;
}

#[tokio::test]
async fn hostile_allocating_4gib_hits_the_memory_cap() {
    let mut rig = Rig::start(|_| {}).await;
    let (_, error) = rig.refused("alloc", json!({"attack": "alloc"})).await;
    assert!(error.contains("memory limit exceeded"), "{error}");
    assert!(error.contains("64 MiB"), "{error}");
    assert!(error.contains("limits.memory_mib"), "{error}");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_unbounded_recursion_is_trapped() {
    let mut rig = Rig::start(|_| {}).await;
    let (_, error) = rig.refused("recurse", json!({"attack": "recurse"})).await;
    // Deep native frames overflow the capped wasm stack; Rust's shadow stack in
    // linear memory runs off its bottom. Either way the instance is trapped.
    assert!(
        error.contains("stack overflow") || error.contains("its stack"),
        "{error}"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_panic_is_trapped_and_reported() {
    let mut rig = Rig::start(|_| {}).await;
    let (_, error) = rig.refused("panic", json!({"attack": "panic"})).await;
    assert!(error.contains("the provider panicked"), "{error}");
    // A trapped instance is dead, but the environment can be started again.
    rig.finish().await;
}

#[tokio::test]
async fn hostile_hoarding_handles_hits_the_resource_table_cap() {
    let mut rig = Rig::start(|_| {}).await;
    let (_, error) = rig
        .refused("hoard", json!({"attack": "handles", "count": 100000}))
        .await;
    assert!(error.contains("resource limit exceeded"), "{error}");
    assert!(error.contains("limits.max_resources"), "{error}");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_trap_while_running_fails_only_its_environment() {
    let mut rig = Rig::start(|_| {}).await;
    let env = rig.attack("later", json!({"attack": "none"})).await;
    assert_eq!(env["status"], "running", "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let mut app = rig.server.app(&id, "t").await;
    app.send(json!({"type": "attack", "requestId": "p1", "attack": "panic"}))
        .await;
    let failed = rig
        .server
        .wait_env(&id, "error", |e| e["status"] == "error")
        .await;
    let error = failed["lastError"].as_str().unwrap();
    assert!(error.contains("the provider panicked"), "{error}");
    rig.assert_host_fine().await;
    rig.finish().await;
}

#[tokio::test]
async fn hostile_log_flood_is_rate_limited() {
    let mut rig = Rig::start(|_| {}).await;
    let env = rig
        .attack("flood", json!({"attack": "log-flood", "lines": 100000}))
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let id = env["id"].as_str().unwrap();
    let log = rig.server.log();
    let flood_lines = log.lines().filter(|l| l.contains("flood line")).count();
    assert!(
        flood_lines <= 400,
        "{flood_lines} flood lines reached the log"
    );
    assert!(flood_lines >= 100, "the burst should pass ({flood_lines})");
    // The next line after the flood tells the operator what was dropped.
    let env2 = rig
        .attack("flood2", json!({"attack": "log-flood", "lines": 1}))
        .await;
    assert_eq!(env2["status"], "running");
    assert!(!rig.logged(id, "panicked"));
    rig.finish().await;
}

#[tokio::test]
async fn hostile_spawn_loop_log_lines_share_the_log_budget() {
    // Each spawn of a granted command logs "spawned" and the child's output line:
    // spawned one after another (the process cap never bites), they count against
    // the provider's log budget like its own lines. 300 spawns in a start can take
    // longer than the rig's 3 s on a loaded machine.
    let mut rig = Rig::start(|dir| {
        let toml = TETHER_TOML.replace("start_timeout_secs = 3", "start_timeout_secs = 30");
        std::fs::write(dir.join("tether.toml"), toml).unwrap();
    })
    .await;
    let began = std::time::Instant::now();
    let env = rig
        .attack(
            "spawner",
            json!({"attack": "spawn-loop", "program": "/bin/echo", "args": ["hello", "again"], "count": 300}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let id = env["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let log = rig.server.log();
    // The budget is a burst of 200 lines and 50 a second after it: on a loaded
    // machine the 300 spawns take longer and more pass, but never more than that.
    let allowed = 200 + (50.0 * began.elapsed().as_secs_f64()).ceil() as usize;
    let lines = (log.lines())
        .filter(|l| l.contains(id) && (l.contains("spawned") || l.contains("hello again")))
        .count();
    assert!(lines >= 100, "the burst should pass ({lines})");
    assert!(
        lines <= allowed,
        "{lines} lines about 300 spawns (600 lines unbudgeted) reached the log; the budget allows {allowed}"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_provider_view_shows_requested_granted_and_denied() {
    let rig = Rig::start(|_| {}).await;
    let (status, view) = rig
        .server
        .call("GET", "/api/v1/providers/hostile", None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["urls"][0], "http://*:*", "{view}");
    assert_eq!(view["granted"]["urls"][0], "http://127.0.0.2:*", "{view}");
    let denied = &view["denied"];
    assert_eq!(denied["commands"][0]["program"], "*", "{view}");
    assert!(
        denied["urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == "tcp://*:*"),
        "{view}"
    );
    assert_eq!(denied["directories"], json!(["/", "/etc"]), "{view}");
    // The same report from the CLI, for the file before it is dropped in.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["provider", "inspect"])
        .arg(rig.dir.path().join(".codebolt/providers/hostile.wasm"))
        .arg("--config")
        .arg(rig.dir.path().join("tether.toml"))
        .output()
        .expect("tether provider inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["denied"], view["denied"]);
    assert_eq!(report["granted"], view["granted"]);
    rig.finish().await;
}
