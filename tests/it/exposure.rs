//! What callers without an admin token learn about the host: `/healthz` without a
//! token or with a user's never names the host's files, paths or reasons.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::guests::LOCAL_PROCESS;
use crate::support::{Server, write_config};

/// A data directory with a provider file that does not load (so `/healthz` has a
/// reason naming a file), and a drop-in `local-process`.
fn drop_in_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::copy(LOCAL_PROCESS, providers.join("local-process.wasm")).expect("copy");
    std::fs::write(
        providers.join("broken.wasm"),
        b"\0asm\x0d\0\x01\0 not a component",
    )
    .expect("broken file");
    write_config(
        dir.path(),
        "[providers.local-process]\nreplace_builtin = { file = \"local-process.wasm\" }\n\
         [auth]\nmax_failures_per_minute = 3\n",
    );
    dir
}

/// `/healthz` named the broken provider file, with its absolute path, to anyone who
/// asked, no token needed. Now only an admin's token gets `reasons`, `storage` and
/// `pendingRemovals`; anyone else gets the status alone, still computed from them.
#[tokio::test]
async fn healthz_tells_its_reasons_to_an_admin_only() {
    let dir = drop_in_host();
    let server = Server::start(dir.path());
    let (alice, _) = server.user_token("alice").await;

    let (status, full) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(full["status"], "degraded", "{full}");
    assert!(full.to_string().contains("broken.wasm"), "{full}");
    assert_eq!(full["pendingRemovals"], 0, "{full}");
    assert!(full.get("storage").is_some(), "{full}");

    let short = json!({"status": "degraded"});
    for token in [None, Some(alice.as_str()), Some("tth_not-a-token-at-all")] {
        let (status, body) = server.call_with("GET", "/healthz", None, token).await;
        assert_eq!((status, &body), (StatusCode::OK, &short), "as {token:?}");
    }
    server.stop();
}

/// A bad token on `/healthz` is not refused, but it is counted like one anywhere
/// else: `/healthz` is no way to tell good tokens from bad ones past the throttle.
#[tokio::test]
async fn bad_tokens_on_healthz_count_towards_the_throttle() {
    let dir = drop_in_host();
    let server = Server::start(dir.path());
    for _ in 0..3 {
        let (status, body) = server
            .call_with("GET", "/healthz", None, Some("tth_guess-guess-guess"))
            .await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "degraded"}))
        );
    }
    // Throttled now: even the admin's token gets the short form here, and 429 elsewhere.
    let (status, body) = server.call("GET", "/healthz", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "degraded"}))
    );
    let (status, _) = server.call("GET", "/api/v1/whoami", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    server.stop();
}
