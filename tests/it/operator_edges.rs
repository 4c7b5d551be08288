//! What an operator or a local user runs into: the `tether` CLI pointed at something
//! that is not a Tether server (an HTML page, a proxy's error, a redirect, a peer that
//! speaks no HTTP, one that stops halfway), and `tether serve` started wrongly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

/// A peer that takes one connection on loopback, reads the request's head, writes
/// `answer` and, if `hang`, keeps the connection open until the client leaves.
fn fake_server(answer: &'static [u8], hang: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = conn.write_all(answer);
        // Held until the CLI closes its end (it exits).
        while hang && matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    });
    addr
}

/// Runs `tether ARGS --url http://ADDR --token t`: exit code, stdout, stderr.
fn cli(addr: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .args(["--url", &format!("http://{addr}"), "--token", "t"])
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .output()
        .expect("tether");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (status.code(), text(stdout), text(stderr))
}

const HTML: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 27\r\n\r\n<html><body>hi</body></html";
const PROXY_404: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\nnot found";
const REDIRECT: &[u8] = b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n";
const JSON_NO_ENV: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"hello\": 1}";
const NOT_HTTP: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\n\r\n";

/// The CLI against a server that is not Tether: every verb fails with exit 1 and a
/// message naming the URL and what came instead, never a success printing nothing
/// (an HTML page used to list no environments and "delete" one, exit 0), never a
/// "not found" exit 3 for a proxy's 404 page.
#[test]
fn the_cli_against_a_server_that_is_not_tether_fails_clearly() {
    let cases: [(&[u8], &[&str], &str); 8] = [
        (HTML, &["env", "list"], "answered 200 OK with text/html"),
        (
            HTML,
            &["env", "delete", "e1"],
            "answered 200 OK with text/html",
        ),
        (HTML, &["token", "list"], "answered 200 OK with text/html"),
        (
            HTML,
            &["env", "logs", "e1"],
            "answered 200 OK with text/html",
        ),
        (
            PROXY_404,
            &["env", "get", "e1"],
            "answered 404 Not Found with text/html",
        ),
        (
            REDIRECT,
            &["env", "list"],
            "a redirect to https://elsewhere.invalid/,",
        ),
        (JSON_NO_ENV, &["env", "get", "e1"], "is not an environment"),
        (NOT_HTTP, &["removals", "list"], "no HTTP answer"),
    ];
    for (answer, args, says) in cases {
        let (code, out, err) = cli(fake_server(answer, false), args);
        let what = format!("{args:?} against {:?}", String::from_utf8_lossy(answer));
        assert_eq!(code, Some(1), "{what}: {out}\n{err}");
        assert!(out.is_empty(), "{what}: printed {out}");
        assert!(err.contains(says), "{what}: {err}");
    }
}

/// `tether token revoke ""` is refused by the CLI, before any call: it used to send
/// `DELETE /api/v1/tokens/` and report the server's "no such route" as exit 3.
#[test]
fn revoking_an_empty_token_id_is_refused_before_any_call() {
    let (code, out, err) = cli(fake_server(HTML, false), &["token", "revoke", ""]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("\"\" is not a token id"), "{err}");
}

/// `tether env logs` (no `--follow`) against a server that sends the head of a log and
/// then nothing: it gives up like any other call instead of waiting forever.
#[test]
fn a_log_that_stops_halfway_ends_the_command() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (code, out, err) = cli(fake_server(head, true), &["env", "logs", "e1"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("did not send the whole log in time"), "{err}");
}

/// Runs `tether serve ARGS` that is expected to fail at once: exit code and stderr.
fn serve_fails(data_dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("tether serve");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tether serve` on a port in use says so once (the OS's words used to be printed
/// twice, once in the error and again as its cause), and on a data directory that
/// is a file says that, not `reading FILE/tether.toml: Not a directory` twice.
#[test]
fn serve_on_a_taken_port_or_a_file_as_data_dir_says_why_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let (code, err) = serve_fails(dir.path(), &["--listen", &port]);
    assert_eq!(code, Some(1), "{err}");
    let said = std::io::Error::from(std::io::ErrorKind::AddrInUse).to_string();
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!("tether: listening on {port}: ")),
        "{err}"
    );
    assert_eq!(line.matches("in use").count(), 1, "{said}: {err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write");
    let (code, err) = serve_fails(&file, &["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{err}");
    let line = err.lines().last().unwrap_or_default();
    assert_eq!(
        line,
        format!("tether: --data-dir {} is not a directory", file.display()),
        "{err}"
    );
}

/// An `api-token` in the data directory far longer than any token (here a sparse
/// 1 GiB file) is refused by the CLI without being read whole, and nothing is sent.
#[test]
fn a_data_dir_token_longer_than_any_is_refused_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join(".codebolt")).expect("mkdir");
    let token = std::fs::File::create(dir.path().join(".codebolt/api-token")).expect("token");
    token.set_len(1 << 30).expect("set_len");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["env", "list", "--data-dir"])
        .arg(dir.path())
        .args([
            "--url",
            &format!("http://{}", listener.local_addr().expect("addr")),
        ])
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .output()
        .expect("tether");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("longer than 4096 bytes"), "{err}");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "the CLI called the server");
}

/// Runs `tether ARGS` in `data_dir` with no `TETHER_API_TOKEN`; killed (and the test
/// failed) if it has not ended within [`crate::support::WAIT`]: exit code and stderr.
pub(crate) fn ends_in_time(data_dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tether");
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tether {args:?} never ended");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err)
}

/// A named pipe in place of `tokens.json` or `api-token` (hand-made, or a secret
/// tool's): `tether serve` and the CLI waited for a writer forever, silent (and
/// `serve` deaf to SIGTERM); now they refuse it at once, saying what it is.
#[test]
fn a_named_pipe_in_place_of_a_token_file_is_refused_at_once() {
    for file in ["tokens.json", "api-token"] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".codebolt")).expect("mkdir");
        let pipe = dir.path().join(".codebolt").join(file);
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let (code, err) = ends_in_time(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
        assert_eq!(code, Some(1), "{file}: {err}");
        assert!(
            err.contains("it is a named pipe, not a regular file"),
            "{file}: {err}"
        );
        if file == "api-token" {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let (code, err) = ends_in_time(dir.path(), &["env", "list", "--url", &url]);
            assert_eq!(code, Some(1), "the CLI: {err}");
            assert!(err.contains("named pipe"), "the CLI: {err}");
        }
    }
}

/// `tokens.json` or `api-token` owned by another user (here `nobody`, mode 0600):
/// its owner may change its mode and then rewrite it (an admin token of their own)
/// or read it, so `tether serve` refuses it as it refuses one others may write.
/// Needs root to hand the file to another user; skipped otherwise.
#[test]
fn a_token_file_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: giving a file to another user needs root");
        return;
    }
    for (file, text) in [
        ("tokens.json", "{\"version\": 1, \"tokens\": []}\n"),
        ("api-token", "0123456789abcdef0123456789abcdef"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let codebolt = dir.path().join(".codebolt");
        std::fs::create_dir_all(&codebolt).expect("mkdir");
        let path = codebolt.join(file);
        std::fs::write(&path, text).expect("write");
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&path, mode).expect("chmod");
        let nobody = nix::unistd::Uid::from_raw(65534);
        nix::unistd::chown(&path, Some(nobody), None).expect("chown");
        let (code, err) = ends_in_time(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
        assert_eq!(code, Some(1), "{file}: {err}");
        assert!(err.contains("another user (uid 65534)"), "{file}: {err}");
    }
}
