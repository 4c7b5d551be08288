//! WebSocket sessions as the lifecycle layer sees them: a runtime or an app attached
//! to an environment's hub. The API reads frames off the socket and hands them here;
//! what to write comes back through the session's [`Outbox`].

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::messages::{self, PROVIDER_TYPES};
use super::{Env, LifecycleError, Manager};
use crate::auth;
use crate::engine::{CallError, FailureKind};
use crate::relay::protocol::{ACK, Head};
use crate::relay::{Outbox, RelayError, Resume, StreamKey};
use crate::store::DesiredState;

/// A connected runtime. Dropping it detaches it from the hub.
#[derive(Debug)]
pub struct RuntimeSession {
    manager: Manager,
    env: Arc<Env>,
    conn: u64,
}

/// A connected app. Dropping it detaches it from the hub.
#[derive(Debug)]
pub struct AppSession {
    manager: Manager,
    env: Arc<Env>,
    key: StreamKey,
    conn: u64,
    /// Extra message types the environment's provider handles, looked up once at
    /// attach so the per-message path never scans the store.
    provider_types: Vec<String>,
    /// The thread the app joined.
    thread: Option<String>,
}

/// Why a WebSocket session was not admitted.
fn refused(e: RelayError) -> LifecycleError {
    match e {
        RelayError::TooManyConnections(_) => LifecycleError::TooManyConnections(e.to_string()),
        other => LifecycleError::Conflict(other.to_string()),
    }
}

impl Manager {
    /// Admits the runtime of environment `id` if `token` is its current token.
    /// `resume` continues a resumable session (see `docs/protocol.md`).
    pub fn attach_runtime(
        &self,
        id: &str,
        token: &str,
        resume: Option<Resume>,
    ) -> Result<(RuntimeSession, Outbox), LifecycleError> {
        let record = self.known_record(id)?;
        let env = self.known_env(id)?;
        let expected = record.runtime_token_sha256.as_deref().unwrap_or_default();
        auth::verify_runtime_token(token, record.runtime_generation, expected).map_err(|e| {
            tracing::warn!(env = %id, error = %e, "runtime refused");
            LifecycleError::Unauthorized(e.to_string())
        })?;
        if record.desired_state != DesiredState::Running {
            return Err(LifecycleError::Conflict("environment is stopped".into()));
        }
        let outbox = env.hub.attach_runtime(resume).map_err(refused)?;
        self.announce(&env);
        let session = RuntimeSession {
            manager: self.clone(),
            env,
            conn: outbox.id(),
        };
        Ok((session, outbox))
    }

    /// Admits an app to environment `id` on `thread`, resuming its session if `resume`
    /// names one.
    pub fn attach_app(
        &self,
        id: &str,
        thread: Option<String>,
        resume: Option<Resume>,
    ) -> Result<(AppSession, Outbox), LifecycleError> {
        let env = self.known_env(id)?;
        // The app learns where things stand right away.
        let record = self.shared.store.get(id);
        let provider_types = record
            .as_ref()
            .and_then(|r| self.shared.engine.provider(&r.provider))
            .map(|p| p.description.message_types.clone())
            .unwrap_or_default();
        let greeting = record.map(|record| self.view_of(&env, record).status_event());
        let outbox = env
            .hub
            .attach_app(thread.clone(), resume, greeting)
            .map_err(refused)?;
        let session = AppSession {
            manager: self.clone(),
            env: env.clone(),
            key: outbox.key(),
            conn: outbox.id(),
            provider_types,
            thread,
        };
        Ok((session, outbox))
    }
}

impl RuntimeSession {
    /// A text frame from the runtime: an acknowledgement, or a message routed to apps
    /// by its `threadId`.
    pub fn receive(&self, text: Utf8Bytes) {
        let hub = &self.env.hub;
        let head = Head::parse(&text).unwrap_or_default();
        if let Some(seq) = head.ack() {
            return hub.acknowledge(StreamKey::Runtime, self.conn, seq);
        }
        let thread = head.thread.map(|t| t.into_owned());
        hub.from_runtime(self.conn, text, thread.as_deref());
    }
}

impl Drop for RuntimeSession {
    fn drop(&mut self) {
        if self.env.hub.detach_runtime(self.conn) {
            self.manager.announce(&self.env);
        }
    }
}

fn error_frame(code: &str, message: &str, request_id: Option<&Value>) -> String {
    let mut frame = json!({"type": "error", "error": {"code": code, "message": message}});
    if let Some(id) = request_id {
        frame["requestId"] = id.clone();
    }
    frame.to_string()
}

