//! Crash loops (issue 18, item 3): the host is killed with SIGKILL at a random
//! instant of a mutation burst (concurrent creates, patches and deletes) or of a
//! start/stop storm (local-process environments running the reference runtime,
//! started, stopped, restarted, created started and deleted), then started again.
//! After each restart: every acknowledged mutation is there, the records file the
//! crash left parses, no runtime of an earlier incarnation survives (a `/proc`
//! scan), no environment has two runtimes, and no workspace is left without a
//! record. The suite runs a few rounds; `cargo bench -p tether --bench crashloop
//! -- 100` runs the same code for as many as asked and prints [`Report`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Server, TOKEN, WAIT, create_until_refused, delete_all, patch_until_refused, unnamed_workspaces,
    workspace_procs,
};

/// Environments patched by one writer each in a mutation burst.
const PATCHERS: usize = 8;
/// Writers creating environments in a mutation burst.
const CREATORS: usize = 4;
/// Environments started and stopped in a storm, one writer each.
const STORMED: usize = 3;
/// How long a round's leftovers may take to go (a guard notices its host's death
/// within 200 ms, then kills its tree).
const GRACE: Duration = Duration::from_secs(5);

/// What a crash loop found.
#[derive(Debug, Default)]
pub struct Report {
    /// Rounds run (each ends in a kill -9 and a restart).
    pub rounds: usize,
    /// Mutations the API acknowledged before the kills.
    pub acknowledged: usize,
    /// Acknowledged mutations missing after a restart.
    pub lost: usize,
    /// Times the records file the crash left did not parse.
    pub parse_failures: usize,
    /// Times an environment had two runtimes of the current host.
    pub running_twice: usize,
    /// Processes of an earlier incarnation still there after the grace period.
    pub leftover_processes: usize,
    /// Workspaces no record names, after a restart.
    pub leftover_workspaces: usize,
    /// Runtime processes of the restarted hosts seen by the scans (so the scans
    /// looked at something).
    pub runtimes_seen: usize,
    /// Time from spawning the host to its listening, per restart.
    pub restarts: Vec<Duration>,
    /// What went wrong, one line each.
    pub failures: Vec<String>,
}

impl Report {
    /// Whether nothing was lost, doubled or left behind.
    pub fn clean(&self) -> bool {
        self.lost
            + self.parse_failures
            + self.running_twice
            + self.leftover_processes
            + self.leftover_workspaces
            == 0
    }

    /// The restart time at quantile `q` (0..=1).
    pub fn restart_quantile(&self, q: f64) -> Duration {
        let mut all = self.restarts.clone();
        all.sort();
        let at = ((all.len().max(1) - 1) as f64 * q).round() as usize;
        all.get(at).copied().unwrap_or_default()
    }
}

/// What the API acknowledged, across rounds.
#[derive(Default)]
struct Acked {
    /// Per patched environment, the last `n` acknowledged.
    patched: HashMap<String, u64>,
    created: HashSet<String>,
    deleted: HashSet<String>,
    /// Deletes in flight at a kill: made durable or not, either is right.
    maybe_deleted: HashSet<String>,
    /// Per stormed environment: the last desired state acknowledged, and the one
    /// asked when the host died (it may have been made durable unacknowledged).
    desired: HashMap<String, (&'static str, Option<&'static str>)>,
    count: usize,
}

/// Runs `rounds` crash rounds, mutation bursts and storms in turn, in `data`.
pub async fn run(data: &Path, rounds: usize) -> Report {
    let mut report = Report::default();
    let mut server = Server::start(data);
    let mut patched = Vec::new();
    for i in 0..PATCHERS {
        patched.push(create(&server, &format!("patched-{i}"), false).await);
    }
    let mut stormed = Vec::new();
    for i in 0..STORMED {
        stormed.push(create(&server, &format!("storm-{i}"), false).await);
    }
    let mut acked = Acked::default();
    for round in 0..rounds {
        if round % 2 == 0 {
            burst(server, round, &patched, &mut acked).await;
        } else {
            storm(server, round, &stormed, &mut acked).await;
        }
        report.rounds += 1;
        let records = data.join(".codebolt/environments.json");
        if let Ok(text) = std::fs::read_to_string(&records)
            && let Err(e) = serde_json::from_str::<Value>(&text)
        {
            report.parse_failures += 1;
            report
                .failures
                .push(format!("round {round}: the file does not parse: {e}"));
        }
        let started = Instant::now();
        server = Server::start(data);
        report.restarts.push(started.elapsed());
        check(&server, round, &mut acked, &mut report).await;
    }
    report.acknowledged = acked.count;
    server.stop();
    report
}

