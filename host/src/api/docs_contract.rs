//! The docs a client is written from, checked against the code that makes what the
//! client sees: every close code the host sends is in `docs/protocol.md`'s table (and
//! the table lists no code the host never sends), and every `error` frame code is in
//! its row of the message table. A new constant or code fails here until documented.

/// The files that define the host's close codes, as `const CLOSE_…: u16 = N;`.
const CLOSE_SOURCES: [(&str, &str); 3] = [
    ("relay/protocol.rs", include_str!("../relay/protocol.rs")),
    ("relay/bridge.rs", include_str!("../relay/bridge.rs")),
    ("api/events.rs", include_str!("events.rs")),
];

const PROTOCOL_MD: &str = include_str!("../../../docs/protocol.md");

/// Every `(name, code)` a `const CLOSE_…: u16 = N;` line of `source` defines.
fn close_constants(source: &str) -> Vec<(String, u16)> {
    source
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start();
            let rest = rest.strip_prefix("pub ").unwrap_or(rest);
            let rest = rest.strip_prefix("pub(super) ").unwrap_or(rest);
            let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
            let (name, value) = rest.strip_prefix("const CLOSE_")?.split_once(": u16 = ")?;
            let code = value.trim_end_matches(';').trim().parse().ok()?;
            Some((format!("CLOSE_{name}"), code))
        })
        .collect()
}

/// The codes in the first column of `docs/protocol.md`'s "Close codes" table.
fn documented_close_codes() -> Vec<u16> {
    let table = PROTOCOL_MD
        .split_once("\n## Close codes\n")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let table = table.split("\n## ").next().unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(" |").next()?.parse().ok())
        .collect()
}

#[test]
fn every_close_code_is_in_the_protocol_table_and_only_those() {
    let documented = documented_close_codes();
    assert!(
        documented.len() >= 10,
        "no close code table in docs/protocol.md"
    );
    let mut sent = Vec::new();
    for (file, source) in CLOSE_SOURCES {
        let constants = close_constants(source);
        assert!(!constants.is_empty(), "no close code constant in {file}");
        for (name, code) in constants {
            assert!(
                documented.contains(&code),
                "{file}'s {name} ({code}) is not in docs/protocol.md's close codes"
            );
            sent.push(code);
        }
    }
    for code in documented {
        assert!(
            sent.contains(&code),
            "docs/protocol.md lists close code {code}, which the host never sends"
        );
    }
}

#[test]
fn every_error_frame_code_is_in_the_protocol_table() {
    let inbound = include_str!("../relay/inbound.rs");
    let row = PROTOCOL_MD
        .lines()
        .find(|l| l.starts_with("| `error` |"))
        .expect("an `error` row in docs/protocol.md's message table");
    let mut codes: Vec<&str> = inbound
        .split("error_frame(")
        .skip(1)
        .filter_map(|call| call.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(codes.contains(&"invalid_message"), "{codes:?}");
    // The one error frame made elsewhere: an app at an environment stopped on purpose.
    codes.push(super::error::ErrorCode::Stopped.as_str());
    for code in codes {
        assert!(
            row.contains(&format!("`{code}`")),
            "docs/protocol.md's `error` row does not list {code}: {row}"
        );
    }
}

/// The section of `docs/rest.md` from `heading` to the next `## ` heading.
fn rest_section(heading: &str) -> &'static str {
    let rest = include_str!("../../../docs/rest.md");
    let (_, after) = rest
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading} in docs/rest.md"));
    after.split("\n## ").next().unwrap_or_default()
}

