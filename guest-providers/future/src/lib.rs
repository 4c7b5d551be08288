//! A component exporting `tether:provider/provider@0.3.0`: a world version no host
//! of this repository supports. Tests drop it in and expect a refusal that names the
//! version.

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used
)]
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "provider-world",
    });
}

use bindings::exports::tether::provider::provider::Guest;

struct Future;

impl Guest for Future {
    fn info() -> String {
        "future".to_owned()
    }
}

bindings::export!(Future with_types_in bindings);
