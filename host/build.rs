//! Builds the guest providers in `guest-providers/` for `wasm32-wasip2` so the host
//! can embed the built-in ones and tests can load the rest, and the spawn guard
//! (`guard/`) linked statically, which the host embeds and runs every child under.
//!
//! Each nested `cargo build` uses its own target directory under `OUT_DIR`, so it
//! never fights the outer build for its lock. The wasm target and the guard's musl
//! target are installed with rustup when missing, so a fresh machine needs no manual
//! step.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

/// The providers compiled into the binary: the name each is known by and its guest
/// component. Listed once here, so the engine's components (`builtins.rs`) and the
/// names the settings check `replace_builtin` against (`builtin_names.rs`) agree.
const BUILTINS: &[(&str, &str)] = &[
    ("local-process", "local_process.wasm"),
    ("git-worktree", "git_worktree.wasm"),
    ("http-sandbox", "http_sandbox.wasm"),
];

/// Appended to `guests.rs`, which the host's unit tests and its integration tests
/// both include: the one way they make another build of a guest.
const REBUILT: &str = r#"
/// `bytes` (a component) with a custom section tagged `tag` appended: the same provider,
/// as another build of it would be, with other bytes (and another SHA-256).
pub fn rebuilt(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"tether-test";
    let size = 1 + name.len() + tag.len();
    assert!(size < 128, "one-byte LEB128 sizes only");
    let mut out = bytes.to_vec();
    out.extend_from_slice(&[0, size as u8, name.len() as u8]);
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}
"#;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_owned();
    let guests = root.join("guest-providers");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", guests.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("guard").display());

    ensure_target(WASM_TARGET);
    let target_dir = out_dir.join("guest-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--workspace")
        .arg(format!("--target={WASM_TARGET}"))
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags and wrappers meant for the host build (clippy, coverage) must not
        // leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS");
    let status = cmd.status().expect("running cargo for the guest providers");
    assert!(
        status.success(),
        "building guest-providers for {WASM_TARGET} failed"
    );

    let built = target_dir.join(WASM_TARGET).join("release");
    let mut consts = String::new();
    for entry in std::fs::read_dir(&built).expect("guest build output") {
        let path = entry.expect("guest build output entry").path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let name = path.file_name().expect("file name").to_owned();
            let dest = out_dir.join(&name);
            std::fs::copy(&path, &dest).expect("copying a guest component");
            let stem = Path::new(&name)
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 name")
                .to_uppercase();
            consts.push_str(&format!(
                "/// Path of the built `{stem}` guest component.\npub const {stem}: &str = {:?};\n",
                dest.display().to_string()
            ));
        }
    }
    consts.push_str(REBUILT);
    std::fs::write(out_dir.join("guests.rs"), consts).expect("writing guests.rs");
    write_builtins(&out_dir);
    write_sdk_sources(&guests.join("sdk/src"), &out_dir.join("sdk_sources.rs"));
    write_wit_sources(&root.join("wit"), &out_dir.join("wit_sources.rs"));
    build_static_guard(&root, &out_dir);
}

/// Builds `tether-guard` always optimised and linked statically, against musl where
/// the host's target is a glibc one (`x86_64-unknown-linux-gnu` gives
/// `x86_64-unknown-linux-musl`): linked statically against glibc the guard still cost
/// about 0.9 ms of CPU on top of its program at every start, against musl 0.45
/// (`docs/benchmarks.md`, "Start latency"). Writes `static_guard.rs`, which embeds it.
fn build_static_guard(root: &Path, out_dir: &Path) {
    let host_target = env::var("TARGET").expect("set by cargo");
    let target = match host_target.strip_suffix("-gnu") {
        Some(arch_os) => format!("{arch_os}-musl"),
        None => host_target,
    };
    ensure_target(&target);
    let target_dir = out_dir.join("guard-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "tether-guard",
            "--bin",
            "tether-guard",
        ])
        // With an explicit target the flags reach the guard, not build scripts.
        .arg(format!("--target={target}"))
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .expect("running cargo for the spawn guard");
    assert!(status.success(), "building the static spawn guard failed");
    let built = target_dir
        .join(&target)
        .join("release")
        .join("tether-guard");
    assert!(built.is_file(), "{} was not built", built.display());
    std::fs::write(
        out_dir.join("static_guard.rs"),
        format!(
            "/// The spawn guard's executable, linked statically.\n\
             pub(crate) const STATIC_GUARD: &[u8] = include_bytes!({:?});\n",
            built.display().to_string()
        ),
    )
    .expect("writing static_guard.rs");
}

/// Writes `builtins.rs` (name and embedded component of each built-in, for the
/// engine) and `builtin_names.rs` (the names alone, for the settings, which must not
/// depend on the engine).
fn write_builtins(out_dir: &Path) {
    let mut components = String::from("&[\n");
    let mut names = String::from("&[\n");
    for (name, file) in BUILTINS {
        let path = out_dir.join(file);
        assert!(
            path.is_file(),
            "built-in {name}: {} was not built",
            path.display()
        );
        components.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
        names.push_str(&format!("    {name:?},\n"));
    }
    components.push_str("]\n");
    names.push_str("]\n");
    std::fs::write(out_dir.join("builtins.rs"), components).expect("writing builtins.rs");
    std::fs::write(out_dir.join("builtin_names.rs"), names).expect("writing builtin_names.rs");
}

/// Lists the provider world of every version in `wit/` (`tether-provider@X.Y.Z/
/// provider.wit`), so the scaffold can vendor the one the host calls newest without
/// naming its version again.
fn write_wit_sources(dir: &Path, out: &Path) {
    let mut worlds: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .expect("wit/")
        .map(|e| e.expect("wit entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let version = name.strip_prefix("tether-provider@")?.to_owned();
            Some((version, p.join("provider.wit")))
        })
        .collect();
    worlds.sort();
    let mut code = String::from("&[\n");
    for (version, path) in worlds {
        code.push_str(&format!(
            "    ({version:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("]\n");
    std::fs::write(out, code).expect("writing wit_sources.rs");
}

/// Lists the SDK's source files for `tether provider new`, which vendors them into a
/// new provider crate: every file, so the scaffold can never miss one.
fn write_sdk_sources(dir: &Path, out: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("guest-providers/sdk/src")
        .map(|e| e.expect("sdk entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut code = String::from("&[\n");
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    code.push_str("]\n");
    std::fs::write(out, code).expect("writing sdk_sources.rs");
}

/// Installs `target` with rustup if this toolchain lacks it.
fn ensure_target(target: &str) {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()));
    let installed = sysroot.is_some_and(|s| s.join("lib/rustlib").join(target).exists());
    if installed {
        return;
    }
    println!("cargo:warning=installing the {target} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .expect("running rustup to install a target");
    assert!(status.success(), "`rustup target add {target}` failed");
}
