//! Tokens: the API token that guards REST and app WebSockets, and the runtime tokens
//! minted per environment start.
//!
//! A runtime token is `<generation>.<random>`; only its SHA-256 is persisted, so the
//! records file never holds a usable secret. A token of an older generation (an
//! earlier start) is refused.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Where the API token came from, for the start-up message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// The `TETHER_API_TOKEN` variable.
    Environment,
    /// Read from the token file.
    File,
    /// Generated now into the token file.
    Generated,
}

/// Why the API token could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// Reading or writing the token file failed.
    #[error("API token file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The token is too short to be a secret.
    #[error("{from}: an API token must be at least 16 characters{}", from.fix())]
    TooShort {
        /// Where it came from.
        from: TokenOrigin,
    },
    /// The token (or its file) is longer than any token: the file is not a token file.
    #[error("{from}: an API token must be at most {MAX_TOKEN_BYTES} bytes{}", from.fix())]
    TooLong {
        /// Where it came from.
        from: TokenOrigin,
    },
    /// The token file is open to other users: they could read the operator's token,
    /// or write one of their own choosing.
    #[error(
        "API token file {path} is open to other users (mode {mode:04o}); make it the host user's only: chmod 600 {path}",
        path = path.display()
    )]
    Exposed {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token file belongs to another user, who may read or rewrite it at will.
    #[error(
        "API token file {path} belongs to another user (uid {uid}), who may read or change it; make it the host user's: chown and chmod 600 {path}",
        path = path.display()
    )]
    Foreign {
        /// The file.
        path: std::path::PathBuf,
        /// Its owner.
        uid: u32,
    },
}

/// Where a refused API token came from, so the operator knows what to fix.
#[derive(Debug)]
pub(crate) enum TokenOrigin {
    /// `TETHER_API_TOKEN`.
    Environment,
    /// The token file.
    File(std::path::PathBuf),
}

impl TokenOrigin {
    /// What the operator can do about a refused token from here.
    fn fix(&self) -> String {
        match self {
            Self::Environment => String::new(),
            Self::File(path) => format!(
                "; write a token of 16 to {MAX_TOKEN_BYTES} characters into it, or remove {} to have the host generate one",
                path.display()
            ),
        }
    }
}

impl std::fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment => f.write_str("TETHER_API_TOKEN"),
            Self::File(path) => write!(f, "API token file {}", path.display()),
        }
    }
}

/// The longest API token taken, from `TETHER_API_TOKEN` or the token file (the
/// host's own are 64 characters); a longer file is not read past it.
pub(crate) const MAX_TOKEN_BYTES: u64 = 4096;

/// The API token.
#[derive(Clone)]
pub(crate) struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// `from_env` if given, else the token in `file` (refused if other users may read or
    /// write it), else a new one written there (0600).
    pub(crate) fn load_or_create(
        from_env: Option<String>,
        file: &Path,
    ) -> Result<(Self, TokenSource), TokenError> {
        let io = |source| TokenError::Io {
            path: file.to_owned(),
            source,
        };
        if let Some(token) = from_env.filter(|t| !t.is_empty()) {
            return Self::new(token, TokenOrigin::Environment)
                .map(|t| (t, TokenSource::Environment));
        }
        let from_file = || TokenOrigin::File(file.to_owned());
        match crate::untrusted::open_regular(file) {
            Ok(f) => {
                // The host writes it 0600; one made by hand under a usual umask is
                // readable by every local user, who would then be the admin.
                let meta = f.metadata().map_err(io)?;
                if let Some(uid) = crate::untrusted::foreign_owner(&meta) {
                    return Err(TokenError::Foreign {
                        path: file.to_owned(),
                        uid,
                    });
                }
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(TokenError::Exposed {
                        path: file.to_owned(),
                        mode,
                    });
                }
                // The host writes no newline; an editor's one is allowed for.
                let bytes = crate::untrusted::read_at_most(f, MAX_TOKEN_BYTES + 1)
                    .map_err(io)?
                    .ok_or_else(|| TokenError::TooLong { from: from_file() })?;
                let text = String::from_utf8(bytes)
                    .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
                return Self::new(text.trim().to_owned(), from_file())
                    .map(|t| (t, TokenSource::File));
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            Err(_) => {}
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let token = random_hex(32);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .map_err(io)?;
        f.write_all(token.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok((Self(token), TokenSource::Generated))
    }

    fn new(token: String, from: TokenOrigin) -> Result<Self, TokenError> {
        if token.len() < 16 {
            return Err(TokenError::TooShort { from });
        }
        if token.len() as u64 > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong { from });
        }
        Ok(Self(token))
    }

    /// The token itself, to print once at start-up.
    pub(crate) fn reveal(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token (constant time); requests are checked by
    /// `tenancy::Tokens`, which keeps only the token's hash.
    #[cfg(test)]
    pub(crate) fn verify(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// A freshly minted runtime token.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeToken {
    /// The token handed to the provider (and so to the runtime).
    pub token: String,
    /// Its generation.
    pub generation: u64,
    /// SHA-256 of `token`, hex, for persisting.
    pub sha256: String,
}

/// Mints the token of start number `generation`.
pub(crate) fn mint_runtime_token(generation: u64) -> RuntimeToken {
    let token = format!("{generation}.{}", random_hex(32));
    let sha256 = sha256_hex(&token);
    RuntimeToken {
        token,
        generation,
        sha256,
    }
}

/// Why a runtime token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RuntimeTokenError {
    /// Not a token of any start.
    #[error("invalid runtime token")]
    Invalid,
    /// The token of an earlier start of this environment.
    #[error("runtime token of generation {presented} is stale (current is {current})")]
    Stale { presented: u64, current: u64 },
}

