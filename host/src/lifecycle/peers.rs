//! Admission of the peers of an environment — its runtime (by runtime token) and its
//! apps — to the relay, and the desk that answers the app messages its provider
//! handles. Everything else about a frame is the relay's.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::driver::Driver;
use super::envs::Env;
use super::messages;
use super::wake::{Wakes, wakes};
use super::{LifecycleError, Manager};
use crate::auth;
use crate::engine::{CallError, FailureKind, LogBudget};
use crate::relay::{
    AppThread, CLOSE_REVOKED, CLOSE_START_FAILED, CloseReason, Connection, ProviderDesk,
    ProviderRequest, ProviderRoute, RelayError, Resume,
};
use crate::store::{DesiredState, Record};
use crate::sync::MutexExt;
use crate::tenancy::Principal;

/// Why a WebSocket peer was not admitted.
fn refused(e: RelayError) -> LifecycleError {
    match e {
        RelayError::TooManyConnections(_) => LifecycleError::TooManyConnections(e.to_string()),
        other => LifecycleError::Conflict(other.to_string()),
    }
}

/// An app admitted to an environment by id.
#[derive(Debug)]
pub(crate) struct Joined {
    /// Ready to be served on the app's socket.
    pub connection: Connection,
    /// The environment's owner, when this connect asked it to run again (asleep for
    /// idleness, or stopped and `start=true`): a start by the app's token, which the
    /// API audits before the upgrade as `POST …/start` is.
    pub woke: Option<String>,
}

impl Manager {
    /// Admits the runtime of environment `id` if `token` is its current token.
    /// `resume` continues a resumable session (see `docs/protocol.md`).
    pub(crate) async fn attach_runtime(
        &self,
        id: &str,
        token: &str,
        resume: Option<Resume>,
    ) -> Result<Connection, LifecycleError> {
        // Anyone may knock here (no API token is needed): a wrong token is answered
        // alike whether `id` is an environment or not, and before anything else about
        // it (in cluster mode, which host runs it) is said, so the route tells a
        // stranger nothing of which ids exist, nor how many starts one had.
        let forged = || auth::RuntimeTokenError::Invalid.to_string();
        let Some(record) = self.shared.store.get(id) else {
            tracing::warn!(env = %id, "runtime refused: no such environment");
            return Err(LifecycleError::InvalidToken(forged()));
        };
        let expected = record.runtime_token_sha256.as_deref().unwrap_or_default();
        auth::verify_runtime_token(token, record.runtime_generation, expected).map_err(|e| {
            tracing::warn!(env = %id, error = %e, "runtime refused");
            match e {
                auth::RuntimeTokenError::Invalid => LifecycleError::InvalidToken(forged()),
                // Not counted against the address (a runtime that outlived its start
                // is no guess), but worded as a forgery: the log has the generations.
                auth::RuntimeTokenError::Stale { .. } => LifecycleError::Unauthorized(forged()),
            }
        })?;
        let env = self.known_env(id)?;
        self.refuse_unheld(id).await?;
        if record.desired_state != DesiredState::Running {
            return Err(LifecycleError::Conflict("environment is stopped".into()));
        }
        // Apps hear of the runtime leaving as they heard of it arriving.
        let driver = self.shared.driver.clone();
        let gone = env.clone();
        let connection = Connection::runtime(&env.hub, resume, move || driver.announce(&gone))
            .map_err(refused)?;
        self.shared.driver.runtime_arrived(&env);
        self.shared.driver.announce(&env);
        Ok(connection)
    }

    /// Admits `who`'s app to environment `id` on `thread`, resuming its session if
    /// `resume` names one. Someone else's environment is `NotFound`. The connection
    /// is closed (4003) when `who`'s token stops working or the environment moves
    /// to another owner. An environment stopped for idleness (or any stopped one, with
    /// `start`) is asked to run again (`wake.rs`); one its user stopped on purpose is
    /// `StoppedOnPurpose` without `start`.
    pub(crate) async fn attach_app(
        &self,
        who: &Principal,
        id: &str,
        thread: AppThread,
        resume: Option<Resume>,
        start: bool,
    ) -> Result<Joined, LifecycleError> {
        let record = self.reachable(who, id)?;
        let env = self.known_env(id)?;
        self.refuse_elsewhere(id).await?;
        if !wakes(&record, start, Wakes::Asleep)? {
            let connection = self.admit_app(who, record, &env, thread, resume, None, None)?;
            return Ok(Joined {
                connection,
                woke: None,
            });
        }
        let record = self.wake(who, record).await?;
        let owner = record.owner.clone();
        let span = tracing::info_span!("app", env = %id);
        let connection = self.admit_starting(who, record, env, thread, resume, None, span)?;
        Ok(Joined {
            connection,
            woke: Some(owner),
        })
    }

