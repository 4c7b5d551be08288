//! One line of the audit log: who did what to which target, how it ended and why.
//! Every string is a [`Text`]; the time, outcome and address are types that hold no
//! free text at all.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};

use super::text::Text;

/// Actions the host records; the wiring may add more (any `a.b` string is fine).
pub mod action {
    /// An environment was created.
    pub const ENVIRONMENT_CREATE: &str = "environment.create";
    /// An environment's record was changed.
    pub const ENVIRONMENT_PATCH: &str = "environment.patch";
    /// An environment was deleted.
    pub const ENVIRONMENT_DELETE: &str = "environment.delete";
    /// An environment was deleted by an admin without waiting for its provider.
    pub const ENVIRONMENT_FORCE_DELETE: &str = "environment.force_delete";
    /// The host stopped an environment that was idle for its `idleStopSecs`.
    pub const ENVIRONMENT_IDLE_STOP: &str = "environment.idle_stop";
    /// An environment was started.
    pub const ENVIRONMENT_START: &str = "environment.start";
    /// An environment was stopped by a caller.
    pub const ENVIRONMENT_STOP: &str = "environment.stop";
    /// An environment was restarted (by a caller, or after a failure by the host).
    pub const ENVIRONMENT_RESTART: &str = "environment.restart";
    /// The host brought an environment back after its own restart.
    pub const ENVIRONMENT_RECOVER: &str = "environment.recover";
    /// The host tried again to remove a deleted environment's resource, after its
    /// provider failed to (`ok` once removed, `failed` with why, to be tried again).
    pub const ENVIRONMENT_REMOVAL_RETRY: &str = "environment.removal_retry";
    /// An admin asked for a pending removal to be tried now.
    pub const ENVIRONMENT_REMOVAL_RETRY_NOW: &str = "environment.removal_retry_now";
    /// An admin dropped a pending removal: the host no longer tries to remove the
    /// resource.
    pub const ENVIRONMENT_REMOVAL_DROP: &str = "environment.removal_drop";
    /// A token was created.
    pub const TOKEN_CREATE: &str = "token.create";
    /// A provider component installed through the API.
    pub const PROVIDER_INSTALL: &str = "provider.install";
    /// A token was revoked.
    pub const TOKEN_REVOKE: &str = "token.revoke";
    /// The admin token was rotated.
    pub const TOKEN_ROTATE: &str = "token.rotate";
    /// A request carried a missing, bad, expired or revoked token.
    pub const AUTH_REFUSED: &str = "auth.refused";
    /// An address was refused for too many failed attempts.
    pub const AUTH_THROTTLED: &str = "auth.throttled";
    /// High-volume entries from too many sources at once were dropped (written by
    /// the audit log itself).
    pub const AUDIT_SUPPRESSED: &str = "audit.suppressed";
}

/// When an entry happened, written as RFC 3339 in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Self(OffsetDateTime::now_utc())
    }

    /// The time.
    pub fn get(self) -> OffsetDateTime {
        self.0
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Self(t.to_offset(time::UtcOffset::UTC))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.0.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        let t = OffsetDateTime::parse(&s, &Rfc3339).map_err(serde::de::Error::custom)?;
        Ok(t.into())
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, in UTC."))
            .into()
    }
}

impl ToSchema for Timestamp {}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ActorRepr", into = "ActorRepr")]
pub enum Actor {
    /// The host on its own (a restart after failure, recovery, an idle stop).
    System,
    /// A request whose token was not accepted: nobody known.
    Anonymous,
    /// A request authenticated by a token.
    User {
        /// The token's user (`admin` for the operator's token).
        user: Text,
        /// The token's id (never its secret).
        token_id: Text,
    },
}

impl Actor {
    /// A token's user.
    pub fn user(user: &str, token_id: &str) -> Self {
        Self::User {
            user: Text::new(user),
            token_id: Text::new(token_id),
        }
    }

    /// The user, when a token's.
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Self::User { user, .. } => Some(user.as_str()),
            _ => None,
        }
    }
}

/// On disk: `"system"`, `"anonymous"` or `{"user", "tokenId"}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ActorRepr {
    Word(String),
    User {
        user: Text,
        #[serde(rename = "tokenId")]
        token_id: Text,
    },
}