/// Checks `presented` against the persisted hash of generation `current`.
pub(crate) fn verify_runtime_token(
    presented: &str,
    current: u64,
    expected_sha256: &str,
) -> Result<(), RuntimeTokenError> {
    let generation = presented
        .split_once('.')
        .and_then(|(g, _)| g.parse::<u64>().ok())
        .ok_or(RuntimeTokenError::Invalid)?;
    let matches: bool = sha256_hex(presented)
        .as_bytes()
        .ct_eq(expected_sha256.as_bytes())
        .into();
    if matches && generation == current {
        return Ok(());
    }
    if generation < current {
        return Err(RuntimeTokenError::Stale {
            presented: generation,
            current,
        });
    }
    Err(RuntimeTokenError::Invalid)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_token_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".codebolt/api-token");
        let (a, src) = ApiToken::load_or_create(None, &file).unwrap();
        assert_eq!(src, TokenSource::Generated);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, src) = ApiToken::load_or_create(None, &file).unwrap();
        assert_eq!(src, TokenSource::File);
        assert!(b.verify(a.reveal()));
        assert!(!b.verify("wrong"));
        let (c, src) = ApiToken::load_or_create(Some("x".repeat(20)), &file).unwrap();
        assert_eq!(src, TokenSource::Environment);
        assert!(c.verify(&"x".repeat(20)));
        assert!(ApiToken::load_or_create(Some("short".into()), &file).is_err());
    }

    #[test]
    fn a_token_longer_than_any_is_refused_and_its_file_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-token");
        let write = |text: &str| {
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let longest = "x".repeat(MAX_TOKEN_BYTES as usize);
        write(&format!("{longest}\n"));
        let (token, _) = ApiToken::load_or_create(None, &file).unwrap();
        assert!(token.verify(&longest));
        write(&"x".repeat(1 << 20));
        let refused = ApiToken::load_or_create(None, &file).unwrap_err();
        assert!(matches!(refused, TokenError::TooLong { .. }), "{refused}");
        assert!(refused.to_string().contains(&file.display().to_string()));
        let from_env = ApiToken::load_or_create(Some(format!("{longest}x")), &file).unwrap_err();
        assert!(matches!(from_env, TokenError::TooLong { .. }));
        assert!(
            from_env.to_string().starts_with("TETHER_API_TOKEN: "),
            "{from_env}"
        );
    }

    #[test]
    fn runtime_tokens_are_bound_to_their_generation() {
        let t1 = mint_runtime_token(1);
        let t2 = mint_runtime_token(2);
        assert_eq!(verify_runtime_token(&t2.token, 2, &t2.sha256), Ok(()));
        assert_eq!(
            verify_runtime_token(&t1.token, 2, &t2.sha256),
            Err(RuntimeTokenError::Stale {
                presented: 1,
                current: 2
            })
        );
        assert_eq!(
            verify_runtime_token("2.forged", 2, &t2.sha256),
            Err(RuntimeTokenError::Invalid)
        );
        assert_eq!(
            verify_runtime_token("nonsense", 2, &t2.sha256),
            Err(RuntimeTokenError::Invalid)
        );
    }
}
