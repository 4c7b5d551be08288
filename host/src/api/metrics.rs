//! `/metrics`: Prometheus text, computed from live state at scrape time.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::error::{ErrorBody, ErrorCode};
use super::{ApiError, AppState};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// `GET /metrics`: Prometheus (OpenMetrics) text, no token needed.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "host",
    responses(
        (status = 200, description = "OpenMetrics text (a counter's name ends in `_total`): `tether_environments{status}`, `tether_runtimes_connected`, `tether_providers_loaded`, `tether_provider_load_failures`, `tether_environment_log_lines_dropped_total`, `tether_removals_pending`, `tether_audit_lines_failed_total`, `tether_connections_open`, `tether_connections_max`, `tether_connections_refused_total`, `tether_user_connections_refused_total`, `tether_guest_open_files`, `tether_guest_opens_refused_total`, `tether_guest_writes_refused_total`, `tether_compile_cache_hits_total`/`misses_total`; in cluster mode also `tether_cluster_environments_here`, `tether_cluster_connected`, `tether_cluster_conflicts_total`, `tether_cluster_templates_differ`, `tether_cluster_providers_differ`, `tether_cluster_tenancy_differ`, `tether_cluster_tunnels_open` and `tether_cluster_tunnels_refused_total` (`docs/rest.md`, \"/metrics\").", content_type = "application/openmetrics-text", body = String),
        (status = 500, description = "The metrics could not be encoded (`internal_error`).", body = ErrorBody),
    ),
)]
pub(crate) async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut registry = Registry::with_prefix("tether");
    let by_status = Family::<StatusLabel, Gauge>::default();
    let connected = Gauge::<i64>::default();
    let providers = Gauge::<i64>::default();
    for env in s.manager.list_all() {
        let status = serde_json::to_value(env.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        by_status.get_or_create(&StatusLabel { status }).inc();
        if env.runtime.connected {
            connected.inc();
        }
    }
    let counts = s.manager.provider_counts();
    providers.set(counts.loaded as i64);
    registry.register("environments", "Environments by live status", by_status);
    registry.register("runtimes_connected", "Connected runtimes", connected);
    registry.register("providers_loaded", "Loaded providers", providers);
    let failed = Gauge::<i64>::default();
    failed.set(counts.load_failures as i64);
    registry.register(
        "provider_load_failures",
        "Provider files that do not load",
        failed,
    );
    let dropped = Counter::<u64>::default();
    dropped.inc_by(s.manager.log_lines_dropped());
    registry.register(
        "environment_log_lines_dropped",
        "Lines of environments' logs dropped because their writer was behind or the disk did not take them",
        dropped,
    );
    let removals = Gauge::<i64>::default();
    removals.set(i64::try_from(s.manager.removals_pending()).unwrap_or(i64::MAX));
    registry.register(
        "removals_pending",
        "Deleted environments whose provider failed to remove the resource, retried in the background",
        removals,
    );
    let audit_failed = Counter::<u64>::default();
    audit_failed.inc_by(s.audit.failed_lines());
    registry.register(
        "audit_lines_failed",
        "Audit log lines the disk did not take (a full or read-only filesystem)",
        audit_failed,
    );
    let open = Gauge::<i64>::default();
    open.set(i64::try_from(s.connections.open()).unwrap_or(i64::MAX));
    registry.register(
        "connections_open",
        "Connections open now, WebSockets included (at most [server] max_connections)",
        open,
    );
    let max = Gauge::<i64>::default();
    max.set(i64::try_from(s.connections.max()).unwrap_or(i64::MAX));
    registry.register(
        "connections_max",
        "Connections served at once at most ([server] max_connections)",
        max,
    );
    let refused = Counter::<u64>::default();
    refused.inc_by(s.connections.refused());
    registry.register(
        "connections_refused",
        "Connections turned away at a limit: max_connections (503 server_busy) or max_connections_per_address (429 too_many_connections)",
        refused,
    );
    let at_user_limit = Counter::<u64>::default();
    at_user_limit.inc_by(s.manager.connections_refused_at_user_limit());
    registry.register(
        "user_connections_refused",
        "App sockets, events streams and log follows refused because their user held [tenancy] max_connections on this host (close 4016, or 429 quota_exceeded)",
        at_user_limit,
    );
    let guests = counts.guest_files;
    let open_files = Gauge::<i64>::default();
    open_files.set(i64::try_from(guests.open_files).unwrap_or(i64::MAX));
    registry.register(
        "guest_open_files",
        "Files providers' instances hold open on the host through WASI (at most [limits] host_open_files)",
        open_files,
    );
    let opens_refused = Counter::<u64>::default();
    opens_refused.inc_by(guests.opens_refused);
    registry.register(
        "guest_opens_refused",
        "Opens refused to providers at [limits] max_open_files or host_open_files",
        opens_refused,
    );
    let writes_refused = Counter::<u64>::default();
    writes_refused.inc_by(guests.writes_refused);
    registry.register(
        "guest_writes_refused",
        "Writes refused to providers at a disk quota ([limits] workspace_mib, state_mib)",
        writes_refused,
    );
    if let Some(cache) = counts.compile_cache {
        let hits = Counter::<u64>::default();
        hits.inc_by(cache.hits as u64);
        let misses = Counter::<u64>::default();
        misses.inc_by(cache.misses as u64);
        registry.register(
            "compile_cache_hits",
            "Provider components loaded from the compile cache",
            hits,
        );
        registry.register(
            "compile_cache_misses",
            "Provider components compiled and stored in the compile cache",
            misses,
        );
    }
    if let Some(tunnels) = &s.tunnels {
        let open = Gauge::<i64>::default();
        open.set(i64::try_from(tunnels.open()).unwrap_or(i64::MAX));
        registry.register(
            "cluster_tunnels_open",
            "Cluster mode: apps bridged here from other hosts through NATS, connected now (at most [server] max_connections, apart from tether_connections_open)",
            open,
        );
        let refused = Counter::<u64>::default();
        refused.inc_by(tunnels.refused());
        registry.register(
            "cluster_tunnels_refused",
            "Cluster mode: tunnels of bridged apps turned away because max_connections of them were open (503 server_busy)",
            refused,
        );
    }
    if let Some(cluster) = s.manager.cluster() {
        let held = Gauge::<i64>::default();
        held.set(i64::try_from(cluster.leases_held()).unwrap_or(i64::MAX));
        registry.register(
            "cluster_environments_here",
            "Cluster mode: environments this host runs (holds the lease of)",
            held,
        );
        let up = Gauge::<i64>::default();
        up.set(i64::from(cluster.connected()));
        registry.register(
            "cluster_connected",
            "Cluster mode: 1 while this host is connected to NATS",
            up,
        );
        let conflicts = Counter::<u64>::default();
        conflicts.inc_by(cluster.conflicts_seen());
        registry.register(
            "cluster_conflicts",
            "Cluster mode: record fields two hosts changed at once (the later write kept)",
            conflicts,
        );
        for (name, help, n) in [
            (
                "cluster_templates_differ",
                "Cluster mode: other live hosts whose [templates] differ from this host's",
                cluster.templates_differing(),
            ),
            (
                "cluster_providers_differ",
                "Cluster mode: other live hosts whose providers (components, grants, operator config keys) differ from this host's",
                cluster.providers_differing(),
            ),
            (
                "cluster_tenancy_differ",
                "Cluster mode: other live hosts whose [tenancy] limits differ from this host's",
                cluster.tenancy_differing(),
            ),
        ] {
            let differing = Gauge::<i64>::default();
            differing.set(i64::try_from(n).unwrap_or(i64::MAX));
            registry.register(name, help, differing);
        }
    }
    let mut body = String::new();
    encode(&mut body, &registry)
        .map_err(|e| ApiError::new(ErrorCode::InternalError, format!("encoding metrics: {e}")))?;
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}
