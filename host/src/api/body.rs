//! Request bodies. A body must be sent as `application/json`, fit in
//! [`MAX_BODY_BYTES`], parse as JSON and be an object; its fields are then read one by
//! one by name, so a value is never matched to a field by position (serde's derive
//! accepts an array for a struct) and every error speaks of the contract's fields,
//! never of the host's Rust types. Unknown fields are refused, naming the field, and
//! so is a field given twice: parsers disagree on which of the two counts (the last,
//! here), so a proxy that checked the first would have let the other through.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::ApiError;
use super::error::ErrorCode;
use crate::untrusted::named;

/// Largest request body accepted; a larger one gets 413 `body_too_large`.
pub(crate) const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A request body type read from a JSON object.
pub(crate) trait FromObject: Sized {
    /// The fields the body accepts, for messages.
    const FIELDS: &'static [&'static str];
    /// Reads the body from its fields.
    fn from_object(fields: &mut Fields) -> Result<Self, String>;
}

/// A JSON object body, read into `T`, with the API's errors.
#[derive(Debug)]
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: FromObject> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let expected = || format!("a JSON object with fields {}", T::FIELDS.join(", "));
        if !is_json(req.headers().get(CONTENT_TYPE)) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "send the request body as `Content-Type: application/json`: {}",
                    expected()
                ),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::BodyTooLarge,
                    format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request(format!("the request body could not be read: {rejection}"))
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!(
                    "the request body is not valid JSON ({e}); send {}",
                    expected()
                ),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::bad_request(format!(
                "the request body must be {}, not {}",
                expected(),
                kind(&value)
            )));
        };
        // A second, cheap pass over the same text (values skipped unread): the parse
        // above kept only the last of two equal keys.
        if let Ok(UniqueFields(Some(key))) = serde_json::from_slice(&bytes) {
            return Err(ApiError::bad_request(format!(
                "field {} is given twice; give each field once",
                named(&key)
            )));
        }
        let mut fields = Fields::new(map, T::FIELDS).map_err(ApiError::bad_request)?;
        T::from_object(&mut fields)
            .map(Body)
            .map_err(ApiError::bad_request)
    }
}

/// A JSON object body not read yet: its handler checks the caller's rights first and
/// then reads it ([`Deferred::read`]), so a caller without them is refused at once,
/// without the host reading (or waiting up to its timeouts for) a body it would throw
/// away.
#[derive(Debug)]
pub(crate) struct Deferred<T>(Request, std::marker::PhantomData<fn() -> T>);

impl<S: Send + Sync, T> FromRequest<S> for Deferred<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(req, std::marker::PhantomData))
    }
}

impl<T: FromObject> Deferred<T> {
    /// Reads the body as [`Body`] does, with its errors.
    pub(crate) async fn read(self) -> Result<T, ApiError> {
        Body::<T>::from_request(self.0, &()).await.map(|Body(t)| t)
    }
}

/// The first top-level key of a JSON object that is given twice, if any (compared as
/// decoded, so `"na\u006de"` repeats `"name"`).
struct UniqueFields(Option<String>);

impl<'de> Deserialize<'de> for UniqueFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = UniqueFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueFields, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut repeated = None;
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    if repeated.is_none() && !seen.insert(key.clone()) {
                        repeated = Some(key);
                    }
                }
                Ok(UniqueFields(repeated))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// `application/json`, or any `+json` type, with or without parameters.
fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    let essence = essence(value);
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Whether a `Content-Type` is one a component's bytes are sent as:
/// `application/wasm`, or `application/octet-stream` (bytes of no stated kind).
pub(crate) fn is_component(value: Option<&axum::http::HeaderValue>) -> bool {
    let essence = essence(value);
    essence.eq_ignore_ascii_case("application/wasm")
        || essence.eq_ignore_ascii_case("application/octet-stream")
}

