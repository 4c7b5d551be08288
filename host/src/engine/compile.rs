//! Compiling a provider someone else wrote, apart from the host. Cranelift has no
//! budget: a component of a few dozen kilobytes (thousands of nested loops over
//! thousands of locals) keeps it busy for minutes and takes gigabytes, and a drop-in
//! is compiled before any of the instance's limits apply. So a drop-in (or an upload,
//! or `tether provider inspect`) is first compiled by a child process, this binary run
//! with [`COMPILE_ARG`], under `[limits] compile_mib` of memory (`RLIMIT_DATA`) and
//! `compile_secs` of time; only a component that compiled there within both is compiled
//! by the host. With the compile cache on (the default) the child's work is kept there
//! and the host's compile is a cache hit; with it off the component is compiled twice.
//! Built-in providers are the binary's own and compiled in the host directly.
//!
//! A component stopped at a limit is remembered by its SHA-256 in the cache's directory
//! (`refused/`): loaded again (a restart, a rescan) under limits no more generous, it is
//! refused at once instead of costing the budget again, which would hold up every
//! start-up while the file stays in place.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::EngineError;

/// The first argument that makes `tether` the compiler child.
pub(crate) const COMPILE_ARG: &str = "__tether-compile";

/// The child's exit code when wasmtime refused the component (its reason on stderr).
const REFUSED: i32 = 3;
/// Its exit code when it could not run at all (bad arguments, no input).
const UNUSABLE: i32 = 4;

/// Bytes of the child's stderr kept for an error message.
const STDERR_KEPT: u64 = 8 << 10;

/// What the host's engine is configured with that changes what is compiled, given to
/// the child so that its compile is the host's (and its cache entry the host's).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Instances map the initial memory image copy-on-write.
    pub share_images: bool,
    /// The compile cache's directory, when there is one.
    pub cache_dir: Option<PathBuf>,
}

/// How much a child compile may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Memory: its data segment and private writable mappings.
    pub bytes: u64,
    /// Wall-clock time, from its start to its exit.
    pub time: Duration,
}

/// The program that compiles apart: this binary.
#[derive(Debug)]
pub(crate) struct Compiler {
    program: PathBuf,
}

impl Compiler {
    /// Compiles with `program` (the `tether` binary).
    pub(crate) fn new(program: PathBuf) -> Self {
        Self { program }
    }

    /// Compiles `bytes` in a child within `budget`; `Ok` when it compiled there, saying
    /// whether it found them in the compile cache instead.
    pub(crate) async fn try_compile(
        &self,
        bytes: &[u8],
        sha256: &str,
        settings: &Settings,
        budget: Budget,
    ) -> Result<Compiled, EngineError> {
        let remembered = settings
            .cache_dir
            .as_deref()
            .map(|dir| Remembered::new(dir, sha256));
        if let Some(overrun) = remembered.as_ref().and_then(|r| r.within(budget)) {
            return Err(overrun.error(budget, true));
        }
        let compiled = self.run(bytes, settings, budget).await;
        if let (Err(Failed::Over(overrun)), Some(remembered)) = (&compiled, &remembered) {
            remembered.note(*overrun, budget);
        }
        compiled.map_err(|failed| match failed {
            Failed::Over(overrun) => overrun.error(budget, false),
            Failed::Other(e) => e,
        })
    }

    async fn run(
        &self,
        bytes: &[u8],
        settings: &Settings,
        budget: Budget,
    ) -> Result<Compiled, Failed> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(COMPILE_ARG)
            .arg(budget.bytes.to_string())
            .arg(if settings.share_images {
                "share"
            } else {
                "copy"
            });
        if let Some(dir) = &settings.cache_dir {
            command.arg(dir);
        }
        let mut child = command
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("starting the compiler process: {e}")))?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let feed = async {
            if let Some(mut stdin) = stdin {
                // A child that stopped reading has failed; its status says why.
                let _ = stdin.write_all(bytes).await;
            }
        };
        let ran = tokio::time::timeout(budget.time, async {
            let ((), outcome, said) = tokio::join!(feed, read_some(stdout), read_some(stderr));
            (child.wait().await, outcome, said)
        })
        .await;
        let Ok((status, outcome, said)) = ran else {
            let _ = child.kill().await;
            return Err(Failed::Over(Overrun::Time));
        };
        let status = status.map_err(|e| failed(format!("waiting for the compiler: {e}")))?;
        verdict(status, &said)?;
        Ok(if outcome == CACHED {
            Compiled::Cached
        } else {
            Compiled::Compiled
        })
    }
}

