//! The provider author's loop: `tether provider build` (a crate to a component),
//! `tether provider install` (a component into a host's providers directory, on this
//! machine or through `PUT /api/v1/providers/{name}`), and `tether provider dev`
//! (build and install on every change to the crate, then restart the environments the
//! author names and show how their start went).

use super::output::{line, printable};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::Method;
use serde_json::Value;

use super::client::{ServerArgs, call, follow_lines, send};
use crate::config::{LimitsConfig, NetConfig};
use crate::engine::{Engine, ProviderSource};

const TARGET: &str = "wasm32-wasip2";

/// Quiet time after the last change to the crate before it is rebuilt: an editor's
/// save is often several writes.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Where `install` and `dev` put a component.
#[derive(Debug, Args)]
pub(crate) struct Destination {
    /// Install through this running server's API (`PUT /api/v1/providers/NAME`, admin
    /// token) instead of into `--data-dir` on this machine.
    #[arg(long)]
    remote: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// A built component, as the host will see it.
struct Built {
    path: PathBuf,
    name: String,
    version: String,
    sha256: String,
    bytes: Vec<u8>,
    requested: Value,
}

/// `tether provider build [PATH]`: builds, prints the component and what it asks for.
pub(crate) async fn build(crate_dir: &Path) -> anyhow::Result<()> {
    let built = build_component(crate_dir).await?;
    line(&format!("built {}", built.path.display()))?;
    line(&format!(
        "provider {} {} (sha256 {})",
        built.name, built.version, built.sha256
    ))?;
    line(&format!(
        "asks for: {}",
        serde_json::to_string_pretty(&built.requested)?
    ))?;
    Ok(())
}

/// `tether provider install FILE.wasm`.
pub(crate) async fn install(file: &Path, to: &Destination) -> anyhow::Result<()> {
    let built = describe(file).await?;
    let shown = install_component(&built, to).await?;
    line(&shown)?;
    Ok(())
}

/// `tether provider dev [PATH]`: rebuilds and installs on every change until ^C.
pub(crate) async fn dev(
    crate_dir: &Path,
    to: &Destination,
    restart: &[String],
) -> anyhow::Result<()> {
    let crate_dir = crate_dir
        .canonicalize()
        .with_context(|| format!("no crate at {}", crate_dir.display()))?;
    let (_watcher, mut changes) = watch(&crate_dir)?;
    // The logs of the environments it restarts, as they come, for as long as it runs.
    for id in restart {
        crate::names::validate("environment id", id)?;
        let (server, id) = (to.server.clone(), id.clone());
        tokio::spawn(async move {
            let path = format!("/api/v1/environments/{id}/logs?tail=0&follow=true");
            let short: String = id.chars().take(8).collect();
            let shown =
                follow_lines(&server, &path, true, |line| print_log_line(&short, line)).await;
            if let Err(e) = shown {
                eprintln!("environment {id}: its log could not be followed: {e:#}");
            }
        });
    }
    let mut began = Instant::now();
    let mut what = "since starting";
    loop {
        match build_component(&crate_dir).await {
            Err(e) => eprintln!("build failed: {e:#}"),
            Ok(built) => match install_component(&built, to).await {
                Err(e) => eprintln!("install failed: {e:#}"),
                Ok(shown) => {
                    let took = began.elapsed().as_secs_f64();
                    line(&format!("{shown} ({took:.2} s {what})"))?;
                    for id in restart {
                        if let Err(e) = restart_and_wait(&to.server, id).await {
                            eprintln!("environment {id}: {e:#}");
                        }
                    }
                }
            },
        }
        line(&format!("watching {} for changes", crate_dir.display()))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = next_change(&mut changes) => {
                if !next {
                    bail!("the watch on {} ended", crate_dir.display());
                }
                began = Instant::now();
                what = "after the change";
            }
        }
    }
}

/// Builds the crate at `crate_dir` for the wasm target in release, installing the
/// target first if this toolchain lacks it.
async fn build_component(crate_dir: &Path) -> anyhow::Result<Built> {
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("no Cargo.toml in {}", crate_dir.display());
    }
    ensure_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo build failed");
    }
    // The component is the cdylib artifact cargo reports, wherever its target dir is.
    let component = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .filter_map(|m| m["filenames"].as_array().cloned())
        .flatten()
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
        .context("cargo built no .wasm component: is the crate a cdylib?")?;
    describe(&component).await
}

