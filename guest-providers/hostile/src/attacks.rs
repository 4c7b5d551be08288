//! The attacks, by name. `Ok` carries what the attack got (for attacks that are
//! limits, or a breach the tests then fail on); `Err` carries the host's refusal.

use std::hint::black_box;

use tether_provider_sdk::process::{Child, Command};
use tether_provider_sdk::serde_json::Value;
use tether_provider_sdk::{ProviderError, log};

use crate::http;

fn text<'a>(config: &'a Value, key: &str) -> Result<&'a str, ProviderError> {
    config
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::invalid_input(format!("config.{key} is required")))
}

fn strings(config: &Value, key: &str) -> Vec<String> {
    config
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the attack `config.attack` names.
pub(crate) fn run(config: &Value, children: &mut Vec<Child>) -> Result<String, ProviderError> {
    match text(config, "attack")? {
        "none" => Ok("behaved".to_owned()),
        "handles" => {
            let count = config
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(100_000);
            Ok(format!("held {} handles", http::hoard_handles(count)))
        }
        "hoard-headers" | "hoard-bodies" => {
            let count = config.get("count").and_then(Value::as_u64).unwrap_or(4000);
            let stop_at = config
                .get("stopAt")
                .and_then(Value::as_u64)
                .unwrap_or(1 << 30);
            let (kept, bytes) = if config["attack"] == "hoard-headers" {
                let per = config.get("perFields").and_then(Value::as_u64);
                http::hoard_headers(count, per.unwrap_or(960 << 10), stop_at)
            } else {
                http::hoard_bodies(count, stop_at)
            };
            Ok(format!("kept {kept} resources holding {bytes} bytes"))
        }
        "nest" => {
            let depth = config
                .get("depth")
                .and_then(Value::as_u64)
                .unwrap_or(10_000);
            crate::links::nest(depth).map(|d| format!("nested {d} directories"))
        }
        "fill" => {
            let number = |key: &str, default: u64| {
                config.get(key).and_then(Value::as_u64).unwrap_or(default)
            };
            let dir = config
                .get("dir")
                .and_then(Value::as_str)
                .unwrap_or("/workspace");
            crate::disk::fill(
                dir,
                number("chunk", 1 << 20) as usize,
                number("stopAt", 1 << 30),
            )
        }
        "move" => crate::disk::move_in(),
        "hoard-connections" => {
            let count = config.get("count").and_then(Value::as_u64).unwrap_or(4096);
            Ok(crate::disk::hoard_connections(text(config, "addr")?, count))
        }
        "hoard-sockets" => {
            let count = config.get("count").and_then(Value::as_u64).unwrap_or(4096);
            Ok(crate::disk::hoard_sockets(count))
        }
        "hoard-files" => {
            let count = config.get("count").and_then(Value::as_u64).unwrap_or(4096);
            let streams = config.get("streams").and_then(Value::as_bool) == Some(true);
            Ok(crate::disk::hoard_files(count, streams))
        }
        "hoard-listings" => {
            let files = config
                .get("files")
                .and_then(Value::as_u64)
                .unwrap_or(20_000);
            let name_bytes = config
                .get("nameBytes")
                .and_then(Value::as_u64)
                .unwrap_or(200);
            let count = config.get("count").and_then(Value::as_u64).unwrap_or(100);
            Ok(crate::disk::hoard_listings(
                files,
                name_bytes as usize,
                count,
            ))
        }
        "diff-flood" => Ok("will answer get-diff-files with many empty files".to_owned()),
        "read-passwd" => read_all(&["/etc/passwd"]),
        "read" => read_all(&[text(config, "path")?]),
        "write-outside" => write_all(&[text(config, "path")?, "/workspace/../escaped.txt"]),
        "dotdot" => read_all(&[
            "/workspace/../../../../../../etc/passwd",
            "/state/../../../../../../etc/passwd",
        ]),
        "spawn-env" => crate::spawn_attacks::spawn_env(config),
        "symlink" => {
            crate::links::plant(text(config, "link")?, text(config, "target")?)?;
            match config.get("then") {
                Some(then) => run(then, children),
                None => Ok("planted".to_owned()),
            }
        }
        "spawn" => spawn_one(text(config, "program")?, strings(config, "args"), children),
        "spawn-loop" => {
            let count = config.get("count").and_then(Value::as_u64).unwrap_or(1000);
            spawn_loop(text(config, "program")?, strings(config, "args"), count)
        }
        "spawn-many" => {
            let count = config.get("count").and_then(Value::as_u64).unwrap_or(1000);
            spawn_many(
                text(config, "program")?,
                strings(config, "args"),
                count,
                children,
            )
        }
        "http" => http::get(text(config, "url")?)
            .map(|status| format!("HTTP status {status}"))
            .map_err(|code| ProviderError::denied(format!("HTTP refused: {code}"))),
        "tcp" => std::net::TcpStream::connect(text(config, "addr")?)
            .map(|_| "TCP connected".to_owned())
            .map_err(|e| ProviderError::denied(format!("TCP connect refused: {e}"))),
        "spin" => spin(),
        "spin-health" => Ok("will spin in check-health".to_owned()),
        "alloc" => allocate_4gib(),
        "recurse" => Ok(format!("recursed {}", recurse(black_box(0)))),
        "panic" => panic!("hostile provider panics on purpose"),
        "log-flood" => {
            let lines = config
                .get("lines")
                .and_then(Value::as_u64)
                .unwrap_or(100_000);
            for i in 0..lines {
                log::info(format!("flood line {i}"));
            }
            Ok(format!("logged {lines} lines"))
        }
        name if crate::floods::ATTACKS.contains(&name) => crate::floods::run(name, config),
        other => Err(ProviderError::invalid_input(format!(
            "unknown attack {other:?}"
        ))),
    }
}

/// Burns CPU without ever calling the host.
pub(crate) fn spin() -> ! {
    loop {
        black_box(());
    }
}

/// Reads each path; any success is a breach, reported as `Ok`.
fn read_all(paths: &[&str]) -> Result<String, ProviderError> {
    let mut refusals = Vec::new();
    for path in paths {
        match std::fs::read_to_string(path) {
            Ok(content) => return Ok(format!("read {} bytes of {path}", content.len())),
            Err(e) => refusals.push(format!("reading {path}: {e}")),
        }
    }
    Err(ProviderError::denied(refusals.join("; ")))
}

/// Writes each path; any success is a breach, reported as `Ok`.
fn write_all(paths: &[&str]) -> Result<String, ProviderError> {
    let mut refusals = Vec::new();
    for path in paths {
        match std::fs::write(path, "hostile was here") {
            Ok(()) => return Ok(format!("wrote {path}")),
            Err(e) => refusals.push(format!("writing {path}: {e}")),
        }
    }
    Err(ProviderError::denied(refusals.join("; ")))
}

fn spawn_one(
    program: &str,
    args: Vec<String>,
    children: &mut Vec<Child>,
) -> Result<String, ProviderError> {
    let child = Command::new(program).args(args).spawn()?;
    let pid = child.pid();
    children.push(child);
    Ok(format!("spawned {program} as {pid}"))
}

/// Spawns `count` children one after another, each waited for: the process cap
/// never bites, and every spawn (and its output) is a line for the host's log.
fn spawn_loop(program: &str, args: Vec<String>, count: u64) -> Result<String, ProviderError> {
    for _ in 0..count {
        Command::new(program).args(args.clone()).spawn()?.wait();
    }
    Ok(format!("spawned {count} one by one"))
}

/// Spawns until refused or `count` is reached, keeping every child alive.
fn spawn_many(
    program: &str,
    args: Vec<String>,
    count: u64,
    children: &mut Vec<Child>,
) -> Result<String, ProviderError> {
    let mut refusal = String::from("none");
    for _ in 0..count {
        match Command::new(program).args(args.clone()).spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                refusal = e.message().to_owned();
                break;
            }
        }
    }
    let pids: Vec<String> = children.iter().map(|c| c.pid().to_string()).collect();
    Ok(format!(
        "spawned {}; refusal: {refusal}; pids: {}",
        children.len(),
        pids.join(",")
    ))
}

/// Grows the heap in 16 MiB steps towards 4 GiB (the whole wasm32 address space).
fn allocate_4gib() -> Result<String, ProviderError> {
    const STEP: usize = 16 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..(4096 / 16) {
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(STEP).is_err() {
            break;
        }
        chunk.resize(STEP, 1u8);
        held.push(black_box(chunk));
    }
    Ok(format!("allocated {} MiB", held.len() * 16))
}

/// Recurses without bound (the guard never fires within a wasm stack).
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let mut frame = [0u8; 256];
    frame[(depth % 256) as usize] = 1;
    black_box(&frame);
    black_box(recurse(depth + 1)) + u64::from(frame[0])
}
