//! Reading the PEM files TLS needs: certificate chains, private keys and CA bundles.
//!
//! Shared by the broker's client config (`broker::tls`), TLS serving (`server::tls`)
//! and the clients of a Tether host (`client_tls`), so each reports a bad file the
//! same way: its path and what is wrong with it. Files are read whole and parsed from
//! memory, so a caller that wants to know whether a file changed can compare bytes.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not hold what it should.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The most a PEM file may hold: far above a chain, a key or a CA bundle (Mozilla's
/// is some 200 KiB), and a bound on what a reload reads when the file is pointed at
/// something endless.
pub(crate) const MAX_PEM_BYTES: u64 = 16 << 20;

/// Reads `path` whole: a regular file (a named pipe would hold the reader until some
/// writer came) of at most [`MAX_PEM_BYTES`].
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    let read = crate::untrusted::open_regular(path)
        .and_then(|file| crate::untrusted::read_at_most(file, MAX_PEM_BYTES));
    match read {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(invalid(
            path,
            format!("larger than {MAX_PEM_BYTES} bytes, more than any PEM file holds; not read"),
        )),
        Err(source) => Err(PemError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> PemError {
    PemError::Invalid {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// The certificates in `pem` (the contents of `path`); at least one.
pub(crate) fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in `pem` (the contents of `path`): PKCS#8, PKCS#1 or SEC1.
pub(crate) fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| invalid(path, format!("holds no usable PEM private key: {e}")))
}

/// Adds every certificate of the CA bundle at `path` to `roots`; a certificate
/// rustls cannot use as a trust anchor is an error, not silently skipped.
pub(crate) fn add_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), PemError> {
    for cert in certs(path, &read(path)?)? {
        roots
            .add(cert)
            .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = add_roots(&mut RootCertStore::empty(), &missing).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem at all").unwrap();
        let err = add_roots(&mut RootCertStore::empty(), &junk).unwrap_err();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        let err = key(&junk, b"nothing").unwrap_err();
        assert!(
            err.to_string().contains("no usable PEM private key"),
            "{err}"
        );
    }
}
