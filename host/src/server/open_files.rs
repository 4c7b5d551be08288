//! The process's limit on open files, raised at start-up from its soft value to its
//! hard one. Every running environment holds a descriptor for its runtime's socket,
//! and up to three more once its provider uses files (the directories preopened for
//! its instance, opened on first use), so the soft limit most systems start a service
//! with (1,024) stops a host at a few hundred environments, while the hard limit an
//! operator sets is meant to be usable.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft limit on open files to the hard limit; logs what is in force.
pub(super) fn raise() {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-files limit");
            return;
        }
    };
    if soft >= hard {
        tracing::info!(limit = soft, "open-files limit");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::info!(
            from = soft,
            to = hard,
            "open-files limit raised to the hard limit"
        ),
        Err(e) => {
            tracing::warn!(limit = soft, hard, error = %e, "could not raise the open-files limit")
        }
    }
}

/// The soft limit on open files in force, if it is known and finite.
pub(super) fn limit() -> Option<u64> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}
