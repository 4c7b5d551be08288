//! Issue 10, what a granted spawn can do: a provider sets only the variables its
//! grant names (never `LD_PRELOAD` or `PATH` through a wildcard), the program is
//! found on the host's `PATH` whatever the child's says, `*` never matches a
//! smuggled option, and a child that double-forks into its own session still
//! stops with its environment (stop, delete, host SIGTERM).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::rig::{self, Rig};
use crate::support::{WAIT, process_gone, wait_gone};

/// The rig's operator config with `commands` added to the hostile provider's grant
/// and `extra` keys (such as `set_env`) set in it.
fn granting(commands: &'static str, extra: &'static str) -> impl FnOnce(&Path) {
    move |dir| {
        let toml = rig::TETHER_TOML
            .replace(
                "[providers.hostile]\ncommands = [\n",
                &format!("[providers.hostile]\n{extra}\ncommands = [\n{commands}\n"),
            )
            .replace("\n\n\n", "\n");
        std::fs::write(dir.join("tether.toml"), toml).expect("tether.toml");
    }
}

fn outcome(env: &Value) -> String {
    assert_eq!(env["status"], "running", "{env}");
    env["metadata"]["outcome"]
        .as_str()
        .expect("outcome")
        .to_owned()
}

/// Builds a shared object whose constructor creates `marker`, if a C compiler is
/// installed; `None` otherwise (the refusal is asserted either way).
fn preload_library(dir: &Path, marker: &Path) -> Option<PathBuf> {
    let source = dir.join("evil.c");
    let library = dir.join("evil.so");
    let code = format!(
        "#include <stdio.h>\n__attribute__((constructor)) static void evil(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n",
        marker.display()
    );
    std::fs::write(&source, code).ok()?;
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .ok()?;
    built.success().then_some(library)
}

