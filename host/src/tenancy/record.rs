//! One user token as `tokens.json` keeps it, and the rules its fields follow: the
//! same whether they come from `POST /api/v1/tokens` or from the file read at start.
//! The record never holds the secret, only its SHA-256.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::scopes::Scopes;
use crate::names;

/// Longest `note`, in bytes.
pub(crate) const MAX_NOTE_BYTES: usize = 256;
/// Most environments a token may be limited to.
pub(crate) const MAX_TOKEN_ENVIRONMENTS: usize = 64;
/// Longest lifetime a token may be given (`expiresInSecs`): ten years.
pub(crate) const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 60 * 60;
/// Prefix of every token secret the host makes.
pub(crate) const SECRET_PREFIX: &str = "tth_";
/// Prefix of every token id.
pub(crate) const ID_PREFIX: &str = "tok_";

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TokenRecord {
    /// Public id (`tok_` and 16 hexadecimal digits); names the token in the API.
    pub id: String,
    /// The user it acts for.
    pub user: String,
    /// What it may do.
    pub scopes: Scopes,
    /// The only environments (ids) it reaches, when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// The maker's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 expiry, if it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// SHA-256 of the secret, hexadecimal.
    pub sha256: String,
}

impl TokenRecord {
    /// Checks every field; the reason names the field at fault.
    pub(crate) fn check(&self) -> Result<(), String> {
        let hex_of = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        };
        if !(self.id.strip_prefix(ID_PREFIX)).is_some_and(|h| hex_of(h, 16)) {
            return Err(format!(
                "id {} must be `tok_` and 16 hexadecimal digits",
                crate::untrusted::named(&self.id)
            ));
        }
        check_user(&self.user)?;
        if self.scopes.is_empty() {
            return Err("scopes must name at least one scope".into());
        }
        if let Some(envs) = &self.environments {
            check_environments(envs)?;
        }
        if let Some(note) = &self.note {
            check_note(note)?;
        }
        parse_time("createdAt", &self.created_at)?;
        if let Some(at) = &self.expires_at {
            parse_time("expiresAt", at)?;
        }
        if !hex_of(&self.sha256, 64) {
            return Err("sha256 must be 64 lowercase hexadecimal digits".into());
        }
        Ok(())
    }

    /// When it expires, if it does (the record passed [`Self::check`]).
    pub(crate) fn expiry(&self) -> Option<SystemTime> {
        let at = parse_time("expiresAt", self.expires_at.as_deref()?).ok()?;
        Some(SystemTime::from(at))
    }
}

/// A user name follows the one name rule (`names`).
pub(crate) fn check_user(user: &str) -> Result<(), String> {
    names::validate("user", user).map_err(|e| e.to_string())
}

/// A note: at most [`MAX_NOTE_BYTES`], no control characters.
pub(crate) fn check_note(note: &str) -> Result<(), String> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(format!(
            "note is {} bytes; the limit is {MAX_NOTE_BYTES}",
            note.len()
        ));
    }
    if note.chars().any(char::is_control) {
        return Err("note must not contain control characters".into());
    }
    Ok(())
}

/// An environment limit: 1 to [`MAX_TOKEN_ENVIRONMENTS`] environment ids.
pub(crate) fn check_environments(envs: &[String]) -> Result<(), String> {
    if envs.is_empty() {
        return Err("environments must name at least one environment id (leave it out for all of the user's environments)".into());
    }
    if envs.len() > MAX_TOKEN_ENVIRONMENTS {
        return Err(format!(
            "environments names {} ids; the limit is {MAX_TOKEN_ENVIRONMENTS}",
            envs.len()
        ));
    }
    for id in envs {
        names::validate("environment", id).map_err(|_| {
            format!(
                "environments: {} is not an environment id",
                crate::untrusted::named(id)
            )
        })?;
    }
    Ok(())
}

/// An `expiresInSecs`: 1 to [`MAX_EXPIRES_IN_SECS`].
pub(crate) fn check_expires_in(secs: u64) -> Result<Duration, String> {
    if secs == 0 || secs > MAX_EXPIRES_IN_SECS {
        return Err(format!(
            "expiresInSecs must be between 1 and {MAX_EXPIRES_IN_SECS}"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// `t` as RFC 3339.
pub(crate) fn stamp(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap_or_default()
}

fn parse_time(field: &str, text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        format!(
            "{field} must be an RFC 3339 time, not {}",
            crate::untrusted::named(text)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn good() -> TokenRecord {
        TokenRecord {
            id: "tok_0123456789abcdef".into(),
            user: "alice".into(),
            scopes: Scopes::USER_DEFAULT,
            environments: None,
            note: Some("laptop".into()),
            created_at: "2025-01-01T00:00:00Z".into(),
            expires_at: Some("2035-01-01T00:00:00Z".into()),
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn every_field_is_checked() {
        assert_eq!(good().check(), Ok(()));
        type Spoil = Box<dyn Fn(&mut TokenRecord)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (Box::new(|t| t.id = "tok_xyz".into()), "id"),
            (Box::new(|t| t.user = "../root".into()), "user name"),
            (Box::new(|t| t.scopes = Scopes::default()), "scopes"),
            (Box::new(|t| t.environments = Some(vec![])), "environments"),
            (
                Box::new(|t| t.environments = Some(vec!["a/b".into()])),
                "environments",
            ),
            (Box::new(|t| t.note = Some("n".repeat(300))), "note"),
            (Box::new(|t| t.note = Some("a\nb".into())), "note"),
            (Box::new(|t| t.created_at = "yesterday".into()), "createdAt"),
            (
                Box::new(|t| t.expires_at = Some("soon".into())),
                "expiresAt",
            ),
            (Box::new(|t| t.sha256 = "AB".repeat(32)), "sha256"),
        ];
        for (spoil, needle) in cases {
            let mut t = good();
            spoil(&mut t);
            let err = t.check().unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn expiry_is_bounded() {
        assert!(check_expires_in(0).is_err());
        assert!(check_expires_in(MAX_EXPIRES_IN_SECS + 1).is_err());
        assert_eq!(check_expires_in(1), Ok(Duration::from_secs(1)));
        let t = good();
        assert!(t.expiry().is_some_and(|e| e > SystemTime::now()));
    }
}
