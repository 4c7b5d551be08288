//! The authenticated caller: which user, through which token, with which scopes,
//! limited to which environments. Every decision about what a caller may reach is a
//! method here, so the API and the lifecycle ask one type the same questions.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::scopes::{Scope, Scopes};

/// The user the operator's token acts for, and the owner of every environment
/// written before there were owners.
pub(crate) const ADMIN_USER: &str = "admin";
/// The id the operator's token is listed and audited under.
pub(crate) const ADMIN_TOKEN_ID: &str = "admin";

/// A token as the host holds it in memory (the secret's hash is the map key).
#[derive(Debug)]
pub(crate) struct Grant {
    /// Token id.
    pub(crate) token_id: String,
    /// The user it acts for.
    pub(crate) user: String,
    /// What it may do.
    pub(crate) scopes: Scopes,
    /// The only environments it reaches, when limited.
    pub(crate) environments: Option<Vec<String>>,
    /// When it stops working.
    pub(crate) expires_at: Option<SystemTime>,
    /// Fired when the token is revoked (or, for the operator's, rotated).
    pub(crate) revoked: CancellationToken,
}

/// The caller of a request, once its token is known good. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Principal(pub(super) Arc<Grant>);

/// A scope the caller's token lacks (answered 403, naming it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this token lacks the `{0}` scope")]
pub(crate) struct MissingScope(pub(crate) Scope);

impl Principal {
    /// The user it acts for.
    pub(crate) fn user(&self) -> &str {
        &self.0.user
    }

    /// The token's id (`admin` for the operator's token).
    pub(crate) fn token_id(&self) -> &str {
        &self.0.token_id
    }

    /// Its scopes.
    pub(crate) fn scopes(&self) -> Scopes {
        self.0.scopes
    }

    /// The environment ids it is limited to, if limited.
    pub(crate) fn environments(&self) -> Option<&[String]> {
        self.0.environments.as_deref()
    }

    /// Whether the token still works (not revoked, rotated away or expired).
    pub(crate) fn is_live(&self) -> bool {
        !self.0.revoked.is_cancelled() && !super::tokens::expired(self.0.expires_at)
    }

    /// Whether it holds the `admin` scope.
    pub(crate) fn is_admin(&self) -> bool {
        self.0.scopes.allows(Scope::Admin)
    }

    /// `Ok` if the token allows `scope`.
    pub(crate) fn require(&self, scope: Scope) -> Result<(), MissingScope> {
        if self.0.scopes.allows(scope) {
            Ok(())
        } else {
            Err(MissingScope(scope))
        }
    }

    /// Whether it may see and act on environment `id` owned by `owner`: its own
    /// (any, for `admin`), and inside its environment limit. Everything else is,
    /// to this caller, an environment that does not exist.
    pub(crate) fn reaches(&self, owner: &str, id: &str) -> bool {
        (self.is_admin() || owner == self.0.user)
            && self
                .0
                .environments
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|e| e == id))
    }

    /// Whether it may create environments: a token limited to named environments
    /// cannot make new ones.
    pub(crate) fn may_create(&self) -> bool {
        self.0.environments.is_none()
    }

    /// Whether it may list and revoke its user's other tokens: an admin's, or a user
    /// token holding every user scope and not limited to named environments. A
    /// narrower one (the kind an app hands a browser) sees and revokes only itself:
    /// it must not learn its siblings' notes and environments, nor cut them off.
    pub(crate) fn manages_tokens(&self) -> bool {
        self.is_admin()
            || (self.0.environments.is_none() && self.0.scopes.allows_all(Scopes::USER_DEFAULT))
    }

    /// Whether it may see or revoke token `id` of `user`.
    pub(crate) fn sees_token(&self, user: &str, id: &str) -> bool {
        if self.is_admin() {
            return true;
        }
        user == self.0.user && (id == self.0.token_id || self.manages_tokens())
    }

    /// Resolves when the token stops working (revoked, rotated or expired), saying why.
    pub(crate) async fn ended(&self) -> &'static str {
        let expiry = async {
            match self.0.expires_at {
                Some(at) => {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.0.revoked.cancelled() => "the token was revoked",
            _ = expiry => "the token expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(user: &str, scopes: Scopes, envs: Option<Vec<&str>>) -> Principal {
        Principal(Arc::new(Grant {
            token_id: "tok_0000000000000001".into(),
            user: user.into(),
            scopes,
            environments: envs.map(|e| e.into_iter().map(str::to_owned).collect()),
            expires_at: None,
            revoked: CancellationToken::new(),
        }))
    }

    #[test]
    fn a_user_reaches_only_their_own_inside_the_limit() {
        let alice = principal("alice", Scopes::USER_DEFAULT, None);
        assert!(alice.reaches("alice", "e1"));
        assert!(!alice.reaches("bob", "e1"));
        assert!(!alice.reaches(ADMIN_USER, "e1"));
        assert!(alice.may_create());
        let limited = principal("alice", Scopes::USER_DEFAULT, Some(vec!["e1"]));
        assert!(limited.reaches("alice", "e1"));
        assert!(!limited.reaches("alice", "e2"));
        assert!(!limited.may_create());
        let admin = principal(ADMIN_USER, Scopes::ADMIN, None);
        assert!(admin.reaches("bob", "e2"));
        let admin_limited = principal(ADMIN_USER, Scopes::ADMIN, Some(vec!["e1"]));
        assert!(!admin_limited.reaches("bob", "e2"));
    }

    #[test]
    fn only_a_full_unlimited_token_manages_its_users_tokens() {
        let full = principal("alice", Scopes::USER_DEFAULT, None);
        assert!(full.manages_tokens());
        assert!(full.sees_token("alice", "tok_other"));
        assert!(!full.sees_token("bob", "tok_other"));
        let relay = principal("alice", Scopes::parse(["relay"]).unwrap(), None);
        assert!(!relay.manages_tokens());
        assert!(relay.sees_token("alice", "tok_0000000000000001"));
        assert!(!relay.sees_token("alice", "tok_other"));
        let limited = principal("alice", Scopes::USER_DEFAULT, Some(vec!["e1"]));
        assert!(!limited.manages_tokens());
        let admin = principal(ADMIN_USER, Scopes::ADMIN, None);
        assert!(admin.sees_token("bob", "tok_other"));
    }

    #[test]
    fn missing_scopes_are_named() {
        let read = principal("alice", Scopes::parse(["envs:read"]).unwrap(), None);
        assert_eq!(read.require(Scope::EnvsRead), Ok(()));
        let err = read.require(Scope::EnvsWrite).unwrap_err();
        assert_eq!(err.to_string(), "this token lacks the `envs:write` scope");
    }

    #[tokio::test]
    async fn ended_says_why() {
        let p = principal("alice", Scopes::USER_DEFAULT, None);
        p.0.revoked.cancel();
        assert_eq!(p.ended().await, "the token was revoked");
        let mut grant = Grant {
            token_id: "t".into(),
            user: "alice".into(),
            scopes: Scopes::USER_DEFAULT,
            environments: None,
            expires_at: Some(SystemTime::now()),
            revoked: CancellationToken::new(),
        };
        grant.expires_at = Some(SystemTime::now());
        assert_eq!(
            Principal(Arc::new(grant)).ended().await,
            "the token expired"
        );
    }
}
