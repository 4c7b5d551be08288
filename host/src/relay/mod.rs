//! The relay: one [`Hub`] per environment joining its runtime connection with any
//! number of app connections, routing by thread, numbering what it delivers so either
//! side can resume without loss inside a bounded window (see `docs/protocol.md`). It
//! owns a frame from the socket it arrives on to the socket it leaves by.
//!
//! - `activity`: when a hub last saw life, and whether its runtime is busy (idle stops);
//! - `conn`: one peer's socket, read and written from upgrade to close;
//! - `gate`: a future polled only when it woke its task;
//! - `inbound`: what a peer's frame is (ack, routed message, provider request);
//! - `hub`: the streams of one environment and the routing between them;
//! - `outbox`: what a connection's writer drains;
//! - `send`: a connection's socket, written by its writer or straight from a reader;
//! - `socket`: the upgraded connection, its `101`, its reading and its frames' encoding;
//! - `window`: one stream's bounded replay window;
//! - `protocol`: the relay's own frames, query fields and close codes;
//! - `scan`: reads a frame's routing fields without building it;
//! - `registry`: every hub, by environment id;
//! - [`peer`]: the client side of resuming, for runtimes and apps.

mod activity;
mod bridge;
mod conn;
mod error;
mod gate;
mod hub;
mod inbound;
mod outbox;
pub mod peer;
mod protocol;
mod registry;
mod scan;
mod send;
mod socket;
mod window;

pub use activity::{Activity, now_ms};
pub use bridge::{BRIDGED, BridgeRefused, CLOSE_HOST_GONE, Upstream, bridge};
pub use conn::{Connection, Held, refuse, refuse_with};
pub use error::RelayError;
pub use hub::{AppSessions, Hub, StreamKey};
pub use inbound::{AppThread, ProviderDesk, ProviderRequest, ProviderRoute, ProviderTypes, Reply};
pub use outbox::{Outbox, Take};
pub use protocol::{
    CLOSE_GONE, CLOSE_REPLACED, CLOSE_REVOKED, CLOSE_START_FAILED, CLOSE_STOPPED, CLOSE_TOO_BIG,
    CLOSE_TOO_MANY, CLOSE_TOO_SLOW, CLOSE_UNRESPONSIVE, CLOSE_USER_LIMIT, CloseReason, READ_CHUNK,
    Resume, read_error_close,
};
pub use registry::Relay;
pub use socket::Upgrade;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod scan_fuzz;
