//! App messages answered by the provider: mapping the contract's message types to
//! provider calls, and provider replies to `remoteProviderEvent` frames that echo
//! the request's `requestId`.

use serde_json::{Map, Value, json};

use crate::engine::{Call, CallError, FailureKind, Reply};

/// The message types the provider answers (every other goes to the runtime).
pub(super) const PROVIDER_TYPES: &[&str] = &[
    "providerAgentStart",
    "providerReadFile",
    "providerWriteFile",
    "providerDeleteFile",
    "providerCreateFolder",
    "providerRenameItem",
    "providerGetDiffFiles",
    "providerMergeAsPatch",
];

/// Every type a provider that declared `declared` answers: the contract's, then its own.
pub(super) fn provider_types(declared: &[String]) -> Vec<String> {
    let builtin = PROVIDER_TYPES.iter().map(|t| (*t).to_owned());
    builtin.chain(declared.iter().cloned()).collect()
}

/// A request that could not be turned into a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadRequest(pub(super) String);

fn field(msg: &Map<String, Value>, name: &str) -> Result<String, BadRequest> {
    match msg.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BadRequest(format!("`{name}` must be a string"))),
        None => Err(BadRequest(format!("`{name}` is required"))),
    }
}

/// The call answering a provider-handled message of type `kind` (a type the provider
/// declared in its `message-types` goes to `on-raw-message`).
pub(super) fn to_call(kind: &str, msg: &Map<String, Value>) -> Result<Call, BadRequest> {
    Ok(match kind {
        "providerAgentStart" => Call::AgentStart(Value::Object(msg.clone()).to_string()),
        "providerReadFile" => Call::ReadFile(field(msg, "path")?),
        "providerWriteFile" => Call::WriteFile(field(msg, "path")?, field(msg, "content")?),
        "providerDeleteFile" => Call::DeleteFile(field(msg, "path")?),
        "providerCreateFolder" => Call::CreateFolder(field(msg, "path")?),
        "providerRenameItem" => Call::RenameItem(field(msg, "oldPath")?, field(msg, "newPath")?),
        "providerGetDiffFiles" => Call::DiffFiles,
        "providerMergeAsPatch" => Call::MergePatch,
        _ => Call::Raw(Value::Object(msg.clone()).to_string()),
    })
}

/// The `message` of a successful reply.
pub(super) fn reply_message(kind: &str, msg: &Map<String, Value>, reply: Reply) -> Value {
    let path = msg.get("path").cloned().unwrap_or(Value::Null);
    match (kind, reply) {
        ("providerReadFile", Reply::Text(content)) => json!({"path": path, "content": content}),
        ("providerMergeAsPatch", Reply::Text(patch)) => json!({"patch": patch}),
        ("providerGetDiffFiles", Reply::Diff(files)) => json!({"files": files}),
        ("providerAgentStart", _) => json!({"accepted": true}),
        ("providerRenameItem", _) => json!({
            "oldPath": msg.get("oldPath"), "newPath": msg.get("newPath"), "success": true
        }),
        (_, Reply::Text(raw)) => serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
        (_, _) => json!({"path": path, "success": true}),
    }
}

/// The `error` of a failed reply: a code and a message for a person.
pub(super) fn error_value(err: &CallError) -> Value {
    let code = match err {
        CallError::Provider(f) => match f.kind {
            FailureKind::InvalidInput => "invalid_input",
            FailureKind::NotFound => "not_found",
            FailureKind::Denied => "denied",
            FailureKind::Unsupported => "unsupported",
            FailureKind::Failed => "failed",
        },
        CallError::Trapped(_) => "provider_trapped",
        CallError::TimedOut(_) => "timeout",
        CallError::Closed(_) => "not_running",
    };
    json!({"code": code, "message": err.to_string()})
}

/// The fewest bytes one file of a diff adds to a frame besides its path and diff:
/// `{"path":"","change":"added","diff":""},`.
const DIFF_FILE_FRAME_BYTES: usize = 39;

/// The `error` for a reply whose content alone passes `max` bytes (before it is made
/// into a frame, which escaping can make several times larger). A diff's files count
/// with the frame each takes, empty or not: a million empty files are 43 MB as a
/// frame and far more as JSON values, which are then not made.
pub(super) fn too_large(reply: &Reply, max: usize) -> Option<Value> {
    let len = match reply {
        Reply::Text(text) => text.len(),
        Reply::Diff(files) => (files.iter())
            .map(|f| f.path.len() + f.diff.len() + DIFF_FILE_FRAME_BYTES)
            .sum(),
        _ => 0,
    };
    (len > max).then(|| too_large_error(len, max))
}

fn too_large_error(len: usize, max: usize) -> Value {
    json!({
        "code": "too_large",
        "message": format!("the provider's answer has {len} bytes; messages to apps are limited to {max} ([relay] max_message_kib)"),
    })
}

/// `frame`, or a `too_large` error answering `kind` with `requestId` in its place if
/// it passes `max` bytes.
pub(super) fn within(frame: String, kind: &str, request_id: &Value, max: usize) -> String {
    if frame.len() <= max {
        return frame;
    }
    event(kind, request_id, Err(too_large_error(frame.len(), max)))
}

/// A `remoteProviderEvent` frame answering `kind` with `requestId`.
pub(super) fn event(kind: &str, request_id: &Value, outcome: Result<Value, Value>) -> String {
    let mut frame = json!({
        "type": "remoteProviderEvent",
        "action": format!("{kind}Response"),
        "requestId": request_id,
    });
    match outcome {
        Ok(message) => frame["message"] = message,
        Err(error) => frame["error"] = error,
    }
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn maps_requests_to_calls() {
        let m = obj(json!({"type": "providerWriteFile", "path": "a.txt", "content": "x"}));
        assert!(
            matches!(to_call("providerWriteFile", &m), Ok(Call::WriteFile(p, c)) if p == "a.txt" && c == "x")
        );
        let missing = obj(json!({"type": "providerReadFile"}));
        assert_eq!(
            to_call("providerReadFile", &missing).err(),
            Some(BadRequest("`path` is required".into()))
        );
        let wrong = obj(json!({"path": 3}));
        assert_eq!(
            to_call("providerReadFile", &wrong).err(),
            Some(BadRequest("`path` must be a string".into()))
        );
    }

    #[test]
    fn a_diff_counts_at_most_the_frame_its_files_make() {
        let file = |path: &str, change, diff: &str| crate::engine::DiffFile {
            path: path.into(),
            change,
            diff: diff.into(),
        };
        let files = vec![file("", "added", ""), file("a", "modified", "d\n\u{1}")];
        let reply = Reply::Diff(files.clone());
        let frame = reply_message("providerGetDiffFiles", &Map::new(), reply.clone());
        let made = frame["files"].to_string().len();
        assert!(too_large(&reply, made).is_none(), "{frame}");
        let counted = 2 * DIFF_FILE_FRAME_BYTES + "ad\n\u{1}".len();
        assert!(too_large(&reply, counted - 1).is_some());
    }

    #[test]
    fn replies_echo_the_request_id() {
        let frame: Value = serde_json::from_str(&event(
            "providerReadFile",
            &json!("r1"),
            Ok(json!({"content": "x"})),
        ))
        .unwrap();
        assert_eq!(frame["type"], "remoteProviderEvent");
        assert_eq!(frame["action"], "providerReadFileResponse");
        assert_eq!(frame["requestId"], "r1");
        assert_eq!(frame["message"]["content"], "x");
        let err = error_value(&CallError::TimedOut(std::time::Duration::from_secs(1)));
        assert_eq!(err["code"], "timeout");
    }
}