#[tokio::test]
async fn hostile_ld_preload_and_ungranted_variables_never_reach_the_child() {
    let mut rig = Rig::start(granting(
        "  { program = \"/usr/bin/env\", args = [] },",
        "set_env = [\"APP_*\", \"LD_*\", \"P*\"]",
    ))
    .await;
    // A variable the grant's wildcard admits reaches the child; nothing else does.
    let env = rig
        .attack(
            "plain",
            json!({"attack": "spawn-env", "program": "/usr/bin/env", "env": {"APP_MODE": "granted"}}),
        )
        .await;
    let output = outcome(&env);
    assert!(output.contains("APP_MODE=granted"), "{output}");
    assert!(!output.contains("LD_"), "{output}");

    // LD_PRELOAD of a library the provider "wrote into its workspace".
    let marker = rig.dir.path().join("preloaded");
    let workspace = rig.workspace("preload");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let library = preload_library(&workspace, &marker)
        .unwrap_or_else(|| workspace.join("evil.so"))
        .display()
        .to_string();
    for (name, var) in [
        ("preload", "LD_PRELOAD"),
        ("path", "PATH"),
        ("pythonpath", "PYTHONPATH"),
        // PHP's ini file, whose `auto_prepend_file` runs code in every php child.
        ("phprc", "PHPRC"),
    ] {
        let (_, error) = rig
            .refused(
                name,
                json!({"attack": "spawn-env", "program": "/usr/bin/env", "env": {var: library}}),
            )
            .await;
        assert!(error.contains(var), "{error}");
        assert!(
            error.contains("only a `set_env` entry naming it exactly admits it"),
            "{error}"
        );
    }
    let (id, error) = rig
        .refused(
            "secret",
            json!({"attack": "spawn-env", "program": "/usr/bin/env", "env": {"OTHER": "x"}}),
        )
        .await;
    assert!(error.contains("variable OTHER is not granted"), "{error}");
    assert!(error.contains("`set_env`"), "{error}");
    assert!(rig.logged(&id, "spawn denied"), "denial not logged");
    assert!(!marker.exists(), "the preloaded library ran");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_package_manager_and_tool_program_variables_never_pass_a_wildcard() {
    // Wildcards an operator might write for a tool's ordinary settings; each would
    // otherwise let the provider name the index pip installs from, npm's or yarn's
    // registry, the remote shell rsync runs or the command tar pipes files to.
    let mut rig = Rig::start(granting(
        "  { program = \"/usr/bin/env\", args = [] },",
        "set_env = [\"PIP_*\", \"npm_config_*\", \"YARN_*\", \"RSYNC_*\", \"TAR_*\"]",
    ))
    .await;
    for (name, var, value) in [
        ("pip-index", "PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
        ("pip-config", "PIP_CONFIG_FILE", "/workspace/pip.conf"),
        ("npm", "npm_config_registry", "http://127.0.0.1:9/"),
        ("yarn", "YARN_NPM_REGISTRY_SERVER", "http://127.0.0.1:9/"),
        ("rsync", "RSYNC_RSH", "/workspace/evil"),
        ("tar", "TAR_OPTIONS", "--to-command=/workspace/evil"),
    ] {
        let (_, error) = rig
            .refused(
                name,
                json!({"attack": "spawn-env", "program": "/usr/bin/env", "env": {var: value}}),
            )
            .await;
        assert!(error.contains(var), "{error}");
        assert!(
            error.contains("only a `set_env` entry naming it exactly admits it"),
            "{error}"
        );
    }
    rig.finish().await;
}

#[tokio::test]
async fn hostile_path_set_by_a_provider_never_chooses_the_program() {
    // The operator grants PATH by name, so the child gets it; the program is still
    // the host's `env`, not the one first on the provider's PATH.
    let mut rig = Rig::start(granting(
        "  { program = \"env\", args = [] },",
        "set_env = [\"PATH\"]",
    ))
    .await;
    let fake = rig.dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).expect("fakebin");
    let marker = rig.dir.path().join("fake-ran");
    let script = fake.join("env");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\necho FAKE\n", marker.display()),
    )
    .expect("fake env");
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&script, executable).expect("chmod");
    let env = rig
        .attack(
            "path",
            json!({"attack": "spawn-env", "program": "env", "env": {"PATH": fake.display().to_string()}}),
        )
        .await;
    let output = outcome(&env);
    assert!(
        output.contains(&format!("PATH={}", fake.display())),
        "{output}"
    );
    assert!(!output.contains("FAKE"), "{output}");
    assert!(!marker.exists(), "the provider's PATH chose the program");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_star_never_matches_a_smuggled_option() {
    let mut rig = Rig::start(granting(
        "  { program = \"git\", args = [\"diff\", \"--output={path}\", \"*\"] },",
        "",
    ))
    .await;
    let victim = rig.dir.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").expect("victim");
    let (_, error) = rig
        .refused(
            "smuggle",
            json!({"attack": "spawn", "program": "git",
                   "args": ["diff", "--output=ok.patch", format!("--output={}", victim.display())]}),
        )
        .await;
    assert!(
        error.contains("`git` with these arguments is not granted"),
        "{error}"
    );
    let (_, error) = rig
        .refused(
            "dash",
            json!({"attack": "spawn", "program": "git", "args": ["diff", "--output=-", "HEAD"]}),
        )
        .await;
    assert!(error.contains("not granted"), "{error}");
    // The shape the grant means is still allowed.
    let env = rig
        .attack(
            "fine",
            json!({"attack": "spawn", "program": "git", "args": ["diff", "--output=ok.patch", "HEAD"]}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_dangling_symlink_is_no_path_argument() {
    // The provider plants `/workspace/planted -> ../../../planted.txt` (a file in the
    // data directory that does not exist yet), then names the link as a `{path}`:
    // `touch` would follow it and create the file outside every granted directory.
    let mut rig = Rig::start(granting(
        "  { program = \"touch\", args = [\"{path}\"] },",
        "",
    ))
    .await;
    let outside = rig.dir.path().join("planted.txt");
    let (_, error) = rig
        .refused(
            "dangling",
            json!({"attack": "symlink", "link": "planted", "target": "../../../planted.txt",
                   "then": {"attack": "spawn", "program": "touch", "args": ["planted"]}}),
        )
        .await;
    assert!(
        error.contains("`touch` with these arguments is not"),
        "{error}"
    );
    // A link that dangles inside the workspace is refused alike: what it points to
    // may be swapped for a link out before the child follows it.
    let (_, error) = rig
        .refused(
            "inside",
            json!({"attack": "symlink", "link": "later", "target": "not-yet",
                   "then": {"attack": "spawn", "program": "touch", "args": ["later"]}}),
        )
        .await;
    assert!(error.contains("not"), "{error}");
    // A plain new file in the workspace is still fine.
    let env = rig
        .attack(
            "fine",
            json!({"attack": "spawn", "program": "touch", "args": ["new-file"]}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!outside.exists(), "a child followed a dangling link out");
    rig.finish().await;
}

#[tokio::test]
async fn hostile_proc_self_cwd_is_no_path_argument() {
    // The host runs in `ws/sub` of the environment's workspace `ws`; the child runs
    // in `ws`. The provider plants `ws/cwd -> ../../…/proc/self/cwd` and
    // `ws/escape -> ../../../planted.txt`, then names `cwd/escape`: checked in the
    // host, that is `ws/sub/escape` (nothing there yet, inside); opened by the child,
    // `ws/escape`, the link out of every granted directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().canonicalize().expect("data dir");
    let ws = data.join(".codebolt/environments/procs");
    let sub = ws.join("sub");
    std::fs::create_dir_all(&sub).expect("workspace");
    let providers = data.join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::copy(
        crate::support::guests::HOSTILE,
        providers.join("hostile.wasm"),
    )
    .expect("drop in hostile");
    std::fs::write(
        data.join("tether.toml"),
        "[providers.hostile]\ncommands = [{ program = \"touch\", args = [\"{path}\"] }]\n",
    )
    .expect("tether.toml");
    let server = crate::support::Server::start_in(&data, &sub);
    let up = "../".repeat(ws.components().count() - 1);
    let attack = json!({"attack": "symlink", "link": "cwd", "target": format!("{up}proc/self/cwd"),
        "then": {"attack": "symlink", "link": "escape", "target": "../../../planted.txt",
        "then": {"attack": "spawn", "program": "touch", "args": ["cwd/escape"]}}});
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(
                json!({"name": "procs", "provider": "hostile", "config": attack,
                        "start": true, "restartPolicy": "never"}),
            ),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + WAIT;
    let env = loop {
        let (_, env) = server
            .call("GET", &format!("/api/v1/environments/{id}"), None)
            .await;
        if env["status"] == "running" || env["status"] == "error" {
            break env;
        }
        assert!(Instant::now() < deadline, "never settled: {env}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !data.join("planted.txt").exists(),
        "a child went out through /proc/self/cwd: {env}"
    );
    assert_eq!(env["status"], "error", "{env}");
    let error = env["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("`touch` with these arguments is not"),
        "{error}"
    );
    server.stop();
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n - 3).map(str::to_owned)
}

/// Starts a hostile environment whose granted shell double-forks a `setsid`
/// sleeper, and returns its id and the sleeper's pid once it runs in a session
/// of its own.
async fn escaped_sleeper(rig: &mut Rig, name: &str) -> (String, u32) {
    let script = "(setsid sh -c 'echo $$ > escaped.pid; exec sleep 300' &); exec sleep 300";
    let env = rig
        .attack(
            name,
            json!({"attack": "spawn", "program": "/bin/sh", "args": ["-c", script]}),
        )
        .await;
    assert_eq!(env["status"], "running", "{env}");
    let leader: u32 = outcome(&env)
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("leader pid");
    let file = rig.workspace(name).join("escaped.pid");
    let deadline = Instant::now() + WAIT;
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            && stat_field(pid, 3).is_some_and(|state| state != "Z")
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the sleeper never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // It left the spawned process group and session: `killpg` alone misses it.
    assert_ne!(stat_field(pid, 5), stat_field(leader, 5), "same group");
    assert_eq!(stat_field(pid, 6), Some(pid.to_string()), "own session");
    (env["id"].as_str().expect("id").to_owned(), pid)
}

#[tokio::test]
async fn hostile_double_fork_and_setsid_still_stop_with_the_environment() {
    let mut rig = Rig::start(granting(
        "  { program = \"/bin/sh\", args = [\"-c\", \"{any}\"] },",
        "",
    ))
    .await;
    let (stopped, pid) = escaped_sleeper(&mut rig, "df-stop").await;
    rig.server.stop_env(&stopped).await;
    wait_gone(pid).await;

    let (deleted, pid) = escaped_sleeper(&mut rig, "df-delete").await;
    rig.delete(&deleted).await;
    wait_gone(pid).await;

    // Host shutdown (SIGTERM): `finish` stops the server.
    let (_, pid) = escaped_sleeper(&mut rig, "df-term").await;
    assert!(!process_gone(pid));
    rig.finish().await;
    wait_gone(pid).await;
}

#[tokio::test]
async fn hostile_double_fork_and_setsid_die_with_a_crashed_host() {
    let mut rig = Rig::start(granting(
        "  { program = \"/bin/sh\", args = [\"-c\", \"{any}\"] },",
        "",
    ))
    .await;
    let (_, pid) = escaped_sleeper(&mut rig, "df-crash").await;
    // SIGKILL: the host cleans nothing up; the guard notices its parent is gone.
    let Rig { server, dir, .. } = rig;
    server.kill();
    wait_gone(pid).await;
    drop(dir);
}
