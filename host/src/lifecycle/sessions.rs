//! WebSocket sessions as the lifecycle layer sees them: a runtime or an app attached
//! to an environment's hub. The API reads frames off the socket and hands them here;
//! what to write comes back through the session's [`Outbox`].

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::messages::{self, PROVIDER_TYPES};
use super::{Env, LifecycleError, Manager};
use crate::auth;
use crate::engine::CallError;
use crate::relay::Outbox;
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
    conn: u64,
}

impl Manager {
    /// Admits the runtime of environment `id` if `token` is its current token.
    pub fn attach_runtime(
        &self,
        id: &str,
        token: &str,
    ) -> Result<(RuntimeSession, Outbox), LifecycleError> {
        let record = self
            .shared
            .store
            .get(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let env = self
            .env(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let expected = record.runtime_token_sha256.as_deref().unwrap_or_default();
        auth::verify_runtime_token(token, record.runtime_generation, expected).map_err(|e| {
            tracing::warn!(env = %id, error = %e, "runtime refused");
            LifecycleError::Unauthorized(e.to_string())
        })?;
        if record.desired_state != DesiredState::Running {
            return Err(LifecycleError::Conflict("environment is stopped".into()));
        }
        let outbox = env
            .hub
            .attach_runtime()
            .map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        self.announce(&env);
        let session = RuntimeSession {
            manager: self.clone(),
            env,
            conn: outbox.id,
        };
        Ok((session, outbox))
    }

    /// Admits an app to environment `id` on `thread`.
    pub fn attach_app(
        &self,
        id: &str,
        thread: Option<String>,
    ) -> Result<(AppSession, Outbox), LifecycleError> {
        let env = self
            .env(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let outbox = env
            .hub
            .attach_app(thread)
            .map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        let session = AppSession {
            manager: self.clone(),
            env: env.clone(),
            conn: outbox.id,
        };
        // The app learns where things stand right away.
        if let Some(record) = self.shared.store.get(id) {
            let view = self.view_of(&env, record);
            env.hub.send_to_app(outbox.id, view.status_event());
        }
        Ok((session, outbox))
    }
}

impl RuntimeSession {
    /// A text frame from the runtime: routed to apps by its `threadId`.
    pub fn receive(&self, text: String) {
        let thread = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("threadId").and_then(Value::as_str).map(str::to_owned));
        self.env.hub.from_runtime(text, thread.as_deref());
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
    pub fn receive(&self, text: &str) {
        let hub = &self.env.hub;
        let mut msg = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                let frame = error_frame("invalid_message", "a message must be a JSON object", None);
                return hub.send_to_app(self.conn, frame);
            }
            Err(e) => {
                let frame = error_frame("invalid_message", &format!("invalid JSON: {e}"), None);
                return hub.send_to_app(self.conn, frame);
            }
        };
        let Some(kind) = msg.get("type").and_then(Value::as_str).map(str::to_owned) else {
            let frame = error_frame(
                "invalid_message",
                "a message needs a string `type`",
                msg.get("requestId"),
            );
            return hub.send_to_app(self.conn, frame);
        };
        if !msg.contains_key("threadId")
            && let Some(thread) = hub.app_thread(self.conn)
        {
            msg.insert("threadId".into(), Value::String(thread));
        }
        if self.handled_by_provider(&kind) {
            self.provider_request(kind, msg);
        } else if let Err(e) = hub.from_app(self.conn, msg.clone()) {
            let frame = error_frame("not_delivered", &e.to_string(), msg.get("requestId"));
            hub.send_to_app(self.conn, frame);
        }
    }

    fn handled_by_provider(&self, kind: &str) -> bool {
        if PROVIDER_TYPES.contains(&kind) {
            return true;
        }
        let Some(record) = self.manager.shared.store.get(&self.env.id) else {
            return false;
        };
        self.manager
            .shared
            .engine
            .provider(&record.provider)
            .is_some_and(|p| p.description.message_types.iter().any(|t| t == kind))
    }

    fn provider_request(&self, kind: String, msg: Map<String, Value>) {
        let env = self.env.clone();
        let manager = self.manager.clone();
        let conn = self.conn;
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
                                Err(messages::error_value(&err))
                            }
                        }
                    }
                };
                env.hub
                    .send_to_app(conn, messages::event(&kind, &request_id, outcome));
            }
            .instrument(span),
        );
    }
}

impl Drop for AppSession {
    fn drop(&mut self) {
        self.env.hub.detach_app(self.conn);
    }
}
