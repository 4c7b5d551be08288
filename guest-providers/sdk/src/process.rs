//! Spawning commands through the host, which runs only what the operator granted
//! this provider.
//!
//! [`Command`] builds a [`SpawnRequest`]; [`spawn`] hands it to the host and
//! returns a [`Child`] handle (dropping the handle kills the process).

use std::fmt;

use crate::bindings::tether::provider::process as raw;
use crate::{Entry, ProviderError};

/// A spawned child process: `pid`, `try_wait`, `wait`, `kill`, `output_tail`.
pub use raw::Child;
/// How a child ended: an exit code or a signal.
pub use raw::ExitStatus;
/// What to spawn: program, arguments, environment, working directory.
pub use raw::SpawnRequest;

/// Spawns a granted command. A command outside the operator's grant is refused
/// with `denied`.
pub fn spawn(request: &SpawnRequest) -> Result<Child, ProviderError> {
    raw::spawn(request)
}

/// A builder for a [`SpawnRequest`].
///
/// The child's environment starts empty: only the variables set here are passed.
/// Without [`Command::cwd`] the child runs in the environment's workspace.
#[derive(Debug, Clone)]
pub struct Command {
    request: SpawnRequest,
}

impl Command {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            request: SpawnRequest {
                program: program.into(),
                args: Vec::new(),
                env: Vec::new(),
                cwd: None,
            },
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.request.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.request.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable (a later value for the same key wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.request.env.iter_mut().find(|entry| entry.key == key) {
            Some(entry) => entry.value = value,
            None => self.request.env.push(Entry { key, value }),
        }
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        vars.into_iter()
            .fold(self, |command, (key, value)| command.env(key, value))
    }

    /// Sets the working directory (a host path inside the environment's directories).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.request.cwd = Some(dir.into());
        self
    }

    /// The request as built so far.
    pub fn request(&self) -> &SpawnRequest {
        &self.request
    }

    /// Spawns it through the host.
    pub fn spawn(&self) -> Result<Child, ProviderError> {
        spawn(&self.request)
    }

    /// Runs it to the end and returns its output (stdout and stderr, the host's
    /// bounded tail). A non-zero exit is a `failed` error quoting the command and
    /// its output.
    pub fn run(&self) -> Result<String, ProviderError> {
        let child = self.spawn()?;
        let status = child.wait();
        let output = child.output_tail();
        if status.success() {
            Ok(output)
        } else {
            Err(ProviderError::failed(format!(
                "`{} {}` {status}: {}",
                self.request.program,
                self.request.args.join(" "),
                output.trim()
            )))
        }
    }
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        matches!(self, Self::Code(0))
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exited with code {code}"),
            Self::Signal(signal) => write!(f, "was ended by signal {signal}"),
        }
    }
}
