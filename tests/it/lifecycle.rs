//! Environments as durable objects: recovery after a crash, live edits of
//! `environments.json`, one host per data directory, restart policies, and no
//! acknowledged mutation lost to a SIGKILL.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, WAIT, runtime_pid, wait_gone, write_config};

/// Fast health checks and restarts, so failures are seen in well under a second.
const FAST: &str = "[health]\ninterval_ms = 100\ntimeout_ms = 2000\nfailure_threshold = 1\nruntime_grace_ms = 500\n\n[restart]\ninitial_backoff_ms = 300\nmax_backoff_ms = 5000\nmax_retries = 3\nstable_after_ms = 60000\n";

fn write_records(dir: &std::path::Path, doc: &Value) {
    let path = dir.join(".codebolt/environments.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Write beside and rename, as an editor or tool would.
    let tmp = dir.join(".codebolt/edit.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test]
async fn after_kill_9_the_environment_comes_back_on_the_same_resource() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("durable", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();
    let resource = env["resourceId"].clone();
    let first_runtime = runtime_pid(&env);
    server.kill();

    let server = Server::start(dir.path());
    let env = server
        .wait_env(&id, "running again", |e| {
            e["status"] == "running"
                && e["runtime"]["connected"] == true
                && e["metadata"]["pid"]
                    .as_str()
                    .is_some_and(|p| p != first_runtime.to_string())
        })
        .await;
    assert_eq!(env["resourceId"], resource);
    let workspaces: Vec<_> = std::fs::read_dir(dir.path().join(".codebolt/environments"))
        .unwrap()
        .collect();
    assert_eq!(workspaces.len(), 1, "one workspace, reused");
    // The runtime orphaned by the crash holds a token of the old generation: it is
    // refused when it reconnects, and exits.
    wait_gone(first_runtime).await;
    server.stop();
}

#[tokio::test]
async fn hand_edits_of_the_records_file_take_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (_, kept) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "kept", "provider": "local-process"})),
        )
        .await;
    let kept_id = kept["id"].as_str().expect("id").to_owned();

    // Hand-add a record that should run, with a field the host does not know.
    let mut doc = server.records();
    doc["environments"].as_array_mut().unwrap().push(json!({
        "id": "hand-1", "name": "by-hand", "provider": "local-process",
        "desiredState": "running", "owner": "alice"
    }));
    write_records(dir.path(), &doc);
    let env = server
        .wait_env("hand-1", "running from a hand edit", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
    let pid = runtime_pid(&env);

    // Hand-change it: desired state stopped.
    let mut doc = server.records();
    for r in doc["environments"].as_array_mut().unwrap() {
        if r["id"] == "hand-1" {
            r["desiredState"] = json!("stopped");
        }
    }
    write_records(dir.path(), &doc);
    server
        .wait_env("hand-1", "stopped by a hand edit", |e| {
            e["status"] == "stopped"
        })
        .await;
    wait_gone(pid).await;
    let record = server.records()["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "hand-1")
        .cloned()
        .expect("record");
    assert_eq!(
        record["owner"], "alice",
        "unknown field survives host rewrites"
    );

    // Start it again through the API, then hand-remove it: stopped and forgotten.
    server
        .call("POST", "/api/v1/environments/hand-1/start", None)
        .await;
    let env = server
        .wait_env("hand-1", "running", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
    let pid = runtime_pid(&env);
    let mut doc = server.records();
    doc["environments"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["id"] != "hand-1");
    write_records(dir.path(), &doc);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = server
            .call("GET", "/api/v1/environments/hand-1", None)
            .await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hand-removed record still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_gone(pid).await;
    let (status, _) = server
        .call("GET", &format!("/api/v1/environments/{kept_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "the other record is untouched");
    server.stop();
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_state_and_its_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (_, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "good", "provider": "local-process"})),
        )
        .await;
    let id = env["id"].as_str().expect("id").to_owned();
    let path = dir.path().join(".codebolt/environments.json");
    // Once the create is compacted into the file, so the broken text is what stays.
    server.records();
    let broken = "{ \"environments\": [ {\"id\": \"x\" ";
    std::fs::write(&path, broken).unwrap();

    let deadline = Instant::now() + WAIT;
    let health = loop {
        let (_, health) = server.call("GET", "/healthz", None).await;
        if health["status"] == "degraded" {
            break health;
        }
        assert!(Instant::now() < deadline, "health never degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        health["reasons"][0]
            .as_str()
            .unwrap()
            .contains("records file"),
        "{health}"
    );
    // Still serving the last good state, and the broken text is still there.
    let (status, _) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);

    // The next write keeps a copy of the broken text first.
    let (status, _) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "after", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let records = server.records();
    let copies: Vec<_> = std::fs::read_dir(dir.path().join(".codebolt"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("environments.json.invalid-")
        })
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(std::fs::read_to_string(copies[0].path()).unwrap(), broken);
    let names: HashSet<String> = records["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        HashSet::from(["good".to_owned(), "after".to_owned()])
    );
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "ok");
    server.stop();
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TETHER_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("second server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another tether host is already serving"),
        "{stderr}"
    );
    // The first one is undisturbed.
    let (status, _) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop();
}

