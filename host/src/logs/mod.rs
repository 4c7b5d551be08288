//! Per-environment logs: every log event that belongs to an environment (its `env`
//! field, or the `env` of a span it happens in) — the provider's `log` calls, the
//! output of the processes it spawned (its runtime's stdout and stderr among them), and
//! the host's lifecycle events for it — also goes, as one JSON line, into
//! `.codebolt/logs/<id>.log`, bounded by rotation, readable with a tail and followed
//! live. The environment's owner reads them through `GET /api/v1/environments/{id}/logs`.
//!
//! Events reach the files through [`layer::EnvLogLayer`], a `tracing` layer, and a
//! bounded queue to one writer thread: the thread that logs never waits on a disk, and
//! past the queue's bound lines are dropped and counted rather than held.

mod layer;
mod store;

pub(crate) use layer::EnvLogLayer;
pub(crate) use store::{EnvLogs, Follow, MAX_TAIL, now_ts, parse_since};
