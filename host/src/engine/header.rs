//! The first bytes of a provider file, checked before wasmtime sees it: a file that
//! is not a component is refused in words ("not a WebAssembly component: PATH
//! starts with "#!/bin/sh"") rather than with wasmtime's byte arrays.

use std::path::Path;

/// `\0asm`: every WebAssembly binary starts with it.
const MAGIC: &[u8; 4] = b"\0asm";
/// The version and layer of a component (a core module has `01 00 00 00`).
const COMPONENT: &[u8; 4] = &[0x0d, 0x00, 0x01, 0x00];
/// The version and layer of a core module.
const CORE_MODULE: &[u8; 4] = &[0x01, 0x00, 0x00, 0x00];

/// Why `bytes` (read from `path`, if it came from a file; "the component" otherwise)
/// cannot be a component.
pub(crate) fn check(bytes: &[u8], path: Option<&Path>) -> Result<(), String> {
    let what = path.map_or_else(|| "the component".to_owned(), |p| p.display().to_string());
    if bytes.is_empty() {
        return Err(format!("not a WebAssembly component: {what} is empty"));
    }
    if !bytes.starts_with(MAGIC) {
        return Err(format!(
            "not a WebAssembly component: {what} starts with {}",
            shown(bytes)
        ));
    }
    match bytes.get(4..8) {
        Some(v) if v == COMPONENT => Ok(()),
        Some(v) if v == CORE_MODULE => Err(format!(
            "not a WebAssembly component: {what} is a core WebAssembly module; build the provider for wasm32-wasip2, which emits a component"
        )),
        Some(_) => Err(format!(
            "not a WebAssembly component: {what} is WebAssembly of an unknown version or layer"
        )),
        None => Err(format!(
            "not a WebAssembly component: {what} ends inside its header"
        )),
    }
}

/// The first bytes, as text where they are printable (`"#!/bin/sh"`).
fn shown(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    let text: String = head.escape_ascii().to_string();
    format!("\"{text}\"{}", if bytes.len() > 16 { "…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_words() {
        let p = Path::new("/x/notes.wasm");
        let e = check(b"#!/bin/sh\necho hi there, long\n", Some(p)).unwrap_err();
        assert_eq!(
            e,
            "not a WebAssembly component: /x/notes.wasm starts with \"#!/bin/sh\\necho h\"…"
        );
        let e = check(b"\0asm\x01\0\0\0", Some(p)).unwrap_err();
        assert!(e.contains("core WebAssembly module"), "{e}");
        assert!(check(b"", None).unwrap_err().contains("empty"));
        assert!(check(b"\0asm\x0d\0\x01\0rest", Some(p)).is_ok());
    }
}