/// The media type without its parameters (`""` when there is none readable).
fn essence(value: Option<&axum::http::HeaderValue>) -> &str {
    let mime = value.and_then(|v| v.to_str().ok()).unwrap_or("");
    mime.split(';').next().unwrap_or("").trim()
}

/// What kind of JSON value this is, in the contract's words.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a JSON number that is no `u64` is, in words a client can act on. Without
/// arbitrary precision, the parser keeps such a number as a float, so a whole number
/// past `u64::MAX` or written as `1e3` or `1.0` is told apart from a fraction here.
fn not_unsigned(n: &serde_json::Number) -> &'static str {
    match n.as_f64() {
        Some(f) if f < 0.0 => "a negative number",
        Some(f) if f.fract() != 0.0 => "a fractional number",
        // 2^64: the first whole number past `u64::MAX`.
        Some(f) if f >= 18_446_744_073_709_551_616.0 => "a number larger than 18446744073709551615",
        _ => "a number written with a fraction or an exponent (send digits only, such as 1000)",
    }
}

/// The fields of a body object, taken out one by one.
#[derive(Debug)]
pub(crate) struct Fields(Map<String, Value>);

impl Fields {
    /// Refuses a field not in `allowed`.
    fn new(map: Map<String, Value>, allowed: &[&str]) -> Result<Self, String> {
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "unknown field {}; the body accepts {}",
                named(unknown),
                allowed.join(", ")
            ));
        }
        Ok(Self(map))
    }

    /// A field that must be a string.
    pub(crate) fn string(&mut self, key: &str) -> Result<String, String> {
        match self.0.remove(key) {
            Some(Value::String(s)) => Ok(s),
            None | Some(Value::Null) => Err(format!("field `{key}` is required (a string)")),
            Some(other) => Err(format!(
                "field `{key}` must be a string, not {}",
                kind(&other)
            )),
        }
    }

    /// A field that may be absent or `null`, else a string.
    pub(crate) fn optional_string(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "field `{key}` must be a string, not {}",
                kind(&other)
            )),
        }
    }

    /// A field that may be absent or `null`, else a list of at most `max` strings.
    pub(crate) fn strings(&mut self, key: &str, max: usize) -> Result<Option<Vec<String>>, String> {
        let wrong = || format!("field `{key}` must be a list of at most {max} strings");
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if items.len() <= max => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(wrong()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(wrong()),
        }
    }

    /// A field that may be absent or `null`, else a non-negative integer.
    pub(crate) fn unsigned(&mut self, key: &str) -> Result<Option<u64>, String> {
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(format!(
                "field `{key}` must be a non-negative integer, not {}",
                match &other {
                    Value::Number(n) => not_unsigned(n),
                    other => kind(other),
                }
            )),
        }
    }

    /// A field that may be absent or `null`, else an object.
    pub(crate) fn object(&mut self, key: &str) -> Result<Option<Map<String, Value>>, String> {
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(format!(
                "field `{key}` must be an object, not {}",
                kind(&other)
            )),
        }
    }

    /// A field that may be absent or `null`, else a boolean.
    pub(crate) fn boolean(&mut self, key: &str) -> Result<Option<bool>, String> {
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(format!(
                "field `{key}` must be true or false, not {}",
                kind(&other)
            )),
        }
    }

    /// A field that may be absent or `null`, else one of the strings in `choices`.
    pub(crate) fn choice<T: DeserializeOwned>(
        &mut self,
        key: &str,
        choices: &[&str],
    ) -> Result<Option<T>, String> {
        let wrong = || {
            let quoted: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
            format!("field `{key}` must be one of {}", quoted.join(", "))
        };
        match self.0.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::String(_)) => serde_json::from_value(v).map(Some).map_err(|_| wrong()),
            Some(_) => Err(wrong()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types_are_recognised() {
        for good in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(good))), "{good}");
        }
        for bad in ["text/plain", "application/jsonx", "+json", ""] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
        for good in [
            "application/wasm",
            "Application/WASM; x=1",
            "application/octet-stream",
        ] {
            assert!(
                is_component(Some(&HeaderValue::from_static(good))),
                "{good}"
            );
        }
        for bad in [
            "application/json",
            "text/plain",
            "application/wasm+json",
            "",
        ] {
            assert!(!is_component(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_component(None));
    }

    #[test]
    fn a_key_given_twice_is_found_as_decoded() {
        let repeated = |text: &str| {
            serde_json::from_str::<UniqueFields>(text)
                .ok()
                .and_then(|u| u.0)
        };
        assert_eq!(repeated(r#"{"a": 1, "b": {"a": 2, "a": 3}}"#), None);
        assert_eq!(
            repeated(r#"{"name": "a", "x": 1, "name": "b"}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            repeated(r#"{"name": 1, "na\u006de": 2}"#).as_deref(),
            Some("name")
        );
    }

    #[test]
    fn fields_are_read_by_name_with_contract_messages() {
        let map = |v: Value| v.as_object().cloned().unwrap_or_default();
        let err = Fields::new(map(serde_json::json!({"nme": 1})), &["name"]).unwrap_err();
        assert_eq!(err, "unknown field \"nme\"; the body accepts name");
        let mut f = Fields::new(map(serde_json::json!({"name": 3})), &["name"]).unwrap();
        assert_eq!(
            f.string("name").unwrap_err(),
            "field `name` must be a string, not a number"
        );
        for (number, said) in [
            ("-1", "a negative number"),
            ("1.5", "a fractional number"),
            (
                "18446744073709551616",
                "a number larger than 18446744073709551615",
            ),
            ("1e3", "a number written with a fraction or an exponent"),
            ("2.0", "a number written with a fraction or an exponent"),
        ] {
            let value: Value = serde_json::from_str(&format!("{{\"n\": {number}}}")).unwrap();
            let mut f = Fields::new(map(value), &["n"]).unwrap();
            let err = f.unsigned("n").unwrap_err();
            assert!(err.contains(said), "{number}: {err}");
        }
        let mut f = Fields::new(map(serde_json::json!({"p": "sometimes"})), &["p"]).unwrap();
        let err = f
            .choice::<crate::lifecycle::RestartPolicy>("p", &["never", "always"])
            .unwrap_err();
        assert_eq!(err, "field `p` must be one of \"never\", \"always\"");
    }

    /// A body shaped like the create request's, read the way its handler reads it.
    fn read_create(map: Map<String, Value>) -> Result<(), String> {
        let mut f = Fields::new(
            map,
            &["name", "provider", "config", "start", "restartPolicy"],
        )?;
        f.string("name")?;
        f.string("provider")?;
        f.object("config")?;
        f.boolean("start")?;
        f.choice::<crate::lifecycle::RestartPolicy>(
            "restartPolicy",
            &["never", "on-failure", "always"],
        )?;
        Ok(())
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
            (1usize..20_000).prop_map(|n| Value::String("k".repeat(n))),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{1,6}", inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Property-based fuzzing of request bodies: any object, with the contract's
        /// field names or any others (long ones too) and values of any type, is read or
        /// refused with a short message; nothing the client sent is echoed unbounded.
        #[test]
        fn any_body_object_is_read_or_refused_briefly(
            fields in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::sample::select(vec!["name", "provider", "config", "start", "restartPolicy"]).prop_map(str::to_owned),
                        "[ -~]{0,16}",
                        (1usize..50_000).prop_map(|n| "f".repeat(n)),
                    ],
                    any_json(),
                ),
                0..6,
            )
        ) {
            use proptest::prelude::*;
            let map: Map<String, Value> = fields.into_iter().collect();
            if let Err(message) = read_create(map) {
                prop_assert!(!message.is_empty());
                prop_assert!(message.len() <= 1024, "{} bytes of error", message.len());
            }
        }
    }
}
