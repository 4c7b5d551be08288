//! The sandboxes this service holds: one directory each under the service's root,
//! and the processes started in them.
//!
//! A [`Registry`] is a cheap cloneable handle over the shared state (a short-held
//! `std::sync::Mutex`, never held across an `.await`). Each process runs in its
//! own process group, watched by one task that records how it ended or, when told
//! to, kills its whole group. Deleting a sandbox and shutting the service down
//! both kill every process first; state lives in memory only, so a restarted
//! service knows no sandbox (which is how clients see a sandbox "lost").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A program with the exact arguments the service may run in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowedCommand {
    /// The program, as given to the OS (an absolute path, or looked up on `PATH`).
    pub(crate) program: String,
    /// The arguments a request must pass, exactly.
    pub(crate) args: Vec<String>,
}

/// The service's limits and policy.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Sandboxes alive at once.
    pub(crate) max_sandboxes: usize,
    /// Processes listed per sandbox (running or ended).
    pub(crate) max_processes: usize,
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SandboxError {
    /// No such sandbox (or process).
    #[error("{0}")]
    NotFound(String),
    /// The request asks for something the service refuses.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A limit is reached.
    #[error("{0}")]
    Limit(String),
    /// The machine failed us (a directory, a spawn).
    #[error("{0}")]
    Io(String),
}

/// How a process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProcessStatus {
    /// It runs.
    Running,
    /// It ended on its own.
    Exited,
}

/// A process as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProcessView {
    /// Its id within the service.
    pub(crate) id: String,
    /// The program.
    pub(crate) command: String,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Its operating-system pid.
    pub(crate) pid: u32,
    /// `running` or `exited`.
    pub(crate) status: ProcessStatus,
    /// Its exit code, once it exited with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) signal: Option<i32>,
    /// When it started (RFC 3339).
    pub(crate) started_at: String,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxView {
    /// Its id.
    pub(crate) id: String,
    /// `running`, or `exited` once one of its processes ended on its own.
    pub(crate) status: &'static str,
    /// The directory its processes run in.
    pub(crate) workdir: String,
    /// Labels given at creation.
    pub(crate) labels: Map<String, Value>,
    /// When it was created (RFC 3339).
    pub(crate) created_at: String,
    /// Its processes, oldest first.
    pub(crate) processes: Vec<ProcessView>,
}

/// What a process start asks for, checked by [`Registry::start_process`].
#[derive(Debug, Clone)]
pub(crate) struct ProcessRequest {
    /// The program.
    pub(crate) command: String,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Variables for it (its environment is otherwise `PATH`, `HOME` and `SANDBOX_ID`).
    pub(crate) env: Vec<(String, String)>,
}

/// A cloneable handle over the service's sandboxes.
#[derive(Clone)]
pub(crate) struct Registry {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    allowed: Vec<AllowedCommand>,
    limits: Limits,
    state: Mutex<State>,
    tasks: TaskTracker,
}

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, Sandbox>,
    /// Sandboxes created since the service started.
    created: u64,
    /// Sandboxes deleted since the service started.
    deleted: u64,
    /// Numbers process ids.
    next_process: u64,
}

struct Sandbox {
    id: String,
    dir: PathBuf,
    labels: Map<String, Value>,
    created_at: String,
    processes: BTreeMap<u64, Process>,
}

struct Process {
    view: ProcessView,
    /// Cancelled to have the watcher kill the process group and reap it.
    stop: CancellationToken,
}

