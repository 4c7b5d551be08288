//! How the host's own clients trust a Tether host over TLS: the reference runtime
//! (`tether runtime`, dialling `wss://`), the CLI (`tether token` against
//! `https://`) and, in cluster mode, a host bridging an app straight to another's
//! `wss://` URL (`relay/bridge.rs`). They trust the system's roots plus, when
//! `TETHER_CA_FILE` names one, the CA bundle in that file (a private CA, a test
//! CA), and check the certificate against the URL's host name like any TLS client.
//! There is no switch to skip the check. Providers' `https` uses the broker's own
//! config instead (`broker::tls`), whose roots only the operator's `tether.toml`
//! decides.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use crate::pem::{self, PemError};

/// The variable naming an extra CA bundle (PEM) for clients of a Tether host.
pub(crate) const CA_FILE_VAR: &str = "TETHER_CA_FILE";

/// Why the client's TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientTlsError {
    /// `TETHER_CA_FILE` is unreadable or holds no usable certificate.
    #[error("{CA_FILE_VAR}: {0}")]
    CaFile(#[from] PemError),
    /// rustls refused the settings.
    #[error("TLS client settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client config for the CA file `TETHER_CA_FILE` names, if any.
pub(crate) fn from_env() -> Result<Arc<ClientConfig>, ClientTlsError> {
    let ca_file = std::env::var_os(CA_FILE_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    with_ca_file(ca_file.as_deref())
}

/// The system's roots plus the certificates in `ca_file`.
pub(crate) fn with_ca_file(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let mut roots = RootCertStore::empty();
    // A system store that fails to load in part still leaves the rest (and the CA
    // file) usable; a server then unknown to every root is refused at handshake.
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "some system CA certificates could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(file) = ca_file {
        pem::add_roots(&mut roots, file)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
