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

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
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
        settings: &Settings,
        budget: Budget,
    ) -> Result<Compiled, EngineError> {
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
            .map_err(|e| EngineError::Compile(format!("starting the compiler process: {e}")))?;
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
            return Err(EngineError::Compile(format!(
                "compiling it took longer than {} s ([limits] compile_secs); it was stopped",
                budget.time.as_secs()
            )));
        };
        let status =
            status.map_err(|e| EngineError::Compile(format!("waiting for the compiler: {e}")))?;
        verdict(status, &said, budget)?;
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

/// What the child's exit says.
fn verdict(status: ExitStatus, said: &str, budget: Budget) -> Result<(), EngineError> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    // Rust says so before it aborts on a failed allocation.
    if said.contains("memory allocation of") {
        return Err(EngineError::Compile(format!(
            "compiling it needed more than {} MiB of memory ([limits] compile_mib); it was stopped",
            budget.bytes >> 20
        )));
    }
    let said = crate::untrusted::cut(said, 4096);
    Err(EngineError::Compile(
        match (status.code(), status.signal()) {
            (Some(REFUSED), _) => said,
            (_, Some(signal)) => {
                format!("the compiler process was killed by signal {signal}: {said}")
            }
            (code, _) => format!(
                "the compiler process failed (exit {}): {said}",
                code.unwrap_or(-1)
            ),
        },
    ))
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
        assert!(verdict(ExitStatus::from_raw(0), "", budget()).is_ok());
        let refused = verdict(ExitStatus::from_raw(REFUSED << 8), "bad magic", budget());
        assert_eq!(
            refused.unwrap_err().to_string(),
            "not a loadable provider component: bad magic"
        );
        let oom = verdict(
            ExitStatus::from_raw(libc::SIGABRT),
            "memory allocation of 1048576 bytes failed",
            budget(),
        );
        assert!(oom.unwrap_err().to_string().contains("more than 256 MiB"));
        let crash = verdict(ExitStatus::from_raw(libc::SIGSEGV), "", budget());
        assert!(crash.unwrap_err().to_string().contains("signal 11"));
    }
}
