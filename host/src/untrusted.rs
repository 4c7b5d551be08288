//! Strings a provider controls, made safe to store, show and log: cut to a bounded
//! length with a visible marker, and (for log lines and messages that quote them)
//! with control characters escaped, so a provider can neither grow the host's files
//! nor forge log lines with newlines or terminal escapes. Every limit on what a
//! provider sends the host is listed here and in SECURITY.md ("What a provider can
//! send the host"). Also the files of the data directory someone else may have
//! swapped: opened to read or to write only if they are regular files, the host's own
//! through no symbolic link, without waiting on a named pipe, and read bounded.

/// Longest error message of a provider kept (start errors, file-handler errors).
pub(crate) const MAX_ERROR: usize = 4096;
/// Longest `lastError` stored in a record.
pub(crate) const MAX_LAST_ERROR: usize = 4096;
/// Longest provider string quoted in a denial (program names, URLs, paths).
pub(crate) const MAX_QUOTED: usize = 200;
/// Longest log message of a provider, and of any provider string in a host log line.
pub(crate) const MAX_LOGGED: usize = 4096;

/// Opens `path` (through symlinks) for reading if it is a regular file, and refuses
/// anything else with an `InvalidInput` error naming what it is: a named pipe put in
/// a file's place would otherwise hold the open (and the thread making it) until some
/// writer came, and a terminal or another device is no file the host reads.
pub(crate) fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    open_to_read(path, 0)
}

/// [`open_regular`] for a file only the host writes (an environment's log, the audit
/// log): a symbolic link or a hard link in its place is refused too, so a link left
/// there cannot make the host show a file from elsewhere as its own.
pub(crate) fn open_own(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    sole_name(open_to_read(path, libc::O_NOFOLLOW)?)
}

/// The checks of [`open_own`] on a file the caller opened itself to read (relative to
/// one of the host's directories held open, with `O_NONBLOCK | O_NOFOLLOW`); `path`
/// names it in errors.
pub(crate) fn opened_own(
    path: &std::path::Path,
    opened: std::io::Result<std::fs::File>,
) -> std::io::Result<std::fs::File> {
    sole_name(regular(opened.map_err(|e| named_refusal(path, e))?)?)
}

/// `file` if this is its only name. A hard link left in place of one of the host's
/// files is a second name of a file elsewhere (one its maker may read, or one the
/// host must not write: another user's, the host's settings): written, it would carry
/// the host's writes there as a symbolic link would.
fn sole_name(file: std::fs::File) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let names = file.metadata()?.nlink();
    if names > 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is a hard link ({names} names for one file), not the host's own file"),
        ));
    }
    Ok(file)
}

fn open_to_read(path: &std::path::Path, flags: libc::c_int) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Without waiting for a writer; for a regular file the flag changes nothing.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | flags)
        .open(path);
    regular(opened.map_err(|e| named_refusal(path, e))?)
}

/// `file` if it is a regular file, else the error naming what it is.
fn regular(file: std::fs::File) -> std::io::Result<std::fs::File> {
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(not_regular(kind))
}

/// `e`, from opening `path`, said as what is there when that is why: a link (under
/// O_NOFOLLOW), a named pipe without a reader (under O_NONBLOCK, for a write), a
/// directory (for a write).
fn named_refusal(path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENXIO | libc::EISDIR) => {
            std::fs::symlink_metadata(path).map_or(e, |m| not_regular(m.file_type()))
        }
        _ => e,
    }
}

/// Opens `path` with `options` (append or write, create, mode: the caller's) if it is
/// a regular file or is made one, and refuses anything else with an `InvalidInput`
/// error naming what it is. Every file the host appends to or writes in place in the
/// data directory opens here, where anyone who may write there can swap one: a
/// symbolic link is never followed and a hard link never written (either would carry
/// the host's writes to a file elsewhere), a named pipe is not waited on for a reader (which would hold the
/// thread, and whatever waits on it, for good), and a device or directory is no file.
pub(crate) fn open_to_write(
    path: &std::path::Path,
    options: &mut std::fs::OpenOptions,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = options
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    opened_to_write(path, opened)
}

