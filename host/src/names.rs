//! Names that become parts of paths: environment names (workspace directories) and
//! provider names (state directories, operator config keys). One rule for both, checked
//! wherever such a name enters — the API, a hand-edited record, a provider's `info()` —
//! so no path the host builds from one can leave its directory.

use std::path::{Path, PathBuf};

/// Longest name accepted.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// A name that breaks the rule, with the reason in the contract's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} name {shown}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidName {
    kind: &'static str,
    shown: String,
}

/// Checks `name` (of a `kind` such as "environment" or "provider") against the rule:
/// 1–64 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit. Such a
/// name is always one normal path component (never empty, `.`, `..` or containing `/`).
pub(crate) fn validate(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && name
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            kind,
            shown: crate::untrusted::named(name),
        })
    }
}

/// `base/name` for a name that passed [`validate`]; refuses anything else, so a caller
/// that forgot to validate still cannot leave `base`.
pub(crate) fn join(kind: &'static str, base: &Path, name: &str) -> Result<PathBuf, InvalidName> {
    validate(kind, name)?;
    Ok(base.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_safe_directory_names() {
        for good in ["a", "dev-1", "x.y_z", "A9", "a..b"] {
            assert!(validate("environment", good).is_ok(), "{good}");
        }
        let long = "n".repeat(65);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "/",
            "a/b",
            "x/../../..",
            "a b",
            "-x",
            "a\nb",
            "é",
            &long,
        ] {
            assert!(validate("environment", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_stays_inside_and_messages_are_bounded() {
        let base = Path::new("/data/envs");
        assert_eq!(
            join("environment", base, "dev").ok(),
            Some(base.join("dev"))
        );
        assert!(join("provider", base, "/").is_err());
        let err = validate("provider", &"\u{1b}[2J".repeat(100))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid provider name"), "{err}");
        assert!(!err.contains('\u{1b}'), "{err}");
        assert!(err.len() < 400, "{err}");
    }
}
