//! Providers compiled into the binary (built from `guest-providers/` by `build.rs`).

/// Name and component bytes of each built-in provider.
pub(crate) const BUILTINS: &[(&str, &[u8])] = &[
    (
        "local-process",
        include_bytes!(concat!(env!("OUT_DIR"), "/local_process.wasm")),
    ),
    (
        "git-worktree",
        include_bytes!(concat!(env!("OUT_DIR"), "/git_worktree.wasm")),
    ),
    (
        "http-sandbox",
        include_bytes!(concat!(env!("OUT_DIR"), "/http_sandbox.wasm")),
    ),
];
