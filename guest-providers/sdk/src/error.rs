//! Constructors and accessors for [`ProviderError`], and the mapping from
//! `std::io::Error` to it.

use std::io;

use crate::ProviderError;

impl ProviderError {
    /// The request was malformed (a bad path, a bad config value, ...).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// The thing asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// A capability was refused by the host or by the provider's own rules.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::Denied(message.into())
    }

    /// The provider does not implement this operation.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::Unsupported(message.into())
    }

    /// Anything else went wrong.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// Maps an I/O error: `NotFound` to `not-found`, `PermissionDenied` to `denied`,
    /// anything else to `failed`; the message is `"<context>: <io error>"`.
    pub fn from_io(err: &io::Error, context: impl std::fmt::Display) -> Self {
        let message = format!("{context}: {err}");
        match err.kind() {
            io::ErrorKind::NotFound => Self::NotFound(message),
            io::ErrorKind::PermissionDenied => Self::Denied(message),
            _ => Self::Failed(message),
        }
    }

    /// The message for a person, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(message)
            | Self::NotFound(message)
            | Self::Denied(message)
            | Self::Unsupported(message)
            | Self::Failed(message) => message,
        }
    }

    /// The kind as WIT spells it: `invalid-input`, `not-found`, `denied`,
    /// `unsupported` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid-input",
            Self::NotFound(_) => "not-found",
            Self::Denied(_) => "denied",
            Self::Unsupported(_) => "unsupported",
            Self::Failed(_) => "failed",
        }
    }
}
