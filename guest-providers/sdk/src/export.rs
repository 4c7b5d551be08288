//! The glue between a [`Provider`] and the component's exports: an adapter that
//! implements the generated `Guest` trait by delegating to the provider held in the
//! instance's thread-local, and the [`export_provider!`](crate::export_provider) macro.

use std::marker::PhantomData;

use crate::bindings::exports::tether::provider::provider::Guest;
use crate::context::{set_init_vars, with_provider};
use crate::{DiffFile, Health, InitVars, Provider, ProviderError, ProviderInfo, StartResult};

/// Implements the generated `Guest` trait for provider `P`. Used by
/// [`export_provider!`](crate::export_provider); not meant to be named directly.
pub struct Adapter<P>(PhantomData<P>);

impl<P: Provider> Guest for Adapter<P> {
    fn info() -> ProviderInfo {
        with_provider(|provider: &mut P| provider.info()).unwrap_or_else(|_| P::default().info())
    }

    fn on_provider_start(init: InitVars) -> Result<StartResult, ProviderError> {
        set_init_vars(init.clone());
        with_provider(|provider: &mut P| provider.setup(&init))?
    }

    fn on_provider_agent_start(message: String) -> Result<(), ProviderError> {
        with_provider(|provider: &mut P| provider.on_provider_agent_start(message))?
    }

    fn on_provider_stop() -> Result<(), ProviderError> {
        with_provider(|provider: &mut P| provider.on_provider_stop())?
    }

    fn on_close_signal() -> Result<(), ProviderError> {
        with_provider(|provider: &mut P| provider.on_close_signal())?
    }

    fn on_provider_destroy(init: InitVars) -> Result<(), ProviderError> {
        // A fresh instance saw no start: record the init vars so the workspace helpers
        // and `init_vars()` work in `destroy` too.
        set_init_vars(init.clone());
        with_provider(|provider: &mut P| provider.on_provider_destroy(&init))?
    }

    fn on_raw_message(message: String) -> Result<String, ProviderError> {
        with_provider(|provider: &mut P| provider.on_raw_message(message))?
    }

    fn check_health() -> Health {
        with_provider(|provider: &mut P| provider.check_health())
            .unwrap_or_else(|err| Health::unhealthy(err.message()))
    }

    fn read_file(path: String) -> Result<String, ProviderError> {
        with_provider(|provider: &mut P| provider.read_file(path))?
    }

    fn write_file(path: String, content: String) -> Result<(), ProviderError> {
        with_provider(|provider: &mut P| provider.write_file(path, content))?
    }

    fn delete_file(path: String) -> Result<(), ProviderError> {
        with_provider(|provider: &mut P| provider.delete_file(path))?
    }

    fn create_folder(path: String) -> Result<(), ProviderError> {
        with_provider(|provider: &mut P| provider.create_folder(path))?
    }

    fn rename_item(old_path: String, new_path: String) -> Result<(), ProviderError> {
        with_provider(|provider: &mut P| provider.rename_item(old_path, new_path))?
    }

    fn get_diff_files() -> Result<Vec<DiffFile>, ProviderError> {
        with_provider(|provider: &mut P| provider.get_diff_files())?
    }

    fn merge_as_patch() -> Result<String, ProviderError> {
        with_provider(|provider: &mut P| provider.merge_as_patch())?
    }
}

/// Exports a [`Provider`] type as the component's `tether:provider/provider`
/// implementation. Use it once, at the root of a `cdylib` provider crate:
///
/// ```ignore
/// tether_provider_sdk::export_provider!(MyProvider);
/// ```
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        #[doc(hidden)]
        type __TetherProviderExport = $crate::export::Adapter<$provider>;
        $crate::bindings::export!(__TetherProviderExport with_types_in $crate::bindings);
    };
}
