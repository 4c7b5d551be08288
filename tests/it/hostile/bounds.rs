//! Issue 10, item 6: everything a provider sends the host is bounded — floods of
//! state calls coalesce instead of queueing, oversized errors, metadata and `info()`
//! fields are cut or refused, denials quote at most a short prefix, and every log line
//! stays one line with control characters escaped.

use reqwest::StatusCode;
use serde_json::json;

use super::identity::{degraded_reasons, drop_in};
use super::rig::Rig;
use crate::support::Server;

/// A field of `/proc/<pid>/status`, in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    (status.lines())
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

/// Size of the server's log so far.
fn log_bytes(rig: &Rig) -> u64 {
    std::fs::metadata(rig.dir.path().join("server.log")).map_or(0, |m| m.len())
}

#[tokio::test]
async fn hostile_state_floods_keep_host_memory_bounded() {
    let mut rig = Rig::start(|_| {}).await;
    let pid = rig.server.pid();
    let peak_before = status_kib(pid, "VmHWM:");
    // Each call sets a distinct 256-byte id (the most accepted): queued, 400,000 of
    // them held over 100 MiB until persisted.
    let env = rig
        .attack(
            "ids",
            json!({"attack": "resource-id-flood", "count": 400_000, "bytes": 256}),
        )
        .await;
    // Distinct keys set and removed, each change once pending.
    let state = rig
        .attack(
            "keys",
            json!({"attack": "state-flood", "count": 100_000, "bytes": 4096}),
        )
        .await;
    let grown_mib = status_kib(pid, "VmHWM:").saturating_sub(peak_before) >> 10;
    // Generous: the guests' own memory (64 MiB each at most) is part of the peak.
    assert!(
        grown_mib < 100,
        "peak RSS grew {grown_mib} MiB during the floods; ids: {env}; keys: {state}"
    );
    // What was persisted is the latest state, not a backlog.
    let records = rig.server.records();
    let keys = (records["environments"]
        .as_array()
        .expect("environments")
        .iter())
    .find(|e| e["name"] == "keys")
    .expect("keys record")
    .clone();
    if state["status"] == "running" {
        assert_eq!(keys["providerState"]["last"], "kept", "{keys}");
        assert_eq!(keys["providerState"].as_object().map(|o| o.len()), Some(1));
    }
    rig.finish().await;
}

#[tokio::test]
async fn hostile_huge_start_error_is_cut_in_last_error_and_the_records_file() {
    let mut rig = Rig::start(|_| {}).await;
    let (id, error) = rig
        .refused("loud", json!({"attack": "huge-error", "bytes": 20 << 20}))
        .await;
    assert!(
        error.len() <= 4096 + 64,
        "lastError is {} bytes",
        error.len()
    );
    assert!(
        error.contains("(cut from"),
        "{}",
        &error[error.len() - 80..]
    );
    let file = rig.dir.path().join(".codebolt/environments.json");
    let size = std::fs::metadata(&file).expect("records file").len();
    assert!(size < 64 << 10, "environments.json is {size} bytes");
    assert!(
        log_bytes(&rig) < 1 << 20,
        "log is {} bytes",
        log_bytes(&rig)
    );
    // Metadata over the limit fails the start instead of being stored or served.
    let (_, error) = rig
        .refused(
            "chatty",
            json!({"attack": "huge-metadata", "bytes": 1 << 20}),
        )
        .await;
    assert!(
        error.contains("metadata has") && error.contains("at most 16384"),
        "{error}"
    );
    rig.delete(&id).await;
    rig.finish().await;
}

#[tokio::test]
async fn hostile_long_program_names_keep_the_log_and_denials_small() {
    let mut rig = Rig::start(|_| {}).await;
    let before = log_bytes(&rig);
    let env = rig
        .attack(
            "longname",
            json!({"attack": "long-program", "count": 50, "bytes": 1 << 20}),
        )
        .await;
    let outcome = env["metadata"]["outcome"].as_str().unwrap_or_default();
    assert!(outcome.starts_with("50 spawns denied"), "{env}");
    let longest: usize = (outcome.rsplit(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .expect("longest refusal");
    assert!(longest < 1024, "a denial quoted {longest} bytes: {outcome}");
    let grown = log_bytes(&rig) - before;
    assert!(
        grown < 512 << 10,
        "50 denied spawns wrote {grown} bytes of log"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_control_characters_in_provider_strings_are_escaped_in_the_log() {
    let mut rig = Rig::start(|_| {}).await;
    let forged = "ok\n2000-01-01T00:00:00.000000Z ERROR tether: FORGED\u{1b}[2J\r";
    let (_, error) = rig
        .refused("forger", json!({"attack": "forge-log", "text": forged}))
        .await;
    assert!(error.contains("FORGED"), "{error}");
    let log = rig.server.log();
    // The provider's log line, the spawn denial and the start failure all quote it.
    let quoting = log.lines().filter(|l| l.contains("FORGED")).count();
    assert!(quoting >= 3, "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2000-01-01")),
        "a forged line reached the log:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw escape reached the log");
    assert!(log.contains("\\n2000-01-01"), "{log}");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_huge_info_fields_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop_in(
        dir.path(),
        "verbose.wasm",
        json!({"name": "verbose", "descriptionBytes": 4 << 20}),
    );
    drop_in(
        dir.path(),
        "fine.wasm",
        json!({"name": "fine", "descriptionBytes": 4096}),
    );
    let server = Server::start(dir.path());
    let reasons = degraded_reasons(&server).await;
    let reason = (reasons.iter())
        .find(|r| r.contains("verbose.wasm"))
        .unwrap_or_else(|| panic!("not reported: {reasons:?}; log:\n{}", server.log()));
    assert!(
        reason.contains("description of provider verbose is 4194304 long; the limit is 4096"),
        "{reason}; log:\n{}",
        server.log()
    );
    let (status, _) = server.call("GET", "/api/v1/providers/verbose", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // At the limit is fine.
    let (status, p) = server.call("GET", "/api/v1/providers/fine", None).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["description"].as_str().map(str::len), Some(4096));
    server.stop();
}
