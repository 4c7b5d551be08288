//! TLS for providers' outgoing `https` requests: one rustls `ClientConfig` built at
//! start-up from `[net]`, and the handshake the `wasi:http` hook runs on a connection
//! the broker has already checked (`engine::host::http`).
//!
//! Roots are the Mozilla set (webpki-roots) unless `use_builtin_roots = false`, plus
//! the operator's `extra_ca_files`; nothing a provider sends changes them. The
//! certificate is validated against the host name of the URL (SNI names it too), never
//! against the address the name resolved to, so an operator override in `[net.hosts]`
//! redirects where the connection goes but not whose certificate it must present.
//! Only the ring provider is used, and only `http/1.1` is offered (the hook speaks
//! HTTP/1.1 only).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::Error;

use crate::config::NetConfig;
use crate::pem::{self, PemError};

/// Why the TLS client config could not be built (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// An `extra_ca_files` entry is unreadable or holds no usable certificate.
    #[error("net.extra_ca_files: {0}")]
    CaFile(#[from] PemError),
    /// rustls refused the settings.
    #[error("TLS client settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client side of every provider's `https`: cheap to clone, shared by all
/// instances.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// Builds the client config from `[net]`: reads every CA file now, so a bad one
    /// stops the host at start-up instead of failing requests later.
    pub fn from_config(net: &NetConfig) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        if net.use_builtin_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for file in &net.extra_ca_files {
            pem::add_roots(&mut roots, file)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the handshake on `stream` (connected to a checked address), validating
    /// the certificate against `host`, the URL's host name.
    pub(crate) async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_owned())
            .map_err(|e| HandshakeError::Name(e.to_string()))?;
        self.connector
            .connect(name, stream)
            .await
            .map_err(HandshakeError::Io)
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The URL's host is not a name a certificate can be checked against.
    #[error("not a valid TLS server name: {0}")]
    Name(String),
    /// The handshake itself failed (rustls' error inside, when it was rustls').
    #[error("{0}")]
    Io(std::io::Error),
}

impl HandshakeError {
    /// The `wasi:http` error code the provider sees: a certificate problem (unknown
    /// CA, wrong name, expired) is `TLS-certificate-error`, an alert from the server
    /// `TLS-alert-received`, anything else `TLS-protocol-error`.
    pub(crate) fn code(&self) -> Error {
        let HandshakeError::Io(io) = self else {
            return Error::TlsProtocolError;
        };
        let rustls_error = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
            Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
                alert_id: Some(u8::from(*alert)),
                alert_message: Some(format!("{alert:?}")),
            },
            _ => Error::TlsProtocolError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_a_start_up_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(
            &file,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let net = NetConfig {
            extra_ca_files: vec![file],
            ..NetConfig::default()
        };
        let err = TlsClient::from_config(&net).unwrap_err();
        assert!(err.to_string().starts_with("net.extra_ca_files: "), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert!(TlsClient::from_config(&NetConfig::default()).is_ok());
    }

    #[test]
    fn certificate_failures_are_certificate_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            HandshakeError::Io(io).code(),
            Error::TlsCertificateError
        ));
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert!(matches!(
            HandshakeError::Io(alert).code(),
            Error::TlsAlertReceived {
                alert_id: Some(40),
                ..
            }
        ));
    }
}