    /// Attaches `who`'s app to `env` (whose record is `record`); `first`, if given, is
    /// its first frame, before the environment's status; when `start_failed` fires
    /// the app is closed with 4014.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit_app(
        &self,
        who: &Principal,
        record: Record,
        env: &Arc<Env>,
        thread: AppThread,
        resume: Option<Resume>,
        first: Option<String>,
        start_failed: Option<CancellationToken>,
    ) -> Result<Connection, LifecycleError> {
        // While no instance runs, the types are those of what the next start loads;
        // a start replaces them with its instance's (`ops.rs`).
        if env.live().provider.is_none() {
            let declared = self.shared.providers.message_types(&record.provider);
            env.provider_types.set(messages::provider_types(&declared));
        }
        let route = ProviderRoute {
            types: env.provider_types.clone(),
            desk: Arc::new(Desk {
                driver: self.shared.driver.clone(),
                env: env.clone(),
                in_flight: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
                refusals_logged: Arc::new(Mutex::new(LogBudget::default())),
            }),
        };
        // The app learns where things stand right away.
        let status = self.shared.driver.view_of(env, record).status_event();
        let greetings = first.into_iter().chain(std::iter::once(status));
        let (who, moves) = (who.clone(), env.owner_moves());
        let connection = Connection::app(&env.hub, thread, resume, greetings, route)
            .map_err(refused)?
            .ends_when(async move {
                let failed = async {
                    match start_failed {
                        Some(token) => token.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                let (code, reason) = tokio::select! {
                    why = who.ended() => (CLOSE_REVOKED, why),
                    _ = moves.cancelled() => (CLOSE_REVOKED, "the environment moved to another owner"),
                    _ = failed => (CLOSE_START_FAILED, "the environment's start failed; see its lastError"),
                };
                CloseReason {
                    code,
                    reason: reason.to_owned(),
                }
            });
        Ok(connection)
    }
}

/// Provider-handled messages of one app connection answered at once; one more is
/// answered `busy` at once. The instance takes one call at a time anyway, and a queue
/// without a bound would let an app pile up tasks that outlive it.
const MAX_REQUESTS_IN_FLIGHT: usize = 8;

/// Answers one app's provider-handled messages through its environment's running
/// instance, each in a task of its own, at most [`MAX_REQUESTS_IN_FLIGHT`] at once.
#[derive(Debug)]
struct Desk {
    driver: Driver,
    env: Arc<Env>,
    in_flight: Arc<Semaphore>,
    /// Refused requests are logged within a budget: an app sending nothing but bad
    /// paths must not write the host's log as fast as it can send.
    refusals_logged: Arc<Mutex<LogBudget>>,
}

impl ProviderDesk for Desk {
    fn request(&self, request: ProviderRequest) {
        let ProviderRequest {
            kind,
            message: msg,
            reply,
        } = request;
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let request_id = msg.get("requestId").cloned().unwrap_or(Value::Null);
            let busy = json!({
                "code": "busy",
                "message": format!("at most {MAX_REQUESTS_IN_FLIGHT} provider requests of one connection are answered at once; send this one again after an answer"),
            });
            reply.send(messages::event(&kind, &request_id, Err(busy)));
            return;
        };
        let env = self.env.clone();
        let driver = self.driver.clone();
        let refusals_logged = self.refusals_logged.clone();
        let span = tracing::debug_span!("provider_request", env = %env.id, kind = %kind);
        self.driver.spawn(
            async move {
                let _permit = permit;
                let request_id = msg.get("requestId").cloned().unwrap_or(Value::Null);
                let handle = env.live().provider.clone();
                let outcome = match (handle, messages::to_call(&kind, &msg)) {
                    (_, Err(bad)) => Err(json!({"code": "invalid_input", "message": bad.0})),
                    (None, _) => Err(json!({
                        "code": "not_running",
                        "message": "the environment is not running",
                    })),
                    (Some(handle), Ok(call)) => {
                        let config = driver.shared.config.get();
                        let timeout = config.lifecycle.call_timeout;
                        let max = config.relay.max_message_bytes;
                        match handle.call(call, timeout).await {
                            Ok(answer) => match messages::too_large(&answer, max) {
                                Some(error) => Err(error),
                                None => Ok(messages::reply_message(&kind, &msg, answer)),
                            },
                            Err(err) => {
                                if matches!(err, CallError::Trapped(_) | CallError::TimedOut(_)) {
                                    driver.instance_failed(env.clone(), handle, err.clone());
                                }
                                // A path outside the workspace is refused inside the
                                // sandbox; the operator still hears of the attempts
                                // (within a budget).
                                if let CallError::Provider(f) = &err
                                    && matches!(f.kind, FailureKind::Denied | FailureKind::InvalidInput)
                                    && let Some(dropped) = refusals_logged.locked().take(Instant::now())
                                {
                                    tracing::warn!(env = %env.id, %kind, error = %crate::untrusted::logged(&f.to_string()), unlogged_before = dropped, "app request refused");
                                }
                                Err(messages::error_value(&err))
                            }
                        }
                    }
                };
                let frame = messages::event(&kind, &request_id, outcome);
                let frame = messages::within(frame, &kind, &request_id, reply.max_message_bytes());
                reply.send(frame);
            }
            .instrument(span),
        );
    }
}
