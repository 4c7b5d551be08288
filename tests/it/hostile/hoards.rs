//! Host memory a provider can make the host hold outside its own: `wasi:http`
//! resources that keep bytes on the host's side (header fields, bodies of requests
//! never sent), and answers to app requests that the host would expand many times
//! over before it could see they are too large (a diff of a million empty files).

use serde_json::{Value, json};

use super::bounds::status_kib;
use super::rig::{Rig, TETHER_TOML};

/// The bytes a `hoard-*` attack's outcome says the host took.
fn held_bytes(env: &Value) -> u64 {
    let outcome = env["metadata"]["outcome"].as_str().unwrap_or_default();
    (outcome.strip_suffix(" bytes"))
        .and_then(|o| o.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {env}"))
}

#[tokio::test]
async fn hostile_http_headers_and_unsent_bodies_hold_at_most_16_kib_of_host_memory_a_handle() {
    // Hoarding 256 MiB (as the host allowed before) can take longer than 3 s.
    let mut rig = Rig::start(|dir| {
        let toml = TETHER_TOML.replace("start_timeout_secs = 3", "start_timeout_secs = 60");
        std::fs::write(dir.join("tether.toml"), toml).expect("tether.toml");
    })
    .await;
    let pid = rig.server.pid();
    let peak_before = status_kib(pid, "VmHWM:");
    // Before, a `fields` took 1 MiB and a body 2 MiB, 4 GiB for the 4,096 handles
    // (limits.max_resources); the guests stop at 256 MiB so a failing run stays
    // affordable. Now a `fields` past 16 KiB traps the instance.
    let stop_at = 256u64 << 20;
    let (_, error) = rig
        .refused(
            "headers",
            json!({"attack": "hoard-headers", "count": 4000, "perFields": 960 << 10, "stopAt": stop_at}),
        )
        .await;
    assert!(
        error.contains("total size of fields exceeds limit"),
        "{error}"
    );
    // Under the limit, every handle full: 16 KiB a handle at most.
    let bound = 4096 * (16 << 10);
    let headers = rig
        .attack(
            "small-headers",
            json!({"attack": "hoard-headers", "count": 4000, "perFields": 12 << 10, "stopAt": stop_at}),
        )
        .await;
    assert_eq!(headers["status"], "running", "{headers}");
    let bodies = rig
        .attack(
            "bodies",
            json!({"attack": "hoard-bodies", "count": 1300, "stopAt": stop_at}),
        )
        .await;
    assert_eq!(bodies["status"], "running", "{bodies}");
    let grown_mib = status_kib(pid, "VmHWM:").saturating_sub(peak_before) >> 10;
    let (in_headers, in_bodies) = (held_bytes(&headers), held_bytes(&bodies));
    assert!(
        in_headers <= bound && in_bodies <= bound,
        "the host held {in_headers} bytes of header fields and {in_bodies} of unsent bodies"
    );
    // Generous: the guests' own memory (64 MiB each at most) is part of the peak.
    assert!(grown_mib < 200, "peak RSS grew {grown_mib} MiB");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_diff_of_a_million_empty_files_is_too_large_before_it_is_made_a_frame() {
    let mut rig = Rig::start(|_| {}).await;
    let pid = rig.server.pid();
    let env = rig
        .attack("diffs", json!({"attack": "diff-flood", "count": 1_000_000}))
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let id = env["id"].as_str().expect("id");
    let mut app = rig.server.app(id, "t").await;
    let peak_before = status_kib(pid, "VmHWM:");
    let reply = app
        .request(json!({"type": "providerGetDiffFiles", "requestId": "d1"}))
        .await;
    assert_eq!(reply["error"]["code"], "too_large", "{reply}");
    // The answer itself is about 50 MB in the guest and about twice that once the
    // host has read it; as JSON values it was over 700 MB more.
    let grown_mib = status_kib(pid, "VmHWM:").saturating_sub(peak_before) >> 10;
    assert!(
        grown_mib < 300,
        "peak RSS grew {grown_mib} MiB answering one diff"
    );
    rig.finish().await;
}
