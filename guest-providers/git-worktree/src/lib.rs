//! The built-in `git-worktree` provider, after Codebolt's: an environment is a git
//! worktree of the project named by `config.projectPath`, at
//! `<projectPath>/.codebolt/worktree/<environment name>` on branch
//! `tether/<environment name>`, with the runtime running inside it.
//!
//! Everything goes through the host: git and the runtime are spawned by the broker
//! (only the argument shapes in [`git::requested`]), and the project directory is
//! reachable only if the operator's grant covers it (the `{projectPath}` directory
//! request). A start reuses the worktree if it is there, so a restart or a host crash
//! keeps the agent's work; delete removes the worktree and keeps the branch. The file
//! handlers work in the worktree; diffs are against the commit the worktree started
//! from.

mod git;
mod patch;

use std::path::PathBuf;

use tether_provider_sdk::process::{Child, Command};
use tether_provider_sdk::{
    Capabilities, DiffFile, Entry, Health, InitVars, Provider, ProviderError, ProviderInfo,
    StartResult, fs, init_vars, log, state,
};

/// State key: the commit diffs are taken against.
const BASE_KEY: &str = "baseCommit";
/// Where `git diff` writes its patch, inside the environment's workspace.
const PATCH_FILE: &str = ".tether-diff.patch";

/// JSON Schema of the environment config this provider understands.
const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "git-worktree environment config",
  "type": "object",
  "required": ["projectPath"],
  "properties": {
    "projectPath": {
      "type": "string",
      "description": "Absolute path of the git repository; must be inside a directory granted to git-worktree."
    },
    "baseBranch": {
      "type": "string",
      "description": "What the new branch starts from and diffs are taken against; default: the project's current branch."
    }
  }
}"#;

/// Where an environment's worktree lives, from its init vars.
struct Layout {
    project: String,
    worktree: String,
    branch: String,
}

impl Layout {
    fn of(init: &InitVars) -> Result<Self, ProviderError> {
        let project = init.project_path.clone().ok_or_else(|| {
            ProviderError::invalid_input(
                "config.projectPath is required: the git repository to make the worktree in",
            )
        })?;
        if !project.starts_with('/') {
            return Err(ProviderError::invalid_input(format!(
                "config.projectPath must be absolute: {project}"
            )));
        }
        let project = project.trim_end_matches('/').to_owned();
        let name = &init.environment_name;
        Ok(Self {
            worktree: format!("{project}/.codebolt/worktree/{name}"),
            branch: format!("tether/{name}"),
            project,
        })
    }
}

/// The `git-worktree` provider: holds the runtime while the environment runs.
#[derive(Default)]
struct GitWorktree {
    runtime: Option<Child>,
    worktree: Option<String>,
}

impl GitWorktree {
    fn stop_runtime(&mut self) {
        if let Some(child) = self.runtime.take() {
            let pid = child.pid();
            child.kill();
            let status = child.wait();
            log::info(format!("runtime (pid {pid}) stopped: it {status}"));
        }
    }

    /// Reuses the worktree if it is a worktree of the project, else creates it.
    /// Returns whether it was reused.
    fn ensure_worktree(&self, layout: &Layout, init: &InitVars) -> Result<bool, ProviderError> {
        if std::fs::metadata(&layout.worktree).is_ok_and(|m| m.is_dir()) {
            git::check_pointer(&layout.worktree, &layout.project)?;
            let top = git::toplevel(&layout.worktree)?;
            if top != layout.worktree {
                return Err(ProviderError::failed(format!(
                    "{} exists but is not a worktree of {} (git says its top is {top}); move it away",
                    layout.worktree, layout.project
                )));
            }
            log::info(format!("reusing worktree {}", layout.worktree));
            if state::get(BASE_KEY).is_none() {
                // The record lost the base (an old record): the branch's start is
                // unknown, so diff against the base branch as it is now.
                let base = git::commit_of(&layout.project, &base_ref(layout, init)?)?;
                state::set(BASE_KEY, &base)?;
            }
            return Ok(true);
        }
        let base = git::commit_of(&layout.project, &base_ref(layout, init)?)?;
        git::prune(&layout.project)?;
        git::add_worktree(&layout.project, &layout.worktree, &layout.branch, &base)?;
        state::set(BASE_KEY, &base)?;
        log::info(format!(
            "created worktree {} on {} from {base}",
            layout.worktree, layout.branch
        ));
        Ok(false)
    }

