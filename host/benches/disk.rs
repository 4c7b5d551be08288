//! The disk quota's walk (`tether::disk_quota::usage`, what the host runs when a guest's
//! count reaches its quota) against `du -s`, the tool an operator would use to measure
//! the same tree, in the same run on the same trees (warm page cache for both).
//!
//! `cargo bench -p tether --bench disk` makes trees of 1,000, 10,000 and 100,000 files of
//! 1 KiB (100 files a directory), then prints, per tree, the median of 7 walks and of 7
//! `du -s -B1` runs (a process each, as an operator runs it), and the bytes each found.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("| files | walk p50 | du -s p50 | walk ÷ du | walk bytes | du bytes |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for files in [1_000usize, 10_000, 100_000] {
        let top = tempfile::tempdir()?;
        let root = top.path().join("ws");
        make_tree(&root, files)?;
        let meta = std::fs::metadata(&root)?;
        let identity = (meta.dev(), meta.ino());
        let mut walked = 0;
        let walk = median(|| {
            walked = tether::disk_quota::usage(&root, identity, u64::MAX).unwrap_or(0);
        });
        let mut counted = 0;
        let du = median(|| {
            counted = du_bytes(&root).unwrap_or(0);
        });
        println!(
            "| {files} | {:.2} ms | {:.2} ms | {:.2} | {walked} | {counted} |",
            ms(walk),
            ms(du),
            ms(walk) / ms(du),
        );
    }
    Ok(())
}

fn make_tree(root: &Path, files: usize) -> std::io::Result<()> {
    let body = vec![b'x'; 1024];
    for dir in 0..files.div_ceil(100) {
        let dir_path = root.join(format!("d{dir}"));
        std::fs::create_dir_all(&dir_path)?;
        for file in 0..100.min(files - dir * 100) {
            std::fs::write(dir_path.join(format!("f{file}")), &body)?;
        }
    }
    Ok(())
}

fn du_bytes(root: &Path) -> Option<u64> {
    let out = Command::new("du")
        .arg("-s")
        .arg("-B1")
        .arg(root)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The median of 7 timed runs of `run` (after one untimed, to warm the cache).
fn median(mut run: impl FnMut()) -> Duration {
    run();
    let mut times: Vec<Duration> = (0..7)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
