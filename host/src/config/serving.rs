//! How `tether serve` is reached: the TLS certificate and key it serves with and the
//! public URL runtimes are handed (`[server]` in `tether.toml`, or `--tls-cert`,
//! `--tls-key` and `--public-url`, which win). The server reads the files
//! (`server::tls`); this only checks what needs no reading.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// `[server]` as read from disk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServer {
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    public_url: Option<String>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
}

/// Most entries `trusted_proxies` may have.
const MAX_TRUSTED_PROXIES: usize = 64;

/// How long a connection may take to send a request's headers, by default (and how
/// long a kept-alive connection may wait before its next request).
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Most seconds `header_timeout_secs` may be.
const MAX_HEADER_TIMEOUT_SECS: u64 = 3600;
/// How long a request's body may take to arrive whole, by default: a body trickled in
/// just under `header_timeout_secs` a byte would otherwise hold its connection for ever.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(300);
/// Most seconds `body_timeout_secs` may be.
const MAX_BODY_TIMEOUT_SECS: u64 = 86_400;
/// Most `max_connections` may be.
const MAX_CONNECTIONS: usize = 10_000_000;

/// The certificate chain and private key files (PEM) of TLS serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// How `tether serve` is reached; the default is plain HTTP at the listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingConfig {
    /// Serve over TLS with these files.
    pub tls: Option<TlsFiles>,
    /// The URL clients and runtimes reach the host at, when it is not the listen
    /// address (a public name, or a proxy that terminates TLS in front).
    pub public_url: Option<PublicUrl>,
    /// A connection that takes longer to send a request's headers (or, kept alive,
    /// to begin its next request) is closed.
    pub header_timeout: Duration,
    /// A request body not read whole this long after its reading began fails (400).
    pub body_timeout: Duration,
    /// Connections served at once, WebSockets included; `None`: all but an eighth of
    /// the open-files limit the host starts with.
    pub max_connections: Option<usize>,
    /// Connections one address (IPv6: its /64) may hold at once; `None`: no limit
    /// beyond `max_connections` (the default: behind a proxy every app has one address).
    pub max_connections_per_address: Option<usize>,
    /// Peers whose `X-Forwarded-For` names the client (addresses and networks); empty:
    /// the header is ignored, every request is its connection's peer's.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            tls: None,
            public_url: None,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: None,
            max_connections_per_address: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ServingConfig {
    /// Lays the command-line flags over `self`: a flag given wins over the file.
    pub fn with_flags(
        mut self,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        public_url: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let (file_cert, file_key) = match self.tls.take() {
            Some(files) => (Some(files.cert), Some(files.key)),
            None => (None, None),
        };
        self.tls = tls_files(tls_cert.or(file_cert), tls_key.or(file_key), "--tls-")?;
        if let Some(url) = public_url {
            self.public_url = Some(PublicUrl::parse(url).map_err(ConfigError::Invalid)?);
        }
        Ok(self)
    }

    /// The base of the runtime URLs handed to providers: the public URL's, else
    /// `ws(s)://` at `reachable`, the address the host listens on.
    pub fn runtime_base(&self, reachable: std::net::SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.websocket_base(),
            None if self.tls.is_some() => format!("wss://{reachable}"),
            None => format!("ws://{reachable}"),
        }
    }
}

fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    prefix: &str,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Invalid(format!(
            "{prefix}cert needs {prefix}key: TLS needs the certificate's private key too"
        ))),
        (None, Some(_)) => Err(ConfigError::Invalid(format!(
            "{prefix}key needs {prefix}cert: TLS needs the certificate too"
        ))),
    }
}

/// `server.KEY`'s `value`, if given, checked to be 1 to `max`.
fn within<T>(value: Option<T>, max: T, key: &str) -> Result<Option<T>, ConfigError>
where
    T: PartialOrd + From<u8> + std::fmt::Display + Copy,
{
    match value {
        Some(n) if n < T::from(1) || n > max => Err(ConfigError::Invalid(format!(
            "server.{key} must be 1 to {max}"
        ))),
        other => Ok(other),
    }
}

