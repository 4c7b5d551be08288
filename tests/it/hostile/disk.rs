//! The disk a provider fills through WASI: its environment's workspace and its own
//! state directory are capped (`[limits] workspace_mib`, `state_mib`); past the cap its
//! writes fail as on a full disk, what it frees can be written again, empty files and
//! a file grown without data count too, and one provider's state directory is one
//! budget for all its environments. A file cannot be carried from one quota's tree into
//! another's.

use std::path::Path;

use serde_json::{Value, json};

use super::rig::{Rig, TETHER_TOML};

const MIB: u64 = 1 << 20;

/// The figures a `fill` attack's outcome names: bytes first written, bytes written
/// after freeing, empty files made; and the whole line.
fn figures(env: &Value) -> (u64, u64, u64, String) {
    let outcome = env["metadata"]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let number = |after: &str| -> u64 {
        let rest = outcome
            .split_once(after)
            .unwrap_or_else(|| panic!("no {after:?} in {outcome:?}"))
            .1;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number after {after:?} in {outcome:?}"))
    };
    (
        number("wrote "),
        number("after freeing wrote "),
        number("made "),
        outcome,
    )
}

/// The bytes the files under `dir` hold, apparent sizes, and how many entries.
fn on_disk(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut entries) = (0, 0);
    for entry in walk(dir) {
        let meta = std::fs::symlink_metadata(&entry).expect("stat");
        if meta.is_file() {
            use std::os::unix::fs::MetadataExt;
            bytes += meta.blocks() * 512;
        }
        entries += 1;
    }
    (bytes, entries)
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Every step ended on a full disk: the stream's error code is `insufficient-space`
/// (Rust's standard library calls any failed stream write an I/O error), and creating
/// and growing a file fail with `ENOSPC`.
fn assert_full(what: &str, outcome: &str) {
    assert!(
        outcome.contains("name: \"insufficient-space\"")
            && outcome.matches("No space left on device (os error").count() == 2,
        "{what}: every step should end on a full disk: {outcome}"
    );
}

#[tokio::test]
async fn hostile_filling_the_workspace_and_the_state_directory_stops_at_their_quotas() {
    let mut rig = Rig::start(|dir| {
        // The attack sleeps 3 s in all, for the host's walks of the tree.
        let toml = TETHER_TOML
            .replace("start_timeout_secs = 3", "start_timeout_secs = 60")
            .replace("[limits]\n", "[limits]\nworkspace_mib = 8\nstate_mib = 4\n");
        std::fs::write(dir.join("tether.toml"), toml).expect("tether.toml");
    })
    .await;

    // The workspace: at most 8 MiB, first of data, then of empty files.
    let env = rig
        .attack(
            "filler",
            json!({"attack": "fill", "dir": "/workspace", "stopAt": 64 * MIB}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let (first, again, files, outcome) = figures(&env);
    assert_full("workspace", &outcome);
    assert!((6 * MIB..=8 * MIB).contains(&first), "{outcome}");
    assert_eq!(
        again, MIB,
        "what was freed could not be written again: {outcome}"
    );
    // Every entry counts a block at least: 8 MiB is 2,048 of them.
    assert!((1_500..2_048).contains(&files), "{outcome}");
    let metrics = rig.server.metrics().await;
    let refused = super::open_files::metric(&metrics, "tether_guest_writes_refused_total");
    assert!(refused >= 3, "{metrics}");
    let (bytes, entries) = on_disk(&rig.workspace("filler"));
    assert!(
        bytes <= 8 * MIB && entries < 2_048,
        "{bytes} bytes in {entries} entries"
    );

    // The state directory: 4 MiB, shared by every environment of the provider.
    let env = rig
        .attack(
            "stater",
            json!({"attack": "fill", "dir": "/state", "stopAt": 64 * MIB}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let (first, _, files, outcome) = figures(&env);
    assert_full("state", &outcome);
    assert!((2 * MIB..=4 * MIB).contains(&first), "{outcome}");
    assert!(files < 1_024, "{outcome}");
    // Its empty files are still there: another environment of the provider finds the
    // state directory full, and its own workspace is not.
    let (_, error) = rig
        .refused(
            "second",
            json!({"attack": "fill", "dir": "/state", "stopAt": 64 * MIB}),
        )
        .await;
    assert!(
        error.contains("create: No space left on device"),
        "the state quota is per environment: {error}"
    );
    let env = rig
        .attack(
            "third",
            json!({"attack": "fill", "dir": "/workspace", "stopAt": 64 * MIB}),
        )
        .await;
    let (first, ..) = figures(&env);
    assert!(
        first >= 6 * MIB,
        "one environment's quota is not another's: {first}"
    );
    rig.finish().await;
}

#[tokio::test]
async fn hostile_moving_a_file_between_quotas_is_cross_device() {
    let mut rig = Rig::start(|_| {}).await;
    let env = rig.attack("mover", json!({"attack": "move"})).await;
    assert_eq!(env["status"], "running", "{env}");
    let outcome = env["metadata"]["outcome"].as_str().unwrap_or_default();
    assert_eq!(
        outcome.matches("Cross-device link").count(),
        2,
        "a move or link from /state into the workspace should be refused: {outcome}"
    );
    assert!(outcome.ends_with("within /state: done"), "{outcome}");
    let workspace = rig.workspace("mover");
    assert!(!workspace.join("moved").exists() && !workspace.join("linked").exists());
    rig.finish().await;
}
