//! What a client sees against what the docs say it sees, from a real server: every
//! sample `/metrics` exposes is in `docs/rest.md`'s table under the name a scraper
//! uses, and every field of `/healthz` is in its section there. (Error codes, close
//! codes and the spec are kept in step by the host's unit tests.)

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::Server;

fn rest_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rest.md");
    std::fs::read_to_string(path).expect("docs/rest.md")
}

/// The part of `docs` from the heading `heading` to the next `## ` heading.
fn section<'a>(docs: &'a str, heading: &str) -> &'a str {
    let start = docs
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading} in docs/rest.md"));
    let rest = &docs[start + 1..];
    let end = rest[heading.len()..]
        .find("\n## ")
        .map_or(rest.len(), |i| i + heading.len());
    &rest[..end]
}

/// The names a scraper sees in an OpenMetrics text: from each `# TYPE` line, with
/// `_total` for a counter (OpenMetrics names a counter's sample so).
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap_or_default();
            match words.next() {
                Some("counter") => format!("{name}_total"),
                _ => name.to_owned(),
            }
        })
        .collect()
}

#[tokio::test]
async fn every_metric_and_health_field_is_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let docs = rest_md();

    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let exposed = exposed_names(&text);
    assert!(
        exposed.contains("tether_connections_refused_total"),
        "{text}"
    );
    let table = section(&docs, "## `/metrics`");
    // The spec names them too, the same way.
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json");
    let spec: Value = serde_json::from_str(&spec).expect("spec");
    let said = spec["paths"]["/metrics"]["get"]["responses"]["200"]["description"]
        .as_str()
        .unwrap_or_default();
    for name in &exposed {
        let row = if name == "tether_environments" {
            format!("| `{name}{{")
        } else {
            format!("| `{name}` |")
        };
        assert!(
            table.contains(&row),
            "docs/rest.md's /metrics has no row {row}"
        );
        let short = name.strip_prefix("tether_compile_cache_").unwrap_or(name);
        assert!(
            said.contains(&format!("`{name}")) || said.contains(&format!("`{short}`")),
            "the spec's /metrics description does not name {name}: {said}"
        );
    }

    let (status, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let healthz = section(&docs, "## `/healthz`");
    for field in health.as_object().expect("an object").keys() {
        assert!(
            healthz.contains(&format!("\"{field}\"")) || healthz.contains(&format!("`{field}`")),
            "docs/rest.md's /healthz does not name {field}: {health}"
        );
    }
    server.stop();
}
