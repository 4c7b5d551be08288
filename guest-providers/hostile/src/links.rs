//! Attacks through `wasi:filesystem` that Rust's standard library cannot make on
//! WASI. `symlink` plants a symbolic link in the workspace: the link may point
//! anywhere relative (`../../../x`; WASI refuses absolute targets) and need not
//! resolve: following it is refused inside the sandbox, but a native child the
//! provider then spawns with the link as a `{path}` argument follows it. `nest`
//! makes a chain of directories far deeper than any path could name, walking down
//! by descriptor, for whoever walks the workspace later (its removal).

use tether_provider_sdk::ProviderError;

use crate::http::bindings::wasi::filesystem::preopens;
use crate::http::bindings::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, OpenFlags, PathFlags,
};

fn workspace() -> Result<Descriptor, ProviderError> {
    preopens::get_directories()
        .into_iter()
        .find_map(|(dir, path)| (path == "/workspace").then_some(dir))
        .ok_or_else(|| ProviderError::denied("no /workspace preopen"))
}

/// Creates `/workspace/LINK` pointing at `target`.
pub(crate) fn plant(link: &str, target: &str) -> Result<(), ProviderError> {
    workspace()?
        .symlink_at(target, link)
        .map_err(|e| ProviderError::denied(format!("symlink {link} -> {target}: {e:?}")))
}

/// Makes `/workspace/d/d/…/d`, `depth` directories deep (going down the chain already
/// there first); returns the depth reached.
pub(crate) fn nest(depth: u64) -> Result<u64, ProviderError> {
    let mut dir = workspace()?;
    let flags = DescriptorFlags::READ | DescriptorFlags::MUTATE_DIRECTORY;
    for reached in 0..depth {
        let open =
            |dir: &Descriptor| dir.open_at(PathFlags::empty(), "d", OpenFlags::DIRECTORY, flags);
        let next = match open(&dir) {
            Ok(next) => next,
            Err(_) => {
                dir.create_directory_at("d").map_err(|e| {
                    ProviderError::failed(format!("mkdir at depth {reached}: {e:?}"))
                })?;
                open(&dir)
                    .map_err(|e| ProviderError::failed(format!("open at depth {reached}: {e:?}")))?
            }
        };
        dir = next;
    }
    Ok(depth)
}