/// Every property name of schema `name` in the spec, through `allOf`/`oneOf` and `$ref`s.
fn properties(schemas: &serde_json::Value, name: &str) -> Vec<String> {
    let schema = &schemas[name];
    let mut out: Vec<String> = (schema["properties"].as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for part in ["allOf", "oneOf"] {
        for sub in schema[part].as_array().into_iter().flatten() {
            if let Some(target) = sub["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
                out.extend(properties(schemas, target));
            }
            if let Some(p) = sub["properties"].as_object() {
                out.extend(p.keys().cloned());
            }
        }
    }
    out
}

#[test]
fn every_field_of_the_answers_rest_md_describes_is_there() {
    let spec = super::spec().to_json().expect("the spec serialises");
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("the spec is JSON");
    let schemas = &spec["components"]["schemas"];
    for (schema, heading) in [
        ("EnvironmentView", "## An environment as the API shows it"),
        ("HealthAnswer", "## `/healthz`"),
        ("HostHealth", "## `/healthz`"),
        ("StorageHealth", "## `/healthz`"),
        ("ClusterView", "## `GET /api/v1/cluster` (admin)"),
        ("HostView", "## `GET /api/v1/cluster` (admin)"),
        ("ConflictView", "## `GET /api/v1/cluster` (admin)"),
        ("RemovalView", "## `/api/v1/removals` (admin)"),
    ] {
        let section = rest_section(heading);
        let fields = properties(schemas, schema);
        assert!(!fields.is_empty(), "the spec has no fields for {schema}");
        for field in fields {
            assert!(
                section.contains(&format!("`{field}`"))
                    || section.contains(&format!("`{field}."))
                    || section.contains(&format!("\"{field}\"")),
                "docs/rest.md's {heading} does not name {schema}'s field {field}"
            );
        }
    }
}

/// The `(status, code)` rows of a Markdown error table in `doc`: rows of the shape
/// `| 400 | \`invalid_request\` | …`, a status in parentheses (an `error` frame's) read
/// as the status.
fn error_rows(doc: &str) -> Vec<(u16, String)> {
    doc.lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| ")?.split(" | ");
            let status = cells.next()?.trim_matches(['(', ')']).parse().ok()?;
            let code = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((status, code.to_owned()))
        })
        .collect()
}

#[test]
fn the_error_tables_give_each_code_its_status_and_no_other_code() {
    let rest = rest_section("## Errors");
    let readme = include_str!("../../../README.md");
    for (doc, rows) in [
        ("docs/rest.md", error_rows(rest)),
        ("README.md", error_rows(readme)),
    ] {
        for code in super::error::ErrorCode::ALL {
            let status = code.status().as_u16();
            assert!(
                rows.contains(&(status, code.as_str().to_owned())),
                "{doc}'s error table has no row {status} `{}`",
                code.as_str()
            );
        }
        for (status, code) in &rows {
            let known = super::error::ErrorCode::ALL
                .iter()
                .find(|c| c.as_str() == code);
            // The one exception the docs spell out: a runtime that must exit, 410 `conflict`.
            let exception = *status == 410 && code == "conflict";
            assert!(
                known.is_some_and(|c| c.status().as_u16() == *status) || exception,
                "{doc}'s error table lists {status} `{code}`, which the host never answers"
            );
        }
    }
}

#[test]
fn the_readme_names_every_error_code() {
    let readme = include_str!("../../../README.md");
    for code in super::error::ErrorCode::ALL {
        let cell = format!("| `{}` |", code.as_str());
        assert!(
            readme.contains(&cell),
            "README.md's error table has no {cell}"
        );
    }
}

/// The default column of `docs/protocol.md`'s `[relay]` table, by setting.
fn documented_relay_default(setting: &str) -> u64 {
    let row = format!("| `{setting}` | ");
    PROTOCOL_MD
        .lines()
        .find_map(|l| l.strip_prefix(&row)?.split(" |").next()?.parse().ok())
        .unwrap_or_else(|| panic!("docs/protocol.md has no default for [relay] {setting}"))
}

#[test]
fn the_protocol_limits_table_gives_the_relay_defaults() {
    let d = crate::config::RelayConfig::default();
    let actual = [
        ("window_messages", d.window_messages as u64),
        ("window_kib", d.window_bytes as u64 >> 10),
        ("max_message_kib", d.max_message_bytes as u64 >> 10),
        ("max_connections", d.max_connections as u64),
        ("ping_interval_secs", d.ping_interval.as_secs()),
        ("idle_timeout_secs", d.idle_timeout.as_secs()),
        ("session_ttl_secs", d.session_ttl.as_secs()),
    ];
    for (setting, value) in actual {
        assert_eq!(
            documented_relay_default(setting),
            value,
            "docs/protocol.md's default of [relay] {setting}"
        );
    }
}

/// The actions the README's audit table names: its `action` row's alternatives,
/// `environment.create|patch|…` read as `environment.create`, `environment.patch`, ….
fn documented_actions() -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `action` |"))
        .expect("an `action` row in the README's audit table");
    let mut actions = Vec::new();
    for (i, quoted) in row.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let Some((noun, verbs)) = quoted.split_once('.') else {
            continue;
        };
        actions.extend(verbs.split('|').map(|verb| format!("{noun}.{verb}")));
    }
    actions
}

