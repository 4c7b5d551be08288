//! Providers compiled into the binary (built from `guest-providers/` by `build.rs`,
//! which lists them).

/// Name and component bytes of each built-in provider.
pub(crate) const BUILTINS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
