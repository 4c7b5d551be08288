//! Scopes: what a token may do. Five named scopes, kept as a small set; `admin`
//! covers every other. A token's scopes are fixed when it is made and only ever
//! narrow what its user could do: no scope reaches another user's environments
//! except `admin`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// List and read environments.
    EnvsRead,
    /// Create, patch, start, stop and restart environments.
    EnvsWrite,
    /// Delete environments.
    EnvsDelete,
    /// Connect apps to environments over WebSocket.
    Relay,
    /// Everything, every user's environments and tokens included.
    Admin,
}

impl Scope {
    /// Every scope, in the order they are shown.
    pub(crate) const ALL: [Scope; 5] = [
        Scope::EnvsRead,
        Scope::EnvsWrite,
        Scope::EnvsDelete,
        Scope::Relay,
        Scope::Admin,
    ];

    /// The scope's name in the contract.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scope::EnvsRead => "envs:read",
            Scope::EnvsWrite => "envs:write",
            Scope::EnvsDelete => "envs:delete",
            Scope::Relay => "relay",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `name`, if there is one.
    pub(crate) fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scope name that is not one of [`Scope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {shown}; the scopes are envs:read, envs:write, envs:delete, relay, admin")]
pub(crate) struct UnknownScope {
    shown: String,
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Scopes(u8);

impl Scopes {
    /// What a user token gets when its maker names no scopes.
    pub(crate) const USER_DEFAULT: Scopes = Scopes(
        (1 << Scope::EnvsRead as u8)
            | (1 << Scope::EnvsWrite as u8)
            | (1 << Scope::EnvsDelete as u8)
            | (1 << Scope::Relay as u8),
    );
    /// The operator's token.
    pub(crate) const ADMIN: Scopes = Scopes(1 << Scope::Admin as u8);

    /// Reads scope names; an unknown one is refused, repeats are folded.
    pub(crate) fn parse<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, UnknownScope> {
        let mut set = Scopes::default();
        for name in names {
            let scope = Scope::parse(name).ok_or_else(|| UnknownScope {
                shown: crate::untrusted::named(name),
            })?;
            set.0 |= scope.bit();
        }
        Ok(set)
    }

    /// Whether this set allows `scope` (`admin` allows every scope).
    pub(crate) fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// Whether this set allows every scope of `other`.
    pub(crate) fn allows_all(self, other: Scopes) -> bool {
        other.iter().all(|scope| self.allows(scope))
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in [`Scope::ALL`] order.
    pub(crate) fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |s| self.0 & s.bit() != 0)
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(Scope::name))
            .finish()
    }
}

impl utoipa::PartialSchema for Scopes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Scope::ALL.map(Scope::name)));
        ArrayBuilder::new()
            .items(name)
            .unique_items(true)
            .description(Some(
                "Scope names: `envs:read`, `envs:write`, `envs:delete`, `relay`, `admin` (which allows everything).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Scopes {}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Scope::name))
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names: Vec<String> = Vec::deserialize(d)?;
        Scopes::parse(names.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_names_round_trip_and_unknown_ones_are_refused() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.name()), Some(scope));
        }
        let set = Scopes::parse(["envs:read", "relay", "envs:read"]).unwrap();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![Scope::EnvsRead, Scope::Relay]
        );
        let err = Scopes::parse(["envs:read", "envs:everything"]).unwrap_err();
        assert!(err.to_string().contains("\"envs:everything\""), "{err}");
        assert!(Scopes::parse(["ENVS:READ"]).is_err());
        assert!(
            Scopes::parse(["envs:read\u{1b}[2J"])
                .unwrap_err()
                .to_string()
                .len()
                < 200
        );
        assert!(Scopes::parse([]).unwrap().is_empty());
    }

    #[test]
    fn scopes_only_narrow_and_admin_covers_all() {
        let read = Scopes::parse(["envs:read"]).unwrap();
        assert!(read.allows(Scope::EnvsRead));
        for denied in [
            Scope::EnvsWrite,
            Scope::EnvsDelete,
            Scope::Relay,
            Scope::Admin,
        ] {
            assert!(!read.allows(denied), "{denied}");
        }
        for scope in Scope::ALL {
            assert!(Scopes::ADMIN.allows(scope), "{scope}");
        }
        assert!(!Scopes::USER_DEFAULT.allows(Scope::Admin));
        for scope in [
            Scope::EnvsRead,
            Scope::EnvsWrite,
            Scope::EnvsDelete,
            Scope::Relay,
        ] {
            assert!(Scopes::USER_DEFAULT.allows(scope), "{scope}");
        }
    }

    #[test]
    fn scopes_serialise_as_names() {
        let set = Scopes::parse(["relay", "envs:read"]).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["envs:read","relay"]"#);
        let back: Scopes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert!(serde_json::from_str::<Scopes>(r#"["root"]"#).is_err());
    }
}