impl Registry {
    /// A registry keeping sandbox directories under `root` (created if missing).
    pub(crate) fn new(
        root: PathBuf,
        allowed: Vec<AllowedCommand>,
        limits: Limits,
    ) -> Result<Self, SandboxError> {
        std::fs::create_dir_all(&root)
            .map_err(|e| SandboxError::Io(format!("creating {}: {e}", root.display())))?;
        Ok(Self {
            shared: Arc::new(Shared {
                root,
                allowed,
                limits,
                state: Mutex::new(State::default()),
                tasks: TaskTracker::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a sandbox with `labels`.
    pub(crate) fn create(&self, labels: Map<String, Value>) -> Result<SandboxView, SandboxError> {
        let id = format!("sbx-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = self.shared.root.join(&id);
        {
            let state = self.state();
            if state.sandboxes.len() >= self.shared.limits.max_sandboxes {
                return Err(SandboxError::Limit(format!(
                    "{} sandboxes exist already (--max-sandboxes)",
                    state.sandboxes.len()
                )));
            }
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| SandboxError::Io(format!("creating {}: {e}", dir.display())))?;
        let sandbox = Sandbox {
            id: id.clone(),
            dir,
            labels,
            created_at: now(),
            processes: BTreeMap::new(),
        };
        let view = sandbox.view();
        let mut state = self.state();
        state.created += 1;
        state.sandboxes.insert(id.clone(), sandbox);
        tracing::info!(sandbox = %id, "sandbox created");
        Ok(view)
    }

    /// Every sandbox, and how many were created and deleted since the service started.
    pub(crate) fn list(&self) -> (Vec<SandboxView>, u64, u64) {
        let state = self.state();
        let views = state.sandboxes.values().map(Sandbox::view).collect();
        (views, state.created, state.deleted)
    }

    /// The sandbox `id`.
    pub(crate) fn get(&self, id: &str) -> Result<SandboxView, SandboxError> {
        let state = self.state();
        state
            .sandboxes
            .get(id)
            .map(Sandbox::view)
            .ok_or_else(|| no_sandbox(id))
    }

    /// Deletes the sandbox `id`: kills its processes and removes its directory.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        let sandbox = {
            let mut state = self.state();
            let sandbox = state.sandboxes.remove(id).ok_or_else(|| no_sandbox(id))?;
            state.deleted += 1;
            sandbox
        };
        for process in sandbox.processes.values() {
            process.kill();
        }
        remove_dir(&sandbox.dir).await;
        tracing::info!(sandbox = %id, "sandbox deleted");
        Ok(())
    }

    /// The process `process` of sandbox `id`.
    pub(crate) fn process(&self, id: &str, process: &str) -> Result<ProcessView, SandboxError> {
        let state = self.state();
        let sandbox = state.sandboxes.get(id).ok_or_else(|| no_sandbox(id))?;
        let key = process_key(process).ok_or_else(|| no_process(id, process))?;
        (sandbox.processes.get(&key))
            .map(|p| p.view.clone())
            .ok_or_else(|| no_process(id, process))
    }

    /// Kills the process `process` of sandbox `id` (with its group) and forgets it.
    pub(crate) fn stop_process(&self, id: &str, process: &str) -> Result<(), SandboxError> {
        let mut state = self.state();
        let sandbox = state.sandboxes.get_mut(id).ok_or_else(|| no_sandbox(id))?;
        let key = process_key(process).ok_or_else(|| no_process(id, process))?;
        let removed = (sandbox.processes.remove(&key)).ok_or_else(|| no_process(id, process))?;
        removed.kill();
        tracing::info!(sandbox = %id, process, "process stopped on request");
        Ok(())
    }

    /// Starts a process in sandbox `id`, if the service allows exactly that command.
    pub(crate) fn start_process(
        &self,
        id: &str,
        request: ProcessRequest,
    ) -> Result<ProcessView, SandboxError> {
        let allowed = self
            .shared
            .allowed
            .iter()
            .any(|a| a.program == request.command && a.args == request.args);
        if !allowed {
            return Err(SandboxError::Forbidden(format!(
                "this service does not run `{}` with these arguments (see --allow-command)",
                request.command
            )));
        }
        for (key, _) in &request.env {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(SandboxError::Invalid(format!(
                    "env has an invalid variable name: {key:?}"
                )));
            }
        }
        if request.env.iter().any(|(_, v)| v.contains('\0')) {
            return Err(SandboxError::Invalid(
                "env values may not contain NUL".to_owned(),
            ));
        }

        // Spawned under the lock so a concurrent delete cannot miss the new process.
        let mut state = self.state();
        state.next_process += 1;
        let number = state.next_process;
        let sandbox = state.sandboxes.get_mut(id).ok_or_else(|| no_sandbox(id))?;
        if sandbox.processes.len() >= self.shared.limits.max_processes {
            return Err(SandboxError::Limit(format!(
                "sandbox {id} has {} processes already (--max-processes); stop one first",
                sandbox.processes.len()
            )));
        }
        let log_path = sandbox.dir.join(format!(".process-{number}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| SandboxError::Io(format!("creating {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| SandboxError::Io(format!("{}: {e}", log_path.display())))?;
        let mut command = tokio::process::Command::new(&request.command);
        command
            .args(&request.args)
            .current_dir(&sandbox.dir)
            .env_clear()
            .env("HOME", &sandbox.dir)
            .env("SANDBOX_ID", &sandbox.id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group, so a kill reaches whatever it starts too.
            .process_group(0);
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.envs(request.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = command
            .spawn()
            .map_err(|e| SandboxError::Io(format!("starting {}: {e}", request.command)))?;
        let Some(pid) = child.id() else {
            return Err(SandboxError::Io(format!(
                "{} ended before it could be watched",
                request.command
            )));
        };
        let view = ProcessView {
            id: format!("proc-{number}"),
            command: request.command,
            args: request.args,
            pid,
            status: ProcessStatus::Running,
            exit_code: None,
            signal: None,
            started_at: now(),
        };
        let kill = CancellationToken::new();
        sandbox.processes.insert(
            number,
            Process {
                view: view.clone(),
                stop: kill.clone(),
            },
        );
        tracing::info!(sandbox = %id, process = %view.id, pid, command = %view.command, "process started");
        let watcher = self.clone();
        let sandbox_id = id.to_owned();
        self.shared
            .tasks
            .spawn(watcher.watch(sandbox_id, number, child, kill));
        Ok(view)
    }

    /// Waits for a process to end, or kills its group when told to; records an end
    /// it came to on its own.
    async fn watch(
        self,
        sandbox: String,
        number: u64,
        mut child: tokio::process::Child,
        kill: CancellationToken,
    ) {
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        let status = tokio::select! {
            status = child.wait() => status,
            _ = kill.cancelled() => {
                if let Some(pid) = pid {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                let _ = child.wait().await;
                return;
            }
        };
        // The leader is gone; whatever it left in its group goes too.
        if let Some(pid) = pid {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let (code, signal) = match &status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                (status.code(), status.signal())
            }
            Err(_) => (None, None),
        };
        tracing::warn!(%sandbox, process = number, ?code, ?signal, "process exited on its own");
        let mut state = self.state();
        if let Some(process) =
            (state.sandboxes.get_mut(&sandbox)).and_then(|s| s.processes.get_mut(&number))
        {
            process.view.status = ProcessStatus::Exited;
            process.view.exit_code = code;
            process.view.signal = signal;
        }
    }

    /// Kills every process, waits for them, and removes every sandbox directory.
    pub(crate) async fn shutdown(&self) {
        let sandboxes: Vec<Sandbox> = {
            let mut state = self.state();
            std::mem::take(&mut state.sandboxes).into_values().collect()
        };
        for sandbox in &sandboxes {
            for process in sandbox.processes.values() {
                process.kill();
            }
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        for sandbox in &sandboxes {
            remove_dir(&sandbox.dir).await;
        }
        tracing::info!(sandboxes = sandboxes.len(), "every sandbox removed");
    }
}

impl Sandbox {
    fn view(&self) -> SandboxView {
        let processes: Vec<ProcessView> = self.processes.values().map(|p| p.view.clone()).collect();
        let exited = processes.iter().any(|p| p.status == ProcessStatus::Exited);
        SandboxView {
            id: self.id.clone(),
            status: if exited { "exited" } else { "running" },
            workdir: self.dir.display().to_string(),
            labels: self.labels.clone(),
            created_at: self.created_at.clone(),
            processes,
        }
    }
}

impl Process {
    /// Kills its group now, so it is dead before the request that asked is answered,
    /// and has its watcher reap it.
    fn kill(&self) {
        if self.view.status == ProcessStatus::Running {
            let _ = killpg(Pid::from_raw(self.view.pid as i32), Signal::SIGKILL);
        }
        self.stop.cancel();
    }
}

fn process_key(process: &str) -> Option<u64> {
    process.strip_prefix("proc-")?.parse().ok()
}

fn no_sandbox(id: &str) -> SandboxError {
    SandboxError::NotFound(format!("no sandbox {id}"))
}

fn no_process(id: &str, process: &str) -> SandboxError {
    SandboxError::NotFound(format!("sandbox {id} has no process {process}"))
}

async fn remove_dir(dir: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a sandbox directory");
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
