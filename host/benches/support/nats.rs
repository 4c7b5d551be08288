//! A `nats-server -js` for the cluster benchmarks, and hosts of a cluster on it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Res, Server};

/// The `nats-server` to run: `TETHER_NATS_SERVER`, else `.ci/prepare`'s, else the one
/// on `PATH`; `None` where there is none.
pub(crate) fn nats_binary() -> Option<PathBuf> {
    [
        std::env::var_os("TETHER_NATS_SERVER").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/nats-venv/bin/nats-server"
        ))),
        Some(PathBuf::from("nats-server")),
    ]
    .into_iter()
    .flatten()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `benchmark` with the `nats-server` to use, on a multi-threaded runtime; where
/// there is none, says that benchmark `name` is skipped instead.
pub(crate) fn with_nats<F: std::future::Future<Output = Res<()>>>(
    name: &str,
    benchmark: impl FnOnce(PathBuf) -> F,
) -> Res<()> {
    let Some(binary) = nats_binary() else {
        println!(
            "no nats-server (run .ci/prepare, or set TETHER_NATS_SERVER): the {name} benchmark is skipped"
        );
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(benchmark(binary))
}

/// A `nats-server -js` on a free loopback port; killed when dropped.
pub(crate) struct Nats(Child, u16);

impl Nats {
    /// Starts it, its store in `dir/nats`.
    pub(crate) fn start(binary: &PathBuf, dir: &std::path::Path) -> Res<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = super::dies_with_benchmark(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server never listened".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self(child, port))
    }

    /// Where hosts reach it.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.1)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Host `id` of the cluster at `nats`, in `dir/id`, with `toml` as its `tether.toml`.
pub(crate) fn host(dir: &std::path::Path, nats: &Nats, id: &str, toml: &str) -> Res<Server> {
    let data = dir.join(id);
    std::fs::create_dir_all(&data)?;
    let url = nats.url();
    let flags = ["--cluster", url.as_str(), "--host-id", id].map(std::ffi::OsStr::new);
    Server::start_with(&data, toml, &[], &flags, None)
}