async fn create(server: &Server, name: &str, start: bool) -> String {
    let body = json!({"name": name, "provider": "local-process", "start": start});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    env["id"].as_str().expect("id").to_owned()
}

/// Kills the host after a random moment of the burst or storm.
async fn kill_at_random(server: Server, from_ms: u64, to_ms: u64) {
    let wait = rand::rng().random_range(from_ms..to_ms);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    server.kill();
}

/// Concurrent patches, creates and deletes; the host is killed in the middle.
async fn burst(server: Server, round: usize, patched: &[String], acked: &mut Acked) {
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let acks = Arc::new(AtomicUsize::new(0));
    let mut patchers = tokio::task::JoinSet::new();
    for (w, id) in patched.iter().enumerate() {
        let (client, base, id, acks) = (client.clone(), base.clone(), id.clone(), acks.clone());
        // Above anything acknowledged or in flight before.
        let from = acked
            .patched
            .get(&id)
            .map_or(w as u64 * 1_000_000, |n| n + 2);
        patchers.spawn(patch_until_refused(client, base, id, from, acks));
    }
    let mut creators = tokio::task::JoinSet::new();
    for c in 0..CREATORS {
        let (client, base) = (client.clone(), base.clone());
        creators.spawn(create_until_refused(client, base, format!("b{round}-c{c}")));
    }
    let doomed: Vec<String> = acked.created.iter().take(6).cloned().collect();
    let deleter = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move { delete_all(&client, &base, doomed).await })
    };
    // A few acknowledgements first, so every round has something to lose.
    let deadline = Instant::now() + WAIT;
    while acks.load(Ordering::SeqCst) < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    kill_at_random(server, 0, 300).await;
    while let Some(done) = patchers.join_next().await {
        let (id, last) = done.expect("patcher");
        if let Some(n) = last {
            acked.patched.insert(id, n);
        }
    }
    acked.count += acks.load(Ordering::SeqCst);
    while let Some(done) = creators.join_next().await {
        let made = done.expect("creator");
        acked.count += made.len();
        acked.created.extend(made);
    }
    let (gone, inflight) = deleter.await.expect("deleter");
    for id in gone {
        acked.count += 1;
        acked.created.remove(&id);
        acked.deleted.insert(id);
    }
    acked.maybe_deleted.extend(inflight);
}

/// Starts, stops and restarts of running environments, and environments created
/// started and deleted; the host is killed in the middle.
async fn storm(server: Server, round: usize, stormed: &[String], acked: &mut Acked) {
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let mut writers = tokio::task::JoinSet::new();
    for id in stormed {
        let (client, base, id) = (client.clone(), base.clone(), id.clone());
        writers.spawn(async move {
            let mut last = None;
            let mut count = 0;
            loop {
                let (action, desired) = match rand::rng().random_range(0..3) {
                    0 => ("start", "running"),
                    1 => ("stop", "stopped"),
                    _ => ("restart", "running"),
                };
                let sent = client
                    .post(format!("{base}/api/v1/environments/{id}/{action}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        last = Some(desired);
                        count += 1;
                    }
                    // 409: an operation of this environment is under way.
                    Ok(r) if r.status().is_client_error() => {}
                    _ => return (id, last, Some(desired), count),
                }
                let pause = rand::rng().random_range(20..200);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        });
    }
    let churn = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            let mut made = Vec::new();
            let mut gone = Vec::new();
            let mut inflight = None;
            for k in 0.. {
                let sent = client
                    .post(format!("{base}/api/v1/environments"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"name": format!("s{round}-{k}"), "provider": "local-process", "start": true}))
                    .send()
                    .await;
                let Ok(resp) = sent else { break };
                let Ok(body) = resp.json::<Value>().await else {
                    break;
                };
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                made.push(id.clone());
                let pause = rand::rng().random_range(50..400);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let (deleted, cut) = delete_all(&client, &base, vec![id]).await;
                gone.extend(deleted);
                if cut.is_some() {
                    inflight = cut;
                    break;
                }
            }
            (made, gone, inflight)
        })
    };
    kill_at_random(server, 300, 2000).await;
    while let Some(done) = writers.join_next().await {
        let (id, last, inflight, count) = done.expect("storm writer");
        acked.count += count;
        let before = acked.desired.get(&id).map(|d| d.0);
        if let Some(last) = last.or(before) {
            acked.desired.insert(id, (last, inflight));
        }
    }
    let (made, gone, inflight) = churn.await.expect("churn");
    acked.maybe_deleted.extend(inflight);
    acked.count += made.len() + gone.len();
    acked.created.extend(made);
    for id in gone {
        acked.created.remove(&id);
        acked.deleted.insert(id);
    }
}