/// What a child that succeeded did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compiled {
    /// Compiled the component (and stored it in the cache, if there is one).
    Compiled,
    /// Found it in the cache.
    Cached,
}

/// What the child prints when it found the component in the cache.
const CACHED: &str = "cached";

/// The first [`STDERR_KEPT`] bytes of `stream`, trimmed; the rest is read and dropped
/// (a child blocked on a full pipe would only look slow).
async fn read_some(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut said = Vec::new();
    if let Some(mut stream) = stream {
        let _ = (&mut stream).take(STDERR_KEPT).read_to_end(&mut said).await;
        let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    }
    String::from_utf8_lossy(&said).trim().to_owned()
}

/// Why a child did not compile a component.
#[derive(Debug)]
enum Failed {
    /// It went past its budget.
    Over(Overrun),
    /// Anything else (wasmtime's refusal, a crash).
    Other(EngineError),
}

fn failed(message: String) -> Failed {
    Failed::Other(EngineError::Compile(message))
}

/// Which limit a compile went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overrun {
    Memory,
    Time,
}

impl Overrun {
    /// The error a load gets; `remembered` when it was not tried again.
    fn error(self, budget: Budget, remembered: bool) -> EngineError {
        let what = match self {
            Self::Memory => format!(
                "compiling it needed more than {} MiB of memory ([limits] compile_mib)",
                budget.bytes >> 20
            ),
            Self::Time => format!(
                "compiling it took longer than {} s ([limits] compile_secs)",
                budget.time.as_secs()
            ),
        };
        EngineError::Compile(if remembered {
            format!("{what} when it was tried before; not tried again until the limit is raised")
        } else {
            format!("{what}; it was stopped")
        })
    }
}

/// Where the component with one SHA-256 is remembered as refused.
struct Remembered {
    path: PathBuf,
}

impl Remembered {
    fn new(cache_dir: &Path, sha256: &str) -> Self {
        Self {
            path: cache_dir.join("refused").join(sha256),
        }
    }

    /// The limit the component went past before, if `budget` is no more generous.
    fn within(&self, budget: Budget) -> Option<Overrun> {
        let file = std::fs::File::open(&self.path).ok()?;
        let text = crate::untrusted::read_at_most(file, 64).ok()??;
        let text = String::from_utf8(text).ok()?;
        let (kind, limit) = text.trim().split_once(' ')?;
        let limit: u64 = limit.parse().ok()?;
        match kind {
            "memory" if budget.bytes <= limit => Some(Overrun::Memory),
            "time" if budget.time.as_secs() <= limit => Some(Overrun::Time),
            _ => None,
        }
    }

    /// Notes that the component went past `overrun` under `budget`.
    fn note(&self, overrun: Overrun, budget: Budget) {
        let line = match overrun {
            Overrun::Memory => format!("memory {}\n", budget.bytes),
            Overrun::Time => format!("time {}\n", budget.time.as_secs()),
        };
        if let Err(e) = crate::atomic::replace_file(&self.path, line.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "a refused component could not be remembered; it will be compiled again at its next load");
        }
    }
}

/// What the child's exit says.
fn verdict(status: ExitStatus, said: &str) -> Result<(), Failed> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    // Rust says so before it aborts on a failed allocation.
    if said.contains("memory allocation of") {
        return Err(Failed::Over(Overrun::Memory));
    }
    let said = crate::untrusted::cut(said, 4096);
    Err(failed(match (status.code(), status.signal()) {
        (Some(REFUSED), _) => said,
        (_, Some(signal)) => {
            format!("the compiler process was killed by signal {signal}: {said}")
        }
        (code, _) => format!(
            "the compiler process failed (exit {}): {said}",
            code.unwrap_or(-1)
        ),
    }))
}

