//! The web dashboard in a real browser: `tests/browser/dashboard_test.py` drives
//! Debian's chromium through chromium-driver with selenium against a real `tether
//! serve`, with an admin token, a user token and an environment of another user to
//! not see. The test fails with the script's output if any step fails; screenshots of
//! every page go to `$CARGO_TARGET_DIR/screenshots` (else `target/screenshots`).
//! Without chromium, chromedriver or the venv it says so loudly and passes, unless
//! `TETHER_REQUIRE_BROWSER=1` (as `.ci/test` sets).

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Server, TOKEN};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The selenium `.ci/prepare` installs.
const SELENIUM: &str = "4.51.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_python() -> PathBuf {
    repo().join("target/browser-venv/bin/python")
}

/// Where screenshots go: the cargo target dir the suite was built in.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("screenshots")
}

/// What is missing to run a browser, if anything.
fn missing_browser() -> Option<String> {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(bin).exists() {
            return Some(format!("{bin} is not installed"));
        }
    }
    let check = format!("import selenium, sys; sys.exit(selenium.__version__ != '{SELENIUM}')");
    let ok = Command::new(venv_python())
        .args(["-c", &check])
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| {
        format!(
            "{} with selenium {SELENIUM} is missing",
            venv_python().display()
        )
    })
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    if let Some(why) = missing_browser() {
        let required = std::env::var("TETHER_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{why} (TETHER_REQUIRE_BROWSER=1; run .ci/prepare)"
        );
        eprintln!("\n!!!!!!!! SKIPPED the browser test: {why}; run .ci/prepare !!!!!!!!\n");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("tether.toml"),
        "[templates.chat]\nprovider = \"local-process\"\nscope = \"thread\"\n",
    )
    .expect("tether.toml");
    // A deleted environment whose resource cannot be removed: its record names no
    // service for the provider to call, so every attempt fails.
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("dir");
    let stamp = "2026-01-01T00:00:00Z";
    let journal = serde_json::json!({"version": 1, "removals": [{
        "record": {"id": "gone1", "name": "gone", "provider": "http-sandbox", "owner": "bob",
                   "resourceId": "sbx-left", "createdAt": stamp, "updatedAt": stamp},
        "attempts": 1, "lastError": "HTTP 500", "failedAt": stamp, "nextAttemptAt": stamp}]});
    std::fs::write(codebolt.join("removals.json"), journal.to_string()).expect("journal");
    let server = Server::start(dir.path());
    let (alice, _) = server.user_token("alice").await;
    let (bob, _) = server.user_token("bob").await;
    let (status, other) = server.create_as(&bob, "bob-private", false).await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    // The template is read when tether.toml is; wait until the host lists it.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let (_, templates) = server.call("GET", "/api/v1/templates", None).await;
        if templates
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "chat"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no template: {templates}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let shots = screenshots();
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    let out = tokio::process::Command::new(venv_python())
        .arg(repo().join("tests/browser/dashboard_test.py"))
        .env("TETHER_URL", &server.base)
        .env("TETHER_ADMIN_TOKEN", TOKEN)
        .env("TETHER_USER_TOKEN", &alice)
        .env("TETHER_USER", "alice")
        .env("TETHER_OTHER_ENV", "bob-private")
        .env("TETHER_TEMPLATE", "chat")
        .env("TETHER_PENDING_REMOVAL", "gone1")
        .env("TETHER_SCREENSHOTS", &shots)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );
    assert!(stdout.contains("dashboard: all steps passed"), "{stdout}");

    // What the browser did is what the host recorded: alice's environment is gone,
    // bob's is untouched.
    let (_, envs) = server.call("GET", "/api/v1/environments", None).await;
    let names: Vec<_> = envs
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("bob-private")], "{envs}");
}