/// The checks of [`open_to_write`] on a file the caller opened itself (relative to one
/// of the host's directories held open, `own_dirs::OwnDir::open_file`, with
/// `O_NONBLOCK | O_NOFOLLOW`); `path` names it in errors.
pub(crate) fn opened_to_write(
    path: &std::path::Path,
    opened: std::io::Result<std::fs::File>,
) -> std::io::Result<std::fs::File> {
    let file = sole_name(regular(opened.map_err(|e| named_refusal(path, e))?)?)?;
    // Back to plain writes, as the callers expect.
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

/// The error for a path that is `kind` but should be a regular file.
fn not_regular(kind: std::fs::FileType) -> std::io::Error {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a named pipe"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    };
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("it is {what}, not a regular file"),
    )
}

/// The owner of a file described by `meta` when it is another user (neither this
/// process's user nor root): whatever its mode says, its owner may change the mode
/// and then read or rewrite it, so a file of secrets or of credentials the host
/// trusts must not be theirs.
pub(crate) fn foreign_owner(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    (meta.uid() != me && meta.uid() != 0).then_some(meta.uid())
}

/// Why users other than the host's may change the file described by `meta`, if they
/// may: it belongs to another user (root's is taken), or every user may write it. A
/// file that decides what the host runs (its settings, a provider) must be neither.
pub(crate) fn others_may_change(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(uid) = foreign_owner(meta) {
        return Some(format!(
            "it belongs to another user (uid {uid}): make it the host user's (chown)"
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o002 != 0).then(|| format!("every user may write it (mode {mode:04o}): chmod o-w it"))
}

/// What `source` holds, or `None` when it holds more than `limit` bytes: a file
/// someone may have made huge (or pointed at a device) is never read more than one
/// byte past the limit.
pub(crate) fn read_at_most(
    source: impl std::io::Read,
    limit: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    source.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// `s` cut to at most `max` bytes (on a character boundary) plus a marker saying how
/// long it was; unchanged when it fits.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut from {} bytes)", &s[..end], s.len())
}

/// [`cut`] in place, for strings the host keeps.
pub(crate) fn cut_in_place(s: &mut String, max: usize) {
    if s.len() > max {
        *s = cut(s, max);
    }
}

/// `s` for a log line or a message: control characters (newline, carriage return,
/// escape, …) written as `\n`, `\r`, `\u{1b}`, and the whole cut to about `max` bytes.
pub(crate) fn shown(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 16);
    for c in s.chars() {
        // Checked before each character: an escape adds at most 10 bytes past `max`.
        if out.len() >= max {
            out.push_str(&format!("… (cut from {} bytes)", s.len()));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A name, id or field from outside (a record, a request, a provider) for a message:
/// in quotes with control characters escaped (Rust's `Debug` form), at most 80
/// characters, marked when cut.
pub(crate) fn named(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    let mut out = format!("{cut:?}");
    if cut.len() < s.len() {
        out.push_str(" (cut)");
    }
    out
}

/// [`shown`] with the bound for quoting a provider string inside a denial.
pub(crate) fn quoted(s: &str) -> String {
    shown(s, MAX_QUOTED)
}

/// [`shown`] with the bound for a log line.
pub(crate) fn logged(s: &str) -> String {
    shown(s, MAX_LOGGED)
}

/// Longest log line written; the rest is cut with a marker.
pub(crate) const MAX_LOG_LINE: usize = 64 << 10;

/// The host's log writer: whatever a site forgot to escape, each event stays one line
/// — newlines and carriage returns inside it (and, when the log is no terminal, ESC)
/// are written escaped, and a line over [`MAX_LOG_LINE`] is cut. The formatter hands
/// over each event whole in one `write`.
#[derive(Debug)]
pub(crate) struct OneLine<W> {
    inner: W,
    escape_esc: bool,
}

impl<W> OneLine<W> {
    /// Wraps `inner`; `escape_esc` when no terminal interprets colours.
    pub(crate) fn new(inner: W, escape_esc: bool) -> Self {
        Self { inner, escape_esc }
    }
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let special = |b: u8| b == b'\n' || b == b'\r' || (self.escape_esc && b == 0x1b);
        if body.len() <= MAX_LOG_LINE && !body.iter().any(|&b| special(b)) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(body.len().min(MAX_LOG_LINE) + 64);
        for &b in body {
            if out.len() >= MAX_LOG_LINE {
                out.extend_from_slice(format!("… (line cut from {} bytes)", body.len()).as_bytes());
                break;
            }
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                0x1b if self.escape_esc => out.extend_from_slice(b"\\u{1b}"),
                _ => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_others_may_change_is_told_from_one_they_may_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let why = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            others_may_change(&std::fs::metadata(&path).unwrap())
        };
        assert_eq!(why(0o600), None);
        assert_eq!(
            why(0o664),
            None,
            "the group's write is the caller's to judge"
        );
        assert_eq!(
            why(0o646).as_deref(),
            Some("every user may write it (mode 0646): chmod o-w it")
        );
        if nix::unistd::geteuid().is_root() {
            why(0o600);
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let why = others_may_change(&std::fs::metadata(&path).unwrap());
            assert!(why.is_some_and(|w| w.contains("another user (uid 65534)")));
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
            assert_eq!(others_may_change(&std::fs::metadata(&path).unwrap()), None);
        }
    }

    #[test]
    fn open_to_write_takes_regular_files_only_and_follows_no_link() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let append = || {
            let mut o = std::fs::OpenOptions::new();
            o.append(true).create(true).mode(0o600);
            o
        };
        let made = dir.path().join("made");
        let mut f = open_to_write(&made, &mut append()).unwrap();
        f.write_all(b"a").unwrap();
        let mut f = open_to_write(&made, &mut append()).unwrap();
        f.write_all(b"b").unwrap();
        assert_eq!(std::fs::read(&made).unwrap(), b"ab");

        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        let pipe = dir.path().join("pipe");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let refused = |path: &std::path::Path| {
            let e = open_to_write(path, &mut append()).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
            e.to_string()
        };
        assert!(refused(&link).contains("a symbolic link"));
        assert!(refused(&dangling).contains("a symbolic link"));
        assert!(!dir.path().join("nothing").exists());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
        assert!(refused(&pipe).contains("a named pipe"));
        assert!(refused(dir.path()).contains("a directory"));
        // A pipe with a reader opens, and is refused all the same.
        let _reader = open_regular(&pipe).unwrap_err();
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe)
            .unwrap();
        assert!(refused(&pipe).contains("a named pipe"));
        drop(reader);
        assert!(refused(std::path::Path::new("/dev/null")).contains("a device"));

        // Read: the host's own files through no link either; others' through one.
        let e = open_own(&link).unwrap_err();
        assert!(e.to_string().contains("a symbolic link"), "{e}");
        assert!(open_own(&made).is_ok());
        assert!(open_regular(&link).is_ok());
    }

    #[test]
    fn cut_keeps_short_strings_and_marks_long_ones() {
        assert_eq!(cut("abc", 3), "abc");
        let long = "é".repeat(3000);
        let c = cut(&long, 4096);
        assert!(c.len() < 4096 + 40, "{}", c.len());
        assert!(c.ends_with("(cut from 6000 bytes)"), "{c}");
        let mut s = "x".repeat(10);
        cut_in_place(&mut s, 4);
        assert_eq!(s, "xxxx… (cut from 10 bytes)");
    }

    #[test]
    fn shown_escapes_control_characters_and_cuts() {
        let forged = "ok\n2026-01-01T00:00:00Z  INFO forged\x1b[2J\r";
        let s = shown(forged, 100);
        assert!(
            !s.contains('\n') && !s.contains('\x1b') && !s.contains('\r'),
            "{s}"
        );
        assert!(s.contains("\\n") && s.contains("\\u{1b}[2J"), "{s}");
        let big = shown(&"\n".repeat(1 << 20), 200);
        assert!(big.len() < 260, "{}", big.len());
        assert!(big.ends_with("(cut from 1048576 bytes)"), "{big}");
        assert_eq!(shown("plain – ünïcode", 100), "plain – ünïcode");
    }

    #[test]
    fn the_log_writer_keeps_each_event_on_one_line() {
        use std::io::Write;
        let mut out = Vec::new();
        let mut w = OneLine::new(&mut out, true);
        w.write_all(b"INFO a\nforged \x1b[31m\r\n").unwrap();
        w.write_all(b"INFO plain\n").unwrap();
        w.write_all(&[b'x'; MAX_LOG_LINE + 10]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "INFO a\\nforged \\u{1b}[31m\\r");
        assert_eq!(lines[1], "INFO plain");
        assert!(
            lines[2].ends_with("(line cut from 65546 bytes)"),
            "{}",
            &lines[2][65000..]
        );
        assert_eq!(lines.len(), 3);
    }
}
