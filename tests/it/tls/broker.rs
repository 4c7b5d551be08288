//! Brokered HTTPS: the hostile provider GETs `https://` URLs on loopback servers whose
//! certificates a test CA signed. The operator's extra CA makes the right name work;
//! a certificate for another name or from an unknown CA is a TLS certificate error;
//! a name resolving to loopback without a literal grant never connects.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::certs::{Ca, https_server};
use crate::hostile::rig::Rig;

#[tokio::test]
async fn https_is_brokered_validated_and_refused_with_tls_errors() {
    let ca = Ca::new("tether test CA");
    let stranger = Ca::new("unknown CA");
    let (good, good_conns, good_hits) = https_server(&ca.leaf(&["good.test"])).await;
    // Presents a valid certificate, but for another name.
    let (wrong, _, wrong_hits) = https_server(&ca.leaf(&["other.test"])).await;
    // The right name, signed by a CA the operator does not trust.
    let (unknown, _, unknown_hits) = https_server(&stranger.leaf(&["unknown.test"])).await;
    // Granted by name only: its address (loopback) must stop it before connecting.
    let (inward, inward_conns, _) = https_server(&ca.leaf(&["inward.test"])).await;
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write(ca_dir.path(), "ca.pem");
    let toml = format!(
        r#"
[lifecycle]
start_timeout_secs = 5

[net]
connect_timeout_ms = 2000
first_byte_timeout_ms = 2000
extra_ca_files = ["{ca}"]

[net.hosts]
"good.test" = "127.0.0.1"
"wrong.test" = "127.0.0.1"
"unknown.test" = "127.0.0.1"
"inward.test" = "127.0.0.1"

[providers.hostile]
urls = [
  "https://good.test:{good}", "https://127.0.0.1:{good}",
  "https://wrong.test:{wrong}", "https://127.0.0.1:{wrong}",
  "https://unknown.test:{unknown}", "https://127.0.0.1:{unknown}",
  "https://inward.test:{inward}",
]
"#,
        ca = ca_file.display()
    );
    let mut rig = Rig::start(|dir| {
        std::fs::write(dir.join("tether.toml"), &toml).expect("tether.toml");
    })
    .await;

    // The operator's CA signed it and the name matches: 200.
    let url = format!("https://good.test:{good}/");
    let env = rig
        .attack("https-good", json!({"attack": "http", "url": url}))
        .await;
    assert_eq!(env["metadata"]["outcome"], "HTTP status 200", "{env}");
    assert_eq!(good_hits.load(Ordering::SeqCst), 1);
    assert_eq!(good_conns.load(Ordering::SeqCst), 1);

    // An `https` grant is not an `http` grant.
    let url = format!("http://good.test:{good}/");
    let (_, error) = rig
        .refused("http-on-https-grant", json!({"attack": "http", "url": url}))
        .await;
    assert!(error.contains("HttpRequestDenied"), "{error}");
    assert_eq!(good_conns.load(Ordering::SeqCst), 1);

    // A certificate for another name.
    let url = format!("https://wrong.test:{wrong}/");
    let (id, error) = rig
        .refused("https-wrong-name", json!({"attack": "http", "url": url}))
        .await;
    assert!(error.contains("TlsCertificateError"), "{error}");
    assert_eq!(wrong_hits.load(Ordering::SeqCst), 0);
    assert!(
        rig.logged(&id, "TLS handshake failed") && rig.logged(&id, "not valid for name"),
        "the operator's log says why:\n{}",
        rig.server.log()
    );

    // Signed by an unknown CA.
    let url = format!("https://unknown.test:{unknown}/");
    let (id, error) = rig
        .refused("https-unknown-ca", json!({"attack": "http", "url": url}))
        .await;
    assert!(error.contains("TlsCertificateError"), "{error}");
    assert_eq!(unknown_hits.load(Ordering::SeqCst), 0);
    assert!(rig.logged(&id, "UnknownIssuer"), "{}", rig.server.log());

    // A granted name that resolves to loopback: refused before any connection.
    let url = format!("https://inward.test:{inward}/");
    let (_, error) = rig
        .refused("https-inward", json!({"attack": "http", "url": url}))
        .await;
    assert!(error.contains("DestinationIpProhibited"), "{error}");
    assert_eq!(inward_conns.load(Ordering::SeqCst), 0);
    rig.finish().await;
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_the_host_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-ca.pem");
    std::fs::write(
        dir.path().join("tether.toml"),
        format!("[net]\nextra_ca_files = [\"{}\"]\n", missing.display()),
    )
    .expect("tether.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(dir.path().join("tether.toml"))
        .env("TETHER_API_TOKEN", crate::support::TOKEN)
        .output()
        .expect("running tether");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("net.extra_ca_files") && stderr.contains("no-such-ca.pem"),
        "{stderr}"
    );
}
