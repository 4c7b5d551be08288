//! `.codebolt/tokens.json` on disk: read and checked whole at start (a broken file is
//! a start-up error naming the entry at fault, never a silent reset), written
//! atomically (a private temp file beside it, fsync, rename, fsync of the directory)
//! with mode 0600. Also the atomic write of the admin token file on rotation.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TenancyError;
use super::record::TokenRecord;

/// The largest file read: far beyond any real set of tokens, and a file made too
/// large by hand is refused without being read whole.
pub(super) const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Version of the layout this host writes.
const FORMAT_VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u64,
    #[serde(default)]
    tokens: Vec<TokenRecord>,
}

/// Reads `path`; a missing file holds no tokens. A file other users may write is
/// refused: whoever writes it makes tokens (an `admin` one among them).
pub(super) fn read(path: &Path) -> Result<Vec<TokenRecord>, TenancyError> {
    let io = |source| TenancyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match crate::untrusted::open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io(source)),
    };
    let meta = file.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    let broken = |reason| TenancyError::File {
        path: path.to_owned(),
        reason,
    };
    let bytes = crate::untrusted::read_at_most(file, MAX_FILE_BYTES)
        .map_err(io)?
        .ok_or_else(|| {
            broken(format!(
                "it is larger than {MAX_FILE_BYTES} bytes; no set of tokens is that large"
            ))
        })?;
    let tokens = parse(&bytes).map_err(broken)?;
    // Checked after the text, so a broken file is reported as such whatever its mode.
    if let Some(uid) = crate::untrusted::foreign_owner(&meta) {
        return Err(broken(format!(
            "it belongs to another user (uid {uid}), who may change it at will, and so make tokens; chown it to the host user"
        )));
    }
    if mode & 0o022 != 0 {
        return Err(broken(format!(
            "other users may write it (mode {mode:04o}), and so make tokens; chmod 600 {}",
            path.display()
        )));
    }
    Ok(tokens)
}

/// Parses and checks the file's text.
fn parse(bytes: &[u8]) -> Result<Vec<TokenRecord>, String> {
    let file: TokenFile =
        serde_json::from_slice(bytes).map_err(|e| crate::untrusted::shown(&e.to_string(), 300))?;
    if file.version != FORMAT_VERSION {
        return Err(format!(
            "version {} is not one this host reads ({FORMAT_VERSION})",
            file.version
        ));
    }
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, token) in file.tokens.iter().enumerate() {
        token.check().map_err(|why| format!("tokens[{i}]: {why}"))?;
        if !ids.insert(token.id.as_str()) {
            return Err(format!("tokens[{i}]: another token has id {:?}", token.id));
        }
        if !hashes.insert(token.sha256.as_str()) {
            return Err(format!("tokens[{i}]: another token has the same sha256"));
        }
    }
    Ok(file.tokens)
}

/// Writes `tokens` to `path` atomically, mode 0600.
pub(super) fn write(path: &Path, tokens: Vec<TokenRecord>) -> Result<(), TenancyError> {
    let file = TokenFile {
        version: FORMAT_VERSION,
        tokens,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| TenancyError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    write_private(path, &bytes)
}

/// Replaces `path` with `bytes` atomically; the file is readable by its owner only.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TenancyError> {
    crate::atomic::replace_file(path, bytes).map_err(|source| TenancyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The path of the token file in a `.codebolt` directory.
pub(crate) fn tokens_path(codebolt: &Path) -> PathBuf {
    codebolt.join("tokens.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::scopes::Scopes;
    use std::os::unix::fs::PermissionsExt;

    fn token(id: &str, sha: char) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            user: "alice".into(),
            scopes: Scopes::USER_DEFAULT,
            environments: None,
            note: None,
            created_at: "2025-01-01T00:00:00Z".into(),
            expires_at: None,
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn written_tokens_read_back_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens_path(dir.path());
        assert_eq!(read(&path).unwrap(), vec![]);
        let tokens = vec![
            token("tok_0000000000000001", 'a'),
            token("tok_0000000000000002", 'b'),
        ];
        write(&path, tokens.clone()).unwrap();
        assert_eq!(read(&path).unwrap(), tokens);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_over_the_limit_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens_path(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        // Sparse; the read stops one byte past the limit.
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("larger than 67108864 bytes"), "{err}");
    }

    #[test]
    fn a_broken_file_is_an_error_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens_path(dir.path());
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "key must be a string"),
            (r#"{"version": 9, "tokens": []}"#.into(), "version 9"),
            (
                r#"{"version": 1, "tokens": [{"id": "tok_0000000000000001"}]}"#.into(),
                "missing field",
            ),
            (
                serde_json::json!({"version": 1, "tokens": [token("tok_0000000000000001", 'a'), token("tok_0000000000000001", 'b')]}).to_string(),
                "tokens[1]: another token has id",
            ),
            (
                serde_json::json!({"version": 1, "tokens": [token("tok_0000000000000001", 'a'), token("tok_0000000000000002", 'a')]}).to_string(),
                "same sha256",
            ),
            (
                serde_json::json!({"version": 1, "tokens": [{"id": "tok_0000000000000001", "user": "alice", "scopes": ["root"], "createdAt": "2025-01-01T00:00:00Z", "sha256": "a".repeat(64)}]}).to_string(),
                "unknown scope",
            ),
            (
                serde_json::json!({"version": 1, "tokens": [{"id": "tok_0000000000000001", "user": "a b", "scopes": ["relay"], "createdAt": "2025-01-01T00:00:00Z", "sha256": "a".repeat(64)}]}).to_string(),
                "tokens[0]: invalid user name",
            ),
        ];
        for (text, needle) in cases {
            std::fs::write(&path, &text).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(err.contains("tokens.json"), "{err}");
        }
    }
}
