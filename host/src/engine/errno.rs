//! WASI error numbers in words. A provider's I/O error arrives as Rust's guest
//! `std` prints it, `... (os error 44)`, and 44 is a WASI number (wasi-libc's
//! `__errno_values.h`), not the host's: on Linux 44 is something else entirely.
//! Every provider error passes through [`explain`] on its way to `lastError`, an
//! API answer or a log line, so "(os error 44)" reads "no such file or directory
//! (WASI errno 44)".

/// Words for a WASI errno (wasi-libc's values; `None` for one not listed).
fn words(errno: u32) -> Option<&'static str> {
    Some(match errno {
        1 => "argument list too long",
        2 => "permission denied",
        3 => "address in use",
        4 => "address not available",
        6 => "resource temporarily unavailable",
        8 => "bad file descriptor",
        10 => "device or resource busy",
        14 => "connection refused",
        15 => "connection reset",
        20 => "file exists",
        23 => "host is unreachable",
        27 => "interrupted",
        28 => "invalid argument",
        29 => "I/O error",
        31 => "is a directory",
        32 => "too many levels of symbolic links",
        33 => "too many open files",
        37 => "file name too long",
        40 => "network unreachable",
        44 => "no such file or directory",
        48 => "out of memory",
        51 => "no space left on device",
        52 => "function not implemented",
        53 => "not connected",
        54 => "not a directory",
        55 => "directory not empty",
        58 => "not supported",
        63 => "operation not permitted",
        64 => "broken pipe",
        69 => "read-only file system",
        73 => "timed out",
        75 => "cross-device link",
        76 => "capability insufficient (outside the directories preopened for the provider)",
        _ => return None,
    })
}

const MARK: &str = "(os error ";

/// `message` with every `(os error N)` read as a WASI errno: the words (unless the
/// text just before already says them) and `(WASI errno N)`.
pub(crate) fn explain(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 32);
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let number = after[..digits].parse::<u32>().ok();
        let closed = after[digits..].starts_with(')');
        let (Some(errno), true) = (number, closed) else {
            out.push_str(&rest[..at + MARK.len()]);
            rest = after;
            continue;
        };
        let before = &rest[..at];
        out.push_str(before);
        let said = words(errno).filter(|w| {
            let head = before.trim_end().to_ascii_lowercase();
            !head.ends_with(&w.to_ascii_lowercase())
        });
        if let Some(words) = said {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            out.push_str(words);
            out.push(' ');
        }
        out.push_str(&format!("(WASI errno {errno})"));
        rest = &after[digits + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_wasi_errnos() {
        assert_eq!(
            explain("reading /state/x: (os error 44)"),
            "reading /state/x: no such file or directory (WASI errno 44)"
        );
        assert_eq!(
            explain("open: No such file or directory (os error 44)"),
            "open: No such file or directory (WASI errno 44)"
        );
        assert_eq!(
            explain("a (os error 2) b (os error 999)"),
            "a permission denied (WASI errno 2) b (WASI errno 999)"
        );
        assert_eq!(explain("(os error x) fine"), "(os error x) fine");
        assert_eq!(explain("no numbers"), "no numbers");
    }
}
