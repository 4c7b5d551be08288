//! Per-instance state the SDK keeps between calls: the provider value and the
//! init vars of the current start.
//!
//! A component instance is single-threaded and the host serialises calls into it,
//! so both live in thread-locals. The provider is created with `Default` on first
//! use and lives as long as the instance.

use std::any::Any;
use std::cell::RefCell;

use crate::{InitVars, Provider, ProviderError};

thread_local! {
    static PROVIDER: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    static INIT: RefCell<Option<InitVars>> = const { RefCell::new(None) };
}

/// The init vars of the most recent `on-provider-start` of this instance, if any.
///
/// They are recorded before [`Provider::setup`] runs, so setup and every later
/// hook can use them (the default file handlers find the workspace this way).
pub fn init_vars() -> Option<InitVars> {
    INIT.with(|cell| cell.try_borrow().ok().and_then(|init| init.clone()))
}

/// Records the init vars of a start.
pub(crate) fn set_init_vars(init: InitVars) {
    INIT.with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = Some(init);
        }
    });
}

/// Runs `f` on the instance's provider, creating it with `Default` on first use.
///
/// Fails only if a call re-enters while another holds the provider, which the
/// component model does not allow for a single instance.
pub(crate) fn with_provider<P: Provider, R>(
    f: impl FnOnce(&mut P) -> R,
) -> Result<R, ProviderError> {
    PROVIDER.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Err(ProviderError::failed(
                "the provider is already handling a call (re-entrant call refused)",
            ));
        };
        if !slot.as_ref().is_some_and(|provider| provider.is::<P>()) {
            *slot = Some(Box::new(P::default()));
        }
        match slot
            .as_mut()
            .and_then(|provider| provider.downcast_mut::<P>())
        {
            Some(provider) => Ok(f(provider)),
            None => Err(ProviderError::failed("the provider instance is missing")),
        }
    })
}