#[tokio::test]
async fn a_killed_runtime_is_restarted_under_on_failure_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), FAST);
    let server = Server::start(dir.path());
    let env = server
        .running_env("phoenix", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();
    assert_eq!(env["restartPolicy"], "on-failure");

    // Kill the runtime three times; each time it comes back with a new process.
    let mut pid = runtime_pid(&env);
    for round in 1..=3u32 {
        kill(pid);
        let env = server
            .wait_env(&id, "restarted", |e| {
                e["status"] == "running"
                    && e["runtime"]["connected"] == true
                    && e["restarts"] == json!(round)
            })
            .await;
        assert!(
            env["lastError"].is_null(),
            "a good start clears lastError: {env}"
        );
        pid = runtime_pid(&env);
    }
    // Backoff grows: restart k+1 comes at least its delay (600 ms, then 1200 ms,
    // less 20 % jitter) after restart k, however fast the machine detects failures.
    let env = server
        .wait_env(&id, "three restarts", |e| e["restarts"] == 3)
        .await;
    let times: Vec<time::OffsetDateTime> = env["restartHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            time::OffsetDateTime::parse(
                t.as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(times.len(), 3);
    let gaps = [times[1] - times[0], times[2] - times[1]];
    assert!(gaps[0] >= time::Duration::milliseconds(480), "{gaps:?}");
    assert!(gaps[1] >= time::Duration::milliseconds(960), "{gaps:?}");
    server.stop();
}

#[tokio::test]
async fn a_killed_runtime_is_not_restarted_under_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), FAST);
    let server = Server::start(dir.path());
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "once", "provider": "local-process", "start": true, "restartPolicy": "never"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    let env = server
        .wait_env(&id, "running", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
    kill(runtime_pid(&env));
    let env = server
        .wait_env(&id, "in error", |e| e["status"] == "error")
        .await;
    assert_eq!(env["restarts"], 0);
    let reason = env["lastError"].as_str().unwrap_or_default();
    assert!(reason.contains("runtime"), "{reason}");
    assert_eq!(
        env["desiredState"], "running",
        "the operator's intent is kept"
    );
    server.stop();
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A host with one running `local-process` environment: the host, its spawn guard's
/// pid (the pid the environment reports) and its runtime's (the guard's child).
async fn guarded_runtime(dir: &std::path::Path) -> (Server, u32, u32) {
    write_config(dir, FAST);
    let server = Server::start(dir);
    let env = server
        .running_env("guarded", "local-process", json!({}))
        .await;
    let guard = runtime_pid(&env);
    let runtime = children_of(guard);
    assert_eq!(runtime.len(), 1, "the guard runs one runtime: {runtime:?}");
    (server, guard, runtime[0])
}

/// Every child runs under the guard the host embeds: linked statically (no C library
/// mapped), run from the host's sealed in-memory copy, named `tether-guard`; and
/// neither the guard nor its program holds that copy open.
#[tokio::test]
async fn children_run_under_the_embedded_static_guard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, guard, runtime) = guarded_runtime(dir.path()).await;
    let exe = std::fs::read_link(format!("/proc/{guard}/exe")).expect("exe");
    assert!(
        exe.to_string_lossy().starts_with("/memfd:tether-guard"),
        "{exe:?}"
    );
    let comm = std::fs::read_to_string(format!("/proc/{guard}/comm")).expect("comm");
    assert_eq!(comm.trim_end(), "tether-guard");
    let cmdline = std::fs::read(format!("/proc/{guard}/cmdline")).expect("cmdline");
    assert!(
        cmdline.starts_with(b"tether-guard\0__spawn-guard\0"),
        "{cmdline:?}"
    );
    let maps = std::fs::read_to_string(format!("/proc/{guard}/maps")).expect("maps");
    assert!(
        !maps.contains("libc.so"),
        "the guard maps the C library: {maps}"
    );
    for pid in [guard, runtime] {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fds") {
            let target = std::fs::read_link(fd.expect("fd").path()).unwrap_or_default();
            assert!(
                !target.to_string_lossy().contains("memfd:tether-guard"),
                "{pid} holds the guard's in-memory copy"
            );
        }
    }
    server.stop();
    wait_gone(runtime).await;
}