impl utoipa::PartialSchema for Actor {
    fn schema() -> RefOr<Schema> {
        let word = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["system", "anonymous"]))
            .description(Some(
                "`system`: the host on its own; `anonymous`: a request whose token was not accepted.",
            ));
        let user = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("A request authenticated by a token."))
            .property("user", Text::schema())
            .required("user")
            .property("tokenId", Text::schema())
            .required("tokenId");
        OneOfBuilder::new()
            .item(word)
            .item(user)
            .description(Some("Who did it."))
            .into()
    }
}

impl ToSchema for Actor {}

impl TryFrom<ActorRepr> for Actor {
    type Error = String;

    fn try_from(r: ActorRepr) -> Result<Self, String> {
        match r {
            ActorRepr::Word(w) if w == "system" => Ok(Self::System),
            ActorRepr::Word(w) if w == "anonymous" => Ok(Self::Anonymous),
            ActorRepr::Word(_) => Err("actor must be system, anonymous or a user".into()),
            ActorRepr::User { user, token_id } => Ok(Self::User { user, token_id }),
        }
    }
}

impl From<Actor> for ActorRepr {
    fn from(a: Actor) -> Self {
        match a {
            Actor::System => Self::Word("system".into()),
            Actor::Anonymous => Self::Word("anonymous".into()),
            Actor::User { user, token_id } => Self::User { user, token_id },
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[schema(as = AuditOutcome)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Not allowed (authentication, scope, quota, throttle).
    Refused,
    /// Allowed but failed.
    Failed,
}

/// One line of the audit log (`.codebolt/audit.jsonl`, `GET /api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// When it happened.
    pub time: Timestamp,
    /// Who did it.
    pub actor: Actor,
    /// What was done, `noun.verb` (the README's audit table lists them).
    pub action: Text,
    /// What it was done to: an environment or token id, a route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Text>,
    /// The user owning the target, so `query` can give a user's trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Text>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why (an error, the missing scope, the restart's cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
    /// The caller's address; none for the host's own actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub remote: Option<IpAddr>,
    /// On a summary line: how many similar entries were not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

impl Entry {
    /// An entry stamped now.
    pub fn new(actor: Actor, action: &str, outcome: Outcome) -> Self {
        Self {
            time: Timestamp::now(),
            actor,
            action: Text::new(action),
            target: None,
            owner: None,
            outcome,
            reason: None,
            remote: None,
            suppressed: None,
        }
    }

    /// With a target.
    pub fn target(mut self, target: &str) -> Self {
        self.target = Some(Text::new(target));
        self
    }

    /// With the target's owner.
    pub fn owner(mut self, owner: &str) -> Self {
        self.owner = Some(Text::new(owner));
        self
    }

    /// With a reason.
    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(Text::new(reason));
        self
    }

    /// With the caller's address.
    pub fn remote(mut self, remote: IpAddr) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Stamped at `time` instead of now.
    pub fn at(mut self, time: OffsetDateTime) -> Self {
        self.time = time.into();
        self
    }

    /// Whether the entry belongs to `user`'s trail: they own its target or did it.
    pub fn concerns(&self, user: &str) -> bool {
        self.owner.as_ref().is_some_and(|o| o.as_str() == user)
            || self.actor.user_name() == Some(user)
    }

    /// The entry as one JSON line, newline included.
    pub(super) fn line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_as_one_camel_case_line() {
        let e = Entry::new(
            Actor::user("alice", "tok-1"),
            action::TOKEN_REVOKE,
            Outcome::Ok,
        )
        .target("tok-2")
        .owner("bob")
        .remote("192.0.2.7".parse().unwrap())
        .at(time::macros::datetime!(2026-01-02 03:04:05.5 +01:00));
        let line = String::from_utf8(e.line().unwrap()).unwrap();
        assert_eq!(
            line,
            "{\"time\":\"2026-01-02T02:04:05.5Z\",\"actor\":{\"user\":\"alice\",\"tokenId\":\"tok-1\"},\
             \"action\":\"token.revoke\",\"target\":\"tok-2\",\"owner\":\"bob\",\"outcome\":\"ok\",\
             \"remote\":\"192.0.2.7\"}\n"
        );
        let back: Entry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        assert!(back.concerns("alice") && back.concerns("bob") && !back.concerns("carol"));
        let sys = Entry::new(Actor::System, action::ENVIRONMENT_RESTART, Outcome::Failed);
        let line = String::from_utf8(sys.line().unwrap()).unwrap();
        assert!(line.contains("\"actor\":\"system\""), "{line}");
        assert_eq!(serde_json::from_str::<Entry>(&line).unwrap(), sys);
        assert!(serde_json::from_str::<Entry>(&line.replace("system", "root")).is_err());
    }
}
