//! The provider world's bindings: one module and one `bindgen!` per supported WIT
//! version, laid out like Zed's extension host.
//!
//! [`latest`] names the newest version's module: it is what the host implements and
//! what [`crate::engine::types`] converts from. Older versions' modules convert their
//! types up to the newest in one place and forward their imports to the newest
//! implementation. Adding a version is a new `wit/` directory, a new module, a variant
//! of [`WorldVersion`], conversions in the module it supersedes and the `latest` line
//! below (the checklist is in `docs/providers.md`).
//!
//! Imports are async and trappable (a host bug traps; expected failures are WIT
//! `result`s); the `child` resource is backed by the broker's [`Child`].
//!
//! [`Child`]: crate::broker::process::Child

pub(crate) mod v0_1;
pub(crate) mod v0_2;

/// The newest supported version: the one line to change when a version is added.
pub(crate) use v0_2 as latest;

use wasmtime::component::{Component, HasSelf, Linker};

use super::instance::HostState;
use latest::{ProviderWorld, ProviderWorldPre};

pub(crate) use latest::{log, process, runtime, state, types};

/// The interface every provider exports, without its version.
const PROVIDER_EXPORT: &str = "tether:provider/provider";

/// A version of the provider world this host can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorldVersion {
    /// `tether:provider@0.1.0`: `on-close-signal(destroy)`, no `on-provider-destroy`.
    V0_1,
    /// `tether:provider@0.2.0`: `on-provider-destroy(init)`, the `{projectPath}`
    /// directory request.
    V0_2,
}

impl WorldVersion {
    /// Every supported version, oldest first.
    pub const ALL: [WorldVersion; 2] = [WorldVersion::V0_1, WorldVersion::V0_2];

    /// The newest version: what the SDK and `tether provider new` build against.
    pub const LATEST: WorldVersion = WorldVersion::V0_2;

    /// The version as written in the WIT package; the one place each is spelled out
    /// (besides the `bindgen!` paths, which must be literals).
    pub fn as_str(self) -> &'static str {
        match self {
            WorldVersion::V0_1 => "0.1.0",
            WorldVersion::V0_2 => "0.2.0",
        }
    }

    /// Whether the provider can remove the resource of an environment that is not
    /// running (a fresh instance gets `on-provider-destroy` with the init vars).
    pub fn destroys_without_start(self) -> bool {
        self >= WorldVersion::V0_2
    }

    fn parse(version: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == version)
    }
}

/// Reads which world version `component` was built against from the name of its
/// exported provider interface (`tether:provider/provider@X.Y.Z`).
pub(crate) fn world_version(
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<WorldVersion, String> {
    let ty = component.component_type();
    let exports = ty.exports(engine).map(|(name, _)| name.to_owned());
    version_from_exports(exports)
}

/// The decision of [`world_version`], over the exported instance names.
pub(crate) fn version_from_exports(
    names: impl IntoIterator<Item = String>,
) -> Result<WorldVersion, String> {
    let supported = || {
        WorldVersion::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(name) = names
        .into_iter()
        .find(|n| n.split('@').next() == Some(PROVIDER_EXPORT))
    else {
        return Err(format!(
            "the component exports no `{PROVIDER_EXPORT}` interface: it is not a Tether provider"
        ));
    };
    let Some((_, version)) = name.split_once('@') else {
        return Err(format!(
            "the component exports `{name}` without a version; this host supports tether:provider@{{{}}}",
            supported()
        ));
    };
    WorldVersion::parse(version).ok_or_else(|| {
        format!(
            "the component was built against tether:provider@{version}; this host supports tether:provider@{{{}}}: rebuild it against one of those",
            supported()
        )
    })
}

/// Links the imports of every supported version.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    ProviderWorld::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    v0_1::ProviderWorld::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}

/// A provider component ready to instantiate, in the version it was built against.
#[derive(Clone)]
pub(crate) enum AnyPre {
    V0_1(v0_1::ProviderWorldPre<HostState>),
    V0_2(ProviderWorldPre<HostState>),
}

/// An instantiated provider, in the version it was built against.
pub(crate) enum AnyBindings {
    V0_1(v0_1::ProviderWorld),
    V0_2(ProviderWorld),
}

impl AnyPre {
    /// Pre-instantiates `component` (already linked) for `version`.
    pub(crate) fn new(
        version: WorldVersion,
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> wasmtime::Result<Self> {
        Ok(match version {
            WorldVersion::V0_1 => AnyPre::V0_1(v0_1::ProviderWorldPre::new(pre)?),
            WorldVersion::V0_2 => AnyPre::V0_2(ProviderWorldPre::new(pre)?),
        })
    }

    /// Instantiates it in `store`.
    pub(crate) async fn instantiate(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<AnyBindings> {
        Ok(match self {
            AnyPre::V0_1(pre) => AnyBindings::V0_1(pre.instantiate_async(store).await?),
            AnyPre::V0_2(pre) => AnyBindings::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

impl AnyBindings {
    /// Calls `info()`, converted to the newest types.
    pub(crate) async fn info(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<types::ProviderInfo> {
        Ok(match self {
            AnyBindings::V0_1(b) => b.tether_provider_provider().call_info(store).await?.into(),
            AnyBindings::V0_2(b) => b.tether_provider_provider().call_info(store).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reads_the_version_from_the_provider_export() {
        assert_eq!(
            version_from_exports(names(&[
                "wasi:cli/run@0.2.0",
                "tether:provider/provider@0.1.0"
            ])),
            Ok(WorldVersion::V0_1)
        );
        assert_eq!(
            version_from_exports(names(&["tether:provider/provider@0.2.0"])),
            Ok(WorldVersion::V0_2)
        );
    }

    #[test]
    fn refuses_unknown_missing_and_unversioned_worlds() {
        let future = version_from_exports(names(&["tether:provider/provider@0.3.0"])).unwrap_err();
        assert!(
            future.contains("built against tether:provider@0.3.0"),
            "{future}"
        );
        assert!(future.contains("0.1.0, 0.2.0"), "{future}");
        let none = version_from_exports(names(&["tether:provider/providers@0.2.0"])).unwrap_err();
        assert!(none.contains("not a Tether provider"), "{none}");
        let bare = version_from_exports(names(&["tether:provider/provider"])).unwrap_err();
        assert!(bare.contains("without a version"), "{bare}");
    }
}
