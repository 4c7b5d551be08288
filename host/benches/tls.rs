//! What TLS costs (issue 15), in two tables.
//!
//! 1. A brokered HTTPS GET made by a provider (the `hostile` test provider's `http`
//!    call: wasi:http, the broker's checks, the `[net.hosts]` lookup, TLS with the
//!    certificate checked) against the same GET made directly from the host with
//!    rustls (same ring provider, same http/1.1), a new connection each time on both
//!    sides, to an HTTPS server on 127.0.0.1 whose certificate a CA made here signs.
//!    The plain HTTP pair is shown too, for what the broker costs without TLS. Every
//!    socket has `TCP_NODELAY`, as the broker's and `tether serve`'s do: a server
//!    without it holds its response behind the client's delayed ACK of its session
//!    tickets (tens of ms). Direct and brokered rounds alternate.
//! 2. Relay round trips (1 KiB, `handoff` environments whose runtime this process
//!    plays) through a `tether serve` over `wss://` against one over `ws://`, at 100
//!    pairs by default, the two hosts measured alternately.
//!
//! `cargo bench -p tether --bench tls [-- PAIRS]`. Loopback only.

mod support;

use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use support::{Res, Server, TOKEN, connect_tls, echo, measure, us};
use tether::config::{Grant, LimitsConfig, NetConfig, UrlPattern};
use tether::engine::{Call, Engine, InstanceSetup, NoRuntime, ProviderSource, Reply, StateWriter};
use tokio::net::{TcpListener, TcpStream};

/// GETs per round, and rounds (direct and brokered alternate).
const REQUESTS: u32 = 200;
const ROUNDS_GET: u32 = 5;
const ROUND_TRIPS: usize = 20_000;
const ROUNDS: usize = 2;

fn main() -> Res<()> {
    let pairs: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(Ok(100), |a| a.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(pairs))
}

/// A CA, and a certificate it signs for `bench.test`, 127.0.0.1 and `localhost`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Res<Pki> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let names = ["bench.test", "127.0.0.1", "localhost"].map(String::from);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(names.to_vec())?.signed_by(&key, &ca)?;
    Ok(Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(pki: &Pki) -> Res<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes())?)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if std::env::var_os("TLS_BENCH_NO_RESUME").is_some() {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

async fn run(pairs: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let pki = pki()?;
    let ca_file = dir.path().join("ca.pem");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_file, &pki.ca_pem)?;
    std::fs::write(&cert_file, &pki.cert_pem)?;
    std::fs::write(&key_file, &pki.key_pem)?;
    let trust = client_config(&pki)?;

    println!("| GET on loopback, new connection each | direct µs/op | brokered µs/op | ratio |");
    println!("|---|---:|---:|---:|");
    let (https_port, http_port) = (https_server(&pki).await?, http_server().await?);
    let https_url = format!("https://bench.test:{https_port}/");
    let http_url = format!("http://127.0.0.1:{http_port}/");
    let engine = provider_engine(&ca_file).await?;
    let (handle, _scratch) = engine.instance().await?;
    for (name, url) in [("HTTPS", &https_url), ("HTTP", &http_url)] {
        let message = json!({"attack": "http", "url": url}).to_string();
        // Alternating rounds, so a change in the machine's load hits both sides alike.
        let (mut direct, mut brokered) = (0.0, 0.0);
        for _ in 0..ROUNDS_GET {
            direct += if name == "HTTPS" {
                let (trust, port) = (trust.clone(), https_port);
                time(REQUESTS, move || get_tls(trust.clone(), port)).await?
            } else {
                time(REQUESTS, move || get_plain(http_port)).await?
            };
            brokered += time(REQUESTS, || {
                let (handle, message) = (handle.clone(), message.clone());
                async move {
                    match handle
                        .call(Call::Raw(message), Duration::from_secs(10))
                        .await
                    {
                        Ok(Reply::Text(t)) if t.contains("200") => Ok(()),
                        other => Err(format!("{other:?}").into()),
                    }
                }
            })
            .await?;
        }
        let rounds = f64::from(ROUNDS_GET);
        let (direct, brokered) = (direct / rounds, brokered / rounds);
        println!(
            "| {name} GET | {direct:.1} | {brokered:.1} | {:.2}× |",
            brokered / direct
        );
    }
    handle.shutdown().await;
    println!();

    // Relay: one host over ws://, one over wss://, the same number of environments.
    let plain_dir = tempfile::tempdir()?;
    let tls_dir = tempfile::tempdir()?;
    let plain = Server::start(plain_dir.path(), "", &[])?;
    let flags = [
        OsStr::new("--tls-cert"),
        cert_file.as_os_str(),
        OsStr::new("--tls-key"),
        key_file.as_os_str(),
    ];
    let secure = Server::start_with(tls_dir.path(), "", &[], &flags, Some(trust.clone()))?;
    eprintln!("creating {pairs} handoff environments on each host…");
    let plain_envs = plain.environments(pairs).await?;
    let secure_envs = secure.environments(pairs).await?;
    plain.settle().await?;
    secure.settle().await?;
    println!("| relay, {pairs} pairs | rt/s | p50 | p99 | host CPU/rt |");
    println!("|---|---:|---:|---:|---:|");
    let per_pair = (ROUND_TRIPS / pairs).max(20);
    for round in 1..=ROUNDS {
        for (name, server, envs) in [
            ("ws://", &plain, &plain_envs),
            ("wss://", &secure, &secure_envs),
        ] {
            let outcome = relay_case(server, envs, per_pair).await?;
            let cpu = outcome.host_cpu.map_or("n/a".to_owned(), |c| {
                format!(
                    "{:.1} µs",
                    c.as_secs_f64() * 1e6 / outcome.hist.len() as f64
                )
            });
            println!(
                "| {name}, run {round} | {:.0} | {} | {} | {cpu} |",
                outcome.rate(),
                us(outcome.hist.value_at_quantile(0.5)),
                us(outcome.hist.value_at_quantile(0.99)),
            );
        }
    }
    plain.stop();
    secure.stop();
    Ok(())
}

