//! The sandbox API as this provider speaks it (see `docs/sandbox-api.md`): create,
//! get and delete a sandbox, start and stop a process in it. Every call goes
//! through the SDK's brokered HTTP client with the bearer API key; answers that
//! are not 2xx become provider errors that quote the API's own message.

use tether_provider_sdk::http::{self, Request, Response};
use tether_provider_sdk::serde_json::{Map, Value, json};
use tether_provider_sdk::{InitVars, ProviderError};

use crate::settings::ApiSettings;

/// How long one API call may wait to connect or for its first byte, in ms (the
/// host's own limits apply too).
const CALL_TIMEOUT_MS: u64 = 15_000;
/// How much of an unexpected answer an error message quotes.
const EXCERPT_CHARS: usize = 300;

/// A sandbox as the API reports it.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    /// Its id.
    pub(crate) id: String,
    /// Its status, as the API spells it (`running`, `exited`, ...).
    pub(crate) status: String,
    /// Where processes run inside it, when the API says.
    pub(crate) workdir: Option<String>,
    /// Its processes.
    pub(crate) processes: Vec<Process>,
}

/// A process in a sandbox, as the API reports it.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    /// Its id within the sandbox.
    pub(crate) id: String,
    /// `running` or `exited`.
    pub(crate) status: String,
    /// How it ended, in words, when it has.
    pub(crate) ended: Option<String>,
}

/// A client of one sandbox API.
pub(crate) struct SandboxApi<'a> {
    settings: &'a ApiSettings,
}

impl<'a> SandboxApi<'a> {
    /// A client for the API `settings` name.
    pub(crate) fn new(settings: &'a ApiSettings) -> Self {
        Self { settings }
    }

    /// Creates a sandbox labelled with the environment.
    pub(crate) fn create(&self, init: &InitVars) -> Result<Sandbox, ProviderError> {
        let body = json!({
            "labels": {
                "tether.environmentId": init.environment_id,
                "tether.environmentName": init.environment_name,
            }
        });
        let response = self.send(http::post(self.url("/sandboxes")).json(&body))?;
        let value = self.expect_success(&response, "creating a sandbox")?;
        Sandbox::from_json(&value)
    }

    /// The sandbox `id`, or `None` when the API does not know it (404).
    pub(crate) fn get(&self, id: &str) -> Result<Option<Sandbox>, ProviderError> {
        let response = self.send(http::get(self.url(&format!("/sandboxes/{id}"))))?;
        if response.status == 404 {
            return Ok(None);
        }
        let value = self.expect_success(&response, &format!("reading sandbox {id}"))?;
        Sandbox::from_json(&value).map(Some)
    }

    /// Deletes the sandbox `id`; `false` when it was already gone (404).
    pub(crate) fn delete(&self, id: &str) -> Result<bool, ProviderError> {
        let response = self.send(http::delete(self.url(&format!("/sandboxes/{id}"))))?;
        if response.status == 404 {
            return Ok(false);
        }
        self.expect_success(&response, &format!("deleting sandbox {id}"))?;
        Ok(true)
    }

    /// Starts `command args` with `env` in the sandbox `id`.
    pub(crate) fn start_process(
        &self,
        id: &str,
        command: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Process, ProviderError> {
        let env: Map<String, Value> = env
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect();
        let body = json!({"command": command, "args": args, "env": env});
        let url = self.url(&format!("/sandboxes/{id}/processes"));
        let response = self.send(http::post(url).json(&body))?;
        let value =
            self.expect_success(&response, &format!("starting {command} in sandbox {id}"))?;
        Process::from_json(&value)
    }

    /// Stops (kills) and forgets the process `process` of sandbox `id`; `false`
    /// when either was already gone.
    pub(crate) fn stop_process(&self, id: &str, process: &str) -> Result<bool, ProviderError> {
        let url = self.url(&format!("/sandboxes/{id}/processes/{process}"));
        let response = self.send(http::delete(url))?;
        if response.status == 404 {
            return Ok(false);
        }
        self.expect_success(
            &response,
            &format!("stopping process {process} of sandbox {id}"),
        )?;
        Ok(true)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url)
    }

    fn send(&self, request: Request) -> Result<Response, ProviderError> {
        request
            .bearer(&self.settings.api_key)
            .header("accept", "application/json")
            .timeout_ms(CALL_TIMEOUT_MS)
            .send()
    }

    /// The JSON body of a 2xx answer; anything else becomes an error that says
    /// what was being done and quotes the API.
    fn expect_success(&self, response: &Response, doing: &str) -> Result<Value, ProviderError> {
        if response.is_success() {
            return response.json();
        }
        let said = api_message(response);
        let base = &self.settings.base_url;
        let status = response.status;
        Err(match status {
            401 | 403 => ProviderError::denied(format!(
                "{doing}: the sandbox API at {base} refused the API key ({status}: {said}); \
                 check apiKey in the operator's [providers.http-sandbox] config"
            )),
            404 => ProviderError::not_found(format!("{doing}: {status}: {said}")),
            400..=499 => ProviderError::invalid_input(format!(
                "{doing}: the sandbox API answered {status}: {said}"
            )),
            _ => ProviderError::failed(format!(
                "{doing}: the sandbox API answered {status}: {said}"
            )),
        })
    }
}

/// The API's error message (`{"error": {"message"}}`), else an excerpt of the body.
fn api_message(response: &Response) -> String {
    let from_json = response.json().ok().and_then(|value| {
        let error = value.get("error")?;
        error
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| error.as_str())
            .map(str::to_owned)
    });
    from_json.unwrap_or_else(|| match response.text_excerpt(EXCERPT_CHARS) {
        text if text.is_empty() => "no message".to_owned(),
        text => text,
    })
}

fn string_field(value: &Value, key: &str, what: &str) -> Result<String, ProviderError> {
    match value.get(key) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        // Some APIs number their ids.
        Some(Value::Number(number)) => Ok(number.to_string()),
        _ => Err(ProviderError::failed(format!(
            "the sandbox API's {what} has no {key:?}: {}",
            excerpt(value)
        ))),
    }
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= EXCERPT_CHARS {
        return text;
    }
    let cut: String = text.chars().take(EXCERPT_CHARS).collect();
    format!("{cut}…")
}

impl Sandbox {
    fn from_json(value: &Value) -> Result<Self, ProviderError> {
        let processes = match value.get("processes") {
            Some(Value::Array(items)) => items
                .iter()
                .map(Process::from_json)
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        Ok(Self {
            id: string_field(value, "id", "sandbox")?,
            status: string_field(value, "status", "sandbox")?,
            workdir: value
                .get("workdir")
                .and_then(Value::as_str)
                .map(str::to_owned),
            processes,
        })
    }

    /// The process `id`, if the sandbox lists it.
    pub(crate) fn process(&self, id: &str) -> Option<&Process> {
        self.processes.iter().find(|process| process.id == id)
    }
}

impl Process {
    fn from_json(value: &Value) -> Result<Self, ProviderError> {
        let ended = match (
            value.get("exitCode").and_then(Value::as_i64),
            value.get("signal").and_then(Value::as_i64),
        ) {
            (Some(code), _) => Some(format!("exited with code {code}")),
            (None, Some(signal)) => Some(format!("was killed by signal {signal}")),
            (None, None) => None,
        };
        Ok(Self {
            id: string_field(value, "id", "process")?,
            status: string_field(value, "status", "process")?,
            ended,
        })
    }

    /// Whether it still runs.
    pub(crate) fn is_running(&self) -> bool {
        self.status == "running"
    }
}
