//! The `tracing` layer that copies an environment's events into its log.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::store::{EnvLogs, Line};

/// Longest message kept in a line; longer ones are cut.
const MAX_MESSAGE: usize = 4096;

/// Copies every event that belongs to an environment into that environment's log,
/// once `serve` has set the logs up (before, and in other commands, it does nothing).
#[derive(Debug, Default)]
pub(crate) struct EnvLogLayer;

/// The environment a span belongs to, kept in its extensions.
struct SpanEnv(String);

/// Collects an event's fields: its environment, message, source details and the rest.
#[derive(Default)]
struct Fields {
    env: Option<String>,
    message: String,
    stream: Option<String>,
    pid: Option<u64>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "env" => self.env = Some(value.to_owned()),
            "stream" => self.stream = Some(value.to_owned()),
            "message" => self.message.push_str(value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "pid" => self.pid = Some(value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "env" => self.env = Some(format!("{value:?}")),
            "stream" => self.stream = Some(format!("{value:?}").trim_matches('"').to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for EnvLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(env), Some(span)) = (fields.env, ctx.span(id)) {
            span.extensions_mut().insert(SpanEnv(env));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(logs) = EnvLogs::installed() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let env = fields.env.take().or_else(|| {
            let scope = ctx.event_scope(event)?;
            scope
                .from_root()
                .filter_map(|span| span.extensions().get::<SpanEnv>().map(|e| e.0.clone()))
                .last()
        });
        // Only ids become file names: anything else is not an environment's.
        let Some(env) = env.filter(|e| crate::names::validate("environment", e).is_ok()) else {
            return;
        };
        let target = event.metadata().target();
        let source = if target.starts_with("tether::engine::host::log") {
            "provider"
        } else if target.starts_with("tether::broker::process") && fields.stream.is_some() {
            "process"
        } else {
            "host"
        };
        let mut message = fields.message;
        message.push_str(&fields.rest);
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let ts = super::store::ts(time::OffsetDateTime::now_utc());
        // `ts` first: tails filter on it without parsing the line.
        let mut json = serde_json::json!({
            "ts": ts,
            "level": event.metadata().level().as_str(),
            "source": source,
            "message": message,
        });
        if let Some(stream) = fields.stream {
            json["stream"] = stream.into();
        }
        if let Some(pid) = fields.pid {
            json["pid"] = pid.into();
        }
        logs.push(Line {
            env,
            json: json.to_string(),
        });
    }
}
