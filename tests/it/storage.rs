//! A full and a read-only disk (issue 18, item 4).
//!
//! Full: the data directory on a small tmpfs the test mounts, filled up by a filler
//! file while the host runs. Changes are refused with `507 storage_full`, nothing
//! stored is lost or cut short, `/healthz` says why, the logs count what they could
//! not write, and once the filler is gone the host takes changes again by itself,
//! without a restart.
//!
//! Read-only: `.codebolt` on an ext4 filesystem in a file, on a loop device, mounted
//! `errors=remount-ro`, which the kernel turns read-only under the running host (an
//! operator's `mount -o remount,ro` is refused while files are open for writing, and
//! the host always holds its journal open). Changes are refused with `503
//! storage_unavailable`, reads go on, `/healthz` says why, and after the repair (the
//! host stopped, `e2fsck`, mounted again) every record is there.
//!
//! Mounting needs root (and, for the read-only case, `losetup`, `mkfs.ext4` and
//! `e2fsck`): without them a test says so and passes, unless `TETHER_REQUIRE_MOUNT=1`
//! (set by `.ci/test` when it runs as root).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, WAIT};

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`4m`) at `dir`; why not, when it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let quiet = || {
            let mut umount = Command::new("umount");
            umount.stderr(std::process::Stdio::null());
            umount
        };
        if !quiet().arg(&self.0).status().is_ok_and(|s| s.success()) {
            // Lazily, when something still holds it (a runtime whose guard has not
            // yet seen its killed host go).
            let _ = quiet().arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

async fn healthz(server: &Server) -> Value {
    server.call("GET", "/healthz", None).await.1
}

async fn wait_health(server: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let health = healthz(server).await;
        if pred(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never showed {what}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `kept-0` to `kept-2` (`local-process`, not started, `config.i` their
/// number); their ids.
async fn create_kept(server: &Server) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..3 {
        let body =
            json!({"name": format!("kept-{i}"), "provider": "local-process", "config": {"i": i}});
        let (status, env) = server
            .call("POST", "/api/v1/environments", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        ids.push(env["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// Asserts the host is well again and takes a create; the environment made.
async fn takes_changes_again(server: &Server) -> Value {
    let health = healthz(server).await;
    assert_eq!(health["status"], "ok", "{health}");
    let body = json!({"name": "after", "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    env
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_disk_refuses_changes_keeps_what_is_stored_and_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _mount = match Tmpfs::mount(&data, "4m") {
        Ok(m) => m,
        Err(why) => {
            assert!(
                std::env::var_os("TETHER_REQUIRE_MOUNT").is_none(),
                "TETHER_REQUIRE_MOUNT is set but a tmpfs cannot be mounted: {why}"
            );
            eprintln!("SKIPPED: the full-disk test needs to mount a tmpfs (run as root): {why}");
            return;
        }
    };
    // Declared after the mount, so it is killed before the unmount.
    let mut server = Server::start(&data);
    let running = server
        .running_env("logger", "local-process", json!({}))
        .await;
    let mut ids = vec![running["id"].as_str().expect("id").to_owned()];
    ids.extend(create_kept(&server).await);
    let before = server.records();
    let filler = data.join("filler");
    fill(&filler);

    // Appends into a page the journal already has may still fit; the first that
    // does not is refused, and so is every change after it. Enough are refused that
    // their audit lines outgrow the audit log's last page too.
    let mut acked = Vec::new();
    let mut refused = 0;
    for k in 0..500 {
        let body = json!({"name": format!("new-{k}"), "provider": "local-process", "config": {"pad": "x".repeat(512)}});
        let (status, answer) = server
            .call("POST", "/api/v1/environments", Some(body))
            .await;
        match status {
            StatusCode::CREATED => acked.push(answer["id"].as_str().expect("id").to_owned()),
            StatusCode::INSUFFICIENT_STORAGE => {
                assert_eq!(answer["error"]["code"], "storage_full", "{answer}");
                let message = answer["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("full"), "{message}");
                // The file by name, never where the host keeps it.
                assert!(message.contains("environments.journal"), "{message}");
                assert!(!message.contains(&data.display().to_string()), "{message}");
                refused += 1;
                if refused == 40 {
                    break;
                }
            }
            other => panic!("a create on a full disk answered {other}: {answer}"),
        }
    }
    assert_eq!(refused, 40, "the disk never filled");
    let patch = json!({"config": {"i": 99}});
    let (status, answer) = server
        .call(
            "PATCH",
            &format!("/api/v1/environments/{}", ids[1]),
            Some(patch),
        )
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{answer}");
    let (status, answer) = server
        .call(
            "POST",
            &format!("/api/v1/environments/{}/stop", ids[0]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{answer}");
    // A token is refused the same way; the tokens file stays as it was.
    let (status, answer) = server
        .call("POST", "/api/v1/tokens", Some(json!({"user": "alice"})))
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{answer}");
    assert_eq!(answer["error"]["code"], "storage_full", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("tokens.json"), "{message}");
    assert!(!message.contains(&data.display().to_string()), "{message}");
    // So is an app's connect that would start one (before the upgrade, as the spec says).
    let wake = server.ws_url(&format!("/ws/app/{}?thread=t&start=true", ids[1]));
    let refusal = crate::support::Ws::connect(&wake, Some(crate::support::TOKEN)).await;
    assert_eq!(refusal.err(), Some(StatusCode::INSUFFICIENT_STORAGE));
    // A refused change is not made.
    let (_, env) = server
        .call("GET", &format!("/api/v1/environments/{}", ids[1]), None)
        .await;
    assert_eq!(env["config"]["i"], 0, "{env}");

    let health = wait_health(&server, "the full disk", |h| {
        h["storage"]["problem"] == "full"
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["reasons"].to_string().contains("full"), "{health}");
    // What was stored is intact: the file parses and holds every record as it was.
    let text = std::fs::read_to_string(data.join(".codebolt/environments.json")).expect("file");
    let now: Value = serde_json::from_str(&text).expect("the records file parses on a full disk");
    for record in before["environments"].as_array().expect("list") {
        let kept = now["environments"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["id"] == record["id"]));
        assert_eq!(
            kept.map(|r| &r["config"]),
            Some(&record["config"]),
            "{text}"
        );
    }
    assert!(server.running(), "the host died on a full disk");
    let (status, _) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = {
        let resp = reqwest::get(format!("{}/metrics", server.base))
            .await
            .expect("metrics");
        (resp.status(), resp.text().await.expect("text"))
    };
    assert!(
        metric(&metrics, "tether_audit_lines_failed") > 0,
        "{metrics}"
    );

    // Space comes back: the host notices by itself.
    std::fs::remove_file(&filler).expect("removing the filler");
    wait_health(&server, "recovery", |h| h["storage"].is_null()).await;
    let env = takes_changes_again(&server).await;
    let after = server.records();
    let on_disk = after["environments"].as_array().expect("list");
    for id in ids
        .iter()
        .chain(&acked)
        .chain([&env["id"].as_str().unwrap_or_default().to_owned()])
    {
        assert!(on_disk.iter().any(|r| r["id"] == id.as_str()), "{id} lost");
    }

    assert!(server.running());
    server.stop();
}

/// Runs a command, its stderr (or why it could not start) on failure. `e2fsck` exits
/// 1 when it fixed something, which is success here.
fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    let fixed = program == "e2fsck" && out.status.code() == Some(1);
    if out.status.success() || fixed {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// An ext4 filesystem in a file, attached to a loop device and mounted with
/// `errors=remount-ro`; detached and unmounted when dropped.
struct Ext4 {
    device: String,
    dir: PathBuf,
    mounted: bool,
}

impl Ext4 {
    /// Makes a filesystem of `mib` MiB in `image` and mounts it at `dir`.
    fn mount(image: &Path, dir: &Path, mib: u64) -> Result<Ext4, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(image).map_err(|e| e.to_string())?;
        file.set_len(mib << 20).map_err(|e| e.to_string())?;
        run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        )?;
        let device = run(
            "losetup",
            &["-f".as_ref(), "--show".as_ref(), image.as_os_str()],
        )?;
        let mut fs = Ext4 {
            device,
            dir: dir.to_owned(),
            mounted: false,
        };
        fs.attach()?;
        Ok(fs)
    }

    fn attach(&mut self) -> Result<(), String> {
        let (device, dir) = (self.device.as_ref(), self.dir.as_os_str());
        run(
            "mount",
            &["-o".as_ref(), "errors=remount-ro".as_ref(), device, dir],
        )?;
        self.mounted = true;
        Ok(())
    }

    /// Has the kernel record a filesystem error: with `errors=remount-ro` it turns
    /// the filesystem read-only at once, files open for writing or not.
    fn fail(&self) -> Result<(), String> {
        let name = Path::new(&self.device)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1")
            .map_err(|e| format!("triggering an ext4 error: {e}"))
    }

    /// What an operator does: unmount, check, mount again (read-write).
    fn repair(&mut self) -> Result<(), String> {
        run("umount", &[self.dir.as_os_str()])?;
        self.mounted = false;
        run(
            "e2fsck",
            &["-f".as_ref(), "-y".as_ref(), self.device.as_ref()],
        )?;
        self.attach()
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted && run("umount", &[self.dir.as_os_str()]).is_err() {
            let _ = run("umount", &["-l".as_ref(), self.dir.as_os_str()]);
        }
        let _ = run("losetup", &["-d".as_ref(), self.device.as_ref()]);
    }
}

#[tokio::test]
async fn a_disk_turned_read_only_refuses_changes_keeps_reads_and_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // `.codebolt` only, so the server's own log (beside it) stays writable.
    let mut fs = match Ext4::mount(&dir.path().join("fs.img"), &data.join(".codebolt"), 64) {
        Ok(fs) => fs,
        Err(why) => {
            // Required where the kernel offers loop devices and the tools are there;
            // a container without them skips, saying so.
            let offered = Path::new("/dev/loop-control").exists()
                && ["mkfs.ext4", "e2fsck", "losetup"]
                    .iter()
                    .all(|tool| Command::new(tool).arg("-V").output().is_ok());
            assert!(
                !offered || std::env::var_os("TETHER_REQUIRE_MOUNT").is_none(),
                "TETHER_REQUIRE_MOUNT is set but an ext4 loop device cannot be mounted: {why}"
            );
            eprintln!("SKIPPED: the read-only test needs an ext4 loop mount (root): {why}");
            return;
        }
    };
    let server = Server::start(&data);
    let ids = create_kept(&server).await;
    let before = server.records();

    fs.fail().expect("the filesystem turned read-only");
    let body = json!({"name": "refused", "provider": "local-process"});
    let (status, answer) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["code"], "storage_unavailable", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("read-only"), "{message}");
    let patch = json!({"config": {"i": 99}});
    let one = format!("/api/v1/environments/{}", ids[1]);
    let (status, answer) = server.call("PATCH", &one, Some(patch)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (status, answer) = server
        .call("POST", "/api/v1/tokens", Some(json!({"user": "alice"})))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["code"], "storage_unavailable", "{answer}");
    // Reads go on, and show nothing of what was refused.
    let (status, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<_> = (list.as_array().expect("list").iter())
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, ["kept-0", "kept-1", "kept-2"], "{list}");
    let (_, env) = server.call("GET", &one, None).await;
    assert_eq!(env["config"]["i"], 1, "{env}");
    let health = wait_health(&server, "the read-only disk", |h| {
        h["storage"]["problem"] == "readOnly"
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"].to_string().contains("read-only"),
        "{health}"
    );
    // The records file as it was.
    let text = std::fs::read_to_string(data.join(".codebolt/environments.json")).expect("file");
    let now: Value = serde_json::from_str(&text).expect("the records file parses");
    assert_eq!(now["environments"], before["environments"], "{text}");
    server.stop();

    // Repaired, the host starts on it with every record and takes changes again.
    fs.repair().expect("the operator's repair");
    let server = Server::start(&data);
    let after = server.records();
    assert_eq!(after["environments"], before["environments"]);
    takes_changes_again(&server).await;
    server.stop();
}