/// Checks the host restarted after round `round` against what was acknowledged.
async fn check(server: &Server, round: usize, acked: &mut Acked, report: &mut Report) {
    let records = server.records();
    let on_disk: HashMap<String, Value> = records["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r.clone())))
        .collect();
    // A delete in flight at the kill: what the file says is what happened.
    for id in std::mem::take(&mut acked.maybe_deleted) {
        if !on_disk.contains_key(&id) {
            acked.created.remove(&id);
            acked.deleted.insert(id);
        }
    }
    let mut lost = |what: String| {
        report.lost += 1;
        report.failures.push(format!("round {round}: {what}"));
    };
    for (id, n) in &acked.patched {
        let kept = on_disk.get(id).and_then(|r| r["config"]["n"].as_u64());
        // The patch in flight at the kill may have been made durable unacknowledged.
        if !kept.is_some_and(|k| k == *n || k == *n + 1) {
            lost(format!(
                "{id} was acknowledged at n={n}, the file has {kept:?}"
            ));
        }
    }
    for id in &acked.created {
        if !on_disk.contains_key(id) {
            lost(format!("{id} was created and is gone"));
        }
    }
    for id in &acked.deleted {
        if on_disk.contains_key(id) {
            lost(format!("{id} was deleted and is back"));
        }
    }
    for (id, (last, inflight)) in &acked.desired {
        let kept = on_disk.get(id).and_then(|r| r["desiredState"].as_str());
        let kept = kept.unwrap_or("stopped");
        if kept != *last && Some(kept) != *inflight {
            lost(format!(
                "{id} was acknowledged {last} (then asked {inflight:?}), the file has {kept}"
            ));
        }
    }
    // The host brings back what should run; then its runtimes are the only ones.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, list) = server.call("GET", "/api/v1/environments", None).await;
        let settling = list.as_array().is_some_and(|l| {
            l.iter().any(|e| {
                let status = e["status"].as_str().unwrap_or_default();
                matches!(status, "created" | "starting" | "stopping" | "restarting")
                    && e["desiredState"] == "running"
                    || (status == "running" && e["runtime"]["connected"] != true)
            })
        });
        if !settling || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + GRACE;
    let procs = loop {
        let procs = workspace_procs(&server.data_dir, server.pid());
        if procs.orphans.is_empty() || Instant::now() > deadline {
            break procs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !procs.orphans.is_empty() {
        report.leftover_processes += procs.orphans.len();
        report.failures.push(format!(
            "round {round}: processes of an earlier host: {:?}",
            procs.orphans
        ));
    }
    report.runtimes_seen += procs.runtimes.values().map(Vec::len).sum::<usize>();
    for (workspace, pids) in &procs.runtimes {
        if pids.len() > 1 {
            report.running_twice += 1;
            report.failures.push(format!(
                "round {round}: {} runtimes in {}: {pids:?}",
                pids.len(),
                workspace.display()
            ));
        }
    }
    let unnamed = unnamed_workspaces(&server.data_dir, &records);
    if !unnamed.is_empty() {
        report.leftover_workspaces += unnamed.len();
        report.failures.push(format!(
            "round {round}: workspaces without a record: {unnamed:?}"
        ));
    }
}

#[tokio::test]
async fn kill_9_in_crash_loops_loses_nothing_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run(dir.path(), 6).await;
    eprintln!(
        "crash loop: {} rounds, {} acknowledged, restart p50 {:?} max {:?}",
        report.rounds,
        report.acknowledged,
        report.restart_quantile(0.5),
        report.restart_quantile(1.0)
    );
    assert!(report.clean(), "{report:#?}");
    assert!(
        report.acknowledged > 100,
        "little was acknowledged: {report:#?}"
    );
    assert!(report.runtimes_seen > 0, "no runtime ran: {report:#?}");
}

/// Regression: a spawn guard whose host died between the fork and the guard's first
/// look at its parent used to take the new parent for the host and run its program
/// forever. Told the host's pid, it now sees the host is gone and starts nothing.
#[tokio::test]
async fn a_spawn_guard_whose_host_is_already_gone_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("started");
    let script = format!("touch {}; sleep 30", marker.display());
    // The test is the guard's parent; it names another pid as the host.
    let not_parent = std::process::id() + 1_000_000;
    let mut guard = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("__spawn-guard")
        .arg(format!("--parent={not_parent}"))
        .args(["/bin/sh", "-c", &script])
        .spawn()
        .expect("guard");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = guard.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the guard kept running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    assert!(!marker.exists(), "the guard started its program");
}
