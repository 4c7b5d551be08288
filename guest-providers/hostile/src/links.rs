//! `symlink`: plants a symbolic link in the workspace through `wasi:filesystem`
//! (Rust's standard library offers no stable way to make one on WASI). The link
//! may point anywhere relative (`../../../x`; WASI refuses absolute targets) and
//! need not resolve: following it is refused inside the sandbox, but a native
//! child the provider then spawns with the link as a `{path}` argument follows it.

use tether_provider_sdk::ProviderError;

use crate::http::bindings::wasi::filesystem::preopens;

/// Creates `/workspace/LINK` pointing at `target`.
pub(crate) fn plant(link: &str, target: &str) -> Result<(), ProviderError> {
    let workspace = preopens::get_directories()
        .into_iter()
        .find_map(|(dir, path)| (path == "/workspace").then_some(dir))
        .ok_or_else(|| ProviderError::denied("no /workspace preopen"))?;
    workspace
        .symlink_at(target, link)
        .map_err(|e| ProviderError::denied(format!("symlink {link} -> {target}: {e:?}")))
}
