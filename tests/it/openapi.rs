//! The OpenAPI spec against the server: every documented operation is routed, nothing
//! undocumented is, and every REST answer the suite sees conforms. [`check`] is what
//! `support.rs`'s request helpers call on each response: the status must be
//! documented for the operation and a JSON body must match its schema, read from the
//! checked-in `docs/openapi.json` (which a lib test keeps equal to what the code
//! serves). Objects are checked strictly: a field the spec does not name is an error.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::support::{Server, TOKEN};

/// The checked-in spec, strict, with its compiled schemas.
static SPEC: LazyLock<Spec> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("reading docs/openapi.json");
    Spec::new(serde_json::from_str(&text).expect("docs/openapi.json parses"))
});

/// Panics unless the answer `status` with `content_type` and `body` to `method`
/// `path` (query allowed) is one the spec documents. Paths the spec does not describe
/// are left alone: the fallback 404 is the router's, not an operation's.
pub fn check(method: &str, path: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    if let Err(why) = SPEC.check(method, path, status, content_type, body) {
        panic!(
            "{method} {path} answered {status} outside the OpenAPI spec: {why}\nbody: {}",
            String::from_utf8_lossy(body)
        );
    }
}

/// A spec ready to check answers against.
pub struct Spec {
    doc: Value,
    /// Compiled response schemas by pointer into the document.
    compiled: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Spec {
    /// Takes a spec, making every object schema strict (see [`strict`]).
    pub fn new(mut doc: Value) -> Spec {
        let flattened = allof_refs(&doc);
        if let Some(schemas) = doc
            .pointer_mut("/components/schemas")
            .and_then(Value::as_object_mut)
        {
            for (name, schema) in schemas.iter_mut() {
                strict(
                    schema,
                    !flattened.contains(&format!("#/components/schemas/{name}")),
                );
            }
        }
        if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
            for item in paths.values_mut() {
                strict(item, true);
            }
        }
        Spec {
            doc,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// The operation's path template matching `path`, if one does: literal segments
    /// before `{param}` ones.
    fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        let mut best: Option<(usize, &String)> = None;
        for template in paths.keys() {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let fits = parts.iter().zip(&segments).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if fits && best.is_none_or(|(n, _)| literal > n) {
                best = Some((literal, template));
            }
        }
        best.map(|(_, t)| t.clone())
    }

    /// `Err` with the reason unless the answer is documented.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let Some(template) = self.template(path) else {
            return Ok(());
        };
        let method = method.to_ascii_lowercase();
        let Some(operation) = self.doc["paths"][&template].get(&method) else {
            // An undocumented method on a documented path: the router answers 405.
            return if status == 405 {
                Ok(())
            } else {
                Err(format!("{method} is not documented for {template}"))
            };
        };
        let responses = &operation["responses"];
        let Some(response) = responses.get(status.to_string()) else {
            let documented: Vec<&String> = (responses.as_object())
                .map(|r| r.keys().collect())
                .unwrap_or_default();
            return Err(format!(
                "status {status} is not documented for {method} {template} (documented: {documented:?})"
            ));
        };
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return Ok(());
        };
        let essence = (content_type.unwrap_or_default().split(';').next())
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some(media) = content.get(&essence) else {
            let documented: Vec<&String> = content.keys().collect();
            return Err(format!(
                "content type {essence:?} is not documented for {status} (documented: {documented:?})"
            ));
        };
        if essence != "application/json" {
            return Ok(());
        }
        let body: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the body is documented as JSON but is not: {e}"))?;
        let Some(schema) = media.get("schema") else {
            return Ok(());
        };
        let pointer = format!(
            "/paths/{}/{method}/responses/{status}/content/application~1json/schema",
            template.replace('~', "~0").replace('/', "~1")
        );
        let validator = self.validator(&pointer, schema)?;
        validator
            .validate(&body)
            .map_err(|e| format!("{e} (at {})", e.instance_path()))
    }

    /// The compiled `schema` at `pointer`, with the document's components beside it
    /// so its `$ref`s resolve.
    fn validator(
        &self,
        pointer: &str,
        schema: &Value,
    ) -> Result<Arc<jsonschema::Validator>, String> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = compiled.get(pointer) {
            return Ok(v.clone());
        }
        let mut root = schema.clone();
        if let Value::Object(map) = &mut root {
            map.insert("components".into(), self.doc["components"].clone());
        }
        let validator = jsonschema::draft202012::new(&root)
            .map_err(|e| format!("the spec's schema at {pointer} does not compile: {e}"))?;
        let validator = Arc::new(validator);
        compiled.insert(pointer.to_owned(), validator.clone());
        Ok(validator)
    }
}