/// `[server]` over the defaults.
pub(super) fn serving_config(file: FileServer) -> Result<ServingConfig, ConfigError> {
    let public_url = (file.public_url.as_deref())
        .map(PublicUrl::parse)
        .transpose()
        .map_err(|e| ConfigError::Invalid(format!("server.{e}")))?;
    let header_timeout = within(
        file.header_timeout_secs,
        MAX_HEADER_TIMEOUT_SECS,
        "header_timeout_secs",
    )?
    .map_or(DEFAULT_HEADER_TIMEOUT, Duration::from_secs);
    let body_timeout = within(
        file.body_timeout_secs,
        MAX_BODY_TIMEOUT_SECS,
        "body_timeout_secs",
    )?
    .map_or(DEFAULT_BODY_TIMEOUT, Duration::from_secs);
    let max_connections = within(file.max_connections, MAX_CONNECTIONS, "max_connections")?;
    let max_connections_per_address = within(
        file.max_connections_per_address,
        MAX_CONNECTIONS,
        "max_connections_per_address",
    )?;
    let trusted_proxies = file.trusted_proxies.unwrap_or_default();
    if trusted_proxies.len() > MAX_TRUSTED_PROXIES {
        return Err(ConfigError::Invalid(format!(
            "server.trusted_proxies has {} entries; at most {MAX_TRUSTED_PROXIES} (use networks like 10.0.0.0/8)",
            trusted_proxies.len()
        )));
    }
    let trusted_proxies = (trusted_proxies.iter())
        .map(|entry| crate::server::forwarded::parse_net(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Invalid(format!("server.trusted_proxies: {e}")))?;
    Ok(ServingConfig {
        tls: tls_files(file.tls_cert, file.tls_key, "server.tls_")?,
        public_url,
        header_timeout,
        body_timeout,
        max_connections,
        max_connections_per_address,
        trusted_proxies,
    })
}

/// A public URL: `http(s)://` or `ws(s)://`, a host and an optional port, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    secure: bool,
    authority: String,
}

impl PublicUrl {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("public_url {text:?}: {why}");
        let uri: http::Uri = text.parse().map_err(|_| bad("not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("https" | "wss") => true,
            Some("http" | "ws") => false,
            _ => return Err(bad("must start with https://, http://, wss:// or ws://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(bad("must be a host and an optional port, nothing else"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("must not have a path or a query"));
        }
        Ok(Self {
            secure,
            authority: authority.as_str().to_ascii_lowercase(),
        })
    }

    /// `https://host[:port]` (or `http://`): where apps and the API reach the host.
    pub fn http_base(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// `wss://host[:port]` (or `ws://`).
    pub fn websocket_base(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_become_websocket_bases() {
        let url = PublicUrl::parse("https://Tether.Example.com").unwrap();
        assert_eq!(url.websocket_base(), "wss://tether.example.com");
        let url = PublicUrl::parse("http://10.0.0.5:8080/").unwrap();
        assert_eq!(url.websocket_base(), "ws://10.0.0.5:8080");
        for bad in [
            "tether.example.com",
            "ftp://x",
            "https://x/prefix",
            "https://u@x",
            "https://x?a=b",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_header_timeout_has_a_default_and_bounds() {
        let with = |secs| FileServer {
            header_timeout_secs: secs,
            ..FileServer::default()
        };
        let timeout = |secs| serving_config(with(secs)).map(|c| c.header_timeout);
        assert_eq!(timeout(None).unwrap(), DEFAULT_HEADER_TIMEOUT);
        assert_eq!(timeout(Some(5)).unwrap(), Duration::from_secs(5));
        for bad in [0, MAX_HEADER_TIMEOUT_SECS + 1] {
            let err = timeout(Some(bad)).unwrap_err();
            assert!(err.to_string().contains("header_timeout_secs"), "{err}");
        }
    }

    #[test]
    fn max_connections_is_derived_unless_given_within_bounds() {
        let with = |n| FileServer {
            max_connections: n,
            ..FileServer::default()
        };
        let max = |n| serving_config(with(n)).map(|c| c.max_connections);
        assert_eq!(max(None).unwrap(), None);
        assert_eq!(max(Some(4)).unwrap(), Some(4));
        for bad in [0, MAX_CONNECTIONS + 1] {
            let err = max(Some(bad)).unwrap_err();
            assert!(err.to_string().contains("max_connections"), "{err}");
        }
        let per_address = FileServer {
            max_connections_per_address: Some(0),
            ..FileServer::default()
        };
        let err = serving_config(per_address).unwrap_err();
        assert!(
            err.to_string().contains("max_connections_per_address"),
            "{err}"
        );
    }

    #[test]
    fn flags_win_and_cert_and_key_come_together() {
        let addr: std::net::SocketAddr = "127.0.0.1:2719".parse().unwrap();
        let plain = ServingConfig::default();
        assert_eq!(plain.runtime_base(addr), "ws://127.0.0.1:2719");
        let tls = plain
            .clone()
            .with_flags(Some("c.pem".into()), Some("k.pem".into()), None)
            .unwrap();
        assert_eq!(tls.runtime_base(addr), "wss://127.0.0.1:2719");
        let public = tls
            .with_flags(None, None, Some("https://tether.example.com:8443"))
            .unwrap();
        assert_eq!(public.tls.as_ref().unwrap().cert, PathBuf::from("c.pem"));
        assert_eq!(public.runtime_base(addr), "wss://tether.example.com:8443");
        let err = plain
            .with_flags(Some("c.pem".into()), None, None)
            .unwrap_err();
        assert!(
            err.to_string().contains("--tls-cert needs --tls-key"),
            "{err}"
        );
        let file = FileServer {
            tls_cert: None,
            tls_key: Some("k.pem".into()),
            ..FileServer::default()
        };
        let err = serving_config(file).unwrap_err();
        assert!(err.to_string().contains("server.tls_key needs"), "{err}");
    }
}
