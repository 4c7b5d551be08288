//! nginx as a WebSocket reverse proxy on loopback: the peer an operator would put in
//! front of runtimes instead of Tether's relay. Started from a config the benchmark
//! writes into a scratch directory, in the foreground, stopped with the benchmark.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::Res;

/// A running nginx and the scratch directory it lives in.
pub(crate) struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT` it listens on.
    listen: SocketAddr,
}

impl Nginx {
    /// Starts nginx with no upstream yet; `None` where it is not installed.
    pub(crate) async fn start() -> Res<Option<Nginx>> {
        let Some(binary) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let listen = free_port()?;
        // Until the first case routes it, the upstream is a port nothing listens on.
        write_config(dir.path(), listen, free_port()?)?;
        let child = super::dies_with_benchmark(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let nginx = Nginx { child, dir, listen };
        nginx.wait_listening().await?;
        Ok(Some(nginx))
    }

    /// Points the proxy at `upstream` (reloading its workers) and returns the `ws://`
    /// URL apps connect to.
    pub(crate) async fn route_to(&self, upstream: SocketAddr) -> Res<String> {
        let workers_before = self.workers();
        write_config(self.dir.path(), self.listen, upstream)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        // The reload is done when none of the old workers is left.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.workers().iter().any(|w| workers_before.contains(w)) {
            if Instant::now() > deadline {
                return Err("nginx did not reload within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_listening().await?;
        Ok(format!("ws://{}", self.listen))
    }

    /// The master's pid and its workers', whose CPU time is the proxy's cost.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(self.workers());
        pids
    }

    fn workers(&self) -> Vec<u32> {
        let master = self.child.id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = s.rsplit_once(')')?.1.split_whitespace().nth(1)?.to_owned();
                        Some(rest == master)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    async fn wait_listening(&self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.listen).await.is_err() {
            if Instant::now() > deadline {
                return Err("nginx is not listening after 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops nginx (its workers with it).
    pub(crate) fn stop(self) {
        drop(self);
    }

    /// Asks the master to stop, gives it 5 s, then kills it and every worker it had.
    fn shut_down(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let workers = self.workers();
        let master = Pid::from_raw(self.child.id() as i32);
        let _ = kill(master, Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(master, Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Workers still holding a connection outlive a master that did not wait for
        // them; orphaned, nothing else would end them.
        // Only a process that is still nginx: a pid freed a moment ago may be reused.
        for worker in workers {
            let comm = std::fs::read_to_string(format!("/proc/{worker}/comm"));
            if comm.is_ok_and(|c| c.trim() == "nginx") {
                let _ = kill(Pid::from_raw(worker as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Nginx {
    /// A benchmark that returns early (a failed case) stops nginx too: its master,
    /// killed with the benchmark's thread, would leave its workers running for good.
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> Res<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The usual WebSocket proxy set-up: HTTP/1.1 upstream with the upgrade headers passed
/// on, no buffering, keep-alive to the upstream, one worker per core.
fn write_config(dir: &std::path::Path, listen: SocketAddr, upstream: SocketAddr) -> Res<()> {
    let config = format!(
        "worker_processes auto;\n\
         worker_rlimit_nofile 65536;\n\
         pid nginx.pid;\n\
         error_log nginx.err warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   upstream runtime {{ server {upstream}; keepalive 64; }}\n\
         \x20   map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://runtime;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Upgrade $http_upgrade;\n\
         \x20           proxy_set_header Connection $connection_upgrade;\n\
         \x20           proxy_read_timeout 300s;\n\
         \x20           proxy_buffering off;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), config)?;
    Ok(())
}
