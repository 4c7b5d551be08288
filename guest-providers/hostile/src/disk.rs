//! Filling the disk through WASI: `fill` writes one file in `dir` (`/workspace` or
//! `/state`) until the host refuses, frees it and writes again after the host had time
//! to see it go, makes empty files until refused, and tries to grow a file to a
//! terabyte without writing it. The outcome names what each step got, for the tests to
//! hold against the quota. `move` carries a file into the workspace from `/state`, where
//! it was counted against another quota. `hoard-files`, `hoard-sockets` and
//! `hoard-connections` keep open files on the host (descriptors, file streams, sockets,
//! connections) until refused; `hoard-listings` keeps listings of a huge directory.

use std::fs::{self, File};
use std::io::Write;
use std::time::Duration;

use tether_provider_sdk::ProviderError;

fn failed(what: &str, e: std::io::Error) -> ProviderError {
    ProviderError::failed(format!("{what}: {e}"))
}

/// Writes `path` in `chunk`-byte pieces until a write fails or `stop_at` bytes are
/// written; the bytes written and the error.
fn write_until_refused(
    path: &str,
    chunk: usize,
    stop_at: u64,
) -> Result<(u64, String), ProviderError> {
    let mut file = File::create(path).map_err(|e| failed("create", e))?;
    let piece = vec![0x5a_u8; chunk];
    let mut written = 0u64;
    while written < stop_at {
        if let Err(e) = file.write_all(&piece).and_then(|()| file.flush()) {
            return Ok((written, e.to_string()));
        }
        written += chunk as u64;
    }
    Ok((written, "never refused".to_owned()))
}

/// The `fill` attack in `dir`.
pub(crate) fn fill(dir: &str, chunk: usize, stop_at: u64) -> Result<String, ProviderError> {
    let path = format!("{dir}/fill");
    let (first, refused) = write_until_refused(&path, chunk, stop_at)?;
    let code = stream_error_code(dir, "fill");
    fs::remove_file(&path).map_err(|e| failed("remove", e))?;
    // The host walks the tree again at most once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let (again, _) = write_until_refused(&path, chunk, chunk as u64)?;
    fs::remove_file(&path).map_err(|e| failed("remove again", e))?;
    std::thread::sleep(Duration::from_millis(1500));
    let mut files = 0u64;
    let entries = loop {
        match File::create(format!("{dir}/e{files}")) {
            Ok(_) => files += 1,
            Err(e) => break e.to_string(),
        }
        if files >= 1 << 20 {
            break "never refused".to_owned();
        }
    };
    let grown = File::create(format!("{dir}/sparse"))
        .and_then(|f| f.set_len(1 << 40))
        .map_or_else(|e| e.to_string(), |()| "grown".to_owned());
    Ok(format!(
        "wrote {first} bytes until: {refused} ({code}); after freeing wrote {again}; made {files} files until: {entries}; growing to 1 TiB: {grown}"
    ))
}

/// What the host answers, at the WASI level, to one more byte appended to `dir/name`
/// through a stream: the `filesystem-error-code` of the stream's error (Rust's standard
/// library reports every failed stream write as an I/O error, whatever its code).
fn stream_error_code(dir: &str, name: &str) -> String {
    use crate::http::bindings::wasi::filesystem::{preopens, types};
    use crate::http::bindings::wasi::io::streams::StreamError;
    let Some(root) = preopens::get_directories()
        .into_iter()
        .find_map(|(d, path)| (path == dir).then_some(d))
    else {
        return format!("no {dir} preopen");
    };
    let flags = types::DescriptorFlags::WRITE;
    let file = match root.open_at(
        types::PathFlags::empty(),
        name,
        types::OpenFlags::empty(),
        flags,
    ) {
        Ok(file) => file,
        Err(e) => return format!("open: {e:?}"),
    };
    let stream = match file.append_via_stream() {
        Ok(stream) => stream,
        Err(e) => return format!("append: {e:?}"),
    };
    match stream.blocking_write_and_flush(b"x") {
        Ok(()) => "written".to_owned(),
        Err(StreamError::LastOperationFailed(e)) => match types::filesystem_error_code(&e) {
            Some(code) => format!("{code:?}"),
            None => format!("no code: {}", e.to_debug_string()),
        },
        Err(StreamError::Closed) => "closed".to_owned(),
    }
}

/// The `move` attack: a file made in `/state` moved, then hard-linked, into the
/// workspace, where it would count against no quota it was charged to.
pub(crate) fn move_in() -> Result<String, ProviderError> {
    fs::write("/state/moved", b"payload").map_err(|e| failed("write /state/moved", e))?;
    let show = |r: std::io::Result<()>| r.map_or_else(|e| e.to_string(), |()| "done".to_owned());
    let renamed = show(fs::rename("/state/moved", "/workspace/moved"));
    let linked = show(fs::hard_link("/state/moved", "/workspace/linked"));
    let within = show(fs::rename("/state/moved", "/state/kept"));
    Ok(format!(
        "rename: {renamed}; link: {linked}; within /state: {within}"
    ))
}