#[tokio::test]
async fn a_runtime_whose_guard_is_killed_goes_with_it_and_hears_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, guard, runtime) = guarded_runtime(dir.path()).await;
    // The guard blocks its stop signals; the runtime it starts must not inherit that.
    let status = std::fs::read_to_string(format!("/proc/{runtime}/status")).expect("status");
    let blocked = status
        .lines()
        .find(|l| l.starts_with("SigBlk:"))
        .expect("SigBlk");
    assert_eq!(blocked, "SigBlk:\t0000000000000000", "{status}");
    // The guard killed outright cannot kill its tree: the host does, and nothing of
    // the environment's is left running, even when the host stops right after.
    kill(guard);
    server.stop();
    wait_gone(runtime).await;
}

#[tokio::test]
async fn a_runtime_whose_guard_and_host_are_killed_together_goes_with_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, guard, runtime) = guarded_runtime(dir.path()).await;
    // The host killed first cannot reap the guard and kill its process group; the
    // guard killed before it notices its host is gone (it looks every 200 ms) cannot
    // kill its tree. Only the kernel is left to stop the runtime, which would
    // otherwise run on as init's child, redialling a host that is not there.
    server.kill();
    kill(guard);
    wait_gone(runtime).await;
}

/// Spawn guards host `host` started ahead of time (they keep their command line once
/// given a program), with whether each waits still (has no child yet).
fn spare_guards(host: u32) -> Vec<(u32, bool)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let marker = format!("--parent={host}\0--wait-for-program\0");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
                && !crate::support::process_gone(*p)
        })
        .map(|p| (p, children_of(p).is_empty()))
        .collect()
}

/// Waits until host `host` has `n` guards waiting, and returns them.
async fn waiting_guards(host: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + WAIT;
    loop {
        let waiting: Vec<u32> = (spare_guards(host).into_iter())
            .filter_map(|(p, waits)| waits.then_some(p))
            .collect();
        if waiting.len() == n {
            return waiting;
        }
        assert!(
            Instant::now() < deadline,
            "{} guards wait, not {n}",
            waiting.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A start takes a guard the host started ahead of time: the runtime runs under it
/// with the environment's working directory and variables (the waiting guard had
/// neither), another takes its place, and none outlives a host killed outright.
#[tokio::test]
async fn starts_take_guards_started_ahead_and_those_leave_with_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), FAST);
    let server = Server::start(dir.path());
    let host = server.pid();
    let waiting = waiting_guards(host, 2).await;
    for pid in &waiting {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        assert!(environ.is_empty(), "a waiting guard holds variables");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
        assert_eq!(cwd, std::path::Path::new("/"));
    }
    let env = server.running_env("warm", "local-process", json!({})).await;
    let guard = runtime_pid(&env);
    assert!(
        waiting.contains(&guard),
        "{guard} was not one of {waiting:?}"
    );
    let runtime = children_of(guard);
    assert_eq!(runtime.len(), 1, "{runtime:?}");
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", runtime[0])).expect("cwd");
    let workspace = dir.path().join(".codebolt/environments/warm");
    assert_eq!(cwd, workspace.canonicalize().expect("workspace"));
    let environ = std::fs::read(format!("/proc/{}/environ", runtime[0])).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    let id = env["id"].as_str().expect("id");
    assert!(
        environ.contains(&format!("TETHER_ENVIRONMENT_ID={id}\0")),
        "{environ}"
    );
    // The one taken is replaced.
    let now = waiting_guards(host, 2).await;
    assert!(!now.contains(&guard));
    server.kill();
    for pid in now {
        wait_gone(pid).await;
    }
    wait_gone(runtime[0]).await;
}

/// Guards that died while waiting are passed over: the start still runs, under a
/// guard alive to take it.
#[tokio::test]
async fn a_start_passes_over_waiting_guards_that_died() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), FAST);
    let server = Server::start(dir.path());
    let dead = waiting_guards(server.pid(), 2).await;
    for pid in &dead {
        kill(*pid);
    }
    let env = server
        .running_env("passed-over", "local-process", json!({}))
        .await;
    let guard = runtime_pid(&env);
    assert!(!dead.contains(&guard));
    assert_eq!(children_of(guard).len(), 1);
    server.stop();
}

