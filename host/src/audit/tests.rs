//! The audit log end to end on a temporary directory: group commit, order, rotation,
//! torn lines, sampling and redaction.

use std::net::IpAddr;
use std::time::Duration;

use super::*;

fn config(max_file_bytes: u64, keep_files: usize) -> AuditConfig {
    AuditConfig {
        max_file_bytes,
        keep_files,
        sampled_per_second: 5,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn create(user: &str, target: &str) -> Entry {
    Entry::new(
        Actor::user(user, "tok-1"),
        action::ENVIRONMENT_CREATE,
        Outcome::Ok,
    )
    .target(target)
    .owner(user)
    .remote(ip("192.0.2.1"))
}

fn all() -> Query {
    Query {
        limit: MAX_LIMIT,
        ..Query::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_all_land_in_order_per_caller_and_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".codebolt/audit.jsonl");
    let log = AuditLog::open(&path, &AuditConfig::default()).unwrap();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..20 {
                log.record(create(&format!("u{w}"), &format!("{n}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.lines(), 64 * 20);
    assert!(log.syncs() < 64 * 20, "no batching: {} syncs", log.syncs());
    let entries = log.query(all()).await.unwrap();
    assert_eq!(entries.len(), 64 * 20);
    for w in 0..64 {
        let user = format!("u{w}");
        let mine: Vec<String> = (entries.iter())
            .filter(|e| e.concerns(&user))
            .map(|e| e.target.as_ref().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..20).map(|n| n.to_string()).collect();
        assert_eq!(mine, want, "{user}");
    }
    // The owner filter, and the limit keeps the newest.
    let q = Query {
        owner: Some("u3".into()),
        limit: 5,
        ..Query::default()
    };
    let last: Vec<_> = (log.query(q).await.unwrap().iter())
        .map(|e| e.target.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(last, ["15", "16", "17", "18", "19"]);
    log.close().await;
    assert!(matches!(
        log.record(create("u1", "late")).await,
        Err(AuditError::Closed)
    ));
    log.close().await;
}

#[tokio::test]
async fn rotation_keeps_at_most_n_files_and_query_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, &config(2_000, 3)).unwrap();
    for n in 0..200 {
        log.record(create("alice", &format!("{n}"))).await.unwrap();
    }
    for i in 1..=3 {
        let len = std::fs::metadata(file::rotated(&path, i)).unwrap().len();
        assert!(len <= 2_000, "file {i}: {len}");
    }
    assert!(!file::rotated(&path, 4).exists());
    let entries = log.query(all()).await.unwrap();
    let targets: Vec<u32> = (entries.iter())
        .map(|e| e.target.as_ref().unwrap().as_str().parse().unwrap())
        .collect();
    // The newest entries, contiguous and in order, from more than one file.
    assert!(targets.len() > 2_000 / 200 * 2, "{}", targets.len());
    assert_eq!(*targets.last().unwrap(), 199);
    assert!(targets.windows(2).all(|w| w[1] == w[0] + 1), "{targets:?}");
    // `since` cuts at a time.
    let cut = entries[entries.len() - 3].time.get();
    let q = Query {
        since: Some(cut),
        ..all()
    };
    let recent = log.query(q).await.unwrap();
    assert!(recent.len() >= 3 && recent.iter().all(|e| e.time.get() >= cut));
    log.close().await;
}

#[tokio::test]
async fn a_torn_last_line_is_skipped_on_read_and_ended_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, &AuditConfig::default()).unwrap();
    for n in 0..3 {
        log.record(create("alice", &format!("{n}"))).await.unwrap();
    }
    // A crash in the middle of a write, plus a line edited into nonsense.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"not json\n{\"time\":\"2026-01-01T00:00:00Z\",\"actor\":{\"us")
        .unwrap();
    drop(f);
    assert_eq!(log.query(all()).await.unwrap().len(), 3);
    log.close().await;

    let log = AuditLog::open(&path, &AuditConfig::default()).unwrap();
    log.record(create("alice", "after")).await.unwrap();
    let entries = log.query(all()).await.unwrap();
    let targets: Vec<_> = entries
        .iter()
        .map(|e| e.target.as_ref().unwrap().as_str())
        .collect();
    assert_eq!(targets, ["0", "1", "2", "after"]);
    log.close().await;
}

#[tokio::test]
async fn a_flood_of_notes_is_sampled_and_the_rest_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, &config(1 << 20, 1)).unwrap();
    let refused = || {
        Entry::new(Actor::Anonymous, action::AUTH_REFUSED, Outcome::Refused)
            .remote(ip("198.51.100.9"))
            .reason("invalid API token")
    };
    let t0 = Instant::now();
    for _ in 0..1000 {
        log.note_at(refused(), t0);
    }
    // A second later the flood goes on: the summary of the first second comes first.
    for _ in 0..10 {
        log.note_at(refused(), t0 + Duration::from_secs(1));
    }
    log.note(
        Entry::new(Actor::Anonymous, action::AUTH_REFUSED, Outcome::Refused)
            .remote(ip("198.51.100.10")),
    );
    log.close().await;
    let entries = log.query(all()).await.unwrap();
    let flood: Vec<_> = (entries.iter())
        .filter(|e| e.remote == Some(ip("198.51.100.9")))
        .collect();
    let written = flood.iter().filter(|e| e.suppressed.is_none()).count();
    let suppressed: u64 = flood.iter().filter_map(|e| e.suppressed).sum();
    assert_eq!(written, 10, "{flood:?}");
    assert_eq!(suppressed, 1000);
    assert_eq!(flood[5].suppressed, Some(995));
    assert!(
        flood[5]
            .reason
            .as_ref()
            .unwrap()
            .as_str()
            .contains("995 similar")
    );
    assert_eq!(entries.len(), 10 + 2 + 1);
}

#[tokio::test]
async fn nothing_written_looks_like_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, &AuditConfig::default()).unwrap();
    let secrets = [
        "tth_9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "Zm9vYmFyYmF6cXV4",
        "c2VjcmV0LXN1YnByb3RvY29s",
        "tk_0123456789abcdef",
    ];
    let reason = format!(
        "refused tth_9f8e7d6c5b4a39281706f5e4d3c2b1a0; header was Authorization: Bearer {}\n\
         protocol tether.bearer.{} url /ws/app/x?ticket={}",
        secrets[1], secrets[2], secrets[3]
    );
    log.record(
        Entry::new(Actor::Anonymous, action::AUTH_REFUSED, Outcome::Refused)
            .reason(&reason)
            .target(&format!("Bearer {}", secrets[1])),
    )
    .await
    .unwrap();
    log.note(Entry::new(
        Actor::user(secrets[0], "t"),
        "token.create",
        Outcome::Ok,
    ));
    log.close().await;
    let raw = std::fs::read_to_string(&path).unwrap();
    for s in secrets {
        assert!(!raw.contains(s), "{s} in {raw}");
    }
    assert_eq!(raw.lines().count(), 2, "{raw}");
    assert!(raw.contains("Bearer [redacted]") && raw.contains("tether.bearer.[redacted]"));
}