/// The components some `allOf` refers to: they are parts of a larger object (a
/// flattened struct), so only the whole may refuse fields it does not name.
fn allof_refs(doc: &Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(v: &Value, found: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(items)) = map.get("allOf") {
                    for item in items {
                        if let Some(Value::String(r)) = item.get("$ref") {
                            found.push(r.clone());
                        }
                    }
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    walk(doc, &mut found);
    found
}

/// Makes object schemas refuse fields they do not name (`unevaluatedProperties`):
/// every schema with `properties` or an `allOf`, except the direct parts of an
/// `allOf` (their whole decides) and, when `here` is false, `v` itself.
fn strict(v: &mut Value, here: bool) {
    let Value::Object(map) = v else {
        if let Value::Array(items) = v {
            items.iter_mut().for_each(|i| strict(i, true));
        }
        return;
    };
    let is_object = map.contains_key("properties") || map.contains_key("allOf");
    let open =
        map.contains_key("additionalProperties") || map.contains_key("unevaluatedProperties");
    if here && is_object && !open {
        map.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
    for (key, child) in map.iter_mut() {
        match (key.as_str(), child) {
            ("allOf", Value::Array(parts)) => parts.iter_mut().for_each(|p| strict(p, false)),
            ("properties", Value::Object(props)) => {
                props.values_mut().for_each(|p| strict(p, true))
            }
            ("example" | "examples" | "default" | "enum", _) => {}
            (_, child) => strict(child, true),
        }
    }
}

/// A spec of one operation answering 200 with `schema`, for the validator's own tests.
fn tiny(schema: Value) -> Spec {
    Spec::new(json!({
        "openapi": "3.1.0",
        "paths": {"/things/{id}": {"get": {"responses": {
            "200": {"description": "", "content": {"application/json": {"schema": schema}}},
            "204": {"description": ""}
        }}}},
        "components": {"schemas": {
            "Thing": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
            "Base": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
            "Named": {"allOf": [{"$ref": "#/components/schemas/Base"}, {"type": "object", "properties": {"name": {"type": "string"}}}]}
        }}
    }))
}

#[test]
fn the_validator_refuses_what_the_spec_does_not_say() {
    let spec = tiny(json!({"$ref": "#/components/schemas/Thing"}));
    let get = |path: &str, status, body: &str| {
        spec.check(
            "GET",
            path,
            status,
            Some("application/json"),
            body.as_bytes(),
        )
    };
    assert_eq!(get("/things/a", 200, r#"{"id": "a"}"#), Ok(()));
    assert_eq!(get("/things/a?x=1", 204, ""), Ok(()));
    let wrong_type = get("/things/a", 200, r#"{"id": 5}"#).unwrap_err();
    assert!(wrong_type.contains("/id"), "{wrong_type}");
    assert!(
        get("/things/a", 200, r#"{}"#).is_err(),
        "a required field missing"
    );
    assert!(
        get("/things/a", 200, r#"{"id": "a", "extra": 1}"#).is_err(),
        "an undocumented field"
    );
    assert!(
        get("/things/a", 500, r#"{"id": "a"}"#)
            .unwrap_err()
            .contains("not documented")
    );
    assert!(get("/things/a", 200, "not json").is_err());
    assert!(
        spec.check("POST", "/things/a", 200, None, b"").is_err(),
        "an undocumented method"
    );
    assert!(
        spec.check("GET", "/things/a", 200, Some("text/plain"), b"a")
            .is_err()
    );
    // Paths the spec does not describe are the router's fallback, not checked here.
    assert_eq!(get("/elsewhere", 404, "x"), Ok(()));
}

#[test]
fn a_flattened_struct_is_strict_as_a_whole() {
    let spec = tiny(json!({"$ref": "#/components/schemas/Named"}));
    let get = |body: &str| {
        spec.check(
            "GET",
            "/things/a",
            200,
            Some("application/json"),
            body.as_bytes(),
        )
    };
    assert_eq!(get(r#"{"id": "a", "name": "n"}"#), Ok(()));
    assert!(get(r#"{"id": "a", "name": "n", "extra": true}"#).is_err());
    assert!(get(r#"{"name": "n"}"#).is_err());
}

#[test]
fn the_checked_in_spec_is_live() {
    // The real snapshot refuses an error code it does not list, and a wrong shape.
    let err = |body: &str| {
        SPEC.check(
            "GET",
            "/api/v1/environments/abc",
            404,
            Some("application/json"),
            body.as_bytes(),
        )
    };
    assert_eq!(
        err(r#"{"error": {"code": "not_found", "message": "gone"}}"#),
        Ok(())
    );
    assert!(err(r#"{"error": {"code": "no_such_code", "message": "gone"}}"#).is_err());
    assert!(err(r#"{"error": "gone"}"#).is_err());
    assert!(
        SPEC.check("GET", "/api/v1/environments", 418, None, b"")
            .is_err()
    );
}

/// A value for each path parameter, so the request reaches the handler.
fn filled(template: &str) -> String {
    (template.split('/'))
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    // Served without a token, and the very document checked in.
    let (status, served) = server
        .call_with("GET", "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let paths = served["paths"].as_object().expect("paths").clone();
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json"),
    )
    .expect("parses");
    assert!(
        served == checked_in,
        "the server serves another spec than docs/openapi.json"
    );
    // Redirects are answers too (`/api/docs`), not to be followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let all = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    for (template, item) in &paths {
        let path = filled(template);
        let item: &Map<String, Value> = item.as_object().expect("path item");
        for method in all {
            let documented = item.contains_key(&method.to_ascii_lowercase());
            let resp = http
                .request(
                    method.parse().expect("method"),
                    format!("{}{path}", server.base),
                )
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("request");
            let (status, body) = crate::support::checked(method, &path, resp).await;
            if documented {
                assert!(
                    !(status == StatusCode::NOT_FOUND && body.contains("no such route")),
                    "{method} {template} is in the spec but not routed"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} is routed but not in the spec: {body}"
                );
            }
        }
    }
    // Paths beside and below the documented ones reach the fallback (`/` and `/ui/`
    // are the dashboard's pages, not API).
    for path in [
        "/index.html",
        "/api",
        "/api/v1",
        "/ws",
        "/api/v1/environments/x/y",
        "/api/v2/environments",
    ] {
        let (status, body) = server.call("GET", path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["message"], "no such route", "{path}");
    }
}

#[tokio::test]
async fn the_docs_page_is_served_from_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = http
        .get(format!("{}/api/docs", server.base))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/api/docs/");
    let page = reqwest::get(format!("{}/api/docs/", server.base))
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains("swagger-ui"));
    let init = reqwest::get(format!("{}/api/docs/swagger-initializer.js", server.base))
        .await
        .expect("initializer");
    assert_eq!(init.status(), StatusCode::OK);
    assert!(
        init.text()
            .await
            .expect("js")
            .contains("/api/v1/openapi.json")
    );
    let (status, body) = server
        .call_with("GET", "/api/docs/nothing-here.js", None, None)
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
}