    /// The patch of the worktree against its base, as git writes it.
    fn patch(&self) -> Result<String, ProviderError> {
        let worktree = self
            .worktree
            .clone()
            .ok_or_else(|| ProviderError::failed("the environment is not running"))?;
        let base = state::get(BASE_KEY)
            .ok_or_else(|| ProviderError::failed("no base commit recorded for this worktree"))?;
        let init = init_vars().ok_or_else(|| ProviderError::failed("not started"))?;
        git::check_pointer(&worktree, &Layout::of(&init)?.project)?;
        let host_out = format!("{}/{PATCH_FILE}", init.workspace_host_path);
        git::diff_to(&worktree, &base, &host_out)?;
        let guest_out = PathBuf::from(&init.workspace_dir).join(PATCH_FILE);
        let patch = std::fs::read_to_string(&guest_out)
            .map_err(|e| ProviderError::from_io(&e, "reading the diff"))?;
        let _ = std::fs::remove_file(&guest_out);
        Ok(patch)
    }
}

/// The branch or commit a new worktree starts from.
fn base_ref(layout: &Layout, init: &InitVars) -> Result<String, ProviderError> {
    match init.config()?.string("baseBranch")? {
        Some(base) if !base.trim().is_empty() => Ok(base),
        _ => git::current_branch(&layout.project),
    }
}

/// Explains a refused project directory in terms of the operator's grant.
fn explain_denied(err: ProviderError, project: &str) -> ProviderError {
    if err.kind() == "denied" {
        ProviderError::denied(format!(
            "{project} is not inside a directory granted to git-worktree: grant it under \
             [providers.git-worktree] directories in tether.toml ({})",
            err.message()
        ))
    } else {
        err
    }
}

impl Provider for GitWorktree {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "git-worktree".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Each environment is a git worktree of a project on its own branch, with the runtime running inside it."
                .to_owned(),
            capabilities: Capabilities {
                commands: git::requested(),
                urls: Vec::new(),
                directories: vec!["{projectPath}".to_owned()],
            },
            config_schema: CONFIG_SCHEMA.to_owned(),
            message_types: Vec::new(),
        }
    }

    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError> {
        self.stop_runtime();
        let layout = Layout::of(init)?;
        let top = git::toplevel(&layout.project).map_err(|e| {
            if e.kind() == "denied" {
                explain_denied(e, &layout.project)
            } else {
                ProviderError::invalid_input(format!(
                    "config.projectPath {} is not a git repository: {}",
                    layout.project,
                    e.message()
                ))
            }
        })?;
        if top != layout.project {
            return Err(ProviderError::invalid_input(format!(
                "config.projectPath must be the top of its repository ({top}), not {}",
                layout.project
            )));
        }
        let reused = self.ensure_worktree(&layout, init)?;
        state::set_resource_id(&layout.worktree);
        fs::serve_files_from(PathBuf::from(&layout.worktree));
        self.worktree = Some(layout.worktree.clone());

        let child = Command::new("tether")
            .arg("runtime")
            .cwd(layout.worktree.as_str())
            .env("TETHER_RUNTIME_URL", init.runtime_url.as_str())
            .env("TETHER_RUNTIME_TOKEN", init.runtime_token.as_str())
            .env("TETHER_ENVIRONMENT_ID", init.environment_id.as_str())
            .spawn()?;
        let pid = child.pid();
        log::info(format!(
            "runtime started in {} (pid {pid})",
            layout.worktree
        ));
        self.runtime = Some(child);
        Ok(StartResult {
            resource_id: layout.worktree.clone(),
            workspace_path: layout.worktree,
            metadata: vec![
                Entry::new("branch", layout.branch),
                Entry::new("baseCommit", state::get(BASE_KEY).unwrap_or_default()),
                Entry::new("reused", reused.to_string()),
                Entry::new("pid", pid.to_string()),
            ],
        })
    }

    fn check_health(&mut self) -> Health {
        let Some(child) = &self.runtime else {
            return Health::unhealthy("runtime not started");
        };
        if let Some(status) = child.try_wait() {
            return Health::unhealthy(format!("runtime {status}"));
        }
        match &self.worktree {
            Some(dir) if std::fs::metadata(dir).is_err() => {
                Health::unhealthy(format!("the worktree {dir} is gone"))
            }
            _ => Health::healthy(),
        }
    }

    fn teardown(&mut self) -> Result<(), ProviderError> {
        self.stop_runtime();
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), ProviderError> {
        let init = init_vars().ok_or_else(|| ProviderError::failed("no init vars to destroy"))?;
        let layout = Layout::of(&init)?;
        if std::fs::metadata(&layout.worktree).is_ok() {
            git::remove_worktree(&layout.project, &layout.worktree)
                .map_err(|e| explain_denied(e, &layout.project))?;
            log::info(format!(
                "removed worktree {} (branch {} kept)",
                layout.worktree, layout.branch
            ));
        }
        git::prune(&layout.project).map_err(|e| explain_denied(e, &layout.project))
    }

    fn get_diff_files(&mut self) -> Result<Vec<DiffFile>, ProviderError> {
        Ok(patch::split(&self.patch()?))
    }

    fn merge_as_patch(&mut self) -> Result<String, ProviderError> {
        self.patch()
    }
}

tether_provider_sdk::export_provider!(GitWorktree);
