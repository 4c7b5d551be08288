//! The certificate `tether serve` presents, and its renewal without a restart.
//!
//! [`ServingCert`] is the server config's certificate resolver: every handshake takes
//! the certificate in force at that moment, so swapping it changes nothing for
//! connections already open. At start-up a missing file, a file without a
//! certificate or key, or a key that does not belong to the certificate stops the
//! host. Afterwards the directories of both files are watched (`crate::watch`): on a
//! change both files are re-read and, if their bytes changed and they still make a
//! valid pair, the new certificate replaces the old one; a bad pair (a renewal caught
//! half-written, a wrong key) is logged and the old certificate stays in force until
//! the next change makes a good one.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsFiles;
use crate::pem::{self, PemError};
use crate::sync::{MutexExt, RwLockExt};
use crate::watch::Watch;

/// How long the certificate directories must be quiet before a reload: a renewal
/// writes two files, and reading between the two would see a mismatched pair.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    /// A file could not be read or parsed.
    #[error("TLS: {0}")]
    Pem(#[from] PemError),
    /// The files do not make a certificate rustls can serve.
    #[error("TLS: {cert} with {key}: {why}")]
    Pair {
        cert: String,
        key: String,
        why: String,
    },
    /// rustls refused the server settings.
    #[error("TLS server settings: {0}")]
    Config(rustls::Error),
    /// The files' directories cannot be watched for renewals.
    #[error("TLS: watching {dir} for certificate renewals: {source}")]
    Watch { dir: String, source: notify::Error },
}

/// The certificate in force, and the bytes it was made from.
pub(crate) struct ServingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// The cert and key bytes of `current`, to tell a real change from a touch.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read_locked().clone())
    }
}

impl ServingCert {
    /// Loads the certificate and key; any problem is an error naming the file.
    pub(crate) fn load(files: TlsFiles) -> Result<Arc<Self>, CertError> {
        let (cert, key) = (pem::read(&files.cert)?, pem::read(&files.key)?);
        let certified = certified_key(&files, &cert, &key)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(certified)),
            loaded: Mutex::new((cert, key)),
        }))
    }

    /// Re-reads both files; swaps in the new certificate if they changed and make a
    /// valid pair. `Ok(true)` when it swapped.
    pub(crate) fn reload(&self) -> Result<bool, CertError> {
        let (cert, key) = (pem::read(&self.files.cert)?, pem::read(&self.files.key)?);
        let mut loaded = self.loaded.locked();
        if loaded.0 == cert && loaded.1 == key {
            return Ok(false);
        }
        let certified = certified_key(&self.files, &cert, &key)?;
        *self.current.write_locked() = Arc::new(certified);
        *loaded = (cert, key);
        Ok(true)
    }

    /// A server config presenting the certificate in force, offering `http/1.1`
    /// (the API and the WebSockets are HTTP/1.1).
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(CertError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Watches the files' directories and reloads on every change, until the
    /// returned watches are dropped.
    pub(crate) fn watch(self: &Arc<Self>) -> Result<Vec<Watch>, CertError> {
        let dirs: BTreeSet<&Path> = [&self.files.cert, &self.files.key]
            .into_iter()
            .map(|f| f.parent().filter(|p| !p.as_os_str().is_empty()))
            .map(|p| p.unwrap_or(Path::new(".")))
            .collect();
        let names: Vec<std::ffi::OsString> = [&self.files.cert, &self.files.key]
            .into_iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
        let mut watches = Vec::new();
        for dir in dirs {
            let names = names.clone();
            let relevant = move |e: &notify::Result<notify::Event>| renewal(e, &names);
            let (watch, mut changed) = crate::watch::debounced(dir, relevant, RELOAD_DEBOUNCE)
                .map_err(|source| CertError::Watch {
                    dir: dir.display().to_string(),
                    source,
                })?;
            watches.push(watch);
            let cert = Arc::downgrade(self);
            tokio::spawn(async move {
                while changed.recv().await.is_some() {
                    let Some(cert) = cert.upgrade() else { return };
                    match cert.reload() {
                        Ok(true) => tracing::info!(
                            cert = %cert.files.cert.display(),
                            "TLS certificate reloaded; new connections get it"
                        ),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(
                            error = %e,
                            "TLS certificate not reloaded; the previous one stays in force"
                        ),
                    }
                }
            });
        }
        Ok(watches)
    }
}

/// Whether `event` may be a renewal: a change (not a mere read, which our own reload
/// and anything else reading files there would cause) to one of the two files, or to
/// a `..name` entry (Kubernetes swaps a secret's files through a `..data` symlink).
fn renewal(event: &notify::Result<notify::Event>, names: &[std::ffi::OsString]) -> bool {
    let Ok(event) = event else { return false };
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        p.file_name().is_some_and(|n| {
            names.iter().any(|want| want == n) || n.as_encoded_bytes().starts_with(b"..")
        })
    })
}

fn certified_key(files: &TlsFiles, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, CertError> {
    let chain = pem::certs(&files.cert, cert)?;
    let key = pem::key(&files.key, key)?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::Pair {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        why: match e {
            rustls::Error::InconsistentKeys(_) => {
                "the key does not belong to the certificate".to_owned()
            }
            other => other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert, key) = (cert.pem().into_bytes(), key.serialize_pem().into_bytes());
        std::fs::write(dir.join(format!("{name}.crt")), &cert).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &key).unwrap();
        (cert, key)
    }

    fn served(cert: &ServingCert) -> Vec<u8> {
        cert.current.read_locked().cert[0].to_vec()
    }

    #[tokio::test]
    async fn a_changed_pair_is_swapped_in_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path(), "a");
        let files = TlsFiles {
            cert: dir.path().join("a.crt"),
            key: dir.path().join("a.key"),
        };
        let cert = ServingCert::load(files.clone()).unwrap();
        let first = served(&cert);
        assert!(!cert.reload().unwrap(), "unchanged files change nothing");
        let _watches = cert.watch().unwrap();
        // A new certificate with the old key: refused, the old one stays.
        let (new_cert, new_key) = pair(dir.path(), "b");
        std::fs::write(&files.cert, &new_cert).unwrap();
        let err = cert.reload().unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert_eq!(served(&cert), first);
        // The key follows: the watcher swaps the pair in.
        std::fs::write(&files.key, &new_key).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while served(&cert) == first {
            assert!(std::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