/// An order framed as the host frames one for a waiting guard: a little-endian length,
/// then NUL-terminated fields (program, directory, argument count, arguments, variable
/// count, each name and value).
fn order(program: &str, cwd: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let (argc, envc) = (args.len().to_string(), env.len().to_string());
    let mut fields = vec![program, cwd, argc.as_str()];
    fields.extend(args);
    fields.push(&envc);
    fields.extend(env.iter().flat_map(|(k, v)| [*k, *v]));
    let body: Vec<u8> = fields
        .iter()
        .flat_map(|f| [f.as_bytes(), b"\0"].concat())
        .collect();
    [(body.len() as u32).to_le_bytes().to_vec(), body].concat()
}

/// Runs `tether`'s guard mode (the code the embedded `tether-guard` runs) as a guard
/// waiting for its program, sends it `framed` and closes the socket: its answer (none
/// if it gave none) and how it ended.
fn waiting_guard(framed: &[u8]) -> (Option<i32>, std::process::Output) {
    use std::io::{Read, Write};
    let (mut host, theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let guard = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["__spawn-guard", "--wait-for-program"])
        // A variable of the guard's own, which its program must not get.
        .env_clear()
        .env("HOME", "/guard-home")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether __spawn-guard");
    let _ = host.write_all(framed);
    let mut code = [0u8; 4];
    let answer = host
        .read_exact(&mut code)
        .ok()
        .map(|()| i32::from_le_bytes(code));
    drop(host);
    (answer, guard.wait_with_output().expect("guard output"))
}

/// A guard waiting for its program runs exactly its order: the order's variables and
/// directory and nothing of its own; a program the system cannot run is answered with
/// the reason's errno; a malformed order is refused whole and nothing runs.
#[test]
fn a_waiting_guard_runs_exactly_its_order_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path().canonicalize().expect("canonical");
    let cwd = cwd.to_str().expect("utf-8 path");
    let script = "pwd; echo \"$ONLY ${HOME-unset}\"; touch ran";
    let framed = order("/bin/sh", cwd, &["-c", script], &[("ONLY", "yes")]);
    let (answer, out) = waiting_guard(&framed);
    assert_eq!(answer, Some(0));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, format!("{cwd}\nyes unset\n"));

    let (answer, out) = waiting_guard(&order("/nonexistent/program", cwd, &[], &[]));
    assert_eq!(answer, Some(2), "ENOENT: {out:?}");
    assert_eq!(out.status.code(), Some(127));

    // Fields missing (the argument count says one, none follows), then a length past
    // the bound: refused before anything runs.
    std::fs::remove_file(dir.path().join("ran")).expect("ran");
    let body = format!("/bin/sh\0{cwd}\x001\0");
    let short = [
        (body.len() as u32).to_le_bytes().to_vec(),
        body.into_bytes(),
    ]
    .concat();
    let huge = u32::MAX.to_le_bytes();
    for framed in [&short[..], &huge[..]] {
        let (answer, out) = waiting_guard(framed);
        assert_eq!(answer, None);
        assert_eq!(out.status.code(), Some(126), "{out:?}");
    }
    assert!(!dir.path().join("ran").exists());
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// SIGKILL the host in the middle of a burst of mutations, many times over: once it is
/// back (its journal replayed) the file parses and holds every mutation the API
/// acknowledged.
#[tokio::test]
async fn no_acknowledged_mutation_is_lost_to_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut server = Server::start(dir.path());
    for round in 0..8 {
        let client = reqwest::Client::new();
        let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut burst = tokio::task::JoinSet::new();
        for i in 0..40 {
            let (client, base, acks) = (client.clone(), server.base.clone(), acks.clone());
            burst.spawn(async move {
                let resp = client
                    .post(format!("{base}/api/v1/environments"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"name": format!("r{round}-{i}"), "provider": "local-process"}))
                    .send()
                    .await
                    .ok()?;
                if resp.status() != StatusCode::CREATED {
                    return None;
                }
                let body: Value = resp.json().await.ok()?;
                acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(body["id"].as_str()?.to_owned())
            });
        }
        // Also delete something acknowledged earlier, concurrently.
        if let Some(victim) = acknowledged.iter().next().cloned() {
            let (client, base) = (client.clone(), server.base.clone());
            let resp = client
                .delete(format!("{base}/api/v1/environments/{victim}"))
                .bearer_auth(TOKEN)
                .send()
                .await;
            if resp.is_ok_and(|r| r.status() == StatusCode::NO_CONTENT) {
                acknowledged.remove(&victim);
                deleted.insert(victim);
            }
        }
        // Kill mid-burst, at a different point in each round.
        let deadline = Instant::now() + WAIT;
        while acks.load(std::sync::atomic::Ordering::SeqCst) < 2 + 4 * round as usize {
            assert!(
                Instant::now() < deadline,
                "round {round}: the burst stalled"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.kill();
        while let Some(done) = burst.join_next().await {
            if let Ok(Some(id)) = done {
                acknowledged.insert(id);
            }
        }
        server = Server::start(dir.path());
        let doc = server.records();
        let on_disk: HashSet<String> = doc["environments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let missing: Vec<_> = acknowledged.difference(&on_disk).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged but lost: {missing:?}"
        );
        let resurrected: Vec<_> = deleted.intersection(&on_disk).collect();
        assert!(
            resurrected.is_empty(),
            "round {round}: deleted but back: {resurrected:?}"
        );
    }
    assert!(!acknowledged.is_empty(), "the bursts acknowledged nothing");
    // A request first: SIGTERM right after the listening line can beat the handler.
    server.call("GET", "/healthz", None).await;
    server.stop();
}