/// The child: `tether __tether-compile BYTES share|copy [CACHE-DIR]`, the component on
/// stdin. Exits 0 when it compiled, [`REFUSED`] with wasmtime's reason on stderr when
/// it did not; past its memory it aborts.
pub(crate) fn child_main(mut args: impl Iterator<Item = OsString>) -> i32 {
    // Dies with the host (the signal follows the thread that started it: one of the
    // async runtime's workers, which live as long as the host).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let bytes = args.next().and_then(|a| a.to_str()?.parse::<u64>().ok());
    let share = args.next().and_then(|a| match a.to_str()? {
        "share" => Some(true),
        "copy" => Some(false),
        _ => None,
    });
    let (Some(limit), Some(share_images)) = (bytes, share) else {
        eprintln!("usage: tether {COMPILE_ARG} BYTES share|copy [CACHE-DIR]");
        return UNUSABLE;
    };
    let settings = Settings {
        share_images,
        cache_dir: args.next().map(PathBuf::from),
    };
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_DATA, limit, limit) {
        eprintln!("setting the memory limit: {e}");
        return UNUSABLE;
    }
    let mut component = Vec::new();
    let cap = super::MAX_COMPONENT_BYTES as u64 + 1;
    if let Err(e) = std::io::stdin().take(cap).read_to_end(&mut component) {
        eprintln!("reading the component: {e}");
        return UNUSABLE;
    }
    match compile(&component, &settings) {
        Ok(cached) => {
            if cached {
                println!("{CACHED}");
            }
            0
        }
        Err(e) => {
            eprintln!("{e:#}");
            REFUSED
        }
    }
}

/// Compiles `component` as the host's engine would, keeping the result in the cache;
/// whether it was found there instead.
fn compile(component: &[u8], settings: &Settings) -> wasmtime::Result<bool> {
    let cache = match &settings.cache_dir {
        Some(dir) => {
            let mut config = wasmtime::CacheConfig::new();
            config.with_directory(dir);
            Some(wasmtime::Cache::new(config)?)
        }
        None => None,
    };
    let config = super::wasm_config(settings.share_images, cache.clone());
    let engine = wasmtime::Engine::new(&config)?;
    wasmtime::component::Component::new(&engine, component)?;
    Ok(cache.is_some_and(|cache| cache.cache_hits() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget {
            bytes: 256 << 20,
            time: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_child_s_exit_is_read_as_a_refusal_a_memory_overrun_or_a_crash() {
        use std::os::unix::process::ExitStatusExt;
        assert!(verdict(ExitStatus::from_raw(0), "").is_ok());
        let Err(Failed::Other(refused)) = verdict(ExitStatus::from_raw(REFUSED << 8), "bad magic")
        else {
            panic!("a refusal");
        };
        assert_eq!(
            refused.to_string(),
            "not a loadable provider component: bad magic"
        );
        let oom = verdict(
            ExitStatus::from_raw(libc::SIGABRT),
            "memory allocation of 1048576 bytes failed",
        );
        assert!(matches!(oom, Err(Failed::Over(Overrun::Memory))));
        let Err(Failed::Other(crash)) = verdict(ExitStatus::from_raw(libc::SIGSEGV), "") else {
            panic!("a crash");
        };
        assert!(crash.to_string().contains("signal 11"));
        let said = Overrun::Memory.error(budget(), false).to_string();
        assert!(said.contains("more than 256 MiB"), "{said}");
    }

    #[test]
    fn an_overrun_is_remembered_until_the_limit_is_raised() {
        let dir = tempfile::tempdir().unwrap();
        let remembered = Remembered::new(dir.path(), "abc");
        assert_eq!(remembered.within(budget()), None);
        remembered.note(Overrun::Memory, budget());
        assert_eq!(remembered.within(budget()), Some(Overrun::Memory));
        let raised = Budget {
            bytes: budget().bytes * 2,
            ..budget()
        };
        assert_eq!(remembered.within(raised), None, "more memory: tried again");
        remembered.note(Overrun::Time, budget());
        assert_eq!(remembered.within(raised), Some(Overrun::Time));
        let longer = Budget {
            time: Duration::from_secs(2),
            ..raised
        };
        assert_eq!(remembered.within(longer), None, "more time: tried again");
        // Anything else in the file counts as nothing remembered.
        std::fs::write(dir.path().join("refused/abc"), "memory lots\n").unwrap();
        assert_eq!(remembered.within(budget()), None);
    }
}
