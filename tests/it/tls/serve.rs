//! `tether serve --tls-cert --tls-key`: REST, app and runtime WebSockets over TLS,
//! runtimes handed `wss://` URLs (or the public URL's), clients that do not trust the
//! certificate refused, a renewed certificate served without a restart, bad
//! certificate files refused at start-up, and handshakes stalled by one address
//! holding up no one else's.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::certs::Ca;
use crate::support::{Server, TOKEN, WAIT, Ws};

/// Starts a TLS server whose certificate (for `localhost` and 127.0.0.1) `ca` signed,
/// with `TETHER_CA_FILE` set so the runtimes it starts trust `ca` too.
fn tls_server(dir: &Path, ca: &Ca, extra: &[&OsStr]) -> Server {
    crate::support::write_config(dir, "");
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]).write(dir, "server");
    let ca_file = ca.write(dir, "ca.pem");
    let mut args = vec![
        OsStr::new("--tls-cert"),
        cert.as_os_str(),
        OsStr::new("--tls-key"),
        key.as_os_str(),
    ];
    args.extend_from_slice(extra);
    let envs = [("TETHER_CA_FILE", ca_file.as_os_str())];
    Server::start_with(dir, &args, &envs, ca.client_config())
}

/// The certificate a fresh TLS connection to `addr` is shown.
async fn served_certificate(
    addr: &str,
    trust: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(trust)
        .connect(ServerName::try_from("localhost").expect("name"), stream)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificates")[0].clone()
}

fn leaf_der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("der")
}

#[tokio::test]
async fn apps_and_runtimes_connect_over_wss_and_untrusting_clients_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("tether test CA");
    let server = tls_server(dir.path(), &ca, &[]);
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );

    // REST over TLS; the reference runtime (`tether runtime`, trusting the CA through
    // TETHER_CA_FILE) dials its wss:// URL and connects.
    let env = server
        .running_env("secure", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    // The runtime's own line saying where it connected reaches the host's log through
    // its stderr, a moment after the connection itself.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    while !server.log().contains("url=wss://127.0.0.1:") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // An app over wss://: the relay works end to end.
    let mut app = server.app(id, "t1").await;
    let reply = app
        .request(json!({"type": "echo", "requestId": "e1", "payload": "over tls"}))
        .await;
    assert_eq!(reply["type"], "echoResponse", "{reply}");
    assert_eq!(reply["payload"], "over tls", "{reply}");

    // A client that does not trust the CA is refused at the handshake, whichever
    // way it comes: WebSocket or REST.
    let stranger = Ca::new("some other CA").client_config();
    let url = server.ws_url(&format!("/ws/app/{id}?thread=t2"));
    let refused = Ws::try_connect(&url, Some(TOKEN), Some(stranger.clone())).await;
    let error = refused.err().expect("an untrusting client must be refused");
    assert!(
        error.to_string().contains("UnknownIssuer") || error.to_string().contains("certificate"),
        "{error}"
    );
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*stranger).clone())
        .build()
        .expect("client");
    let refused = http.get(format!("{}/healthz", server.base)).send().await;
    assert!(refused.is_err(), "{refused:?}");
    // Plain HTTP on the TLS port gets nowhere either.
    let plain = reqwest::Client::new()
        .get(server.base.replacen("https", "http", 1) + "/healthz")
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    // A certificate that does not name the host the client dialled is refused too.
    let addr = server.base.trim_start_matches("https://").to_owned();
    let stream = TcpStream::connect(&addr).await.expect("connect");
    let wrong_name = tokio_rustls::TlsConnector::from(ca.client_config())
        .connect(
            ServerName::try_from("tether.example.com").expect("name"),
            stream,
        )
        .await;
    assert!(
        wrong_name.is_err(),
        "a name the certificate lacks must be refused"
    );

    // The CLI over https://: with the CA it works, without it the certificate is refused.
    let ca_file = dir.path().join("ca.pem");
    let cli = |ca: Option<&Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        command
            .args(["token", "list", "--url", &server.base, "--token", TOKEN])
            .env_remove("TETHER_CA_FILE");
        if let Some(ca) = ca {
            command.env("TETHER_CA_FILE", ca);
        }
        command.output().expect("running tether token")
    };
    let trusted = cli(Some(&ca_file));
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = cli(None);
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        stderr.contains("TLS with") && stderr.contains("certificate"),
        "{stderr}"
    );

    // The example app end to end over https:// and wss:// (create, echo, resume, exec).
    let example = std::process::Command::new(crate::support::example_bin("tether-app"))
        .args(["demo", "from-example"])
        .env("TETHER_URL", &server.base)
        .env("TETHER_API_TOKEN", TOKEN)
        .env("TETHER_CA_FILE", &ca_file)
        .output()
        .expect("running tether-app");
    assert!(
        example.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&example.stdout),
        String::from_utf8_lossy(&example.stderr)
    );

    // The app's connection is unaffected by the refusals.
    let reply = app
        .request(json!({"type": "echo", "requestId": "e2", "payload": 2}))
        .await;
    assert_eq!(reply["payload"], 2, "{reply}");
    server.stop();
}