#[test]
fn the_readme_names_every_audit_action() {
    let source = include_str!("../audit/entry.rs");
    let module = source
        .split_once("pub mod action {")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split_once("\n}"))
        .map(|(body, _)| body)
        .expect("the action module in audit/entry.rs");
    let documented = documented_actions();
    let mut seen = 0;
    for line in module.lines() {
        let Some((_, value)) = line.split_once(": &str = \"") else {
            continue;
        };
        let action = value.trim_end_matches("\";");
        assert!(
            documented.iter().any(|a| a == action),
            "the README's audit table does not name {action} (it names {documented:?})"
        );
        seen += 1;
    }
    assert!(seen >= 10, "no actions read from audit/entry.rs");
}

/// The quoted words of `source` that stand where a provider answer's `error.code` is
/// made: `"code": "code"` fields and, with `arms`, `… => "code",` match arms.
fn provider_error_codes(source: &str, arms: bool) -> Vec<String> {
    let mut codes = Vec::new();
    for line in source.lines() {
        let line = line.trim();
        if let Some((_, rest)) = line.split_once("\"code\": \"") {
            codes.extend(rest.split('"').next().map(str::to_owned));
        } else if let Some((_, rest)) = line.split_once("=> \"").filter(|_| arms) {
            let code = rest.split('"').next().unwrap_or_default();
            if rest.ends_with("\",") && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                codes.push(code.to_owned());
            }
        }
    }
    codes
}

#[test]
fn every_provider_answer_error_code_is_in_the_protocol() {
    // The paragraph after the provider-handled types' table lists them.
    let (_, after) = PROTOCOL_MD
        .split_once("`error.code` is one of")
        .expect("the provider error codes in docs/protocol.md");
    let paragraph = after.split("\n\n").next().unwrap_or_default();
    // The arms of `error_value` map each failure to its code; elsewhere a code is a
    // `"code": "…"` field of a `json!`.
    let messages = include_str!("../lifecycle/messages.rs");
    let error_value = (messages.split_once("fn error_value"))
        .and_then(|(_, rest)| rest.split_once("\n}\n"))
        .map(|(body, _)| body)
        .expect("error_value in lifecycle/messages.rs");
    let mut seen = provider_error_codes(error_value, true);
    for source in [messages, include_str!("../lifecycle/peers.rs")] {
        seen.extend(provider_error_codes(source, false));
    }
    for code in ["invalid_input", "provider_trapped", "busy", "too_large"] {
        assert!(seen.iter().any(|c| c == code), "{code} not read: {seen:?}");
    }
    for code in seen {
        assert!(
            paragraph.contains(&format!("`{code}`")),
            "docs/protocol.md's provider error codes do not list {code}"
        );
    }
}

#[test]
fn rest_md_lists_every_operation_with_its_scopes_and_no_other() {
    let spec = super::spec().to_json().expect("the spec serialises");
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("the spec is JSON");
    let table = rest_section("## Operations");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| `")).collect();
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let start = format!("| `{}` | `{path}` | ", method.to_uppercase());
            let Some(row) = rows.iter().find(|r| r.starts_with(&start)) else {
                panic!("docs/rest.md's Operations has no row {start}");
            };
            let scopes = op["security"].as_array().into_iter().flatten();
            for scope in scopes.flat_map(|r| r["bearer"].as_array().into_iter().flatten()) {
                let scope = scope.as_str().unwrap_or_default();
                assert!(row.contains(&format!("`{scope}`")), "{row} lacks {scope}");
            }
            if op.get("security").is_none() {
                assert!(row.ends_with("| none |"), "{row}: the spec asks no token");
            }
            operations += 1;
        }
    }
    assert_eq!(
        rows.len(),
        operations,
        "docs/rest.md lists an operation the spec has not"
    );
}

/// A doc comment becomes a spec description as it is: an intra-doc link such as
/// ``[`MAX_COMPONENT_BYTES`]`` names a Rust item a client cannot look up.
#[test]
fn the_spec_has_no_rustdoc_links() {
    let spec = super::spec().to_json().expect("the spec serialises");
    for (i, _) in spec.match_indices("`]") {
        let after = spec[i + 2..].chars().next();
        assert!(
            after == Some('('),
            "a rustdoc link in the spec: …{}…",
            &spec[i.saturating_sub(60)..i + 2]
        );
    }
}
