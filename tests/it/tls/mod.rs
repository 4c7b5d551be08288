//! Issue 15: TLS wherever a hosted deployment needs it. Providers' `https` through
//! the broker ([`broker`]), `tether serve` over TLS with `wss://` for apps and
//! runtimes and live certificate renewal ([`serve`]). Every certificate is made at run
//! time by a test CA (`crate::certs`); names like `good.test` are `[net.hosts]`
//! overrides to loopback, so SNI and name checks see real names.

mod broker;
mod serve;