/// The `hoard-files` attack: opens the workspace directory `count` times and keeps every
/// descriptor for the instance's life (each holds an open file on the host); with
/// `streams`, opens a file each time and keeps only a stream reading it (which keeps the
/// file open after its descriptor is dropped). The number kept and what stopped it.
pub(crate) fn hoard_files(count: u64, streams: bool) -> String {
    use crate::http::bindings::wasi::filesystem::{preopens, types};
    let Some(root) = preopens::get_directories()
        .into_iter()
        .find_map(|(d, path)| (path == "/workspace").then_some(d))
    else {
        return "no /workspace preopen".to_owned();
    };
    let (mut held, mut reading) = (Vec::new(), Vec::new());
    let mut stopped = "never refused".to_owned();
    let (name, open_flags) = if streams {
        if let Err(e) = fs::write("/workspace/hoarded", b"x") {
            return format!("write: {e}");
        }
        ("hoarded", types::OpenFlags::empty())
    } else {
        (".", types::OpenFlags::DIRECTORY)
    };
    while ((held.len() + reading.len()) as u64) < count {
        let opened = root.open_at(
            types::PathFlags::empty(),
            name,
            open_flags,
            types::DescriptorFlags::READ,
        );
        let outcome = match opened {
            Ok(file) if streams => file.read_via_stream(0).map(|stream| reading.push(stream)),
            Ok(dir) => {
                held.push(dir);
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            stopped = format!("{e:?}");
            break;
        }
    }
    let kept = held.len() + reading.len();
    // Held until the instance ends.
    std::mem::forget(held);
    std::mem::forget(reading);
    format!("kept {kept} open descriptors until: {stopped}")
}

/// The `hoard-sockets` attack: makes TCP sockets (no address needed) until refused and
/// keeps them; the number kept and what stopped it.
pub(crate) fn hoard_sockets(count: u64) -> String {
    use crate::http::bindings::wasi::sockets::network::IpAddressFamily;
    use crate::http::bindings::wasi::sockets::tcp_create_socket::create_tcp_socket;
    let mut held = Vec::new();
    let mut stopped = "never refused".to_owned();
    while (held.len() as u64) < count {
        match create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(socket) => held.push(socket),
            Err(e) => {
                stopped = format!("{e:?}");
                break;
            }
        }
    }
    let kept = held.len();
    std::mem::forget(held);
    format!("kept {kept} sockets until: {stopped}")
}

/// The `hoard-connections` attack: connects to `addr` (a granted address) until
/// refused and keeps every connection; the number kept and what stopped it.
pub(crate) fn hoard_connections(addr: &str, count: u64) -> String {
    let mut held = Vec::new();
    let mut stopped = "never refused".to_owned();
    while (held.len() as u64) < count {
        match std::net::TcpStream::connect(addr) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                stopped = e.to_string();
                break;
            }
        }
    }
    let kept = held.len();
    std::mem::forget(held);
    format!("kept {kept} connections until: {stopped}")
}

/// The `hoard-listings` attack: makes a directory of `files` entries with `name_bytes`-long
/// names, reads one listing of it to the end, then makes `count` listings of it and keeps
/// each after reading its first entry (a host that reads the whole directory into its
/// memory for each listing holds every name `count` times). The entries the full
/// listing had, the listings kept and what stopped them.
pub(crate) fn hoard_listings(files: u64, name_bytes: usize, count: u64) -> String {
    use crate::http::bindings::wasi::filesystem::{preopens, types};
    if let Err(e) = fs::create_dir_all("/workspace/huge") {
        return format!("mkdir: {e}");
    }
    for i in 0..files {
        let name = format!("/workspace/huge/{i:0>name_bytes$}");
        if let Err(e) = File::create(&name) {
            return format!("made {i} files until: {e}");
        }
    }
    let Some(root) = preopens::get_directories()
        .into_iter()
        .find_map(|(d, path)| (path == "/workspace").then_some(d))
    else {
        return "no /workspace preopen".to_owned();
    };
    let opened = root.open_at(
        types::PathFlags::empty(),
        "huge",
        types::OpenFlags::DIRECTORY,
        types::DescriptorFlags::READ,
    );
    let Ok(dir) = opened else {
        return "cannot open /workspace/huge".to_owned();
    };
    let listed = match dir.read_directory() {
        Ok(listing) => {
            let mut n = 0u64;
            loop {
                match listing.read_directory_entry() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => break n.to_string(),
                    Err(e) => break format!("{n} then {e:?}"),
                }
            }
        }
        Err(e) => format!("{e:?}"),
    };
    let mut held = Vec::new();
    let mut stopped = "never refused".to_owned();
    while (held.len() as u64) < count {
        let first = dir.read_directory().and_then(|listing| {
            listing.read_directory_entry()?;
            Ok(listing)
        });
        match first {
            Ok(listing) => held.push(listing),
            Err(e) => {
                stopped = format!("{e:?}");
                break;
            }
        }
    }
    let kept = held.len();
    std::mem::forget(held);
    std::mem::forget(dir);
    format!("listed {listed} entries; kept {kept} listings until: {stopped}")
}
