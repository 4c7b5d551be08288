//! Installing a provider component sent through the API (`PUT /api/v1/providers/{name}`,
//! what `tether provider install --server` and `tether provider dev` use): checked the
//! way a drop-in is — it must load, and name itself as the URL does — then written into
//! the providers directory under a temporary name and renamed into place, so the
//! directory watcher never sees half a file. The rescan that follows makes it the
//! provider for the next start; running environments keep their instance.

use super::providers::ProviderView;
use super::{LifecycleError, Manager};
use crate::engine::ProviderSource;

impl Manager {
    /// Installs `bytes` as provider `name`, or says why not; the provider as now loaded.
    pub(crate) async fn install_provider(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<ProviderView, LifecycleError> {
        crate::names::validate("provider", name)
            .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let providers = &self.shared.providers;
        let path = providers.dir().join(format!("{name}.wasm"));
        // Checked as bytes, not as the file they will become: the refusal goes to the
        // client, who must not learn where the host keeps its files.
        let loaded = (providers
            .engine()
            .load(bytes.clone(), ProviderSource::BuiltIn)
            .await)
            .map_err(|e| LifecycleError::Invalid(format!("the component does not load: {e}")))?;
        if loaded.description.name != name {
            return Err(LifecycleError::Invalid(format!(
                "the component calls itself {}, not {name}",
                crate::untrusted::named(&loaded.description.name)
            )));
        }
        let write = move || crate::atomic::replace_file(&path, &bytes);
        // The operator reads the whole error (with the path) in the log; the client
        // only what kind of failure it was.
        let failed = |e: &dyn std::fmt::Display, kind: String| {
            tracing::error!(provider = %name, error = %e, "installing a provider through the API failed");
            LifecycleError::Internal(format!("installing the component failed: {kind}"))
        };
        (tokio::task::spawn_blocking(write).await)
            .map_err(|e| failed(&e, "the write did not finish".into()))?
            .map_err(|e| failed(&e, e.kind().to_string()))?;
        tracing::info!(provider = %name, version = %loaded.description.version, sha256 = %loaded.sha256, "provider installed through the API");
        providers.rescan().await;
        let view = providers.one(name)?;
        Ok(view)
    }
}
