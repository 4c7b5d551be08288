//! Live reload of `tether.toml`: the file's directory is watched (editors and the
//! operator's tools replace files by renaming) and `SIGHUP` asks for a reload too.
//!
//! A reload re-reads the file with the same validation as start-up. A valid file is
//! put in force whole — grants, operator config, limits, timeouts, templates,
//! tenancy limits — for the next start of each environment (running instances keep
//! what they started with), and the keys that changed are logged by name, never by
//! value. An invalid file is reported in the log, `/healthz` and
//! `GET /api/v1/config/status`, and the last good settings stay in force until the
//! file is fixed. Keys baked into what already runs (see
//! [`crate::config::needs_restart`]) are reported as waiting for a restart.

use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tracing::Instrument;

use super::Manager;
use super::live_config::{Outcome, ReloadReport, Trigger};
use crate::config::{ConfigDiff, ServeConfig};
use crate::store::watch::WatchError;

/// Quiet time after the last event before the file is read; an editor's save is
/// several events.
const DEBOUNCE: Duration = Duration::from_millis(300);

impl Manager {
    /// Reloads `tether.toml` whenever it changes or the host gets `SIGHUP`, until
    /// shutdown.
    pub(crate) fn watch_config(&self) -> Result<(), WatchError> {
        let path = self.shared.config.get().source.path.clone();
        let (guard, mut changes) = crate::store::watch::watch(&path, DEBOUNCE)?;
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP cannot be caught: tether.toml reloads on file changes only");
                None
            }
        };
        let closing = self.shared.closing.clone();
        let this = self.clone();
        self.shared.driver.spawn(
            async move {
                let _guard = guard;
                loop {
                    let hangup = async {
                        match hangups.as_mut() {
                            Some(s) => s.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    let trigger = tokio::select! {
                        _ = closing.cancelled() => return,
                        change = changes.recv() => match change {
                            Some(()) => Trigger::File,
                            None => return,
                        },
                        _ = hangup => Trigger::Sighup,
                    };
                    this.reload_config(trigger);
                }
            }
            .instrument(tracing::info_span!("config_watch")),
        );
        Ok(())
    }

    /// Reads `tether.toml` again and puts it in force if it is valid.
    pub(crate) fn reload_config(&self, trigger: Trigger) -> ReloadReport {
        let live = &self.shared.config;
        let current = live.get();
        let path = current.source.path.display().to_string();
        let at = crate::tenancy::stamp(SystemTime::now());
        let (config, table) = match current.reread() {
            Ok(read) => read,
            Err(e) => {
                let error = e.to_string();
                tracing::error!(%path, ?trigger, %error, "tether.toml not reloaded: the last good settings stay in force");
                let report = ReloadReport {
                    at,
                    trigger,
                    outcome: Outcome::Failed,
                    error: Some(error),
                    changed: Vec::new(),
                    needs_restart: Vec::new(),
                };
                live.record(report.clone());
                return report;
            }
        };
        let diff = ConfigDiff::between(&live.applied_table(), &table);
        let mut report = ReloadReport {
            at,
            trigger,
            outcome: Outcome::Unchanged,
            error: None,
            changed: diff.keys(),
            needs_restart: diff.needing_restart(),
        };
        if diff.is_empty() && config.source == current.source {
            tracing::info!(%path, ?trigger, "tether.toml read again: no changes");
            live.record(report.clone());
            return report;
        }
        report.outcome = Outcome::Applied;
        self.put_in_force(&config);
        live.apply(config, table, report.clone());
        // After `apply`: the providers' digest reads the grants and operator config in
        // force.
        self.shared.providers.publish();
        tracing::info!(%path, ?trigger, changes = %diff.summary(),
            "tether.toml reloaded: in force for the next start of each environment");
        if !report.needs_restart.is_empty() {
            let keys = report.needs_restart.join(", ");
            tracing::warn!(%path, %keys, "changed in tether.toml but applied only when the host restarts");
        }
        report
    }

    /// Hands the reloaded settings held outside the lifecycle's own snapshot to
    /// their owners: the engine's limits and network settings, the tenancy limits,
    /// and the templates and tenancy limits the cluster compares with the other hosts'.
    fn put_in_force(&self, config: &ServeConfig) {
        (self.shared.engine).set_settings(config.limits.clone(), config.net.clone());
        self.shared.quotas.set(config.tenancy.clone());
        if let Some(cluster) = self.cluster() {
            cluster.set_templates(&config.templates);
            cluster.set_tenancy(&config.tenancy);
        }
    }

    /// `tether.toml`'s path, status and last reload.
    pub(crate) fn config_status(&self) -> super::ConfigStatus {
        self.shared.config.status()
    }

    /// Why the settings in force are not the file's, for `/healthz`.
    pub(super) fn config_health(&self) -> Option<String> {
        let status = self.shared.config.status();
        let last = status.last_reload?;
        (last.outcome == Outcome::Failed).then(|| {
            format!(
                "config file {}: {}; serving the last good settings",
                status.path,
                last.error.unwrap_or_default()
            )
        })
    }
}