/// Installs the wasm target with rustup if the toolchain's sysroot lacks it.
fn ensure_target() -> anyhow::Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return Ok(());
    }
    eprintln!("installing the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed");
    }
    Ok(())
}

/// Loads `file` as the host would (no grants) to read its name, version and request.
async fn describe(file: &Path) -> anyhow::Result<Built> {
    let bytes = crate::engine::read_component(file).await?;
    let engine = Engine::new(LimitsConfig::default(), NetConfig::default())?;
    engine.set_compiler(super::own_binary());
    let source = ProviderSource::DropIn {
        path: file.to_owned(),
    };
    let loaded = (engine.load(bytes.clone(), source).await)
        .with_context(|| format!("{} is not a provider component", file.display()))?;
    let d = &loaded.description;
    Ok(Built {
        path: file.to_owned(),
        name: d.name.clone(),
        version: d.version.clone(),
        sha256: loaded.sha256.clone(),
        requested: serde_json::to_value(d.request())?,
        bytes,
    })
}

/// Puts `built` where `to` says; a line saying what is served now.
async fn install_component(built: &Built, to: &Destination) -> anyhow::Result<String> {
    crate::names::validate("provider", &built.name)?;
    if to.remote {
        let path = format!("/api/v1/providers/{}", built.name);
        let body = Bytes::from(built.bytes.clone());
        let view = send(&to.server, Method::PUT, &path, "application/wasm", body).await?;
        // The server's words, escaped like any it sends.
        let said = |key: &str| printable(view[key].as_str().unwrap_or("?"));
        return Ok(format!(
            "installed {} {} on {} (sha256 {})",
            built.name,
            said("version"),
            to.server.url,
            said("sha256")
        ));
    }
    let target = (to.server.data_dir)
        .join(".codebolt/providers")
        .join(format!("{}.wasm", built.name));
    // Renamed into place, so a watching host never loads half a file.
    crate::atomic::replace_file(&target, &built.bytes)
        .with_context(|| format!("installing {}", target.display()))?;
    Ok(format!(
        "installed {} {} as {} (sha256 {})",
        built.name,
        built.version,
        target.display(),
        built.sha256
    ))
}

/// Restarts environment `id` and prints its status until it runs or fails.
async fn restart_and_wait(server: &ServerArgs, id: &str) -> anyhow::Result<()> {
    crate::names::validate("environment id", id)?;
    let path = format!("/api/v1/environments/{id}");
    call(server, Method::POST, &format!("{path}/restart"), None).await?;
    let began = Instant::now();
    let mut last = String::new();
    while began.elapsed() < Duration::from_secs(120) {
        let env = call(server, Method::GET, &path, None).await?;
        let status = printable(env["status"].as_str().unwrap_or("?"));
        if status != last {
            line(&format!(
                "environment {id}: {status} (+{:.2} s)",
                began.elapsed().as_secs_f64()
            ))?;
            last = status.clone();
        }
        match status.as_str() {
            "running" if env["runtime"]["connected"] == true => {
                let version = printable(env["providerVersion"].as_str().unwrap_or("?"));
                line(&format!(
                    "environment {id}: runtime connected, on {version}"
                ))?;
                return Ok(());
            }
            "error" => bail!(
                "failed: {}",
                printable(env["lastError"].as_str().unwrap_or("?"))
            ),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("not running after 120 s")
}

/// One line of an environment's log, for a person: `[id] source: message`.
fn print_log_line(env: &str, line: &str) {
    let Ok(line) = serde_json::from_str::<Value>(line) else {
        return;
    };
    let source = printable(line["source"].as_str().unwrap_or("?"));
    let message = printable(line["message"].as_str().unwrap_or_default());
    // A closed stdout ends the dev loop's own printing; nothing to do here.
    let _ = super::output::line(&format!("[{env}] {source}: {message}"));
}

type Changes = tokio::sync::mpsc::UnboundedReceiver<()>;

/// Watches the crate's sources (not its build output) for changes.
fn watch(crate_dir: &Path) -> anyhow::Result<(notify::RecommendedWatcher, Changes)> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let target = crate_dir.join("target");
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // The build's own output is not a change to the crate.
        if event.paths.iter().all(|p| p.starts_with(&target)) {
            return;
        }
        let _ = tx.send(());
    })?;
    watcher.watch(crate_dir, notify::RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}

/// Waits for a change, then for the burst it starts to end; false once the watch ends.
async fn next_change(changes: &mut Changes) -> bool {
    if changes.recv().await.is_none() {
        return false;
    }
    loop {
        match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}