/// A provider whose start never returns ends in `error` within the start timeout,
/// with a reason a person can act on, and nothing hangs in `starting`.
#[tokio::test]
async fn a_start_that_hangs_ends_in_error_within_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::copy(
        crate::support::guests::HOSTILE,
        providers.join("hostile.wasm"),
    )
    .unwrap();
    write_config(dir.path(), "[lifecycle]\nstart_timeout_secs = 2\n");
    let server = Server::start(dir.path());
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "stuck", "provider": "hostile", "config": {"attack": "spin"}, "start": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    let env = server
        .wait_env(&id, "in error", |e| e["status"] == "error")
        .await;
    let reason = env["lastError"].as_str().unwrap_or_default();
    assert!(reason.contains("timed out after 2s"), "{reason}");
    // It shows where the start hung.
    assert_eq!(env["startPhase"], "provider-start", "{env}");
    // Stop and delete still work on it.
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.stop();
}

/// A start reports its phases, in order, to the apps already connected and through
/// the API, each with the time it began; a stop clears them.
#[tokio::test]
async fn a_start_shows_its_phases_to_apps_and_the_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "phases", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert_eq!(env["startPhase"], Value::Null, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    let mut app = server.app(&id, "t").await;
    let first = app.next_any().await;
    assert_eq!(first["startPhase"], Value::Null, "{first}");

    let (status, _) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut phases: Vec<String> = Vec::new();
    let mut since: Vec<String> = Vec::new();
    let mut started_at = None;
    while phases.last().map(String::as_str) != Some("running") {
        let frame = app.next_any().await;
        assert_eq!(frame["type"], "environmentStatus", "{frame}");
        let phase = frame["startPhase"]
            .as_str()
            .expect("a phase while starting");
        started_at.get_or_insert_with(|| frame["startedAt"].clone());
        assert_eq!(frame["startedAt"], started_at.clone().unwrap_or_default());
        if phases.last().map(String::as_str) != Some(phase) {
            phases.push(phase.to_owned());
            since.push(frame["startPhaseSince"].as_str().expect("since").to_owned());
        }
        if phase == "running" {
            assert_eq!(frame["runtime"]["connected"], true, "{frame}");
        }
    }
    // The runtime may connect before the provider's start returns, which skips
    // waiting for it; every other phase shows, in order.
    let expected = [
        "instantiating",
        "provider-start",
        "waiting-for-runtime",
        "running",
    ];
    let mut rest = expected.iter();
    for phase in &phases {
        assert!(rest.any(|e| e == phase), "out of order: {phases:?}");
    }
    assert_eq!(phases[..2], expected[..2], "{phases:?}");
    let mut sorted = since.clone();
    sorted.sort();
    assert_eq!(since, sorted, "each phase began after the one before");

    let (_, env) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(env["startPhase"], "running", "{env}");
    assert_eq!(env["startedAt"], started_at.unwrap_or_default());
    server.stop_env(&id).await;
    let env = server
        .wait_env(&id, "stopped", |e| e["status"] == "stopped")
        .await;
    assert_eq!(env["startPhase"], Value::Null, "{env}");
    assert_eq!(env["startedAt"], Value::Null, "{env}");
    server.stop();
}