impl AppSession {
    /// A text frame from the app: answered by the provider for the provider-handled
    /// types, relayed to the runtime otherwise.
    pub fn receive(&self, text: Utf8Bytes) {
        let hub = &self.env.hub;
        let head = Head::parse(&text);
        if let Some(h) = &head
            && h.kind.as_deref() == Some(ACK)
        {
            if let Some(seq) = h.received {
                hub.acknowledge(self.key, self.conn, seq);
            }
            return;
        }
        // Counted before anything else, so a resuming app never sends a frame twice.
        if !hub.received(self.key, self.conn) {
            return;
        }
        // The common case passes the text through untouched: a message for the runtime
        // that already names its thread, or whose app joined none.
        if let Some(Head {
            kind: Some(kind),
            thread,
            ..
        }) = &head
            && (thread.is_some() || self.thread.is_none())
            && !self.handled_by_provider(kind)
        {
            if let Err(e) = hub.to_runtime(text.clone()) {
                let request_id = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("requestId").cloned());
                let frame = error_frame("not_delivered", &e.to_string(), request_id.as_ref());
                hub.send_to_app(self.key, frame);
            }
            return;
        }
        self.receive_parsed(&text);
    }

    /// The general path: validates the message, adds the thread, and hands it to the
    /// provider or the runtime.
    fn receive_parsed(&self, text: &str) {
        let hub = &self.env.hub;
        let key = self.key;
        let mut msg = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                let frame = error_frame("invalid_message", "a message must be a JSON object", None);
                return hub.send_to_app(key, frame);
            }
            Err(e) => {
                let frame = error_frame("invalid_message", &format!("invalid JSON: {e}"), None);
                return hub.send_to_app(key, frame);
            }
        };
        let Some(kind) = msg.get("type").and_then(Value::as_str).map(str::to_owned) else {
            let frame = error_frame(
                "invalid_message",
                "a message needs a string `type`",
                msg.get("requestId"),
            );
            return hub.send_to_app(key, frame);
        };
        if let Some(thread) = &self.thread
            && !msg.contains_key("threadId")
        {
            msg.insert("threadId".into(), Value::String(thread.clone()));
        }
        if self.handled_by_provider(&kind) {
            self.provider_request(kind, msg);
        } else if let Err(e) = hub.to_runtime(Value::Object(msg.clone()).to_string()) {
            let frame = error_frame("not_delivered", &e.to_string(), msg.get("requestId"));
            hub.send_to_app(key, frame);
        }
    }

    fn handled_by_provider(&self, kind: &str) -> bool {
        PROVIDER_TYPES.contains(&kind) || self.provider_types.iter().any(|t| t == kind)
    }

    fn provider_request(&self, kind: String, msg: Map<String, Value>) {
        let env = self.env.clone();
        let manager = self.manager.clone();
        let key = self.key;
        let span = tracing::debug_span!("provider_request", env = %env.id, kind = %kind);
        self.manager.shared.tasks.spawn(
            async move {
                let request_id = msg.get("requestId").cloned().unwrap_or(Value::Null);
                let handle = env.live().provider.clone();
                let outcome = match (handle, messages::to_call(&kind, &msg)) {
                    (_, Err(bad)) => Err(json!({"code": "invalid_input", "message": bad.0})),
                    (None, _) => Err(json!({
                        "code": "not_running",
                        "message": "the environment is not running",
                    })),
                    (Some(handle), Ok(call)) => {
                        let timeout = manager.shared.config.lifecycle.call_timeout;
                        match handle.call(call, timeout).await {
                            Ok(reply) => Ok(messages::reply_message(&kind, &msg, reply)),
                            Err(err) => {
                                if matches!(err, CallError::Trapped(_) | CallError::TimedOut(_)) {
                                    manager.instance_failed(env.clone(), handle, err.clone());
                                }
                                // A path outside the workspace is refused inside the
                                // sandbox; the operator still hears of every attempt.
                                if let CallError::Provider(f) = &err
                                    && matches!(f.kind, FailureKind::Denied | FailureKind::InvalidInput)
                                {
                                    tracing::warn!(env = %env.id, %kind, error = %crate::untrusted::logged(&f.to_string()), "app request refused");
                                }
                                Err(messages::error_value(&err))
                            }
                        }
                    }
                };
                env.hub
                    .send_to_app(key, messages::event(&kind, &request_id, outcome));
            }
            .instrument(span),
        );
    }
}

impl Drop for AppSession {
    fn drop(&mut self) {
        self.env.hub.detach_app(self.key, self.conn);
    }
}

impl Manager {
    /// The relay's windows, limits and liveness settings.
    pub fn relay_config(&self) -> &crate::config::RelayConfig {
        &self.shared.config.relay
    }
}