#[tokio::test]
async fn handshakes_stalled_from_one_address_hold_up_no_one_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("tether test CA");
    let server = tls_server(dir.path(), &ca, &[]);
    let addr: std::net::SocketAddr = (server.base.trim_start_matches("https://"))
        .parse()
        .expect("address");
    // One client (127.0.0.2) opens more connections than handshakes may run at once
    // and sends nothing on any of them.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind 127.0.0.2");
        stalled.push(socket.connect(addr).await.expect("connect"));
    }
    // Another client's handshake goes through while the first of them is still
    // waiting out its handshake timeout: it did not have to wait for them to end.
    served_certificate(&addr.to_string(), ca.client_config()).await;
    let mut byte = [0u8; 1];
    let first = stalled[0].try_read(&mut byte);
    assert!(
        first
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled handshakes had to end first: {first:?}"
    );
    let (status, _) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    drop(stalled);
    server.stop();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("tether test CA");
    let first = ca.leaf(&["localhost", "127.0.0.1"]);
    let (cert, key) = first.write(dir.path(), "server");
    crate::support::write_config(dir.path(), "");
    drop_in_handoff(dir.path());
    let args = [
        OsStr::new("--tls-cert"),
        cert.as_os_str(),
        OsStr::new("--tls-key"),
        key.as_os_str(),
    ];
    let server = Server::start_with(dir.path(), &args, &[], ca.client_config());
    let addr = server.base.trim_start_matches("https://").to_owned();
    let (id, url, _) = server.handoff_env("renewing").await;
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let mut app = server.app(&id, "t").await;
    assert_eq!(
        served_certificate(&addr, ca.client_config()).await,
        leaf_der(&first.cert_pem)
    );

    // A renewal caught half-way (a new certificate, the old key) is logged and
    // changes nothing.
    let second = ca.leaf(&["localhost", "127.0.0.1"]);
    std::fs::write(&cert, &second.cert_pem).expect("write cert");
    wait_for(&server, "TLS certificate not reloaded").await;
    assert!(
        server
            .log()
            .contains("the key does not belong to the certificate"),
        "{}",
        server.log()
    );
    assert_eq!(
        served_certificate(&addr, ca.client_config()).await,
        leaf_der(&first.cert_pem)
    );

    // The key arrives: new connections get the new certificate.
    std::fs::write(&key, &second.key_pem).expect("write key");
    let deadline = Instant::now() + WAIT;
    while served_certificate(&addr, ca.client_config()).await != leaf_der(&second.cert_pem) {
        assert!(
            Instant::now() < deadline,
            "renewal never served:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.log().contains("TLS certificate reloaded"));
    // A connection made before the renewal still works.
    app.send(json!({"type": "ping-through", "n": 1})).await;
    let (status, _) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop();
}

#[tokio::test]
async fn runtimes_are_handed_the_public_url() {
    // Behind a proxy that terminates TLS: the host serves plain HTTP on loopback and
    // hands runtimes the proxy's wss:// URL.
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::write_config(dir.path(), "");
    drop_in_handoff(dir.path());
    let args = [
        OsStr::new("--public-url"),
        OsStr::new("https://Tether.Example.com"),
    ];
    let server = Server::start_with(dir.path(), &args, &[], Ca::new("unused").client_config());
    let body = json!({"name": "behind-proxy", "provider": "handoff", "start": true});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id");
    server
        .wait_env(id, "running", |e| e["status"] == "running")
        .await;
    let file = dir
        .path()
        .join(".codebolt/environments/behind-proxy/runtime.json");
    let handoff: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("runtime.json")).expect("json");
    assert_eq!(
        handoff["url"],
        format!("wss://tether.example.com/ws/runtime/{id}"),
        "{handoff}"
    );
    server.stop();
}

#[tokio::test]
async fn bad_certificate_files_stop_the_host_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("tether test CA");
    let (cert, _) = ca.leaf(&["localhost"]).write(dir.path(), "a");
    let (_, other_key) = ca.leaf(&["localhost"]).write(dir.path(), "b");
    let missing = dir.path().join("missing.crt");
    crate::support::write_config(dir.path(), "");
    let serve = |cert: &Path, key: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(dir.path().join("tether.toml"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env("TETHER_API_TOKEN", TOKEN)
            .output()
            .expect("running tether");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&cert, &other_key);
    assert!(
        err.contains("the key does not belong to the certificate"),
        "{err}"
    );
    let err = serve(&missing, &other_key);
    assert!(err.contains("missing.crt"), "{err}");
    let err = serve(&other_key, &other_key);
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

fn drop_in_handoff(dir: &Path) {
    let providers = dir.join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::copy(
        crate::support::guests::HANDOFF,
        providers.join("handoff.wasm"),
    )
    .expect("drop in handoff");
}

/// Waits until the server's log contains `line`.
async fn wait_for(server: &Server, line: &str) {
    let deadline = Instant::now() + WAIT;
    while !server.log().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no {line:?} in the log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A certificate file replaced by a named pipe: the reload's read waited for a writer
/// on one of the runtime's threads and the host stopped answering. It is refused like
/// any bad renewal now, and the certificate in force stays.
#[tokio::test]
async fn a_named_pipe_in_place_of_the_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("tether test CA");
    let server = tls_server(dir.path(), &ca, &[]);
    let cert = dir.path().join("server.crt");
    assert!(cert.is_file(), "no {}", cert.display());
    let pipe = dir.path().join("pipe");
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    std::fs::rename(&pipe, &cert).expect("renaming");
    // The watch may start after the host listens: a change of mode is an event too.
    let deadline = Instant::now() + WAIT;
    while !server.log().contains("TLS certificate not reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&cert, mode).expect("chmod");
    }
    assert!(
        server
            .log()
            .contains("it is a named pipe, not a regular file"),
        "{}",
        server.log()
    );
    let health = tokio::time::timeout(WAIT, server.call("GET", "/healthz", None));
    let (status, _) = health.await.expect("the host stopped answering");
    assert_eq!(status, StatusCode::OK);
    server.stop();
}