async fn relay_case(
    server: &Server,
    envs: &[(String, String, String)],
    per_pair: usize,
) -> Res<support::Outcome> {
    let mut runtimes = Vec::with_capacity(envs.len());
    for (_, url, token) in envs {
        let ws = connect_tls(url, Some(token), server.tls.clone()).await?;
        runtimes.push(tokio::spawn(echo(ws)));
    }
    let mut apps = Vec::with_capacity(envs.len());
    for (id, _, _) in envs {
        let url = server.ws(&format!("/ws/app/{id}"));
        apps.push(connect_tls(&url, Some(TOKEN), server.tls.clone()).await?);
    }
    let outcome = measure(apps, per_pair, &[server.child.id()]).await;
    for runtime in runtimes {
        runtime.abort();
    }
    outcome
}

/// An engine whose providers trust the CA in `ca_file` and find `bench.test` at
/// 127.0.0.1.
struct ProviderEngine {
    engine: Engine,
    ca_dir: std::path::PathBuf,
}

async fn provider_engine(ca_file: &std::path::Path) -> Res<ProviderEngine> {
    let net = NetConfig {
        hosts: [("bench.test".to_owned(), [127, 0, 0, 1].into())].into(),
        extra_ca_files: vec![ca_file.to_owned()],
        ..NetConfig::default()
    };
    let engine = Engine::new(LimitsConfig::default(), net)?;
    let ca_dir = ca_file.parent().ok_or("CA dir")?.to_owned();
    Ok(ProviderEngine { engine, ca_dir })
}

impl ProviderEngine {
    /// A `hostile` instance granted `https://bench.test` and plain HTTP on loopback
    /// (literal 127.0.0.1 grants let the loopback address through the post-DNS check).
    async fn instance(&self) -> Res<(tether::engine::ProviderHandle, tempfile::TempDir)> {
        let bytes = std::fs::read(support::guests::HOSTILE)?;
        let hostile = self.engine.load(bytes, ProviderSource::BuiltIn).await?;
        let scratch = tempfile::tempdir_in(&self.ca_dir)?;
        let urls = [
            "https://bench.test:*",
            "https://127.0.0.1:*",
            "http://127.0.0.1:*",
        ]
        .iter()
        .map(|u| UrlPattern::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
        let setup = InstanceSetup {
            env_id: "bench".into(),
            workspace: scratch.path().to_owned(),
            state_dir: scratch.path().join(".state"),
            made: None,
            request: hostile.description.request(),
            grant: Grant {
                urls,
                ..Grant::default()
            },
            runtime: Arc::new(NoRuntime),
            state: StateWriter::detached(),
            refusals: Default::default(),
        };
        Ok((self.engine.instantiate(&hostile, setup).await?, scratch))
    }
}

async fn https_server(pki: &Pki) -> Res<u16> {
    let certs =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TlsListener {
        tcp: TcpListener::bind("127.0.0.1:0").await?,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    let port = listener.tcp.local_addr()?.port();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

async fn http_server() -> Res<u16> {
    use axum::serve::ListenerExt;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

/// The HTTPS server's listener: the handshake inline (the clients here come one at a
/// time).
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((tcp, addr)) = self.tcp.accept().await
                && tcp.set_nodelay(true).is_ok()
                && let Ok(tls) = self.acceptor.accept(tcp).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A GET over a new TLS connection, made by the host directly.
async fn get_tls(trust: Arc<rustls::ClientConfig>, port: u16) -> Res<()> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("bench.test")?;
    let tls = tokio_rustls::TlsConnector::from(trust)
        .connect(name, tcp)
        .await?;
    get_over(tls, "bench.test").await
}

/// A GET over a new plain connection, made by the host directly.
async fn get_plain(port: u16) -> Res<()> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    get_over(tcp, "127.0.0.1").await
}

async fn get_over<S>(io: S, host: &str) -> Res<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(io)).await?;
    let driver = tokio::spawn(conn);
    let request = http::Request::get("/")
        .header(http::header::HOST, host)
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()).into());
    }
    response.into_body().collect().await?;
    drop(sender);
    let _ = driver.await;
    Ok(())
}

/// Mean microseconds per call of `op` over `n` calls, after a short warm-up.
async fn time<F, Fut>(n: u32, op: F) -> Res<f64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Res<()>>,
{
    for _ in 0..n / 10 {
        op().await?;
    }
    let start = Instant::now();
    for _ in 0..n {
        op().await?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}
