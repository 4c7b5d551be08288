//! Why the relay refused a message or a connection.

/// Why the relay refused a message or a connection.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// The runtime is away and its window is full.
    #[error("the runtime is not connected and {0} messages are already waiting for it")]
    PendingFull(usize),
    /// The runtime is connected but its window is full.
    #[error("the runtime is not keeping up; message not delivered")]
    RuntimeBusy,
    /// The environment has its maximum number of live connections.
    #[error("the environment already has {0} connections")]
    TooManyConnections(usize),
    /// The hub is closed (environment deleted).
    #[error("the environment is gone")]
    Closed,
}
